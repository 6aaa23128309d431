"""Checks for Lesson 06 (generalising to new tasks): ``reptile_step`` of ``course/meta.py``.

The probe calls the student's function on copies of the case's tensors, then records the
returned tensors, whether any input tensor was changed in place (nested in the lists, where the
generic check does not look) and whether a returned tensor *is* an input tensor (shares its
memory: a later in-place update of one would change the other). The cases start with one task,
step sizes 0 and 1 and a hand-made two-task example, then random networks' parameter lists with
2 to 5 tasks, float32 and float64, step sizes away from 0.5 (where swapped interpolation weights
would give the right answer). Some cases have as many tasks as parameters, all of one shape, so
that indexing ``adapted`` by parameter instead of by task returns numbers (and is caught by
value) instead of raising.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from course import meta as ref
from course.grading import plain
from course.grading.core import Case, Exercise, compare, register
from course.grading.plain import show_tensor

LESSON = "06_generalisation"

SIGN = (
    "move TOWARD the adapted parameters: theta + step_size * (mean_k theta_k - theta), "
    "not theta - step_size * (...)"
)
LAST_TASK = (
    "average over ALL tasks: mean_k theta_k uses every adapted[k], not only the last task's "
    "parameters (a loop that overwrites its variable keeps only the last one)"
)
FIRST_TASK = "average over ALL tasks: mean_k theta_k uses every adapted[k], not only adapted[0]"
SUM_TASKS = (
    "take the MEAN of the tasks' differences, not their sum: divide by the number of tasks K "
    "(otherwise the step grows with K)"
)
SERIAL = (
    "take one step toward the mean of the adapted parameters, not one step toward each task in "
    "turn (that is the serial version of Reptile, and it weighs the later tasks more)"
)
SWAPPED = (
    "the step size weighs the move away from theta: theta + step_size * (mean - theta) = "
    "(1 - step_size) * theta + step_size * mean, not step_size * theta + (1 - step_size) * mean"
)
NO_STEP_SIZE = (
    "multiply the move by step_size: returning the mean of the adapted parameters is only right "
    "when step_size = 1"
)
TRANSPOSED = (
    "adapted[k] is task k's list of parameters (in the order of meta_params): parameter i of "
    "task k is adapted[k][i]; average adapted[k][i] over k, not adapted[i] over its entries"
)
ALIASED = (
    "returned an input tensor itself (it shares memory with {where}); return new tensors, e.g. "
    "`theta + step_size * (mean - theta)` or `theta.clone()`"
)
MUTATED = (
    "changed {where} in place; compute new tensors instead (no `+=`, `.add_()` or `.copy_()` "
    "on the inputs)"
)


def _wrong(mode: str) -> Callable[..., list[torch.Tensor]]:
    def wrong(meta_params: Any, adapted: Any, step_size: float) -> list[torch.Tensor]:
        K = len(adapted)
        out = []
        for i, theta in enumerate(meta_params):
            tasks = [params[i] for params in adapted]
            mean = sum(tasks) / K
            if mode == "sign":
                out.append(theta - step_size * (mean - theta))
            elif mode == "last":
                out.append(theta + step_size * (tasks[-1] - theta))
            elif mode == "first":
                out.append(theta + step_size * (tasks[0] - theta))
            elif mode == "sum":
                out.append(theta + step_size * sum(t - theta for t in tasks))
            elif mode == "serial":
                new = theta
                for t in tasks:
                    new = new + step_size * (t - new)
                out.append(new)
            elif mode == "swapped":
                out.append(step_size * theta + (1 - step_size) * mean)
            elif mode == "no step size":
                out.append(mean)
            elif mode == "transposed":
                out.append(theta + step_size * (sum(adapted[i]) / len(adapted[i]) - theta))
        return out

    return wrong


def _tensors(x: Any) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of the arguments, with a readable name."""
    meta_params, adapted = x[0], x[1]
    found = [(f"meta_params[{i}]", p) for i, p in enumerate(meta_params)]
    for k, params in enumerate(adapted):
        found += [(f"adapted[{k}][{i}]", p) for i, p in enumerate(params)]
    return found


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    sa, sb = a.untyped_storage(), b.untyped_storage()
    return sa.data_ptr() == sb.data_ptr()


