"""Checks for Lesson 04 (multi-task learning): the six exercises of ``course/multitask.py``.

- ``MultiHeadQNetwork`` (a class) is judged on behaviour, in three parts. *forward*: the
  student's network of the given sizes gets the same seeded weights as the reference (copied in
  the order ``model.trunk.parameters()``, then each head's parameters) and must give the same
  values. *routing*: perturbing head ``j`` must change exactly the rows whose task is ``j``.
  *task_parameters*: ``task_parameters(k)`` must hold exactly head ``k``'s parameters (the
  regularisers act on these: returning the trunk too would regularise the shared trunk).
- ``multitask_loss`` and ``mean_regularizer``: the value and its gradient with respect to every
  input tensor.
- ``task_param_groups``: the probe builds a network, calls the function and records, for every
  parameter of the network, the learning rates of the groups that hold it (a parameter must be
  in exactly one group, at the right rate), whatever the order of the groups.
- ``gradient_conflict``: the cosine-similarity matrix; a zero gradient (a task with no data in
  the batch) must give similarity 0 with the others instead of NaN (its own diagonal entry may
  be 0 or 1): a separate part.
- ``pcgrad``: the result is random (the order of the projections), so the judge accepts the
  output of *any* order: the reference computes the result of every combination of orders
  (K <= 4 tasks) and the answer must equal one of them.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from course import multitask as ref
from course.grading import plain
from course.grading.core import (
    Case,
    Exercise,
    compare,
    compare_scalar,
    first_difference,
    register,
    switched_mistakes,
)
from course.grading.plain import show_tensor

LESSON = "04_multitask"


class _MultitaskExercise(Exercise):
    lesson = LESSON
    atol = 1e-5
    rtol = 1e-4


def _randn(generator: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32):
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)


def _mutated(before: Any, after: Any) -> bool:
    """Whether a (nested list of) tensor(s) changed."""
    if isinstance(before, torch.Tensor):
        return not (
            isinstance(after, torch.Tensor)
            and after.shape == before.shape
            and torch.equal(after.detach(), before.detach())
        )
    if isinstance(before, (list, tuple)):
        return len(before) != len(after) or any(
            _mutated(b, a) for b, a in zip(before, after, strict=True)
        )
    return False


# =============================================================================================
# MultiHeadQNetwork
# =============================================================================================

WRONG_ROW_TASK = (
    "each row b must be answered by the head of ITS task, tasks[b]; one head for the whole batch "
    "(e.g. tasks[0]) mixes the tasks"
)
HEAD_BY_ROW = (
    "rows were answered by the head of their row NUMBER, not of their task: with all heads "
    "stacked as [K, B, A], pick element [tasks[b], b] (e.g. `q_all[tasks, torch.arange(B)]`)"
)
ONE_SHARED_HEAD = (
    "every task needs its own head: `nn.ModuleList(nn.Linear(...) for _ in range(n_tasks))`; "
    "`[layer] * n_tasks` repeats ONE layer n_tasks times"
)
TRUNK_IN_TASK_PARAMS = (
    "task_parameters(k) must return only head k's parameters: the trunk is shared, and a "
    "regulariser on task_parameters would then regularise the shared trunk"
)
ALL_HEADS_IN_TASK_PARAMS = (
    "task_parameters(k) must return the parameters of head k only, not those of every head"
)
RELU_ON_HEAD = "no ReLU after a head: Q-values can be negative (ReLU only after hidden layers)"
NO_RELU = "put a ReLU after every hidden layer of the trunk (as in course.dqn.QNetwork)"


def _seeded_parameters(model: nn.Module, seed: int) -> str | None:
    """Overwrite trunk then heads parameters with seeded values; None, or what is missing."""
    trunk = getattr(model, "trunk", None)
    heads = getattr(model, "heads", None)
    if not isinstance(trunk, nn.Module):
        return "no `.trunk` module"
    if heads is None or not hasattr(heads, "__len__"):
        return "no `.heads` (one module per task, e.g. an nn.ModuleList)"
    generator = torch.Generator().manual_seed(seed)
    params = list(trunk.parameters()) + [p for head in heads for p in head.parameters()]
    with torch.no_grad():
        for p in params:
            p.copy_(_randn(generator, *p.shape).to(p.dtype) * 0.5)
    return None


def _shapes(model: nn.Module) -> dict:
    return {
        "trunk": [list(p.shape) for p in model.trunk.parameters()],
        "heads": [[list(p.shape) for p in head.parameters()] for head in model.heads],
    }


@register
class MultiHeadQNetworkExercise(_MultitaskExercise):
    solves = ref.MultiHeadQNetwork
    parts = {"forward": 1, "routing": 1, "task_parameters": 1}

    def probe(self, obj: Any, case: Case) -> Any:
        d = case.data
        model = obj(d["obs_dim"], d["n_actions"], d["n_tasks"], hidden=d["hidden"])
        missing = _seeded_parameters(model, d["seed"])
        if missing is not None:
            return {"type": "structure", "problem": missing}
        if len(model.heads) != d["n_tasks"]:
            return {
                "type": "structure",
                "problem": f"{len(model.heads)} heads for {d['n_tasks']} tasks",
            }
        obs, tasks = case.args
        if case.part == "forward":
            shapes = _shapes(model)
            with torch.no_grad():
                out = model(obs.clone(), tasks.clone())
            return {"type": "forward", "shapes": shapes, "out": plain.encode(out)}
        if case.part == "routing":
            with torch.no_grad():
                base = model(obs.clone(), tasks.clone())
                changed = []
                for j in range(d["n_tasks"]):
                    saved = [p.detach().clone() for p in model.heads[j].parameters()]
                    for p in model.heads[j].parameters():
                        p.add_(1.0)
                    out = model(obs.clone(), tasks.clone())
                    for p, s in zip(model.heads[j].parameters(), saved, strict=True):
                        p.copy_(s)
                    changed.append((out != base).any(-1).tolist())
            return {"type": "routing", "changed": changed, "shape": list(base.shape)}
        # task_parameters
        trunk_ids = {id(p) for p in model.trunk.parameters()}
        head_ids = [{id(p) for p in head.parameters()} for head in model.heads]
        records = []
        for k in range(d["n_tasks"]):
            result = model.task_parameters(k)
            if isinstance(result, nn.Module):
                records.append({"module": True})
                continue
            got = list(result)
            ids = {id(p) for p in got}
            records.append(
                {
                    "exact": ids == head_ids[k] and len(got) == len(head_ids[k]),
                    "missing": len(head_ids[k] - ids),
                    "trunk": len(ids & trunk_ids),
                    "other_heads": len(ids & set().union(*head_ids[:k], *head_ids[k + 1 :])),
                    "foreign": len(ids - trunk_ids - set().union(*head_ids)),
                }
            )
        return {"type": "task_parameters", "records": records}

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        if isinstance(got, dict) and got.get("type") == "structure":
            return f"the network has {got['problem']}"
        if not (isinstance(got, dict) and got.get("type") == want["type"]):
            return f"the probe got {plain.describe(got)}; expected {want['type']} data"
        if want["type"] == "forward":
            if got["shapes"] != want["shapes"]:
                return (
                    f"the parameters have shapes {got['shapes']}; expected {want['shapes']}: "
                    "the trunk is nn.Linear then ReLU for each width in `hidden`, each head "
                    "one nn.Linear(hidden[-1], n_actions)"
                )
            return compare(got["out"], want["out"], 1e-4, 1e-4)
        if want["type"] == "routing":
            if got["shape"] != want["shape"]:
                return f"forward returned shape {tuple(got['shape'])}; expected {want['shape']}"
            tasks = case.args[1].tolist()
            for j, (g, w) in enumerate(zip(got["changed"], want["changed"], strict=True)):
                if g != w:
                    rows = [b for b, c in enumerate(g) if c]
                    return (
                        f"changing head {j} changed rows {rows}; it must change exactly the rows "
                        f"of task {j}, {[b for b, t in enumerate(tasks) if t == j]} "
                        f"(tasks = {tasks})"
                    )
            return None
        for k, (g, w) in enumerate(zip(got["records"], want["records"], strict=True)):
            if g.get("module"):
                return (
                    f"task_parameters({k}) returned a module; return a list of its parameters, "
                    "e.g. `list(self.heads[k].parameters())`"
                )
            if g != w:
                problems = []
                if g["trunk"]:
                    problems.append(f"{g['trunk']} trunk parameters")
                if g["other_heads"]:
                    problems.append(f"{g['other_heads']} parameters of other heads")
                if g["missing"]:
                    problems.append(f"misses {g['missing']} of head {k}'s parameters")
                if g["foreign"]:
                    problems.append(f"{g['foreign']} tensors that are not the model's parameters")
                return (
                    f"task_parameters({k}) must be exactly head {k}'s parameters; it holds "
                    + ", ".join(problems or ["duplicates"])
                )
        return None

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        return {
            WRONG_ROW_TASK: _FirstTaskNet,
            HEAD_BY_ROW: _RowIndexedNet,
            ONE_SHARED_HEAD: _OneHeadNet,
            TRUNK_IN_TASK_PARAMS: _TrunkInTaskNet,
            ALL_HEADS_IN_TASK_PARAMS: _AllHeadsNet,
            RELU_ON_HEAD: _ReluHeadNet,
            NO_RELU: _NoReluNet,
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        out = []
        specs = [
            # (obs_dim, n_actions, n_tasks, hidden, B): the first has B <= K on purpose
            (3, 2, 4, (8,), 4),
            (4, 2, 2, (16,), 6),
            (5, 3, 3, (8, 8), 10),
            (2, 4, 1, (6,), 5),
            (45, 4, 4, (32,), 16),
        ]
        for part in self.parts:
            for n, (D, A, K, hidden, B) in enumerate(specs):
                obs = _randn(generator, B, D)
                if n == 0:
                    tasks = torch.tensor([2, 0, 3, 1])
                else:
                    tasks = torch.randint(0, K, (B,), generator=generator)
                    tasks[:K] = torch.randperm(K, generator=generator)[: min(K, B)]
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
                out.append(
                    Case(
                        f"obs_dim={D}, n_actions={A}, n_tasks={K}, hidden={hidden}, batch {B}",
                        (obs, tasks),
                        part=part,
                        shown=f"tasks = {tasks.tolist()}",
                        data={
                            "obs_dim": D,
                            "n_actions": A,
                            "n_tasks": K,
                            "hidden": hidden,
                            "seed": seed,
                        },
                    )
                )
        return out


class _Base(nn.Module):
    """A student-style multi-head network, the base of the mistaken versions."""

    relu_head = False
    trunk_relu = True

    def __init__(self, obs_dim: int, n_actions: int, n_tasks: int, hidden: Sequence[int] = (64,)):
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h)] + ([nn.ReLU()] if self.trunk_relu else [])
            width = h
        self.trunk = nn.Sequential(*layers)
        self.heads = self.make_heads(width, n_actions, n_tasks)

    def make_heads(self, width: int, n_actions: int, n_tasks: int) -> nn.ModuleList:
        return nn.ModuleList(nn.Linear(width, n_actions) for _ in range(n_tasks))

    def forward(self, obs: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        features = self.trunk(obs)
        out = torch.stack([head(features) for head in self.heads], dim=1)  # [B, K, A]
        out = out[torch.arange(len(tasks)), tasks]
        return out.relu() if self.relu_head else out

    def task_parameters(self, k: int) -> list[nn.Parameter]:
        return list(self.heads[k].parameters())


class _FirstTaskNet(_Base):
    def forward(self, obs: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        return self.heads[int(tasks[0])](self.trunk(obs))


class _RowIndexedNet(_Base):
    def forward(self, obs: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        features = self.trunk(obs)
        every = torch.stack([head(features) for head in self.heads])  # [K, B, A]
        return every[torch.arange(len(tasks)), tasks]


class _OneHeadNet(_Base):
    def make_heads(self, width: int, n_actions: int, n_tasks: int) -> nn.ModuleList:
        return nn.ModuleList([nn.Linear(width, n_actions)] * n_tasks)


class _TrunkInTaskNet(_Base):
    def task_parameters(self, k: int) -> list[nn.Parameter]:
        return list(self.trunk.parameters()) + list(self.heads[k].parameters())


class _AllHeadsNet(_Base):
    def task_parameters(self, k: int) -> list[nn.Parameter]:
        return list(self.heads.parameters())


class _ReluHeadNet(_Base):
    relu_head = True


class _NoReluNet(_Base):
    trunk_relu = False


# =============================================================================================
# multitask_loss and mean_regularizer
# =============================================================================================

NOT_SQUARED = "square the norms: sum ||p||^2 (p.pow(2).sum()), not ||p|| (p.norm())"
LAM_TIMES_K = (
    "lam multiplies the whole penalty once: lam * sum_k sum_p ||p||^2, not lam once per task "
    "group on top of the sum (lam * K * ...)"
)
LAM_OVER_K = "sum the penalty over the tasks (lam * sum_k ...), do not average it over tasks"
MEAN_LOSSES = "sum the task losses (sum_k L_k), do not average them"
NO_LAM = "multiply the penalty by lam"
HALF_LAM = "the penalty is lam * sum ||p||^2, without a factor 1/2"
MEAN_ENTRIES = "sum the squares over every entry of each parameter, do not average them"
DETACHED = (
    "the result must stay differentiable: compute it with torch operations on the tensors "
    "(no .item(), float() or .detach())"
)


def _penalty(task_params: Any, power: str = "square", reduce: str = "sum") -> torch.Tensor:
    total = torch.zeros(())
    for params in task_params:
        for p in params:
            if power == "norm":
                total = total + p.norm()
            else:
                total = total + (p.pow(2).sum() if reduce == "sum" else p.pow(2).mean())
    return total


def _grad_probe(obj: Any, case: Case) -> Any:
    """Call with inputs that require grad; record the value and every input's gradient."""
    args = copy.deepcopy(case.args)
    leaves = [t for t in _tensors(args) if t.is_floating_point()]
    for t in leaves:
        t.requires_grad_(True)
    before = copy.deepcopy(args)
    value = obj(*args)
    if _mutated(before, args):
        return {"type": "mutated", "argument": "an input tensor"}
    out: dict[str, Any] = {"type": "scalar", "value": plain.encode(value)}
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        if value.requires_grad:
            grads = torch.autograd.grad(value.reshape(()), leaves, allow_unused=True)
            out["grads"] = [
                plain.encode(g if g is not None else torch.zeros_like(t))
                for g, t in zip(grads, leaves, strict=True)
            ]
        else:
            out["grads"] = None
    return out


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _tensors(item)]
    return []


