"""Checks for Lesson 05 (transfer by fine-tuning): the four exercises of ``course/transfer.py``.

- ``transfer_metrics`` is tried on hand-made curves first (a curve that touches the threshold
  exactly, one that never reaches it, one that starts above it, steps that do not start at 0),
  then on random curves over *unevenly* spaced steps, where an area computed with unit spacing
  is wrong. Each group of fields scores as its own part.
- ``l2sp_penalty``: the probe builds a small network and a reference from the case, calls the
  student's function, records the penalty and the gradient it sends to every parameter.
- ``prepare_finetune``: the probe builds a small network with ``.trunk`` and ``.head`` (or
  ``.heads``) holding "pretrained" weights drawn from N(0, 1) (far from PyTorch's default
  initialisation), calls the student's function, and records for every parameter whether it
  requires grad, how it relates to the pretrained values (the fraction of equal entries, its
  spread against PyTorch's default initialisation, its correlation with the pretrained values)
  and whether a backward pass reached it. The judge turns those numbers into "kept", "fresh"
  (changed, and statistically like a fresh initialisation: any initialisation rule of the usual
  scale passes) or "changed", so that no exact random value is ever compared. For ``"l2sp"`` it
  also checks that ``model.l2sp_reference`` holds a *copy* of the pretrained weights.
- ``finetune_update``: judged by behaviour on networks the probe prepares itself (the library's
  ``prepare_finetune`` is hidden while the lesson is graded): stale gradients on every
  parameter, plain SGD over the trainable parameters, one to three calls; every parameter
  afterwards is compared with the reference's (a frozen trunk must not move, a fresh head must
  train, the L2-SP gradient must pull toward ``l2sp_reference``), the anchor must be unchanged,
  and the returned loss must be the minimised one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from course import transfer as ref
from course.dqn import QNetwork
from course.grading import plain
from course.grading.core import (
    Case,
    Exercise,
    _changed_argument,
    compare,
    compare_scalar,
    first_difference,
    register,
    switched_mistakes,
)
from course.grading.plain import show_tensor

LESSON = "05_transfer"


class _TransferExercise(Exercise):
    lesson = LESSON
    atol = 1e-6
    rtol = 1e-5


# --- transfer_metrics --------------------------------------------------------------------------

FIELDS = ref.METRIC_NAMES
PARTS = {
    "jumpstart and asymptotic gain": ("jumpstart", "asymptotic_gain"),
    "time to threshold": ("time_to_threshold_scratch", "time_to_threshold_transfer"),
    "transfer ratio": ("transfer_ratio",),
}

STRICT = (
    "a curve reaches the threshold at the first step where it is >= threshold (equal counts): "
    "use `>=`, not `>`"
)
INDEX_NOT_STEP = (
    "return the step count `steps[t]` at which the threshold is first reached, not the index t"
)
STEP_AFTER = "return steps[t] for the first t with curve[t] >= threshold, not the step after it"
NEVER_NONE = "when a curve never reaches the threshold, its time to threshold is None"
UNIT_SPACING = (
    "the steps are unevenly spaced: give the step counts to the trapezoidal rule "
    "(`torch.trapezoid(curve, steps)`), otherwise every interval counts as width 1"
)
SUM_AREA = (
    "the area under a curve is the trapezoidal rule over `steps` "
    "(`torch.trapezoid(curve, steps)`), not the sum of its values"
)
INVERTED_RATIO = "the ratio is area(transfer) / area(scratch), not the other way round"
RELATIVE_RATIO = (
    "the transfer ratio here is the plain ratio area(transfer) / area(scratch), without "
    "subtracting 1"
)
SIGN = "the gains are transfer minus scratch (positive when transfer helps), not scratch - transfer"
MAX_NOT_LAST = (
    "the asymptotic gain compares the LAST points of the curves (transfer[-1] - scratch[-1]), "
    "not their maxima"
)


def _np(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, np.float64)


def _wrong_metrics(
    steps: Any,
    scratch: Any,
    transfer: Any,
    threshold: float,
    *,
    reach: str = "first >=",
    area: str = "trapezoid",
    ratio: str = "plain",
    sign: int = 1,
    gain: str = "last",
) -> ref.TransferMetrics:
    x, s, t = _np(steps), _np(scratch), _np(transfer)

    def first(curve: np.ndarray) -> float | None:
        hits = np.flatnonzero(curve > threshold if reach == "first >" else curve >= threshold)
        if not hits.size:
            return math.inf if reach == "never inf" else None
        k = int(hits[0])
        if reach == "index":
            return float(k)
        if reach == "step after":
            return float(x[min(k + 1, x.size - 1)])
        return float(x[k])

    def area_of(curve: np.ndarray) -> float:
        if area == "unit":
            return float(np.trapezoid(curve))
        if area == "sum":
            return float(curve.sum())
        return float(np.trapezoid(curve, x))

    a_t, a_s = area_of(t), area_of(s)
    value = {"plain": a_t / a_s, "inverted": a_s / a_t, "relative": (a_t - a_s) / a_s}[ratio]
    asym = t.max() - s.max() if gain == "max" else t[-1] - s[-1]
    return ref.TransferMetrics(
        jumpstart=float(sign * (t[0] - s[0])),
        asymptotic_gain=float(sign * asym),
        time_to_threshold_scratch=first(s),
        time_to_threshold_transfer=first(t),
        transfer_ratio=value,
    )


def _field(result: Any, name: str) -> Any:
    if isinstance(result, dict):
        return result[name]
    return getattr(result, name)


@register
class TransferMetricsExercise(_TransferExercise):
    solves = ref.transfer_metrics
    parts = {part: 1 for part in PARTS}

    def probe(self, obj: Any, case: Case) -> Any:
        """Call with copies of the case's curves; record every field of the result."""
        args = copy.deepcopy(case.args)
        result = obj(*args)
        changed = _changed_argument(case, args, {})
        if changed is not None:
            return {"type": "mutated", "argument": changed}
        fields = {}
        for name in FIELDS:
            try:
                fields[name] = plain.encode(_field(result, name))
            except (AttributeError, KeyError, TypeError, IndexError):
                return {"type": "no field", "field": name, "returned": plain.encode(result)}
        return {"type": "metrics", "fields": fields}

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        if isinstance(got, dict) and got.get("type") == "no field":
            return (
                f"returned {plain.describe(got['returned'])} without a field "
                f"`{got['field']}`; return a TransferMetrics(jumpstart=..., asymptotic_gain=..., "
                "time_to_threshold_scratch=..., time_to_threshold_transfer=..., "
                "transfer_ratio=...)"
            )
        if not (isinstance(got, dict) and got.get("type") == "metrics"):
            return f"returned {plain.describe(got)}; expected a TransferMetrics"
        for name in case.data["fields"]:
            g, w = got["fields"][name], want["fields"][name]
            if w is None:
                if g is not None:
                    return (
                        f"{name} is {plain.describe(g)}; expected None (the curve never reaches "
                        "the threshold)"
                    )
                continue
            if g is None:
                return f"{name} is None; expected {plain.describe(w)}"
            g = plain.as_array(g)
            if not (plain.is_number(g) or (plain.is_array(g) and g["shape"] == [])):
                return f"{name} is {plain.describe(g)}; expected a single number"
            got_value = float(plain.to_tensor(g))
            want_value = float(plain.to_tensor(w))
            if not math.isclose(got_value, want_value, rel_tol=self.rtol, abs_tol=self.atol):
                return f"{name} is {got_value:.6g}; expected {want_value:.6g}"
        return None

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def wrong(**kw: Any) -> Callable[..., ref.TransferMetrics]:
            return lambda steps, scratch, transfer, threshold: _wrong_metrics(
                steps, scratch, transfer, threshold, **kw
            )

        return {
            STRICT: wrong(reach="first >"),
            INDEX_NOT_STEP: wrong(reach="index"),
            STEP_AFTER: wrong(reach="step after"),
            NEVER_NONE: wrong(reach="never inf"),
            UNIT_SPACING: wrong(area="unit"),
            SUM_AREA: wrong(area="sum"),
            INVERTED_RATIO: wrong(ratio="inverted"),
            RELATIVE_RATIO: wrong(ratio="relative"),
            SIGN: wrong(sign=-1),
            MAX_NOT_LAST: wrong(gain="max"),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        inputs: list[tuple[str, tuple]] = []
        steps = torch.tensor([0, 1000, 2000, 5000, 10000])
        inputs.append(
            (
                "uneven steps; the scratch curve touches the threshold exactly at step 5000",
                (
                    steps,
                    torch.tensor([10.0, 40.0, 80.0, 100.0, 150.0]),
                    torch.tensor([50.0, 120.0, 90.0, 160.0, 170.0]),
                    100.0,
                ),
            )
        )
        inputs.append(
            (
                "the scratch curve never reaches the threshold",
                (
                    torch.tensor([0, 500, 1500, 4000]),
                    torch.tensor([20.0, 30.0, 60.0, 90.0], dtype=torch.float64),
                    torch.tensor([40.0, 80.0, 120.0, 200.0], dtype=torch.float64),
                    150.0,
                ),
            )
        )
        inputs.append(
            (
                "steps start at 250; the transfer curve starts above the threshold, then dips",
                (
                    torch.tensor([250, 500, 1000, 3000, 3500]),
                    torch.tensor([9.0, 9.0, 30.0, 200.0, 480.0]),
                    torch.tensor([300.0, 150.0, 400.0, 500.0, 450.0]),
                    200.0,
                ),
            )
        )
        inputs.append(
            (
                "neither curve reaches the threshold; transfer is worse (negative transfer)",
                (
                    torch.tensor([0, 100, 300, 700, 1500, 3100]),
                    torch.tensor([10.0, 20.0, 35.0, 50.0, 80.0, 120.0]),
                    torch.tensor([5.0, 8.0, 12.0, 30.0, 70.0, 60.0]),
                    475.0,
                ),
            )
        )
        for k in range(12):
            T = 5 + 3 * k
            gaps = torch.randint(1, 20, (T,), generator=generator) * 250
            steps = torch.cumsum(gaps, 0) - gaps[0] * (k % 2)
            dtype = (torch.float32, torch.float64)[k % 2]
            curves = []
            for _ in range(2):
                offset = float(torch.rand(1, generator=generator))
                walk = torch.cumsum(torch.randn(T, generator=generator, dtype=torch.float64), 0)
                curve = 10 + 490 * torch.sigmoid(walk - walk[0] + 2 * offset - 3)
                curves.append(curve.round().to(dtype))
            scratch, transfer = curves
            # exact hits: the threshold is a value the transfer curve takes
            pick = int(torch.randint(1, T, (1,), generator=generator))
            threshold = float(transfer[pick]) if k % 3 != 2 else 495.0
            if k % 4 == 1:  # steps as floats
                steps = steps.double()
            inputs.append(
                (
                    f"random curves #{k} (T={T}, uneven steps, {str(dtype)[6:]})",
                    (steps, scratch, transfer, threshold),
                )
            )
        out = []
        for part, fields in PARTS.items():
            for label, args in inputs:
                shown = (
                    f"steps = {show_tensor(args[0])}\nscratch = {show_tensor(args[1])}\n"
                    f"transfer = {show_tensor(args[2])}\nthreshold = {args[3]!r}"
                )
                out.append(Case(label, args, shown=shown, part=part, data={"fields": fields}))
        return out


# --- networks the probes build -----------------------------------------------------------------


class _MultiHeadNet(nn.Module):
    """A shared trunk and one linear head per task; ``forward`` returns every head ``[H, B, A]``."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...], n_heads: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(width, n_actions) for _ in range(n_heads))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = self.trunk(obs)
        return torch.stack([head(features) for head in self.heads])


def _build(data: dict) -> nn.Module:
    """The case's network, with "pretrained" weights drawn from N(0, 1)."""
    if data["n_heads"]:
        net: nn.Module = _MultiHeadNet(
            data["obs_dim"], data["n_actions"], data["hidden"], data["n_heads"]
        )
    else:
        net = QNetwork(data["obs_dim"], data["n_actions"], data["hidden"])
    generator = torch.Generator().manual_seed(data["seed"])
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    net = net.to(data.get("dtype", torch.float32))
    if data.get("frozen_before"):
        net.trunk.requires_grad_(False)
    return net


def _describe_net(data: dict) -> str:
    kind = (
        f"a network with a trunk and {data['n_heads']} heads (`.heads`)"
        if data["n_heads"]
        else "a QNetwork (`.trunk`, `.head`)"
    )
    text = (
        f"{kind}, obs_dim={data['obs_dim']}, hidden={data['hidden']}, "
        f"n_actions={data['n_actions']}, pretrained weights drawn from N(0, 1)"
    )
    if data.get("frozen_before"):
        text += "; its trunk arrives frozen (requires_grad False, from an earlier freeze)"
    return text


# --- l2sp_penalty ------------------------------------------------------------------------------

INCLUDES_EXCLUDED = (
    "skip every parameter whose name starts with a prefix in `exclude` "
    "(e.g. `name.startswith(tuple(exclude))`): a fresh head has no pretrained value to stay near"
)
NO_REFERENCE = (
    "L2-SP pulls weights toward the PRETRAINED values: penalise (p - reference[name])^2, "
    "not p^2 (that is plain weight decay)"
)
NO_ALPHA = "multiply the sum by alpha"
HALF_ALPHA = "the penalty is alpha * sum ||p - p_ref||^2, without a factor 1/2"
NOT_SQUARED = "square the distances: sum ||p - p_ref||^2, not the norms ||p - p_ref||"
MEAN_NOT_SUM = "sum the squared differences over every entry, do not average them"
ONLY_WEIGHTS = "penalise every parameter named in `reference`, biases included"


def _wrong_penalty(
    model: nn.Module,
    reference: dict,
    alpha: float,
    exclude: tuple = (),
    *,
    use_exclude: bool = True,
    use_reference: bool = True,
    factor: float = 1.0,
    use_alpha: bool = True,
    power: str = "square",
    reduce: str = "sum",
    weights_only: bool = False,
) -> torch.Tensor:
    params = dict(model.named_parameters())
    total = torch.zeros((), dtype=next(model.parameters()).dtype)
    for name, value in reference.items():
        if use_exclude and exclude and name.startswith(tuple(exclude)):
            continue
        if weights_only and not name.endswith("weight"):
            continue
        diff = params[name] - value if use_reference else params[name]
        if power == "norm":
            term = diff.norm()
        else:
            term = diff.pow(2).sum() if reduce == "sum" else diff.pow(2).mean()
        total = total + term
    return factor * (alpha if use_alpha else 1.0) * total


@register
class L2SPPenalty(_TransferExercise):
    solves = ref.l2sp_penalty

    def _inputs(self, case: Case) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        data = case.data
        model = _build(data)
        generator = torch.Generator().manual_seed(data["seed"] + 1)
        reference = {}
        for name, p in model.named_parameters():
            if name in data["names"]:
                noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
                reference[name] = p.detach().clone() + data["noise"] * noise
        return model, reference

    def probe(self, obj: Any, case: Case) -> Any:
        """Build the network and reference, call, then backpropagate from the penalty."""
        model, reference = self._inputs(case)
        _, reference_copy = self._inputs(case)
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        value = obj(model, reference, case.data["alpha"], case.data["exclude"])
        if any(not torch.equal(reference[k], reference_copy[k]) for k in reference_copy):
            return {"type": "mutated", "argument": "reference"}
        if any(not torch.equal(p, before[k]) for k, p in model.named_parameters()):
            return {"type": "mutated", "argument": "model"}
        out: dict[str, Any] = {"type": "penalty", "value": plain.encode(value)}
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            return out
        if not value.requires_grad:
            out["differentiable"] = False
            return out
        out["differentiable"] = True
        value.reshape(()).backward()
        out["grads"] = {
            k: plain.encode(p.grad if p.grad is not None else torch.zeros_like(p))
            for k, p in model.named_parameters()
        }
        return out

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        if not (isinstance(got, dict) and got.get("type") == "penalty"):
            return f"returned {plain.describe(got)}; expected a scalar tensor (the penalty)"
        reason = compare_scalar(got["value"], want["value"], 1e-5, 1e-6, what="the penalty")
        if reason is not None:
            return reason
        if want.get("differentiable") and not got.get("differentiable"):
            return (
                "the penalty does not depend on the parameters through autograd: compute it "
                "with torch operations on the parameters (no .item(), .data or torch.no_grad())"
            )
        for name, w in want.get("grads", {}).items():
            reason = compare(got["grads"][name], w, 1e-5, 1e-5)
            if reason is not None:
                return f"the gradient of the penalty with respect to {name}: {reason}"
        return None

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def wrong(**kw: Any) -> Callable[..., torch.Tensor]:
            return lambda model, reference, alpha, exclude=(): _wrong_penalty(
                model, reference, alpha, exclude, **kw
            )

        return {
            INCLUDES_EXCLUDED: wrong(use_exclude=False),
            NO_REFERENCE: wrong(use_reference=False),
            NO_ALPHA: wrong(use_alpha=False),
            HALF_ALPHA: wrong(factor=0.5),
            NOT_SQUARED: wrong(power="norm"),
            MEAN_NOT_SUM: wrong(reduce="mean"),
            ONLY_WEIGHTS: wrong(weights_only=True),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        specs: list[tuple[str, dict]] = []
        qnet = {"obs_dim": 4, "n_actions": 2, "hidden": (5,), "n_heads": 0}
        all_q = ["trunk.0.weight", "trunk.0.bias", "head.weight", "head.bias"]
        specs.append(
            (
                "the reference equals the weights (penalty 0)",
                {**qnet, "names": all_q, "noise": 0.0, "alpha": 1.0, "exclude": ()},
            )
        )
        specs.append(
            (
                "every parameter referenced, alpha 1, nothing excluded",
                {**qnet, "names": all_q, "noise": 1.0, "alpha": 1.0, "exclude": ()},
            )
        )
        specs.append(
            (
                "the head excluded",
                {**qnet, "names": all_q, "noise": 0.5, "alpha": 0.3, "exclude": ("head",)},
            )
        )
        specs.append(
            (
                "only the first layer is in the reference",
                {
                    **qnet,
                    "names": ["trunk.0.weight", "trunk.0.bias"],
                    "noise": 1.0,
                    "alpha": 2.5,
                    "exclude": (),
                },
            )
        )
        for k in range(8):
            hidden = ((6,), (8, 5), (4, 7, 3))[k % 3]
            n_heads = 3 if k % 4 == 3 else 0
            data = {
                "obs_dim": 3 + k % 3,
                "n_actions": 2 + k % 2,
                "hidden": hidden,
                "n_heads": n_heads,
                "dtype": (torch.float32, torch.float64)[k % 2],
            }
            names = [n for n, _ in _build({**data, "seed": 0}).named_parameters()]
            head = "heads" if n_heads else "head"
            exclude = ((head,), (), (head, "trunk.0"), (head,))[k % 4]
            if len(hidden) == 1 and k % 4 == 2:  # keep something to penalise
                exclude = ("trunk.0",)
            specs.append(
                (
                    f"random network #{k} ({'3 heads' if n_heads else 'one head'}, hidden "
                    f"{hidden}, exclude {exclude})",
                    {
                        **data,
                        "names": names,
                        "noise": 0.2 + float(torch.rand(1, generator=generator)),
                        "alpha": round(0.01 + 2 * float(torch.rand(1, generator=generator)), 3),
                        "exclude": exclude,
                    },
                )
            )
        out = []
        for label, data in specs:
            data["seed"] = int(torch.randint(0, 2**31, (1,), generator=generator))
            shown = (
                f"{_describe_net(data)}\nreference = the weights + {data['noise']:.3g} * N(0, 1) "
                f"noise, for {data['names']}\nalpha = {data['alpha']}, exclude = {data['exclude']}"
            )
            out.append(Case(label, shown=shown, data=data))
        return out


# --- prepare_finetune --------------------------------------------------------------------------

SCRATCH_KEEPS = (
    "'scratch' must re-initialise EVERY parameter (e.g. call `reset_parameters()` on every "
    "nn.Linear): a from-scratch baseline that keeps pretrained weights measures nothing"
)
SCRATCH_HEAD_ONLY = "'scratch' re-initialises the trunk too, not only the head"
STILL_FROZEN = (
    "every strategy but 'freeze_trunk' trains all parameters: set `requires_grad_(True)` on "
    "the whole model (it may arrive with a frozen trunk)"
)
FREEZE_NOT_APPLIED = (
    "'freeze_trunk' must set `requires_grad_(False)` on the trunk, so that its parameters "
    "receive no gradient and stay out of the optimizer"
)
STALE_HEAD = (
    "'freeze_trunk' trains a FRESH head: re-initialise it (e.g. `model.head.reset_parameters()`)"
)
FROZEN_HEAD = "freeze only the trunk: the new head must stay trainable (requires_grad True)"
WEIGHTS_ONLY = "freeze the trunk's biases too: `model.trunk.requires_grad_(False)` does both"
ALIASED = (
    "`model.l2sp_reference` shares memory with the parameters (`state_dict()` returns views "
    "of them): store copies, `{k: v.detach().clone() for k, v in ...}`, or the penalty stays 0"
)
NO_ANCHOR = (
    "'l2sp' must store the pretrained weights as `model.l2sp_reference` (a dict name -> tensor) "
    "for the penalty"
)
FULL_CHANGES = "'full' and 'l2sp' keep the pretrained weights: change nothing"


def _default_bound(net: nn.Module, name: str) -> float:
    """PyTorch's default init bound 1/sqrt(fan_in) of the Linear layer owning ``name``."""
    owner = name.rsplit(".", 1)[0]
    weight = dict(net.named_parameters()).get(owner + ".weight")
    if weight is None or weight.dim() != 2:
        return 1.0
    return float(weight.shape[1]) ** -0.5


def _param_stats(net: nn.Module, original: dict[str, torch.Tensor]) -> dict[str, dict]:
    stats = {}
    for name, p in net.named_parameters():
        value = p.detach().double().cpu()
        before = original[name].double()
        bound = _default_bound(net, name)
        finite = bool(torch.isfinite(value).all())
        same_shape = value.shape == before.shape
        entry = {
            "requires_grad": bool(p.requires_grad),
            "finite": finite,
            "shape_ok": same_shape,
            "weight": name.endswith("weight") and value.dim() == 2,
        }
        if finite and same_shape:
            std = float(value.std()) if value.numel() > 1 else 0.0
            entry["equal_fraction"] = float((value == before).double().mean())
            entry["std_ratio"] = std / (bound / math.sqrt(3.0))
            entry["max_ratio"] = float(value.abs().max()) / bound
            if std > 0 and value.numel() > 1:
                a, b = value.flatten() - value.mean(), before.flatten() - before.mean()
                entry["corr"] = float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))
            else:
                entry["corr"] = 1.0
        stats[name] = entry
    return stats