@register
class ReptileStepExercise(Exercise):
    solves = ref.reptile_step
    parts = {"": 2}
    lesson = LESSON
    atol = 1e-5
    rtol = 1e-5

    def probe(self, obj: Any, case: Case) -> Any:
        """Call on copies; record the result, in-place changes and aliasing as plain data."""
        meta_params, adapted, step_size = case.args
        args = (
            [p.clone() for p in meta_params],
            [[p.clone() for p in params] for params in adapted],
            step_size,
        )
        result = obj(*args)
        for (name, before), (_, after) in zip(_tensors(case.args), _tensors(args)):
            if not torch.equal(before, after):
                return {"type": "mutated", "argument": name}
        if isinstance(result, (list, tuple)):
            for j, item in enumerate(result):
                if not isinstance(item, torch.Tensor):
                    continue
                for name, tensor in _tensors(args):
                    if _shares_memory(item, tensor):
                        return {"type": "aliased", "item": j, "argument": name}
            return {"type": "params", "items": [plain.encode(p) for p in result]}
        return plain.encode(result)

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        kind = got.get("type") if isinstance(got, dict) else None
        if kind == "mutated":
            return MUTATED.format(where=f"`{got.get('argument')}`")
        if kind == "aliased":
            return f"item {got.get('item')} of the result " + ALIASED.format(
                where=f"`{got.get('argument')}`"
            )
        if kind != "params":
            return (
                f"returned {plain.describe(got)}; expected a list of {len(want['items'])} "
                "tensors, one per meta-parameter"
            )
        if len(got["items"]) != len(want["items"]):
            return (
                f"returned {len(got['items'])} tensors; expected {len(want['items'])}, one per "
                "meta-parameter, in the order of meta_params"
            )
        for i, (g, w) in enumerate(zip(got["items"], want["items"])):
            if not plain.is_array(plain.as_array(g)):
                return f"item {i} is {plain.describe(g)}; expected a tensor of shape {w['shape']}"
            reason = compare(g, w, atol=self.atol, rtol=self.rtol)
            if reason is not None:
                return f"parameter {i}: {reason}"
        return None

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        return {
            SIGN: _wrong("sign"),
            LAST_TASK: _wrong("last"),
            FIRST_TASK: _wrong("first"),
            SUM_TASKS: _wrong("sum"),
            SERIAL: _wrong("serial"),
            SWAPPED: _wrong("swapped"),
            NO_STEP_SIZE: _wrong("no step size"),
            TRANSPOSED: _wrong("transposed"),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        out: list[Case] = []

        def add(label: str, meta_params: list, adapted: list, step_size: float) -> None:
            out.append(
                Case(
                    label,
                    (meta_params, adapted, step_size),
                    shown=_show(meta_params, adapted, step_size),
                )
            )

        # two tasks, two parameters of one shape: indexing `adapted` by parameter runs too
        theta = [torch.tensor([0.0, 1.0]), torch.tensor([2.0, -1.0])]
        two = [
            [torch.tensor([2.0, 1.0]), torch.tensor([0.0, 1.0])],
            [torch.tensor([4.0, 3.0]), torch.tensor([6.0, -3.0])],
        ]
        add("two tasks, step size 0.25", theta, two, 0.25)
        three = [*two, [torch.tensor([-3.0, 5.0]), torch.tensor([1.0, 1.0])]]
        add("three tasks, step size 0.2", theta, three, 0.2)
        add("one task, step size 0.3", theta, two[1:], 0.3)
        add("step size 0: nothing moves", theta, three, 0.0)
        add("step size 1: the mean of the adapted parameters", theta, three, 1.0)
        specs: list[tuple[Sequence[tuple[int, ...]], int, torch.dtype, float]] = [
            ([(3,), (3,)], 2, torch.float32, 0.1),
            ([(4, 1), (4,), (1, 4), (1,)], 3, torch.float32, 0.3),
            ([(2, 2), (2, 2)], 2, torch.float32, 0.7),  # K == P, one shape: transposed runs
            ([(5, 1), (5,), (3, 5), (3,), (1, 3), (1,)], 5, torch.float64, 0.9),
            ([(3,), (3,), (3,), (3,)], 4, torch.float64, 0.6),  # K == P again
            ([(8, 4), (8,), (2, 8), (2,)], 4, torch.float32, 0.15),
        ]
        for shapes, K, dtype, step_size in specs:
            meta_params = [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]
            adapted = [
                [
                    p + 0.5 * torch.randn(p.shape, generator=generator, dtype=dtype)
                    for p in meta_params
                ]
                for _ in range(K)
            ]
            label = (
                f"{K} tasks, parameters of shapes {list(shapes)}, {str(dtype)[6:]}, "
                f"step size {step_size:g}"
            )
            add(label, meta_params, adapted, step_size)
        return out


def _show(meta_params: list, adapted: list, step_size: float) -> str:
    if sum(p.numel() for p in meta_params) > 12:
        shapes = [tuple(p.shape) for p in meta_params]
        return f"meta_params of shapes {shapes}, {len(adapted)} tasks, step_size = {step_size!r}"
    lines = ["meta_params = [" + ", ".join(show_tensor(p) for p in meta_params) + "]"]
    for k, params in enumerate(adapted):
        lines.append(f"adapted[{k}] = [" + ", ".join(show_tensor(p) for p in params) + "]")
    lines.append(f"step_size = {step_size!r}")
    return "\n".join(lines)