def _judge_scalar(got: Any, want: Any) -> str | None:
    if not (isinstance(got, dict) and got.get("type") == "scalar"):
        return f"returned {plain.describe(got)}; expected a scalar tensor"
    reason = compare_scalar(got["value"], want["value"], rtol=1e-4, atol=1e-5, what="it")
    if reason is not None:
        return reason
    if want.get("grads") is not None:
        if got.get("grads") is None:
            return DETACHED
        for i, (gg, ww) in enumerate(zip(got["grads"], want["grads"], strict=True)):
            reason = compare(gg, ww, 1e-4, 1e-4)
            if reason is not None:
                return f"the gradient with respect to input tensor {i}: {reason}"
    return None


def _show_params(task_params: Sequence[Sequence[torch.Tensor]]) -> str:
    lines = []
    for k, params in enumerate(task_params):
        shapes = [tuple(p.shape) for p in params]
        if sum(p.numel() for p in params) <= 6:
            lines.append(f"task {k}: " + ", ".join(show_tensor(p) for p in params))
        else:
            lines.append(f"task {k}: parameters of shapes {shapes}")
    return "\n".join(lines)


def _random_task_params(
    generator: torch.Generator, K: int, shapes: Sequence[tuple[int, ...]], dtype: torch.dtype
) -> list[list[torch.Tensor]]:
    return [[_randn(generator, *s, dtype=dtype) for s in shapes] for _ in range(K)]