def _state(entry: dict) -> str:
    """How a parameter relates to its pretrained value: kept, fresh, changed (or broken)."""
    if not entry.get("shape_ok", False):
        return "reshaped"
    if not entry.get("finite", False):
        return "not finite"
    if entry["equal_fraction"] == 1.0:
        return "kept"
    if entry["equal_fraction"] > 0.5:
        return "changed"
    if entry["weight"]:
        like_init = 0.2 <= entry["std_ratio"] <= 4.0 and abs(entry["corr"]) < 0.8
    else:
        like_init = entry["max_ratio"] <= 3.0
    return "fresh" if like_init else "changed"


@register
class PrepareFinetune(_TransferExercise):
    solves = ref.prepare_finetune
    parts = {"scratch": 1, "full": 1, "freeze_trunk": 1, "l2sp": 1, "unknown strategy": 1}
    mutates_args = True

    def reference(
        self, model: nn.Module, strategy: str, reference: dict | None = None
    ) -> nn.Module:
        return ref.prepare_finetune(
            model, strategy, reference, generator=torch.Generator().manual_seed(0)
        )

    def probe(self, obj: Any, case: Case) -> Any:
        """Build the pretrained network, call, and record what became of each parameter."""
        data = case.data
        model = _build(data)
        original = {k: v.detach().clone() for k, v in model.named_parameters()}
        reference = (
            {k: v.clone() for k, v in model.state_dict().items()}
            if data["pass_reference"]
            else None
        )
        if data["strategy"] == "unknown":
            try:
                obj(model, data["unknown"], reference)
            except NotImplementedError:
                raise
            except Exception as exc:  # noqa: BLE001 - any exception is an answer here
                return {"type": "raised", "error": type(exc).__name__}
            return {"type": "no error"}
        result = obj(model, data["strategy"], reference)
        if not isinstance(result, nn.Module):
            return {"type": "not a model", "returned": plain.encode(result)}
        names = [k for k, _ in result.named_parameters()]
        if names != list(original):
            return {"type": "other parameters", "names": names}
        out: dict[str, Any] = {"type": "model", "params": _param_stats(result, original)}
        # which parameters a backward pass reaches
        for p in result.parameters():
            p.grad = None
        obs = torch.randn(16, data["obs_dim"], generator=torch.Generator().manual_seed(1))
        obs = obs.to(next(result.parameters()).dtype)
        try:
            loss = result(obs).pow(2).mean()
        except Exception as exc:  # noqa: BLE001 - a broken model is an answer too
            message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            return {"type": "forward failed", "error": f"{type(exc).__name__}: {message}"}
        if loss.requires_grad:
            loss.backward()
        for name, p in result.named_parameters():
            out["params"][name]["got_grad"] = p.grad is not None and bool((p.grad != 0).any())
        if data["strategy"] == "l2sp":
            out["anchor"] = self._anchor(result, original)
        return out

    @staticmethod
    def _anchor(model: nn.Module, original: dict[str, torch.Tensor]) -> str:
        anchor = getattr(model, "l2sp_reference", None)
        if not isinstance(anchor, dict) or not all(k in anchor for k in original):
            return "absent"
        try:
            if not all(torch.equal(anchor[k].detach().cpu(), v) for k, v in original.items()):
                return "wrong"
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)  # what an optimizer step does to the weights
            if not all(torch.equal(anchor[k].detach().cpu(), v) for k, v in original.items()):
                return "aliased"
        except (TypeError, RuntimeError, AttributeError):
            return "wrong"
        return "ok"

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        strategy = case.data["strategy"]
        if strategy == "unknown":
            if isinstance(got, dict) and got.get("type") == "raised":
                if got["error"] == "ValueError":
                    return None
                return (
                    f"raised {got['error']} for the unknown strategy {case.data['unknown']!r}; "
                    "raise a ValueError that names the valid strategies"
                )
            return (
                f"accepted the unknown strategy {case.data['unknown']!r}; raise a ValueError "
                "that names the valid strategies"
            )
        if isinstance(got, dict) and got.get("type") == "forward failed":
            return (
                f"calling the returned model failed ({got['error']}); a new layer must live on "
                "the model's device and dtype (e.g. `nn.Linear(...).to(old.weight)`)"
            )
        if not isinstance(got, dict) or got.get("type") not in ("model", "other parameters"):
            returned = got.get("returned") if isinstance(got, dict) else got
            return f"returned {plain.describe(returned)}; return the model (`return model`)"
        if got["type"] == "other parameters":
            return (
                f"the returned model's parameters are {got['names']}; expected the same "
                f"parameters as the model passed in, {list(want['params'])}"
            )
        for name, w in want["params"].items():
            g = got["params"][name]
            if g["requires_grad"] != w["requires_grad"]:
                if w["requires_grad"]:
                    return f"{name} has requires_grad False; with {strategy!r} it must be trained"
                return (
                    f"{name} still requires grad; with {strategy!r} it must be frozen "
                    "(requires_grad False), so that it gets no gradient and stays out of the "
                    "optimizer"
                )
            got_state, want_state = _state(g), _state(w)
            if got_state != want_state:
                return self._state_message(strategy, name, got_state, want_state, g)
            if g["got_grad"] != w["got_grad"]:
                if w["got_grad"]:
                    return f"no gradient reached {name}; with {strategy!r} it must be trained"
                return f"a gradient reached {name}; with {strategy!r} it must be frozen"
        if strategy == "l2sp" and got.get("anchor") != want.get("anchor"):
            return {
                "absent": NO_ANCHOR,
                "aliased": ALIASED,
                "wrong": "`model.l2sp_reference` does not hold the pretrained weights",
            }.get(got.get("anchor"), NO_ANCHOR)
        return None

    @staticmethod
    def _state_message(strategy: str, name: str, got: str, want: str, entry: dict) -> str:
        if got in ("reshaped", "not finite"):
            return f"{name} is {got} after {strategy!r}"
        if want == "kept":
            return f"{name} changed; {strategy!r} keeps the pretrained weights"
        if got == "kept":
            return f"{name} still holds the pretrained values; {strategy!r} must re-initialise it"
        return (
            f"{name} changed but does not look like a fresh initialisation (spread "
            f"{entry.get('std_ratio', float('nan')):.2g} times PyTorch's default, correlation "
            f"{entry.get('corr', float('nan')):.2g} with the pretrained values): re-initialise "
            "it with the layer's own `reset_parameters()` (or a new nn.Linear)"
        )

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def heads_of(model: nn.Module) -> list[nn.Module]:
            return list(model.heads) if hasattr(model, "heads") else [model.head]

        def reset(modules: Any) -> None:
            for m in modules:
                for layer in m.modules():
                    if isinstance(layer, nn.Linear):
                        layer.reset_parameters()

        def variant(mistake: str) -> Callable[..., nn.Module]:
            def prepare(model: nn.Module, strategy: str, reference: dict | None = None):
                if strategy not in ("scratch", "full", "freeze_trunk", "l2sp"):
                    raise ValueError(strategy)
                if mistake != "still frozen":
                    model.requires_grad_(True)
                if strategy == "scratch":
                    if mistake == "scratch keeps":
                        return model
                    reset(heads_of(model) if mistake == "scratch head only" else [model])
                elif strategy == "freeze_trunk":
                    if mistake != "freeze not applied":
                        if mistake == "weights only":
                            for n, p in model.trunk.named_parameters():
                                p.requires_grad_(not n.endswith("weight"))
                        else:
                            model.trunk.requires_grad_(False)
                    if mistake != "stale head":
                        reset(heads_of(model))
                    if mistake == "frozen head":
                        for h in heads_of(model):
                            h.requires_grad_(False)
                elif strategy == "l2sp":
                    if mistake == "aliased":
                        model.l2sp_reference = model.state_dict()
                    elif mistake != "no anchor":
                        model.l2sp_reference = {
                            k: v.detach().clone() for k, v in model.state_dict().items()
                        }
                if strategy in ("full", "l2sp") and mistake == "full changes":
                    reset(heads_of(model))
                return model

            return prepare

        return {
            SCRATCH_KEEPS: variant("scratch keeps"),
            SCRATCH_HEAD_ONLY: variant("scratch head only"),
            STILL_FROZEN: variant("still frozen"),
            FREEZE_NOT_APPLIED: variant("freeze not applied"),
            STALE_HEAD: variant("stale head"),
            FROZEN_HEAD: variant("frozen head"),
            WEIGHTS_ONLY: variant("weights only"),
            ALIASED: variant("aliased"),
            NO_ANCHOR: variant("no anchor"),
            FULL_CHANGES: variant("full changes"),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        nets = [
            {"obs_dim": 4, "n_actions": 2, "hidden": (16,), "n_heads": 0},
            {"obs_dim": 5, "n_actions": 3, "hidden": (16, 16), "n_heads": 0},
            {"obs_dim": 6, "n_actions": 2, "hidden": (24, 16), "n_heads": 3},
            {"obs_dim": 4, "n_actions": 4, "hidden": (20, 16), "n_heads": 0},
        ]
        out = []
        for strategy in ("scratch", "full", "freeze_trunk", "l2sp"):
            for k, net in enumerate(nets):
                data = {
                    **net,
                    "strategy": strategy,
                    "frozen_before": strategy != "freeze_trunk" and k % 2 == 1,
                    "pass_reference": strategy in ("full", "l2sp", "freeze_trunk") and k >= 2,
                    "dtype": torch.float64 if k == 3 else torch.float32,
                    "seed": int(torch.randint(0, 2**31, (1,), generator=generator)),
                }
                label = f"{strategy!r} on " + (
                    f"a 3-head network (hidden {net['hidden']})"
                    if net["n_heads"]
                    else f"a QNetwork (hidden {net['hidden']})"
                )
                if data["frozen_before"]:
                    label += " that arrives with a frozen trunk"
                passed = (
                    "reference=<the pretrained state dict>" if data["pass_reference"] else "None"
                )
                shown = (
                    f"prepare_finetune(model, {strategy!r}, {passed})\nmodel: {_describe_net(data)}"
                )
                out.append(Case(label, shown=shown, part=strategy, data=data))
        for k, unknown in enumerate(("frozen", "Full", "l2-sp")):
            data = {
                **nets[k % 2],
                "strategy": "unknown",
                "unknown": unknown,
                "pass_reference": False,
                "seed": k,
            }
            out.append(
                Case(
                    f"an unknown strategy {unknown!r}",
                    shown=f"prepare_finetune(model, {unknown!r}, None)",
                    part="unknown strategy",
                    data=data,
                )
            )
        return out


# --- finetune_update -----------------------------------------------------------------------------

FT_NO_ZERO_GRAD = (
    "the parameters arrive with gradients left from earlier work: zero them "
    "(`optimizer.zero_grad()`) before `backward`, or the old gradients are added to the new"
)
FT_PENALTY_SIGN = (
    "the penalty is ADDED to the TD loss (`loss + l2sp_penalty(...)`): subtracting it pushes the "
    "weights away from the pretrained ones"
)
FT_HEAD_PENALISED = (
    'leave the head out of the penalty: pass `exclude` (default `("head",)`) to `l2sp_penalty`'
)
FT_NO_PULL = (
    "no pull back toward the pretrained weights: when `q_net` has an `l2sp_reference`, add "
    "`l2sp_penalty(q_net, q_net.l2sp_reference, alpha, exclude)` to the loss; the anchor is that "
    "reference (a copy of the current weights, `q_net.state_dict()`, gives a penalty of 0)"
)
FT_DOUBLE = (
    "use the plain target `td_target(batch.rewards, target_net(batch.next_obs), "
    "batch.terminated, gamma)`, not the Double DQN one"
)
FT_TD_ONLY = "return the loss that was minimised: the TD loss PLUS the penalty, as a float"


def _ft_variant(
    q_net: Any,
    target_net: Any,
    optimizer: torch.optim.Optimizer,
    batch: Any,
    gamma: float,
    alpha: float = 0.0,
    exclude: Any = ("head",),
    *,
    mistake: str = "",
) -> float:
    """The reference step with one classic mistake switched on (for the hints)."""
    from course.dqn import double_td_target, dqn_loss, td_target

    with torch.no_grad():
        next_q = target_net(batch.next_obs)
        if mistake == "double":
            targets = double_td_target(
                batch.rewards, q_net(batch.next_obs), next_q, batch.terminated, gamma
            )
        else:
            targets = td_target(batch.rewards, next_q, batch.terminated, gamma)
    td = dqn_loss(q_net(batch.obs), batch.actions, targets)
    loss = td
    reference = getattr(q_net, "l2sp_reference", None)
    if reference is not None and mistake != "no_penalty":
        if mistake == "toward_current":
            reference = {k: v.detach().clone() for k, v in q_net.state_dict().items()}
        skip = () if mistake == "head" else exclude
        penalty = ref.l2sp_penalty(q_net, reference, alpha, skip)
        loss = loss - penalty if mistake == "sign" else loss + penalty
    if mistake != "no_zero_grad":
        optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float((td if mistake == "td_only" else loss).detach())


def _ft_batch(d: dict, seed: int) -> Any:
    from course.replay import Batch

    g = torch.Generator().manual_seed(seed)
    n = d["batch_size"]
    return Batch(
        obs=torch.randn(n, d["obs_dim"], generator=g),
        actions=torch.randint(0, d["n_actions"], (n,), generator=g),
        rewards=torch.randn(n, generator=g),
        next_obs=torch.randn(n, d["obs_dim"], generator=g),
        terminated=torch.rand(n, generator=g) < 0.25,
        tasks=torch.zeros(n, dtype=torch.int64),
    )


def _ft_networks(d: dict) -> tuple[nn.Module, nn.Module]:
    """The online network prepared for the case's strategy (by the check itself: the library's
    ``prepare_finetune`` is hidden while Lesson 05 is graded), and the target network."""
    q_net = QNetwork(d["obs_dim"], d["n_actions"], d["hidden"])
    target_net = QNetwork(d["obs_dim"], d["n_actions"], d["hidden"])
    g = torch.Generator().manual_seed(d["seed"])
    with torch.no_grad():
        for net in (q_net, target_net):
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if d["strategy"] == "freeze_trunk":
            q_net.trunk.requires_grad_(False)
            for p in q_net.head.parameters():  # a fresh head
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        if d["strategy"] == "l2sp":
            q_net.l2sp_reference = {k: v.clone() for k, v in q_net.state_dict().items()}
            for p in q_net.parameters():  # a few steps away from the pretrained weights
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        for p in q_net.parameters():  # gradients left over from earlier work
            p.grad = torch.randn(p.shape, generator=g)
    return q_net, target_net


@register
class FinetuneUpdate(_TransferExercise):
    """``finetune_update`` is judged by what it does to copies of the same prepared network.

    The probe prepares the online network for the case's strategy itself (a frozen trunk with
    a fresh head; or an ``l2sp_reference`` holding the pretrained weights, the current weights
    a few steps away from it), leaves stale gradients on every parameter, builds plain SGD over
    the trainable parameters (so every change in a gradient shows in the step), calls the
    answer ``calls`` times in a row and records the returned losses, every parameter afterwards
    and whether the anchor is still the pretrained weights.
    """

    solves = ref.finetune_update
    mutates_args = True
    uses_optimizer = True
    parts = {"TD step": 1, "frozen trunk": 1, "L2-SP": 2}

    def probe(self, obj: Any, case: Case) -> Any:
        d = case.data
        q_net, target_net = _ft_networks(d)
        anchor = copy.deepcopy(getattr(q_net, "l2sp_reference", {}))
        optimizer = torch.optim.SGD([p for p in q_net.parameters() if p.requires_grad], lr=d["lr"])
        losses = []
        for call in range(d["calls"]):
            batch = _ft_batch(d, d["seed"] + 1 + call)
            value = obj(q_net, target_net, optimizer, batch, d["gamma"], d["alpha"])
            losses.append(plain.encode(value))
        now = getattr(q_net, "l2sp_reference", {})
        kept = isinstance(now, dict) and all(
            isinstance(now.get(k), torch.Tensor) and torch.equal(now[k], v)
            for k, v in anchor.items()
        )
        return {
            "type": "finetune_update",
            "losses": losses,
            "params": {n: plain.encode(p.detach()) for n, p in q_net.named_parameters()},
            "anchor_kept": bool(kept),
        }

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        if not (isinstance(got, dict) and got.get("type") == "finetune_update"):
            return f"could not inspect the update ({plain.describe(got)})"
        for i, g in enumerate(got["losses"]):
            if not plain.is_number(g):
                return (
                    f"call {i + 1} returned {plain.describe(g)}; return the loss as a Python "
                    "float (`loss.item()`)"
                )
        if not got["anchor_kept"]:
            return (
                "`q_net.l2sp_reference` changed: it is the fixed anchor (the pretrained weights); "
                "read it, never overwrite it"
            )
        wrong = first_difference(got.get("params"), want["params"], self.atol, self.rtol)
        if wrong is not None:
            name, reason = wrong
            if name.startswith("trunk") and case.data["strategy"] == "freeze_trunk":
                return f"the frozen trunk moved (`{name}`): {reason}"
            return f"q_net parameter `{name}` after the step(s): {reason}"
        for i, (g, w) in enumerate(zip(got["losses"], want["losses"])):
            reason = compare(g, w, self.atol, self.rtol)
            if reason is not None:
                return f"the loss returned by call {i + 1}: {reason}"
        return None

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        return switched_mistakes(
            _ft_variant,
            [
                (FT_NO_ZERO_GRAD, "no_zero_grad"),
                (FT_DOUBLE, "double"),
                (FT_PENALTY_SIGN, "sign"),
                (FT_HEAD_PENALISED, "head"),
                (FT_NO_PULL, "toward_current"),
                (FT_TD_ONLY, "td_only"),
            ],
        )

    def cases(self, generator: torch.Generator) -> list[Case]:
        # (label, part, strategy, alpha, calls)
        fixed = [
            ("full fine-tuning, one step", "TD step", "full", 0.0, 1),
            ("full fine-tuning, three steps", "TD step", "full", 0.0, 3),
            ("frozen trunk, fresh head", "frozen trunk", "freeze_trunk", 0.0, 2),
            ("L2-SP, alpha 0.5", "L2-SP", "l2sp", 0.5, 1),
            ("L2-SP, alpha 2, two steps", "L2-SP", "l2sp", 2.0, 2),
        ]
        out = [self._case(generator, *row) for row in fixed]
        for k, (part, strategy) in enumerate(
            (("TD step", "full"), ("frozen trunk", "freeze_trunk"), ("L2-SP", "l2sp"))
        ):
            alpha = round(0.1 + 2 * float(torch.rand(1, generator=generator)), 3)
            out.append(
                self._case(
                    generator,
                    f"random step #{k}",
                    part,
                    strategy,
                    alpha if strategy == "l2sp" else 0.0,
                    1 + k % 2,
                )
            )
        return out

    def _case(
        self,
        generator: torch.Generator,
        label: str,
        part: str,
        strategy: str,
        alpha: float,
        calls: int,
    ) -> Case:
        seed = int(torch.randint(0, 2**31 - 100, (1,), generator=generator))
        obs_dim = int(torch.randint(2, 6, (1,), generator=generator))
        n_actions = int(torch.randint(2, 4, (1,), generator=generator))
        hidden = tuple(
            int(h) for h in torch.randint(3, 7, (1 + int(strategy == "l2sp"),), generator=generator)
        )
        gamma = round(0.5 + 0.49 * float(torch.rand(1, generator=generator)), 3)
        prepared = {
            "full": "pretrained weights, all trainable",
            "freeze_trunk": "trunk frozen (requires_grad=False), a fresh head",
            "l2sp": "an l2sp_reference of pretrained weights, current weights moved away from it",
        }[strategy]
        shown = (
            f"QNetwork(obs_dim={obs_dim}, n_actions={n_actions}, hidden={hidden}) with "
            f"{prepared}; stale gradients on every parameter; torch.optim.SGD(trainable, lr=0.1); "
            f"gamma={gamma}, alpha={alpha}, {calls} call(s)"
        )
        data = {
            "strategy": strategy,
            "alpha": alpha,
            "calls": calls,
            "obs_dim": obs_dim,
            "n_actions": n_actions,
            "hidden": hidden,
            "gamma": gamma,
            "lr": 0.1,
            "batch_size": 16,
            "seed": seed,
        }
        return Case(label, shown=shown, part=part, data=data)
