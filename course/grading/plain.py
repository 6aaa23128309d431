"""Plain data: what a student's answer becomes before anyone judges it.

A check never compares a student's objects directly. It first turns whatever the student's code
returned into plain data (JSON-compatible numbers, lists, strings), so that the same judgement can
run in the student's own kernel (``course.grading.check``) or in a grader process that never
imports student code (``course grade``). Encoding never calls a method the student's object could
override to lie (``==``, ``__bool__``); it reads tensors and arrays through torch and numpy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

MAX_ELEMENTS = 200_000  # a bigger answer is a bug (or an attack), not a result worth shipping


class EncodeError(ValueError):
    """The answer cannot be turned into plain data (unsupported type, too large)."""


def encode(value: Any, _depth: int = 0) -> Any:
    """Turn an answer into JSON-compatible plain data.

    Tensors and arrays become ``{"type": "tensor" | "ndarray", "dtype", "shape", "data"}``;
    tuples (NamedTuples included) ``{"type": "tuple", "items": [...]}``; other objects become a
    description ``{"type": "object", "class": ...}`` so a judge can say what was returned.
    """
    if _depth > 20:
        raise EncodeError("the answer is nested more than 20 levels deep")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return {"type": "int", "value": int(value)}
    if isinstance(value, (float, np.floating)):
        return {"type": "float", "value": _float(float(value))}
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, torch.Tensor):
        t = torch.Tensor.detach(value).to("cpu")
        return _array("tensor", str(t.dtype).removeprefix("torch."), list(t.shape), t)
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise EncodeError("the answer is a numpy array of Python objects, not of numbers")
        return _array(
            "ndarray", str(value.dtype), list(value.shape), torch.from_numpy(value.copy())
        )
    if isinstance(value, tuple):
        return {"type": "tuple", "items": [encode(v, _depth + 1) for v in value]}
    if isinstance(value, list):
        return {"type": "list", "items": [encode(v, _depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"type": "dict", "items": {str(k): encode(v, _depth + 1) for k, v in value.items()}}
    return {"type": "object", "class": type(value).__name__}


def _float(x: float) -> float | str:
    # JSON has no NaN or infinity; spell them so the grader's parser never sees a bare NaN.
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _array(kind: str, dtype: str, shape: list[int], t: torch.Tensor) -> dict:
    if t.numel() > MAX_ELEMENTS:
        raise EncodeError(f"the answer has {t.numel()} elements; expected far fewer")
    if t.is_complex():
        raise EncodeError("the answer is complex-valued; expected real numbers")
    if t.dtype == torch.bool:
        data = t.flatten().tolist()
    elif t.is_floating_point():
        data = [_float(x) for x in t.double().flatten().tolist()]
    else:
        data = t.long().flatten().tolist()
    return {"type": kind, "dtype": dtype, "shape": shape, "data": data}


def is_array(plain: Any) -> bool:
    return isinstance(plain, dict) and plain.get("type") in ("tensor", "ndarray", "list-array")


def is_number(plain: Any) -> bool:
    return isinstance(plain, dict) and plain.get("type") in ("int", "float")


def as_array(plain: Any) -> Any:
    """A (nested) list or tuple of numbers as an encoded array; anything else unchanged."""

    def numbers(p: Any) -> Any:
        if is_number(p):
            return p["value"]
        if isinstance(p, bool):
            return p
        if isinstance(p, dict) and p.get("type") in ("list", "tuple"):
            return [numbers(q) for q in p["items"]]
        raise TypeError

    if not (isinstance(plain, dict) and plain.get("type") in ("list", "tuple")):
        return plain
    try:
        values = numbers(plain)
        t = torch.tensor(
            [[_unfloat(x) for x in v] if isinstance(v, list) else _unfloat(v) for v in values]
        )
    except (TypeError, ValueError):
        return plain
    return _array("list-array", str(t.dtype).removeprefix("torch."), list(t.shape), t)


def to_tensor(plain: dict) -> torch.Tensor:
    """Decode an encoded array (or number) back into a float64/int64/bool tensor."""
    if is_number(plain):
        return torch.tensor(_unfloat(plain["value"]), dtype=torch.float64)
    data = plain["data"]
    if plain["dtype"] == "bool":
        t = torch.tensor(data, dtype=torch.bool)
    elif any(isinstance(x, str) or isinstance(x, float) for x in data) or _is_float_dtype(
        plain["dtype"]
    ):
        t = torch.tensor([_unfloat(x) for x in data], dtype=torch.float64)
    else:
        t = torch.tensor(data, dtype=torch.int64)
    return t.reshape(plain["shape"])


def _unfloat(x: float | str | int) -> float:
    return float(x) if isinstance(x, str) else x


def _is_float_dtype(dtype: str) -> bool:
    return "float" in dtype or dtype in ("half", "double")


def describe(plain: Any) -> str:
    """A short human description of plain data: what the student returned."""
    if plain is None:
        return "None"
    if isinstance(plain, (bool, str)):
        return repr(plain)
    kind = plain.get("type")
    if kind in ("int", "float"):
        return f"{kind} {show_number(_unfloat(plain['value']))}"
    if kind in ("tensor", "ndarray", "list-array"):
        name = {"tensor": "tensor", "ndarray": "numpy array"}.get(kind, "list")
        return f"{name} of shape {tuple(plain['shape'])}, dtype {plain['dtype']}"
    if kind in ("tuple", "list"):
        return (
            f"{kind} of {len(plain['items'])}: ("
            + ", ".join(describe(p) for p in plain["items"][:4])
            + (", ..." if len(plain["items"]) > 4 else "")
            + ")"
        )
    if kind == "dict":
        return f"dict with keys {sorted(plain['items'])}"
    return f"an object of type {plain.get('class')}"


def show_number(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def show_tensor(t: torch.Tensor, max_elements: int = 64) -> str:
    """Print a small tensor compactly (4 significant digits); summarise a large one."""
    t = t.detach().cpu()
    if t.numel() > max_elements:
        return f"tensor of shape {tuple(t.shape)}"
    with np.printoptions(precision=4, suppress=True, linewidth=90, threshold=max_elements):
        return np.array2string(t.numpy(), separator=", ")