class _ScalarOfParams(_MultitaskExercise):
    """A scalar of the task parameters, judged with its gradients (`_grad_probe`)."""

    def probe(self, obj: Any, case: Case) -> Any:
        return _grad_probe(obj, case)

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        return _judge_scalar(got, want)


@register
class MultitaskLoss(_ScalarOfParams):
    solves = ref.multitask_loss

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def wrong(lam_factor: Any = 1.0, losses: str = "sum", **kw: Any) -> Callable:
            def loss(task_losses: Any, task_params: Any, lam: float) -> torch.Tensor:
                L = task_losses.sum() if losses == "sum" else task_losses.mean()
                factor = lam_factor(len(task_params)) if callable(lam_factor) else lam_factor
                return L + factor * lam * _penalty(task_params, **kw)

            return loss

        return {
            NOT_SQUARED: wrong(power="norm"),
            LAM_TIMES_K: wrong(lambda K: K),
            LAM_OVER_K: wrong(lambda K: 1 / K),
            MEAN_LOSSES: wrong(losses="mean"),
            NO_LAM: lambda tl, tp, lam: tl.sum() + _penalty(tp),
            HALF_LAM: wrong(0.5),
            MEAN_ENTRIES: wrong(reduce="mean"),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        out = []
        specs = [
            ("one task, one parameter, lam = 0", 1, [(3,)], 0.0, torch.float32),
            ("one task, one parameter", 1, [(3,)], 0.5, torch.float32),
            ("two tasks, weight and bias", 2, [(2, 3), (2,)], 0.1, torch.float32),
            ("three tasks, lam = 0", 3, [(2, 2), (2,)], 0.0, torch.float32),
            ("three tasks", 3, [(4, 3), (4,)], 2.0, torch.float32),
            (
                "four tasks, two layers per head",
                4,
                [(5, 4), (5,), (2, 5), (2,)],
                0.03,
                torch.float32,
            ),
            ("four tasks, float64", 4, [(3, 3), (3,)], 0.7, torch.float64),
        ]
        for label, K, shapes, lam, dtype in specs:
            losses = _randn(generator, K, dtype=dtype).abs() * 2
            params = _random_task_params(generator, K, shapes, dtype)
            out.append(
                Case(
                    f"{label} (K={K}, lam={lam:g})",
                    (losses, params, lam),
                    shown=f"task_losses = {show_tensor(losses)}, lam = {lam:g}\n"
                    + _show_params(params),
                )
            )
        return out


MR_NOT_SQUARED = "square the distances: ||p_k - mean||^2, not ||p_k - mean||"
MR_WEIGHT_DECAY = (
    "this regulariser pulls each task toward the MEAN of the tasks: subtract mean_j p_j "
    "(torch.stack(...).mean(0)) before squaring; without it, it is plain weight decay"
)
MR_AVERAGE_TASKS = "sum over the tasks k, do not average over them"
MR_PAIRWISE = (
    "the sum of squared distances over pairs of tasks is K (over ordered pairs 2K) times this "
    "regulariser: measure each task's distance to the mean of the tasks"
)
MR_OWN_MEAN = (
    "the mean is taken over the TASKS for each parameter (mean_j p_j, same shape as p), not "
    "over the entries of one tensor (p.mean())"
)
MR_MEAN_ENTRIES = "sum the squared differences over every entry, do not average them"


def _mean_reg(task_params: Any, mode: str = "right") -> torch.Tensor:
    total = torch.zeros(())
    K = len(task_params)
    for same in zip(*task_params):
        stacked = torch.stack(list(same))
        if mode == "pairwise":
            total = total + sum(
                (stacked[i] - stacked[j]).pow(2).sum() for i in range(K) for j in range(i + 1, K)
            )
            continue
        if mode == "decay":
            diff = stacked
        elif mode == "own":
            diff = stacked - stacked.flatten(1).mean(1).view(-1, *[1] * (stacked.dim() - 1))
        else:
            diff = stacked - stacked.mean(0)
        if mode == "norm":
            total = total + sum(d.norm() for d in diff)
        elif mode == "mean_entries":
            total = total + diff.pow(2).flatten(1).mean(1).sum()
        elif mode == "average":
            total = total + diff.pow(2).sum() / K
        else:
            total = total + diff.pow(2).sum()
    return total


@register
class MeanRegularizer(_ScalarOfParams):
    solves = ref.mean_regularizer

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        return {
            MR_NOT_SQUARED: lambda tp: _mean_reg(tp, "norm"),
            MR_WEIGHT_DECAY: lambda tp: _mean_reg(tp, "decay"),
            MR_AVERAGE_TASKS: lambda tp: _mean_reg(tp, "average"),
            MR_PAIRWISE: lambda tp: _mean_reg(tp, "pairwise"),
            MR_OWN_MEAN: lambda tp: _mean_reg(tp, "own"),
            MR_MEAN_ENTRIES: lambda tp: _mean_reg(tp, "mean_entries"),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        out = []
        one = [torch.tensor([1.0, -2.0, 0.5])]
        out.append(
            Case("a single task (nothing to pull toward)", ([one],), shown=_show_params([one]))
        )
        same = [torch.tensor([[1.0, 2.0]]), torch.tensor([0.5])]
        out.append(
            Case(
                "two identical heads",
                ([same, [p.clone() for p in same]],),
                shown=_show_params([same, same]),
            )
        )
        two = [[torch.tensor([1.0, 0.0, 0.0])], [torch.tensor([3.0, 2.0, 1.0])]]
        out.append(Case("two tasks, one vector each", (two,), shown=_show_params(two)))
        specs = [
            (3, [(3,)], torch.float32),
            (3, [(2, 3), (2,)], torch.float32),
            (4, [(4, 3), (4,)], torch.float32),
            (2, [(3, 2), (3,), (1, 3), (1,)], torch.float32),
            (4, [(5, 4), (5,)], torch.float64),
        ]
        for K, shapes, dtype in specs:
            params = _random_task_params(generator, K, shapes, dtype)
            label = f"{K} tasks, parameters of shapes {shapes}, {str(dtype)[6:]}"
            out.append(Case(label, (params,), shown=_show_params(params)))
        return out


# =============================================================================================
# task_param_groups
# =============================================================================================

IN_TWO_GROUPS = (
    "a head's parameters are in two groups: the shared group must hold only the parameters "
    "that belong to no task (leave out every task_parameters(k))"
)
NO_SHARED_GROUP = (
    "the shared parameters are in no group, so they would never be trained: add a group "
    "{'params': shared, 'lr': shared_lr}"
)
ONLY_TRUNK = (
    "the shared group holds every parameter that belongs to no task, not only model.trunk's: "
    "collect the model's parameters that are not in any task_parameters(k)"
)
HEADS_AT_SHARED_LR = "head k's group needs lr task_lrs[k], not shared_lr"
ALL_AT_FIRST_LR = "head k's group needs its own rate task_lrs[k], not task_lrs[0] for every head"
SHARED_AT_TASK_LR = "the shared group needs lr shared_lr"


def _sorted_found(record: dict) -> dict:
    return {name: sorted(x for x in lrs if x is not None) for name, lrs in record["found"].items()}


class _ScaledNet(_Base):
    """A multi-head network with one more shared parameter outside the trunk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, obs: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        return self.scale * super().forward(obs, tasks)


class _DeepHeadNet(nn.Module):
    """A trunk and two-layer heads, with ``task_parameters``."""

    def __init__(self, obs_dim: int, n_actions: int, n_tasks: int, hidden: Sequence[int]):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(obs_dim, hidden[0]), nn.ReLU())
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden[0], 8), nn.ReLU(), nn.Linear(8, n_actions))
            for _ in range(n_tasks)
        )

    def task_parameters(self, k: int) -> list[nn.Parameter]:
        return list(self.heads[k].parameters())


def _build_model(data: dict) -> nn.Module:
    # Local classes: while a notebook is graded, the library's own exercise classes are hidden.
    cls = {"multihead": _Base, "scaled": _ScaledNet, "deep": _DeepHeadNet}
    return cls[data["model"]](data["obs_dim"], 2, data["n_tasks"], data["hidden"])


@register
class TaskParamGroups(_MultitaskExercise):
    solves = ref.task_param_groups

    def probe(self, obj: Any, case: Case) -> Any:
        model = _build_model(case.data)
        shared_lr, task_lrs = case.args
        groups = obj(model, shared_lr, list(task_lrs))
        if isinstance(groups, dict) or not hasattr(groups, "__iter__"):
            return {"type": "not groups", "got": plain.describe(plain.encode(groups))}
        names = {id(p): name for name, p in model.named_parameters()}
        found: dict[str, list[float | None]] = {name: [] for name in names.values()}
        foreign = 0
        n_groups = 0
        for group in groups:
            if not isinstance(group, dict) or "params" not in group:
                return {"type": "not groups", "got": "a group that is not a dict with 'params'"}
            n_groups += 1
            params = group["params"]
            params = [params] if isinstance(params, torch.Tensor) else list(params)
            lr = group.get("lr")
            lr = float(lr) if isinstance(lr, (int, float)) else None
            for p in params:
                if id(p) in names:
                    found[names[id(p)]].append(lr)
                else:
                    foreign += 1
        return {"type": "groups", "found": found, "foreign": foreign, "n_groups": n_groups}

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        if not (isinstance(got, dict) and got.get("type") == "groups"):
            if isinstance(got, dict) and got.get("type") == "not groups":
                return (
                    f"returned {got['got']}; expected a list of dicts "
                    "[{'params': [...], 'lr': ...}, ...]"
                )
            return f"returned {plain.describe(got)}; expected a list of parameter groups"
        if got["foreign"]:
            return f"the groups hold {got['foreign']} tensors that are not the model's parameters"
        if _sorted_found(got) == _sorted_found(want):
            return None
        if any(len(lrs) != 1 for lrs in want["found"].values()):
            return "differs"  # judged against a mistake, not the reference
        for name, lrs in want["found"].items():
            mine = got["found"][name]
            if not mine:
                return f"parameter {name} is in no group: it would never be trained"
            if len(mine) > 1:
                return f"parameter {name} is in {len(mine)} groups; each must be in exactly one"
            if mine[0] is None:
                return f"the group of {name} has no 'lr'; give every group its learning rate"
            if not math.isclose(mine[0], lrs[0], rel_tol=1e-9):
                return f"parameter {name} has lr {mine[0]:g}; expected {lrs[0]:g}"
        return None

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def groups(
            model: nn.Module,
            shared_lr: float,
            task_lrs: Sequence[float],
            *,
            shared: str = "rest",
            head_lr: str = "own",
            shared_rate: str = "shared",
        ) -> list[dict]:
            heads = [list(model.task_parameters(k)) for k in range(len(task_lrs))]
            ids = {id(p) for h in heads for p in h}
            if shared == "all":
                shared_params = list(model.parameters())
            elif shared == "trunk":
                shared_params = list(model.trunk.parameters())
            else:
                shared_params = [p for p in model.parameters() if id(p) not in ids]
            rate = {"own": None, "shared": shared_lr, "first": task_lrs[0]}[head_lr]
            out = [
                {"params": h, "lr": task_lrs[k] if rate is None else rate}
                for k, h in enumerate(heads)
            ]
            if shared != "none":
                lr = shared_lr if shared_rate == "shared" else task_lrs[0]
                out.insert(0, {"params": shared_params, "lr": lr})
            return out

        def variant(**kw: Any) -> Callable[..., list[dict]]:
            return lambda model, shared_lr, task_lrs: groups(model, shared_lr, task_lrs, **kw)

        return {
            IN_TWO_GROUPS: variant(shared="all"),
            NO_SHARED_GROUP: variant(shared="none"),
            ONLY_TRUNK: variant(shared="trunk"),
            HEADS_AT_SHARED_LR: variant(head_lr="shared"),
            ALL_AT_FIRST_LR: variant(head_lr="first"),
            SHARED_AT_TASK_LR: variant(shared_rate="first"),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        specs = [
            ("multihead", 4, 1, (8,)),
            ("multihead", 5, 2, (8,)),
            ("multihead", 3, 3, (8, 6)),
            ("deep", 3, 2, (6,)),
            ("scaled", 4, 3, (8,)),
            ("multihead", 6, 4, (16, 8)),
        ]
        out = []
        labels = {
            "multihead": "a MultiHeadQNetwork",
            "deep": "a network whose heads have two layers",
            "scaled": "a MultiHeadQNetwork with one more shared parameter, `model.scale`",
        }
        for model, D, K, hidden in specs:
            lrs = torch.randint(1, 30, (K + 1,), generator=generator).double() * 1e-4
            shared_lr, task_lrs = float(lrs[0]), [float(x) for x in lrs[1:]]
            out.append(
                Case(
                    f"{labels[model]} (obs_dim={D}, {K} tasks, hidden={hidden})",
                    (shared_lr, tuple(task_lrs)),
                    shown=f"shared_lr = {shared_lr:g}, task_lrs = {[f'{x:g}' for x in task_lrs]}",
                    data={"model": model, "obs_dim": D, "n_tasks": K, "hidden": hidden},
                )
            )
        return out


# =============================================================================================
# gradient_conflict
# =============================================================================================

NOT_NORMALISED = (
    "divide each dot product by the two norms: cos = g_i . g_j / (||g_i|| ||g_j||), so the "
    "diagonal is 1"
)
SQUARED_NORMS = "divide by the product of the norms ||g_i|| ||g_j||, not by squared norms"
DISTANCE = "return the cosine similarity itself, not the distance 1 - cos"
ZERO_NAN = (
    "a zero gradient (a task with no data in the batch) has no direction: give it similarity 0 "
    "instead of dividing by zero (e.g. divide by norms.clamp_min(1e-12))"
)


def _cos(grads: Sequence[torch.Tensor], mode: str = "right") -> torch.Tensor:
    G = torch.stack([torch.as_tensor(g).flatten().double() for g in grads])
    dots = G @ G.T
    n = G.norm(dim=1)
    if mode == "dot":
        return dots
    if mode == "squared":
        return dots / (n[:, None] ** 2 * n[None] ** 2)
    cos = dots / (n[:, None] * n[None])
    return 1 - cos if mode == "distance" else cos


@register
class GradientConflict(_MultitaskExercise):
    solves = ref.gradient_conflict
    parts = {"": 1, "zero gradients": 1}

    def probe(self, obj: Any, case: Case) -> Any:
        (grads,) = copy.deepcopy(case.args)
        before = copy.deepcopy(grads)
        result = obj(grads)
        if _mutated(before, grads):
            return {"type": "mutated", "argument": "grads"}
        return plain.encode(result)

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        if case.part != "zero gradients":
            return compare(got, want, self.atol, self.rtol)
        got_a = plain.as_array(got)
        if not plain.is_array(got_a):
            return f"returned {plain.describe(got)}; expected a [K, K] tensor"
        g, w = plain.to_tensor(got_a), plain.to_tensor(want)
        if tuple(g.shape) != tuple(w.shape):
            return f"returned shape {tuple(g.shape)}; expected {tuple(w.shape)}"
        if torch.isnan(w).any():  # judging against a mistake that divides by zero
            return compare(got_a, want, self.atol, self.rtol)
        if torch.isnan(g).any():
            return "returned NaN for the zero gradient: define its similarity as 0"
        zero = case.data["zero"]
        allowed = torch.eye(len(w), dtype=torch.bool)
        allowed = allowed & torch.isin(torch.arange(len(w)), torch.tensor(zero))[:, None]
        ok = torch.isclose(g, w, atol=self.atol, rtol=self.rtol) | (
            allowed & torch.isclose(g, torch.ones_like(g))
        )
        if bool(ok.all()):
            return None
        return compare(got_a, want, self.atol, self.rtol)

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        return {
            NOT_NORMALISED: lambda grads: _cos(grads, "dot"),
            SQUARED_NORMS: lambda grads: _cos(grads, "squared"),
            DISTANCE: lambda grads: _cos(grads, "distance"),
            ZERO_NAN: lambda grads: _cos(grads),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        fixed = [
            ("two opposite gradients", [[1.0, 2.0], [-2.0, -4.0]]),
            ("two orthogonal gradients", [[3.0, 0.0], [0.0, 0.5]]),
            ("a single task", [[1.0, -1.0, 2.0]]),
            (
                "three gradients of different sizes",
                [[1.0, 0.0, 0.0], [2.0, 2.0, 0.0], [0.0, -3.0, 1.0]],
            ),
        ]
        out = []
        for label, values in fixed:
            grads = [torch.tensor(v) for v in values]
            out.append(Case(label, (grads,), shown=_show_list(grads)))
        for K, P, dtype in [
            (2, 5, torch.float32),
            (3, 8, torch.float32),
            (4, 20, torch.float64),
            (4, 200, torch.float32),
        ]:
            grads = [_randn(generator, P, dtype=dtype) * (1 + 3 * k) for k in range(K)]
            out.append(
                Case(
                    f"{K} random gradients of {P} entries ({str(dtype)[6:]})",
                    (grads,),
                    shown=_show_list(grads),
                )
            )
        for label, values, zero in [
            ("a zero gradient among two", [[0.0, 0.0], [1.0, 2.0]], [0]),
            (
                "a zero gradient among three",
                [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.5, 2.0]],
                [1],
            ),
        ]:
            grads = [torch.tensor(v) for v in values]
            out.append(
                Case(
                    label,
                    (grads,),
                    shown=_show_list(grads),
                    part="zero gradients",
                    data={"zero": zero},
                )
            )
        return out


def _show_list(grads: Sequence[torch.Tensor]) -> str:
    if sum(g.numel() for g in grads) > 24:
        return f"{len(grads)} gradients of {grads[0].numel()} entries"
    return "grads = [" + ", ".join(show_tensor(g) for g in grads) + "]"


# =============================================================================================
# pcgrad
# =============================================================================================

ALWAYS_PROJECTS = (
    "project only when the two gradients CONFLICT (dot < 0, not > 0 and not always); gradients "
    "that agree (dot >= 0) are left as they are"
)
PROJECTED_OTHER = (
    "project g_i onto the ORIGINAL gradients g_j (the paper's rule), not onto g_j after its "
    "own projection: keep the originals aside (e.g. `originals = [g.clone() for g in grads]`)"
)
NORM_NOT_SQUARED = "the projection divides by ||g_j||^2 (g_j @ g_j), not by ||g_j||"
MEAN_NOT_SUM = "PCGrad SUMS the projected gradients, it does not average them"
NO_PROJECTION = (
    "nothing was projected: for each task i, remove from g_i its component along every g_j it "
    "conflicts with: g_i - (g_i . g_j) / ||g_j||^2 * g_j"
)
STALE_DOT = (
    "compute each dot product with the CURRENT, already partly projected g_i (the paper's "
    "g_i^PC), not with the original g_i"
)


def _pc_all(
    grads: Sequence[torch.Tensor],
    *,
    condition: str = "conflict",
    onto: str = "original",
    denominator: str = "squared",
    combine: str = "sum",
    dot_with: str = "current",
) -> torch.Tensor:
    """The result of every combination of projection orders, stacked ``[C, D]`` (float64)."""
    originals = [torch.as_tensor(g).double().flatten() for g in grads]
    K = len(originals)
    shape = torch.as_tensor(grads[0]).shape

    def project(g: torch.Tensor, g_i: torch.Tensor, g_j: torch.Tensor) -> torch.Tensor:
        dot = (g if dot_with == "current" else g_i) @ g_j
        hit = {"conflict": dot < 0, "always": True, "agree": dot > 0, "never": False}[condition]
        if not hit or float(g_j @ g_j) == 0.0:
            return g
        scale = g_j @ g_j if denominator == "squared" else g_j.norm()
        return g - dot / scale * g_j

    orders = [
        [list(p) for p in itertools.permutations([j for j in range(K) if j != i])] for i in range(K)
    ]
    if onto == "original":
        per_task = []
        for i in range(K):
            options = []
            for order in orders[i]:
                g = originals[i].clone()
                for j in order:
                    g = project(g, originals[i], originals[j])
                options.append(g)
            per_task.append(torch.stack(options))  # [(K-1)!, D]
        combos = per_task[0]
        for options in per_task[1:]:
            combos = (combos[:, None] + options[None]).reshape(-1, combos.shape[-1])
    else:  # in place, in task order: later tasks see earlier tasks' projected gradients
        results = []
        for choice in itertools.product(*orders):
            gs = [g.clone() for g in originals]
            for i in range(K):
                for j in choice[i]:
                    gs[i] = project(gs[i], originals[i], gs[j])
            results.append(torch.stack(gs).sum(0))
        combos = torch.stack(results)
    if combine == "mean":
        combos = combos / K
    return combos.reshape(-1, *shape)


@register
class PCGrad(_MultitaskExercise):
    solves = ref.pcgrad
    time_limit = 5.0

    def reference(self, grads: Sequence[torch.Tensor], generator: Any = None) -> torch.Tensor:
        return _pc_all(grads)

    def probe(self, obj: Any, case: Case) -> Any:
        (grads,) = copy.deepcopy(case.args)
        before = copy.deepcopy(grads)
        result = obj(grads, generator=torch.Generator().manual_seed(case.data["seed"]))
        if _mutated(before, grads):
            return {"type": "mutated", "argument": "grads"}
        return plain.encode(result)

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        candidates = plain.to_tensor(want)  # [C, *shape]: every order's result
        got_a = plain.as_array(got)
        if not (plain.is_array(got_a) or plain.is_number(got_a)):
            return f"returned {plain.describe(got)}; expected a tensor of shape " + str(
                tuple(candidates.shape[1:])
            )
        g = plain.to_tensor(got_a)
        if tuple(g.shape) == tuple(candidates.shape) and torch.allclose(
            g.double(), candidates, atol=self.atol, rtol=self.rtol
        ):
            return None  # two sets of candidates (a mistake judged against itself)
        if tuple(g.shape) != tuple(candidates.shape[1:]):
            return (
                f"returned shape {tuple(g.shape)}; expected {tuple(candidates.shape[1:])} "
                "(the sum of the projected gradients)"
            )
        if torch.isnan(g).any():
            return "returned NaN values; a zero gradient never conflicts (its dot product is 0)"
        diff = (candidates - g.double()).abs().flatten(1)
        tol = self.atol + self.rtol * candidates.abs().flatten(1)
        if bool((diff <= tol).all(1).any()):
            return None
        closest = int((diff - tol).clamp(min=0).sum(1).argmin())
        reason = compare(got_a, plain.encode(candidates[closest]), self.atol, self.rtol)
        return (reason or "differs") + (
            "\n(compared with the result of the projection order closest to yours; any order "
            "is accepted)"
            if len(candidates) > 1
            else ""
        )

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def wrong(**kw: Any) -> Callable[..., torch.Tensor]:
            return lambda grads, generator=None: _pc_all(grads, **kw)

        return {
            ALWAYS_PROJECTS: wrong(condition="always"),
            PROJECTED_OTHER: wrong(onto="projected"),
            NORM_NOT_SQUARED: wrong(denominator="norm"),
            MEAN_NOT_SUM: wrong(combine="mean"),
            NO_PROJECTION: wrong(condition="never"),
            STALE_DOT: wrong(dot_with="original"),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        fixed = [
            ("a single task (nothing to project)", [[1.0, -2.0, 0.5]]),
            ("two gradients that agree (dot > 0): no projection", [[1.0, 0.0], [1.0, 1.0]]),
            ("two orthogonal gradients (dot = 0): no projection", [[2.0, 0.0], [0.0, 1.0]]),
            ("two conflicting gradients", [[1.0, 0.0], [-1.0, 1.0]]),
            ("two opposite gradients", [[1.0, 2.0], [-2.0, -4.0]]),
            (
                "a zero gradient among conflicting ones",
                [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [-1.0, 1.0, 0.0]],
            ),
            ("three gradients, every pair conflicting", [[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.9]]),
        ]
        out = []
        for label, values in fixed:
            grads = [torch.tensor(v) for v in values]
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            out.append(Case(label, (grads,), shown=_show_list(grads), data={"seed": seed}))
        for K, P, dtype in [
            (3, 3, torch.float32),
            (3, 6, torch.float32),
            (4, 5, torch.float64),
            (4, 12, torch.float32),
            (2, 50, torch.float32),
        ]:
            # a common component plus large task-specific ones: some pairs conflict, some not
            common = _randn(generator, P, dtype=dtype)
            grads = [common + 1.5 * _randn(generator, P, dtype=dtype) for _ in range(K)]
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            out.append(
                Case(
                    f"{K} random gradients of {P} entries ({str(dtype)[6:]})",
                    (grads,),
                    shown=_show_list(grads),
                    data={"seed": seed},
                )
            )
        return out


# --- multitask_update -----------------------------------------------------------------------

ONE_MEAN = (
    "the task loss is a SUM of per-task means (`L_k` = mean over the rows of task k): one mean "
    "over all rows lets the task with more rows in the batch weigh more"
)
DROPPED_TASK = (
    "only one task's loss reached the step: add up `L_k` over every task present in the batch "
    "(a loop that reassigns `loss = ...` keeps only the last one)"
)
ROW_SUM = "`L_k` is the MEAN Huber loss over the rows of task k, not their sum"
ABSENT_TASK = (
    "a task with no rows in the batch has no loss (the mean of nothing is NaN): sum `L_k` over "
    "the tasks PRESENT in the batch (`batch.tasks.unique()`)"
)
TRUNK_PENALTY = (
    "the penalty is on the task parameters only (`q_net.task_parameters(k)` for every k): the "
    "shared trunk is not regularised"
)
REGULARIZER_IGNORED = (
    'with `regularizer="mean"` the penalty is `lam * mean_regularizer(heads)`, not the squared '
    "norm of the heads"
)
PCGRAD_ON_HEADS = (
    "PCGrad combines the tasks' gradients of the SHARED parameters (the trunk) only; each head "
    "keeps its own task's gradient, unprojected"
)
PCGRAD_IGNORED = (
    "with `use_pcgrad=True` the trunk's gradient is `pcgrad` of the per-task trunk gradients "
    "(`torch.autograd.grad(L_k, trunk_params, retain_graph=True)` for each k), not their sum"
)
MT_NO_ZERO_GRAD = (
    "the first step is right but later ones drift: zero the gradients (`optimizer.zero_grad()`) "
    "before every backward pass"
)


def _mt_variant(
    q_net: Any,
    target_net: Any,
    optimizer: torch.optim.Optimizer,
    batch: Any,
    gamma: float,
    lam: float = 0.0,
    regularizer: str = "l2",
    use_pcgrad: bool = False,
    generator: torch.Generator | None = None,
    *,
    mistake: str = "",
) -> float:
    """The reference step with one classic mistake switched on (for the hints)."""
    with torch.no_grad():
        next_q = target_net(batch.next_obs, batch.tasks)
        targets = ref.td_target(batch.rewards, next_q, batch.terminated, gamma)
    taken = q_net(batch.obs, batch.tasks).gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
    errors = torch.nn.functional.smooth_l1_loss(taken, targets, reduction="none")
    tasks = range(q_net.n_tasks) if mistake == "absent" else batch.tasks.unique().tolist()
    reduce = (lambda e: e.sum()) if mistake == "row_sum" else (lambda e: e.mean())
    task_losses = [reduce(errors[batch.tasks == k]) for k in tasks]
    if mistake == "one_mean":
        task_losses = [errors.mean()]
    if mistake == "dropped":
        task_losses = task_losses[-1:]
    heads = [q_net.task_parameters(k) for k in range(q_net.n_tasks)]
    if mistake == "trunk_penalty":
        heads = heads + [list(q_net.trunk.parameters())]
    if regularizer == "mean" and mistake != "regularizer_ignored":
        penalty = lam * ref.mean_regularizer(heads)
    else:
        penalty = lam * sum(p.pow(2).sum() for params in heads for p in params)
    total = torch.stack(task_losses).sum()
    if mistake != "no_zero_grad":
        optimizer.zero_grad()
    if use_pcgrad and mistake != "pcgrad_ignored":
        on_heads = mistake == "pcgrad_heads"
        shared = list(q_net.parameters() if on_heads else q_net.trunk.parameters())
        per_task = [_flat_grad(loss, shared) for loss in task_losses]
        combined = ref.pcgrad(per_task, generator)
        if on_heads:
            combined = combined + _flat_grad(penalty, shared)
        else:
            (total + penalty).backward()  # the heads' own gradients
        offset = 0
        for p in shared:
            p.grad = combined[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
    else:
        (total + penalty).backward()
    optimizer.step()
    return float(total.detach())


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)]
    )


def _mt_batch(d: dict, seed: int) -> Any:
    from course.replay import Batch

    g = torch.Generator().manual_seed(seed)
    counts = d["counts"]  # rows per task (0: the task is absent)
    tasks = torch.cat([torch.full((c,), k, dtype=torch.int64) for k, c in enumerate(counts)])
    n = len(tasks)
    tasks = tasks[torch.randperm(n, generator=g)]
    return Batch(
        obs=torch.randn(n, d["obs_dim"], generator=g),
        actions=torch.randint(0, d["n_actions"], (n,), generator=g),
        rewards=torch.randn(n, generator=g) * 2.0,
        next_obs=torch.randn(n, d["obs_dim"], generator=g),
        terminated=torch.rand(n, generator=g) < 0.25,
        tasks=tasks,
    )


class _UpdateNet(_Base):
    """The check's own multi-head network (the library's is hidden while Lesson 04 is graded)."""

    def __init__(self, obs_dim: int, n_actions: int, n_tasks: int, hidden: Sequence[int]):
        super().__init__(obs_dim, n_actions, n_tasks, hidden)
        self.n_tasks = n_tasks


def _mt_network(d: dict, seed: int) -> Any:
    net = _UpdateNet(d["obs_dim"], d["n_actions"], len(d["counts"]), d["hidden"])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net


@register
class MultitaskUpdate(_MultitaskExercise):
    """``multitask_update`` is judged by what it does to copies of the same networks.

    The probe builds the online and target multi-head networks, plain SGD (so that every
    change in a gradient shows in the step) and batches whose tasks have unequal numbers of
    rows (some tasks absent), calls the answer ``calls`` times in a row and records the returned
    task losses and every parameter of ``q_net`` afterwards. PCGrad cases have two tasks in the
    batch, where the order of the projections cannot matter.
    """

    solves = ref.multitask_update
    mutates_args = True
    uses_optimizer = True
    parts = {"task losses": 2, "penalty": 1, "PCGrad": 1}

    def probe(self, obj: Any, case: Case) -> Any:
        d = case.data
        q_net, target_net = _mt_network(d, d["q_seed"]), _mt_network(d, d["target_seed"])
        optimizer = torch.optim.SGD(q_net.parameters(), lr=d["lr"])
        losses = []
        for call in range(d["calls"]):
            batch = _mt_batch(d, d["batch_seed"] + call)
            generator = torch.Generator().manual_seed(d["batch_seed"])
            value = obj(
                q_net,
                target_net,
                optimizer,
                batch,
                d["gamma"],
                d["lam"],
                d["regularizer"],
                d["pcgrad"],
                generator,
            )
            losses.append(plain.encode(value))
        return {
            "type": "multitask_update",
            "losses": losses,
            "params": {n: plain.encode(p.detach()) for n, p in q_net.named_parameters()},
        }

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        if not (isinstance(got, dict) and got.get("type") == "multitask_update"):
            return f"could not inspect the update ({plain.describe(got)})"
        for i, (g, w) in enumerate(zip(got["losses"], want["losses"])):
            if not plain.is_number(g):
                return (
                    f"call {i + 1} returned {plain.describe(g)}; return the task loss as a "
                    "Python float (`loss.item()`)"
                )
            reason = compare(g, w, self.atol, self.rtol)
            if reason is not None:
                return f"the task loss returned by call {i + 1}: {reason}"
        wrong = first_difference(got.get("params"), want["params"], self.atol, self.rtol)
        if wrong is not None:
            return f"q_net parameter `{wrong[0]}` after the step(s): {wrong[1]}"
        return None

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        return switched_mistakes(
            _mt_variant,
            [
                (ONE_MEAN, "one_mean"),
                (DROPPED_TASK, "dropped"),
                (ROW_SUM, "row_sum"),
                (ABSENT_TASK, "absent"),
                (MT_NO_ZERO_GRAD, "no_zero_grad"),
                (TRUNK_PENALTY, "trunk_penalty"),
                (REGULARIZER_IGNORED, "regularizer_ignored"),
                (PCGRAD_ON_HEADS, "pcgrad_heads"),
                (PCGRAD_IGNORED, "pcgrad_ignored"),
            ],
        )

    def cases(self, generator: torch.Generator) -> list[Case]:
        # (label, part, row counts per task, calls, lam, regularizer, pcgrad)
        fixed = [
            ("two tasks, unequal rows", "task losses", (12, 4), 1, 0.0, "l2", False),
            ("three tasks, one absent", "task losses", (10, 0, 3), 1, 0.0, "l2", False),
            ("three steps in a row", "task losses", (6, 9, 5), 3, 0.0, "l2", False),
            ("weight decay on the heads", "penalty", (8, 5), 1, 0.1, "l2", False),
            ("the mean regulariser", "penalty", (7, 7, 4), 1, 0.2, "mean", False),
            ("the mean regulariser, two steps", "penalty", (5, 9), 2, 0.5, "mean", False),
            ("PCGrad, two tasks", "PCGrad", (10, 6), 1, 0.0, "l2", True),
            ("PCGrad, a task absent, with decay", "PCGrad", (0, 8, 8), 2, 0.05, "l2", True),
        ]
        out = [self._case(generator, *row) for row in fixed]
        for k in range(4):
            part = ("task losses", "penalty", "PCGrad", "task losses")[k]
            counts = tuple(
                int(c)
                for c in torch.randint(1, 12, (2 if part == "PCGrad" else 3,), generator=generator)
            )
            lam = 0.1 if part != "task losses" else 0.0
            reg = "mean" if k == 1 else "l2"
            out.append(
                self._case(
                    generator,
                    f"random step #{k}",
                    part,
                    counts,
                    1 + k % 2,
                    lam,
                    reg,
                    part == "PCGrad",
                )
            )
        return out

    def _case(
        self,
        generator: torch.Generator,
        label: str,
        part: str,
        counts: tuple[int, ...],
        calls: int,
        lam: float,
        regularizer: str,
        use_pcgrad: bool,
    ) -> Case:
        seeds = torch.randint(0, 2**31 - 1, (3,), generator=generator).tolist()
        obs_dim = int(torch.randint(2, 5, (1,), generator=generator))
        n_actions = int(torch.randint(2, 4, (1,), generator=generator))
        hidden = (int(torch.randint(3, 7, (1,), generator=generator)),)
        gamma = round(0.5 + 0.49 * float(torch.rand(1, generator=generator)), 3)
        shown = (
            f"{len(counts)} heads, rows per task {list(counts)}, obs_dim={obs_dim}, "
            f"n_actions={n_actions}, hidden={hidden}, torch.optim.SGD(lr=0.1), gamma={gamma}, "
            f"lam={lam}, regularizer={regularizer!r}, use_pcgrad={use_pcgrad}, {calls} call(s)"
        )
        data = {
            "counts": counts,
            "calls": calls,
            "lam": lam,
            "regularizer": regularizer,
            "pcgrad": use_pcgrad,
            "obs_dim": obs_dim,
            "n_actions": n_actions,
            "hidden": hidden,
            "gamma": gamma,
            "lr": 0.1,
            "q_seed": seeds[0],
            "target_seed": seeds[1],
            "batch_seed": seeds[2],
        }
        return Case(label, shown=shown, part=part, data=data)
