"""Generalising to tasks never trained on: task splits, domain randomisation and Reptile.

Taught in Lesson 06. A method that transfers is only trusted after it has been measured on tasks
it never saw, and chosen on *other* tasks it never saw: the task family is split into training,
validation and test tasks, exactly as a data set is split in supervised learning. Two ways to
do well on new tasks are compared with Lessons 04 and 05:

- **domain randomisation**: train one agent on a *distribution* of tasks, a fresh one drawn at
  every episode (``course.envs.CartPoleRandomisedVectorEnv``), so that no single task's
  quirks can be memorised;
- **meta-learning an initialisation** (Reptile, Nichol, Achiam and Schulman 2018): adapt a copy
  of the parameters to each of a few sampled tasks, then move the shared parameters a step
  toward the mean of the adapted ones. The result is not a good *solution* of any one task but a
  good *starting point*: a few gradient steps on a new task get further from it.

The module reads top to bottom like the lesson:

1. the piece the student writes: :func:`reptile_step`;
2. Reptile on a supervised family (Lesson 04's sine waves, seconds): few-step adaptation from a
   Reptile initialisation, from a network pretrained on the mixture of tasks, and from scratch;
3. CartPole: task splits along one physics parameter, the three agents (default task, a few
   training tasks, randomised tasks) at matched budgets, their returns on every task (inside the
   family and beyond it), summed up by the mean and by the worst task, where each one breaks,
   and a Reptile initialisation fine-tuned on a held-out task.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from course.dqn import DQNConfig, DQNResult, QNetwork, train_dqn_agents
from course.envs import (
    CartPoleTask,
    CartPoleTaskDistribution,
    make_cartpole_vec,
    make_randomised_cartpole_vec,
)
from course.evaluation import Comparison, compare, evaluate_policy, mean_ci
from course.multitask import SineTasks, sine_tasks
from course.population import FamilyEnvs, FusedAdam, PopulationQNetwork, Purpose

__all__ = [
    "ARMS",
    "ReptileDQNResult",
    "GENERALISATION_CONFIG",
    "GeneralisationResult",
    "LENGTH_FAMILY",
    "MEASURES",
    "REPTILE_INNER_CONFIG",
    "SINE_META_CONFIG",
    "cartpole_split",
    "FINETUNE_CONFIG",
    "choose_lr",
    "finetune_comparisons",
    "finetune_from",
    "sine_comparisons",
    "fresh_state",
    "reptile_dqn",
    "parts_returns",
    "task_returns",
    "train_generalists",
    "SineMetaConfig",
    "SineMetaResult",
    "TaskSplit",
    "adapt_sine",
    "adaptation_lr_sweep",
    "reptile_step",
    "sine_split",
    "train_sine_meta",
]


# ============================================================================================
# 1. The exercise
# ============================================================================================


def reptile_step(
    meta_params: Sequence[torch.Tensor],
    adapted: Sequence[Sequence[torch.Tensor]],
    step_size: float,
) -> list[torch.Tensor]:
    """One outer step of Reptile: move the meta-parameters toward the tasks' adapted ones.

    ``theta <- theta + step_size * (mean_k theta_k - theta)`` for every parameter, where
    ``theta_k`` are task ``k``'s parameters after its inner loop (Nichol et al. 2018, the batched
    version). With ``step_size = 1`` the result is the mean of the adapted parameters; with a
    single task and ``step_size = 1``, the adapted parameters themselves.

    Taught in Lesson 06.

    Args:
        meta_params: The ``P`` meta-parameters, tensors of any shapes.
        adapted: ``K`` lists of ``P`` tensors: ``adapted[k][i]`` is parameter ``i`` (shape of
            ``meta_params[i]``) after task ``k``'s inner loop.
        step_size: The outer step size (often annealed from about 1 toward 0).

    Returns:
        ``P`` new tensors; no input is modified.

    Raises:
        ValueError: If ``adapted`` is empty or a task's parameters do not match
            ``meta_params`` in number or shape.

    Example:
        >>> theta = [torch.tensor([0.0, 1.0])]
        >>> reptile_step(theta, [[torch.tensor([2.0, 1.0])], [torch.tensor([4.0, 3.0])]], 0.5)
        [tensor([1.5000, 1.5000])]
    """
    if len(adapted) == 0:
        raise ValueError("adapted is empty; pass the adapted parameters of at least one task")
    for k, params in enumerate(adapted):
        if len(params) != len(meta_params):
            raise ValueError(
                f"adapted[{k}] has {len(params)} tensors but meta_params has {len(meta_params)}; "
                "give every task its parameters in the order of meta_params"
            )
        for i, (p, theta) in enumerate(zip(params, meta_params)):
            if p.shape != theta.shape:
                raise ValueError(
                    f"adapted[{k}][{i}] has shape {tuple(p.shape)} but meta_params[{i}] has "
                    f"{tuple(theta.shape)}; keep the order of meta_params"
                )
    new = []
    for i, theta in enumerate(meta_params):
        mean = torch.stack([params[i].detach() for params in adapted]).mean(dim=0)
        new.append(theta.detach() + step_size * (mean - theta.detach()))
    return new


# ============================================================================================
# 2. Reptile on sine waves
# ============================================================================================


@dataclass(frozen=True)
class TaskSplit:
    """A task family split three ways, as a data set is split in supervised learning.

    Attributes:
        train: Tasks a method may learn from.
        validation: Tasks on which methods and hyperparameters are *chosen*.
        test: Tasks on which the chosen method is *reported*, once.
    """

    train: SineTasks | tuple
    validation: SineTasks | tuple
    test: SineTasks | tuple


def sine_split(
    n_train: int = 100,
    n_validation: int = 20,
    n_test: int = 20,
    seed: int = 0,
    amplitude: tuple[float, float] = (0.1, 5.0),
    phase: tuple[float, float] = (0.0, math.pi),
) -> TaskSplit:
    """Draw sine tasks (Lesson 04's family, wider ranges) and split them at random.

    The wide ranges are those of Finn et al. (2017) and Nichol et al. (2018): the mean of the
    family is nearly the zero function, so a network fitted to the mixture of tasks knows little
    about any one of them.

    Taught in Lesson 06.

    Args:
        n_train: Training tasks.
        n_validation: Validation tasks.
        n_test: Test tasks.
        seed: Seed of the draws.
        amplitude: Range of the amplitudes.
        phase: Range of the phases (radians).

    Returns:
        A :class:`TaskSplit` of three :class:`course.multitask.SineTasks`.
    """
    sizes = (n_train, n_validation, n_test)
    if min(sizes) < 1:
        raise ValueError(f"split sizes {sizes}: every part needs at least one task")
    tasks = sine_tasks(sum(sizes), seed, amplitude, phase)
    bounds = (0, n_train, n_train + n_validation, sum(sizes))
    parts = [
        SineTasks(tasks.amplitudes[a:b], tasks.phases[a:b], tasks.x_range)
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return TaskSplit(*parts)


@dataclass(frozen=True)
class SineMetaConfig:
    """Hyperparameters of :func:`train_sine_meta` (Nichol et al.'s sine setting, shortened)."""

    hidden: int = 40
    """width of the two hidden layers"""
    shots: int = 10
    """samples of a task seen per inner step, and at adaptation time (K-shot)"""
    inner_steps: int = 5
    """SGD steps of the inner loop at meta-training time"""
    inner_lr: float = 0.02
    """SGD learning rate of the inner loop"""
    meta_batch: int = 4
    """tasks adapted per outer step"""
    outer_steps: int = 300
    """outer (Reptile) steps; the mixture baseline gets the same number of samples"""
    outer_step_size: float = 1.0
    """Reptile step size at the start, annealed linearly to 0"""
    mixture_lr: float = 1e-3
    """Adam learning rate of the network pretrained on the mixture of tasks"""
    eval_steps: int = 16
    """adaptation steps measured on the held-out tasks"""
    n_query: int = 100
    """points per held-out task on which the adapted network is scored"""


SINE_META_CONFIG = SineMetaConfig()
"""The lesson's setting: about a second per method for ten seeds on one core."""


def _init_mlp(n: int, hidden: int, generators: Sequence[torch.Generator]) -> list[torch.Tensor]:
    """``n`` independent 1-h-h-1 MLPs, stacked ``[n, ...]``, PyTorch's default initialisation."""
    sizes = [(1, hidden), (hidden, hidden), (hidden, 1)]
    params = []
    for fan_in, fan_out in sizes:
        bound = 1 / math.sqrt(fan_in)
        w = torch.stack(
            [(torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * bound for g in generators]
        )
        b = torch.stack([(torch.rand(1, fan_out, generator=g) * 2 - 1) * bound for g in generators])
        params += [w, b]
    return params


def _mlp(params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Stacked MLPs ``[n, ...]`` applied to ``x[n, B, 1]``; returns ``[n, B]``."""
    h = x
    for layer in range(0, len(params), 2):
        h = torch.baddbmm(params[layer + 1], h, params[layer])
        if layer + 2 < len(params):
            h = h.relu()
    return h.squeeze(-1)


def _draw(
    amplitudes: torch.Tensor,
    phases: torch.Tensor,
    n: int,
    x_range: tuple[float, float],
    g: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of each task ``[T]``: ``x[T, n, 1]``, ``y[T, n]``."""
    low, high = x_range
    x = low + (high - low) * torch.rand(len(amplitudes), n, 1, generator=g)
    y = amplitudes[:, None] * torch.sin(x.squeeze(-1) + phases[:, None])
    return x, y


def _mse_grads(
    params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> list[torch.Tensor]:
    """Gradients of ``sum_n mean_b (mlp_n(x[n, b]) - y[n, b])**2`` for every parameter of the
    stacked MLPs of :func:`_mlp` (``x[n, B, 1]``, ``y[n, B]``), backpropagated by hand: on
    networks this small, autograd's bookkeeping costs more than the arithmetic. Summing the
    networks' losses keeps each network's gradient its own."""
    inputs = [x]  # the input of every layer
    for layer in range(0, len(params) - 2, 2):
        inputs.append(torch.baddbmm(params[layer + 1], inputs[-1], params[layer]).relu())
    out = torch.baddbmm(params[-1], inputs[-1], params[-2])
    delta = (2 / y.shape[1]) * (out - y.unsqueeze(-1))  # d loss / d out, [n, B, 1]
    grads = []
    for layer in range(len(params) - 2, -1, -2):  # last layer first
        h = inputs[layer // 2]
        grads += [delta.sum(dim=1, keepdim=True), h.transpose(1, 2) @ delta]  # bias, weight
        if layer:
            delta = (delta @ params[layer].transpose(1, 2)) * (h > 0)  # through the ReLU
    return grads[::-1]


def _sgd_steps(
    params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int, lr: float
) -> list[list[torch.Tensor]]:
    """Plain SGD on the MSE of every stacked network on its own data; params after each step."""
    current = [p.detach() for p in params]
    history = [current]
    for _ in range(steps):
        current = [p - lr * g for p, g in zip(current, _mse_grads(current, x, y))]
        history.append(current)
    return history


@dataclass
class SineMetaResult:
    """Few-shot adaptation curves of every initialisation on held-out sine tasks.

    Attributes:
        config: The configuration.
        seeds: The ``N`` seeds.
        mse: ``mse[method]`` is ``[N, T, eval_steps + 1]``: query MSE on each of the ``T``
            held-out tasks after 0, 1, ... adaptation steps from that method's initialisation.
        inits: ``inits[method]`` is the method's initialisation, stacked over seeds (for
            :func:`adapt_sine` on other tasks or with other settings).
        wall_time: Seconds.
    """

    config: SineMetaConfig
    seeds: tuple[int, ...]
    mse: dict[str, torch.Tensor]
    inits: dict[str, list[torch.Tensor]]
    wall_time: float

    def curves(self, method: str) -> torch.Tensor:
        """Mean over the held-out tasks ``[N, eval_steps + 1]``: one adaptation curve per seed."""
        return self.mse[method].mean(dim=1)

    def after(self, method: str, steps: int) -> torch.Tensor:
        """Mean MSE over the held-out tasks after ``steps`` adaptation steps, per seed ``[N]``."""
        return self.mse[method][:, :, steps].mean(dim=1)


def _as_tensors(tasks: SineTasks) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(tasks.amplitudes), torch.tensor(tasks.phases)


def adapt_sine(
    inits: Sequence[torch.Tensor],
    tasks: SineTasks,
    config: SineMetaConfig,
    seed: int,
) -> torch.Tensor:
    """Adapt every stacked network to every task from ``config.shots`` samples; score each step.

    Network ``a`` and task ``t`` get the same support and query points for every ``a`` (drawn
    from ``seed``), so two initialisations are compared on identical data.

    Args:
        inits: ``N`` stacked networks (the list of :func:`_mlp` parameters, ``[N, ...]`` each).
        tasks: ``T`` held-out tasks.
        config: ``shots``, ``inner_lr``, ``eval_steps``, ``n_query``.
        seed: Seed of the support and query points.

    Returns:
        Query MSE ``[N, T, eval_steps + 1]`` after 0, 1, ..., ``eval_steps`` SGD steps.
    """
    N, T = inits[0].shape[0], tasks.n_tasks
    amps, phases = _as_tensors(tasks)
    g = torch.Generator().manual_seed(seed)
    x, y = _draw(amps, phases, config.shots, tasks.x_range, g)
    qx, qy = _draw(amps, phases, config.n_query, tasks.x_range, g)
    expand = [p.repeat_interleave(T, dim=0) for p in inits]  # network-major [N*T, ...]
    history = _sgd_steps(
        expand, x.repeat(N, 1, 1), y.repeat(N, 1), config.eval_steps, config.inner_lr
    )
    with torch.no_grad():
        mse = torch.stack(
            [(_mlp(p, qx.repeat(N, 1, 1)) - qy.repeat(N, 1)).pow(2).mean(dim=1) for p in history],
            dim=-1,
        )
    return mse.reshape(N, T, -1)


def train_sine_meta(
    split: TaskSplit,
    seeds: Sequence[int] = range(10),
    config: SineMetaConfig = SINE_META_CONFIG,
    evaluate_on: str = "validation",
) -> SineMetaResult:
    """Three initialisations of a sine regressor, adapted few-shot to held-out tasks.

    - ``"reptile"``: meta-trained with :func:`reptile_step` on the training tasks: each outer
      step draws ``meta_batch`` training tasks, runs ``inner_steps`` SGD steps on fresh
      ``shots``-sample batches of each from the current parameters, and moves the parameters
      toward the mean of the adapted ones (step size annealed linearly to 0);
    - ``"pretrained"``: the same network fitted by Adam to the *mixture* of training tasks (one
      model for all of them), on as many samples as Reptile saw;
    - ``"scratch"``: the initialisation the other two start from, untrained.

    Each seed has its own initialisation and its own draws; all seeds are computed together.

    Args:
        split: Tasks; the methods learn from ``split.train``.
        seeds: The ``N`` seeds.
        config: Hyperparameters.
        evaluate_on: ``"validation"`` or ``"test"``: which held-out tasks to adapt to.

    Returns:
        A :class:`SineMetaResult`.
    """
    start = time.perf_counter()
    if evaluate_on not in ("validation", "test"):
        raise ValueError(f"evaluate_on is {evaluate_on!r}; use 'validation' or 'test'")
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("give at least one seed")
    cfg, N, M = config, len(seeds), config.meta_batch
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    init = _init_mlp(N, cfg.hidden, gens)
    amps, phases = _as_tensors(split.train)
    x_range = split.train.x_range

    n_steps = cfg.outer_steps * cfg.inner_steps

    def draw(rows: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows`` training tasks per seed, ``n`` points each, drawn at once for speed.

        Returns ``x[N, rows, n, 1]`` and ``y[N, rows, n]``; seed ``a`` draws from its own stream.
        """
        xs, ys = [], []
        for g in gens:
            pick = torch.randint(split.train.n_tasks, (rows,), generator=g)
            x, y = _draw(amps[pick], phases[pick], n, x_range, g)
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys)

    # Reptile: per outer step, meta_batch tasks; per inner step, a fresh batch of each task
    x_all, y_all = draw(cfg.outer_steps * M, n_steps // cfg.outer_steps * cfg.shots)
    x_all = x_all.reshape(N, cfg.outer_steps, M, cfg.inner_steps, cfg.shots, 1)
    y_all = y_all.reshape(N, cfg.outer_steps, M, cfg.inner_steps, cfg.shots)
    meta = [p.clone() for p in init]
    for step in range(cfg.outer_steps):
        current = [p.repeat_interleave(M, dim=0) for p in meta]  # seed-major [N*M, ...]
        for k in range(cfg.inner_steps):
            x = x_all[:, step, :, k].reshape(N * M, cfg.shots, 1)
            y = y_all[:, step, :, k].reshape(N * M, cfg.shots)
            current = _sgd_steps(current, x, y, 1, cfg.inner_lr)[-1]
        adapted = [[p.reshape(N, M, *p.shape[1:])[:, m] for p in current] for m in range(M)]
        step_size = cfg.outer_step_size * (1 - step / cfg.outer_steps)
        meta = reptile_step(meta, adapted, step_size)

    # the mixture: as many samples per step as one inner step of Reptile, from as many tasks
    x_all, y_all = draw(n_steps * M * cfg.shots, 1)
    x_all = x_all.reshape(N, n_steps, M * cfg.shots, 1)
    y_all = y_all.reshape(N, n_steps, M * cfg.shots)
    pretrained = [p.clone() for p in init]
    # the trainer's Adam: torch.optim's first step imports torch._dynamo (over a second of CPU)
    optimizer = FusedAdam([{"params": pretrained, "lr": cfg.mixture_lr}])
    for step in range(n_steps):
        for p, g in zip(pretrained, _mse_grads(pretrained, x_all[:, step], y_all[:, step])):
            p.grad = g
        optimizer.step()

    held_out = getattr(split, evaluate_on)
    inits = {"reptile": meta, "pretrained": pretrained, "scratch": init}
    mse = {name: adapt_sine(params, held_out, cfg, seed=10**6) for name, params in inits.items()}
    return SineMetaResult(cfg, seeds, mse, inits, time.perf_counter() - start)


def sine_comparisons(mse: Mapping[str, torch.Tensor], steps: int = 5) -> list[Comparison]:
    """Reptile against the mixture after ``steps`` adaptation steps, the mixture against
    scratch, and Reptile against the mixture before adaptation; lower MSE is better.

    Args:
        mse: ``{method: [N, T, S]}`` query MSE (:func:`adapt_sine` per method, same seeds).
        steps: Adaptation steps after which the errors are compared.

    Returns:
        Three :class:`course.evaluation.Comparison`, paired by seed.
    """
    after = {m: v[:, :, steps].mean(dim=1) for m, v in mse.items()}
    zero = {m: v[:, :, 0].mean(dim=1) for m, v in mse.items()}
    options = {"higher_is_better": False}
    return [
        compare(after["reptile"], after["pretrained"], names=("reptile", "pretrained"), **options),
        compare(after["pretrained"], after["scratch"], names=("pretrained", "scratch"), **options),
        compare(
            zero["reptile"],
            zero["pretrained"],
            names=("reptile before adapting", "pretrained before adapting"),
            **options,
        ),
    ]


def choose_lr(sweep: Mapping[str, torch.Tensor], lrs: Sequence[float]) -> dict[str, float]:
    """Each method's learning rate with the lowest mean error in ``sweep`` (from
    :func:`adaptation_lr_sweep` on the validation tasks)."""
    return {m: float(lrs[int(v.mean(dim=1).argmin())]) for m, v in sweep.items()}


def adaptation_lr_sweep(
    result: SineMetaResult,
    tasks: SineTasks,
    lrs: Sequence[float],
    steps: int | None = None,
) -> dict[str, torch.Tensor]:
    """Each method's few-shot error for several adaptation learning rates (a hyperparameter).

    Taught in Lesson 06: choose it on the *validation* tasks, for every method alike.

    Args:
        result: A :func:`train_sine_meta` result (its initialisations are adapted).
        tasks: The tasks to adapt to (the validation tasks, to choose).
        lrs: Candidate SGD learning rates.
        steps: Adaptation steps after which the error counts (default ``eval_steps``).

    Returns:
        ``{method: [len(lrs), N]}``: mean query MSE over the tasks, per learning rate and seed.
    """
    steps = result.config.eval_steps if steps is None else steps
    cfg = dataclasses.replace(result.config, eval_steps=steps)
    out = {}
    for method, init in result.inits.items():
        rows = []
        for lr in lrs:
            mse = adapt_sine(init, tasks, dataclasses.replace(cfg, inner_lr=float(lr)), 10**6)
            rows.append(mse[:, :, steps].mean(dim=1))
        out[method] = torch.stack(rows)
    return out


# ============================================================================================
# 3. CartPole: generalisation along one physics parameter
# ============================================================================================

LENGTH_FAMILY = CartPoleTaskDistribution((("length", 0.25, 2.0),), log_uniform=True)
"""The lesson's task family: CartPole with the pole's half-length log-uniform in [0.25, 2]
(default 0.5), every other parameter at its default."""

GENERALISATION_CONFIG = DQNConfig(
    total_steps=8_000,
    num_envs=8,
    hidden=(64, 64),
    lr=2e-3,
    lr_end_fraction=0.0,
    lr_decay_fraction=1.0,
    buffer_size=8_000,
    batch_size=32,
    learning_starts=500,
    updates_per_step=0.4,
    target_update_interval=250,
    eps_start=1.0,
    eps_end=0.01,
    exploration_fraction=0.2,
    eval_every=8_000,
    eval_episodes=4,
)
"""The agents of the lesson's generalisation experiment (what one core affords for 30 agents):
8,000 steps on 8 envs per agent, a 64-64 network. The gradient updates cost most of the time,
in proportion to their number and batch size: 0.4 updates per step on batches of 32, and a
learning rate of 2e-3 (decaying to 0) to make up for them (at 1e-3 the agents trained on several
tasks learn less in the budget)."""

ARMS: tuple[str, ...] = ("default", "multitask", "randomised")
"""``"default"``: one task, the family's base (default CartPole). ``"multitask"``: the split's
training tasks, the sub-envs spread evenly over them, one network without task ids (Lesson 04's
``"shared"`` architecture: it must act on tasks it cannot name). ``"randomised"``: a fresh task
from the family at every episode (domain randomisation)."""


def cartpole_split(
    distribution: CartPoleTaskDistribution = LENGTH_FAMILY,
    n_train: int = 4,
    n_validation: int = 4,
    n_test: int = 8,
    seed: int = 0,
) -> TaskSplit:
    """Draw tasks from a family and split them into training, validation and test tasks.

    Each part is a *stratified* draw along the family's first parameter (its ``n`` tasks fall
    one in each of ``n`` equal-probability slices, at a random place within the slice): every
    part covers the whole family, and none of them is a lucky or unlucky cluster. The parts are
    drawn independently, so no task is in two of them. Each part is sorted along that parameter.

    Taught in Lesson 06.

    Args:
        distribution: The family.
        n_train: Training tasks (the multi-task agent's tasks).
        n_validation: Validation tasks (where methods are chosen).
        n_test: Test tasks (where the chosen method is reported).
        seed: Seed of the draws.

    Returns:
        A :class:`TaskSplit` of tuples of :class:`course.envs.CartPoleTask`.
    """
    sizes = (n_train, n_validation, n_test)
    if min(sizes) < 1:
        raise ValueError(f"split sizes {sizes}: every part needs at least one task")
    rng = np.random.default_rng([seed, 6])
    parts = []
    for n in sizes:
        u = rng.random((n, len(distribution.ranges)))
        u[:, 0] = (np.arange(n) + u[:, 0]) / n  # one task per slice of the first parameter
        parts.append(tuple(distribution.task_from_unit(row) for row in u))
    return TaskSplit(*parts)


class _StackedEnvs:
    """Several :class:`course.population.FamilyEnvs` run as one population, agents in order.

    Each arm's agents share one vector env (a handful of numpy calls per step for the whole
    population, instead of one per agent); agent ``a``'s sub-envs are seeded from its own seed
    alone, as :class:`course.population.FamilyEnvs` does, so its runs do not depend on the others.
    """

    def __init__(self, parts: Sequence[FamilyEnvs]) -> None:
        self.parts = list(parts)
        self.counts = [part.n_agents for part in self.parts]
        self.n_agents = sum(self.counts)
        self.obs_dim, self.n_actions = self.parts[0].obs_dim, self.parts[0].n_actions
        self.tasks = torch.cat([part.tasks for part in self.parts])

    def _split(self, values: Sequence[Any]) -> list[Sequence[Any]]:
        bounds = np.cumsum([0, *self.counts])
        return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def reset(self, seeds: Sequence[int], purpose: Purpose = Purpose.ENV, *keys: int) -> np.ndarray:
        parts = zip(self.parts, self._split(list(seeds)), strict=True)
        return np.concatenate([part.reset(s, purpose, *keys) for part, s in parts])

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        results = [part.step(a) for part, a in zip(self.parts, self._split(actions), strict=True)]
        return tuple(np.concatenate([r[i] for r in results]) for i in range(4))  # type: ignore

    def close(self) -> None:
        for part in self.parts:
            part.close()


def _one_task_envs(tasks: Sequence[CartPoleTask], n: int) -> FamilyEnvs:
    """Agent ``k`` runs ``tasks[k]`` on ``n`` sub-envs (no task ids: every row is task 0)."""
    return FamilyEnvs(make_cartpole_vec(tasks, n), len(tasks), 1)


def _arm_env(
    arm: str, split: TaskSplit, distribution: CartPoleTaskDistribution
) -> Callable[[int, int], FamilyEnvs]:
    """``build(n_agents, n)``: the envs of ``n_agents`` agents of ``arm``, ``n`` sub-envs each."""
    if arm == "default":
        return lambda agents, n: _one_task_envs([distribution.base] * agents, n)
    if arm == "multitask":  # the sub-envs spread evenly over the training tasks
        K = len(split.train)
        return lambda agents, n: FamilyEnvs(
            make_cartpole_vec(list(split.train) * agents, n // K), agents, 1
        )
    if arm == "randomised":
        return lambda agents, n: FamilyEnvs(
            make_randomised_cartpole_vec(distribution, agents * n), agents, 1
        )
    raise ValueError(f"unknown arm {arm!r}; use some of {ARMS}")


def _network(state: Mapping[str, torch.Tensor]) -> QNetwork:
    """A :class:`course.dqn.QNetwork` holding ``state`` (sizes read from the weights)."""
    n_hidden = len(state) // 2 - 1
    hidden = tuple(state[f"trunk.{2 * i}.weight"].shape[0] for i in range(n_hidden))
    net = QNetwork(state["trunk.0.weight"].shape[1], state["head.weight"].shape[0], hidden)
    net.load_state_dict(dict(state))
    return net.eval()


def _greedy_policy(networks: Sequence[nn.Module], E: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Greedy actions ``[N * E]`` of network ``a`` on rows ``a * E ...`` of ``obs[N * E, D]``.

    :class:`course.dqn.QNetwork` s of one size are stacked into one
    :class:`course.population.PopulationQNetwork` (three batched products per step instead of
    three per network); other networks are called one by one.
    """
    sizes = {
        (net.obs_dim, net.n_actions, net.hidden) if isinstance(net, QNetwork) else None
        for net in networks
    }
    if None in sizes or len(sizes) > 1:
        return lambda obs: torch.cat([net(o).argmax(-1) for net, o in zip(networks, obs.split(E))])
    stacked = PopulationQNetwork(len(networks), *sizes.pop())
    for a, net in enumerate(networks):
        stacked.load_agent_state_dict(a, net.state_dict())
    return lambda obs: stacked(obs.view(len(networks), E, -1)).argmax(-1).reshape(-1)


@torch.no_grad()
def task_returns(
    networks: Sequence[nn.Module],
    tasks: Sequence[CartPoleTask],
    n_episodes: int = 5,
    seed: int = 10**6,
) -> torch.Tensor:
    """Mean greedy return of every network on every task (the same start states for all).

    Taught in Lesson 06.

    Args:
        networks: ``N`` Q-networks (observations ``[B, 4]`` to values ``[B, 2]``).
        tasks: ``K`` CartPole tasks.
        n_episodes: Episodes per task (run in parallel with the other tasks').
        seed: Reset seed.

    Returns:
        ``[N, K]`` mean returns, float64.
    """
    return parts_returns(networks, [tasks], n_episodes, seed)[0]


@torch.no_grad()
def parts_returns(
    networks: Sequence[nn.Module],
    parts: Sequence[Sequence[CartPoleTask]],
    n_episodes: int = 5,
    seed: int = 10**6,
) -> list[torch.Tensor]:
    """:func:`task_returns` of every network on each of several lists of tasks, in one run.

    All the episodes run in one vector env, the slowest episode setting the pace for all of
    them; each list's episodes start from the states ``task_returns`` would give it alone.

    Args:
        networks: ``N`` Q-networks.
        parts: Lists of tasks, ``K_p`` tasks in list ``p``.
        n_episodes: Episodes per task.
        seed: Reset seed.

    Returns:
        One ``[N, K_p]`` tensor of mean returns (float64) per list.
    """
    sizes = [len(tasks) * n_episodes for tasks in parts]
    if min(sizes, default=0) < 1 or not networks:
        raise ValueError("give at least one network, one task per list and one episode")
    # block a = network a's sub-envs, list by list, grouped by task; each list's sub-env j is
    # seeded seed + j, as in a run of its own, so every network meets the same start states
    everything = [task for tasks in parts for task in tasks]
    env = make_cartpole_vec(everything * len(networks), n_episodes)
    block = [seed + j for size in sizes for j in range(size)]
    E = len(block)

    policy = _greedy_policy(networks, E)
    seeds = block * len(networks)
    returns = evaluate_policy(policy, env, env.num_envs, seeds)  # type: ignore[arg-type]
    env.close()
    per_part = returns.reshape(len(networks), E).split(sizes, dim=1)
    return [r.reshape(len(networks), -1, n_episodes).mean(dim=2) for r in per_part]


MEASURES: tuple[str, ...] = ("mean", "worst")
"""How an agent's returns on the tasks of a part become one number: ``"mean"`` over the tasks,
or the ``"worst"`` task's (the return a user of the agent can count on over the part)."""


@dataclass
class GeneralisationResult:
    """Every arm's agents, scored on every part of the split, beyond it, and on a grid of tasks.

    Attributes:
        arms: The arms, see :data:`ARMS`.
        seeds: The ``N`` seeds (each arm runs all of them; seed ``s`` gives every arm the same
            initialisation and exploration streams).
        split: The task split.
        grid: Tasks along the family's axis, for the generalisation curve.
        beyond: Tasks outside every arm's training range (extrapolation).
        returns: ``returns[part][arm]`` is ``[N, K]``, mean greedy return of each agent on each
            task of ``part``: ``"train"`` (the arm's own training tasks), ``"validation"``,
            ``"test"``, ``"beyond"`` or ``"grid"``.
        steps: Environment steps per agent at each training evaluation ``[T]``.
        curves: ``curves[arm]`` is ``[N, T]``, greedy return on the arm's own training env.
        states: ``states[arm]`` is the list of the ``N`` final network state dicts.
        env_steps: Environment steps per agent.
        wall_time: Seconds.
    """

    arms: tuple[str, ...]
    seeds: tuple[int, ...]
    split: TaskSplit
    grid: tuple[CartPoleTask, ...]
    beyond: tuple[CartPoleTask, ...]
    returns: dict[str, dict[str, torch.Tensor]]
    steps: torch.Tensor
    curves: dict[str, torch.Tensor]
    states: dict[str, list[dict[str, torch.Tensor]]]
    env_steps: int
    wall_time: float

    def score(self, part: str, arm: str, measure: str = "mean") -> torch.Tensor:
        """Each agent's return over the tasks of ``part`` by ``measure`` (see :data:`MEASURES`)
        ``[N]``."""
        if part not in self.returns:
            raise ValueError(f"unknown part {part!r}; use one of {tuple(self.returns)}")
        if measure == "mean":
            return self.returns[part][arm].mean(dim=1)
        if measure == "worst":
            return self.returns[part][arm].min(dim=1).values
        raise ValueError(f"unknown measure {measure!r}; use one of {MEASURES}")

    def mean_return(self, part: str, arm: str) -> torch.Tensor:
        """Each agent's return averaged over the tasks of ``part`` ``[N]``."""
        return self.score(part, arm, "mean")

    def gap(self, arm: str) -> torch.Tensor:
        """Generalisation gap per agent ``[N]``: return on its training tasks minus on the test
        tasks (both averaged over tasks)."""
        return self.mean_return("train", arm) - self.mean_return("test", arm)

    def on_task(self, task: CartPoleTask, n_episodes: int = 5) -> dict[str, torch.Tensor]:
        """Every agent's mean greedy return on one more task, by arm ``{arm: [N]}``."""
        nets = [_network(state) for arm in self.arms for state in self.states[arm]]
        returns = task_returns(nets, [task], n_episodes)[:, 0].split(len(self.seeds))
        return dict(zip(self.arms, returns))

    def select(self, part: str = "validation", measure: str = "mean") -> str:
        """The arm with the highest ``measure`` on ``part``, averaged over seeds."""
        return max(self.arms, key=lambda arm: float(self.score(part, arm, measure).mean()))

    def versus(self, arm: str, part: str = "test", measure: str = "mean") -> list[Comparison]:
        """``arm`` against every other arm on ``part`` by ``measure``, seed by seed (the arms
        share seeds)."""
        mine = self.score(part, arm, measure)
        return [
            compare(mine, self.score(part, other, measure), names=(arm, other))
            for other in self.arms
            if other != arm
        ]

    def chosen_comparisons(self, measure: str = "mean") -> tuple[str, list[Comparison]]:
        """The arm chosen on the validation tasks by ``measure``, compared with each other arm
        on the test tasks by the same measure, seed by seed."""
        chosen = self.select("validation", measure)
        return chosen, self.versus(chosen, "test", measure)

    def gap_comparisons(self, arm: str = "default") -> list[Comparison]:
        """Every other arm's generalisation gap against ``arm``'s, seed by seed (smaller is
        better)."""
        return [
            compare(self.gap(other), self.gap(arm), names=(other, arm), higher_is_better=False)
            for other in self.arms
            if other != arm
        ]

    def breaks(self, fraction: float = 0.5) -> dict[str, tuple[float, ...]]:
        """Where each arm breaks: the grid lengths at which its return, averaged over seeds,
        is below ``fraction`` of its return on its own training tasks."""
        lengths = [task.length for task in self.grid]
        out = {}
        for arm in self.arms:
            own = float(self.mean_return("train", arm).mean())
            curve = self.returns["grid"][arm].mean(dim=0).tolist()
            out[arm] = tuple(x for x, v in zip(lengths, curve) if v < fraction * own)
        return out

    def table(self, measure: str = "mean") -> str:
        """Each arm's return by ``measure`` on its training tasks, the validation and test
        tasks and beyond the family, and (for the mean) its generalisation gap, with 95% t
        intervals over seeds."""
        lines = []
        for arm in self.arms:
            cells = [
                f"{part} {_ci(self.score(part, arm, measure))}"
                for part in ("train", "validation", "test", "beyond")
            ]
            if measure == "mean":
                cells.append(f"gap {_ci(self.gap(arm))}")
            lines.append(f"{arm:<11}" + "   ".join(cells))
        return "\n".join(lines)


def train_generalists(
    split: TaskSplit,
    distribution: CartPoleTaskDistribution = LENGTH_FAMILY,
    seeds: Sequence[int] = range(10),
    config: DQNConfig = GENERALISATION_CONFIG,
    arms: Sequence[str] = ARMS,
    grid: Sequence[CartPoleTask] | None = None,
    beyond: Sequence[CartPoleTask] | None = None,
    n_episodes: int = 5,
    device: torch.device | str | None = None,
) -> GeneralisationResult:
    """Train every arm at the same budget, then score every agent on every part of the split.

    All agents (arms x seeds) train in one :func:`course.dqn.train_dqn_agents` call with the
    same config: the arms differ only in the tasks their envs run (see :data:`ARMS`), so the budget,
    the network, the exploration and the learning-rate schedules are matched by construction.

    Args:
        split: Training, validation and test tasks (:func:`cartpole_split`).
        distribution: The family the ``"randomised"`` arm draws from; its ``base`` is the
            ``"default"`` arm's task.
        seeds: ``N`` seeds, each run by every arm.
        config: DQN hyperparameters (``num_envs`` and ``eval_episodes`` divisible by the
            number of training tasks).
        arms: Which arms to train.
        grid: Tasks of the generalisation curve (default: 12 lengths, log-spaced from 0.15 to
            4, beyond the family on both sides).
        beyond: Tasks past every arm's training range (default: 4 lengths, log-spaced from
            1.25 to 2 times the family's longest pole).
        n_episodes: Greedy episodes per agent and task.
        device: Torch device.

    Returns:
        A :class:`GeneralisationResult`.
    """
    start = time.perf_counter()
    arms = tuple(arms)
    for arm in arms:
        _arm_env(arm, split, distribution)  # unknown arms raise here
    K = len(split.train)
    if "multitask" in arms and (config.num_envs % K or config.eval_episodes % K):
        raise ValueError(
            f"num_envs {config.num_envs} and eval_episodes {config.eval_episodes} must be "
            f"multiples of the {K} training tasks"
        )
    if grid is None:
        lengths = np.exp(np.linspace(np.log(0.15), np.log(4.0), 12))
        grid = [dataclasses.replace(distribution.base, length=float(x)) for x in lengths]
    grid = tuple(grid)
    if beyond is None:
        top = distribution.ranges[0][2]
        beyond = [
            dataclasses.replace(distribution.base, length=float(x))
            for x in np.exp(np.linspace(np.log(1.25 * top), np.log(2 * top), 4))
        ]
    beyond = tuple(beyond)
    seeds = tuple(int(s) for s in seeds)
    agents = [(arm, seed) for arm in arms for seed in seeds]
    builders = [_arm_env(arm, split, distribution) for arm in arms]
    envs, eval_envs = (
        _StackedEnvs([build(len(seeds), n) for build in builders])
        for n in (config.num_envs, config.eval_episodes)
    )
    try:
        result = train_dqn_agents(seeds * len(arms), envs, eval_envs, config, device=device)
    finally:
        envs.close()
        eval_envs.close()
    nets = [result.network(a).eval() for a in range(len(agents))]
    own = {"default": (distribution.base,), "multitask": split.train, "randomised": split.train}
    returns: dict[str, dict[str, torch.Tensor]] = {p: {} for p in ("train", *_PARTS)}
    states: dict[str, list[dict[str, torch.Tensor]]] = {}
    curves = {}
    for arm in arms:
        index = [i for i, (a, _) in enumerate(agents) if a == arm]
        arm_nets = [nets[i] for i in index]
        parts = {"train": own[arm], "validation": split.validation, "test": split.test}
        parts |= {"beyond": beyond, "grid": grid}
        for part, scores in zip(parts, parts_returns(arm_nets, list(parts.values()), n_episodes)):
            returns[part][arm] = scores
        states[arm] = [result.states[i] for i in index]
        curves[arm] = result.eval_mean[index]
    return GeneralisationResult(
        arms=arms,
        seeds=seeds,
        split=split,
        grid=grid,
        beyond=beyond,
        returns=returns,
        steps=result.steps,
        curves=curves,
        states=states,
        env_steps=config.total_steps,
        wall_time=time.perf_counter() - start,
    )


_PARTS = ("validation", "test", "beyond", "grid")


def _ci(values: torch.Tensor) -> str:
    ci = mean_ci(values)
    return f"{ci.estimate:5.1f} [{ci.low:5.1f}, {ci.high:5.1f}]"


def finetune_comparisons(
    curves: Mapping[str, torch.Tensor], reference: str = "reptile"
) -> list[Comparison]:
    """``reference`` against every other start: the mean return over the fine-tuning curve
    (its area divided by its length), seed by seed.

    Args:
        curves: :func:`finetune_from`'s curves ``{start: [N, T]}``.
        reference: The start compared with the others.

    Returns:
        One :class:`course.evaluation.Comparison` per other start.
    """
    area = {name: c.mean(dim=1) for name, c in curves.items()}
    return [
        compare(area[reference], area[name], names=(reference, name))
        for name in curves
        if name != reference
    ]


# --- Reptile in RL ---------------------------------------------------------------------------


def fresh_state(hidden: Sequence[int], seed: int) -> dict[str, torch.Tensor]:
    """A fresh CartPole :class:`course.dqn.QNetwork` state dict (PyTorch's default init rule),
    drawn from ``seed`` alone.

    Args:
        hidden: Hidden layer widths.
        seed: Seed of the draws.

    Returns:
        The state dict.
    """
    generator = torch.Generator().manual_seed(int(seed))
    net = QNetwork(4, 2, tuple(hidden))
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, nn.Linear):
                bound = 1 / math.sqrt(layer.in_features)
                for p in (layer.weight, layer.bias):
                    p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


REPTILE_INNER_CONFIG = dataclasses.replace(
    GENERALISATION_CONFIG,
    lr=1e-3,
    batch_size=64,
    total_steps=1_000,
    buffer_size=1_000,
    learning_starts=250,
    eps_start=0.3,
    exploration_fraction=0.5,
    lr_end_fraction=1.0,  # a constant rate within an inner loop
    updates_per_step=0.25,
    eval_every=1_000,
)
"""One inner loop of RL Reptile: 1,000 steps of DQN on one task from the current
meta-parameters, with a fresh replay buffer, little exploration and a constant learning rate
(1e-3, batches of 64)."""

FINETUNE_CONFIG = dataclasses.replace(REPTILE_INNER_CONFIG, eval_every=500)
"""Fine-tuning on a held-out task: an inner loop's budget, evaluated every 500 steps."""


@dataclass
class ReptileDQNResult:
    """What :func:`reptile_dqn` returns.

    Attributes:
        state: The meta-learned :class:`course.dqn.QNetwork` state dict.
        env_steps: Environment steps spent, over all inner loops.
        tasks: The task of every inner loop, iteration by iteration.
        inner_returns: ``[iterations, tasks_per_iteration]`` greedy return at the end of each
            inner loop, on its task.
        wall_time: Seconds.
    """

    state: dict[str, torch.Tensor]
    env_steps: int
    tasks: list[list[CartPoleTask]]
    inner_returns: torch.Tensor
    wall_time: float


def reptile_dqn(
    distribution: CartPoleTaskDistribution = LENGTH_FAMILY,
    iterations: int = 5,
    tasks_per_iteration: int = 2,
    inner_config: DQNConfig = REPTILE_INNER_CONFIG,
    step_size: float = 1.0,
    seed: int = 0,
    init_state: Mapping[str, torch.Tensor] | None = None,
    device: torch.device | str | None = None,
) -> ReptileDQNResult:
    """Meta-learn a Q-network initialisation with Reptile over a task family.

    Each iteration draws ``tasks_per_iteration`` tasks from ``distribution``, trains one DQN
    per task from the current meta-parameters (:func:`course.dqn.train_dqn_agents`, all tasks
    at once, each with a fresh replay buffer and optimizer), and moves the meta-parameters
    toward the mean of the trained ones with :func:`reptile_step`, the step size annealed
    linearly from ``step_size`` to 0 over the iterations. (The first iteration from a fresh
    initialisation is ordinary training; ``inner_config.eps_start`` applies to every inner
    loop.)

    Args:
        distribution: The training task distribution.
        iterations: Outer steps.
        tasks_per_iteration: Tasks per outer step (the meta-batch).
        inner_config: DQN hyperparameters of one inner loop.
        step_size: Initial outer step size.
        seed: Seed of the initialisation, the task draws and the inner loops' streams.
        init_state: Starting meta-parameters (default: a fresh :class:`course.dqn.QNetwork`).
        device: Torch device.

    Returns:
        A :class:`ReptileDQNResult`.
    """
    start = time.perf_counter()
    if iterations < 1 or tasks_per_iteration < 1:
        raise ValueError("iterations and tasks_per_iteration must be at least 1")
    rng = np.random.default_rng([seed, 6])
    if init_state is None:
        init_state = fresh_state(inner_config.hidden, seed)
    meta = {k: v.detach().clone().cpu() for k, v in init_state.items()}
    names = list(meta)
    all_tasks, inner_returns = [], []
    for it in range(iterations):
        u = rng.random((tasks_per_iteration, len(distribution.ranges)))
        tasks = [distribution.task_from_unit(row) for row in u]
        seeds = [seed * 10_000 + it * tasks_per_iteration + k for k in range(tasks_per_iteration)]
        result = _train_on_tasks(inner_config, seeds, tasks, [meta] * len(tasks), device)
        adapted = [[state[name] for name in names] for state in result.states]
        size = step_size * (1 - it / iterations)
        meta = dict(zip(names, reptile_step([meta[n] for n in names], adapted, size)))
        all_tasks.append(tasks)
        inner_returns.append(result.eval_mean[:, -1])
    return ReptileDQNResult(
        state=meta,
        env_steps=iterations * tasks_per_iteration * inner_config.total_steps,
        tasks=all_tasks,
        inner_returns=torch.stack(inner_returns),
        wall_time=time.perf_counter() - start,
    )


def _train_on_tasks(
    config: DQNConfig,
    seeds: Sequence[int],
    tasks: Sequence[CartPoleTask],
    init_states: Sequence[Mapping[str, torch.Tensor]],
    device: torch.device | str | None,
) -> DQNResult:
    """:func:`course.dqn.train_dqn_agents` with agent ``a`` on ``tasks[a]`` from
    ``init_states[a]``, every agent's envs in one vector env."""
    envs = _one_task_envs(tasks, config.num_envs)
    eval_envs = _one_task_envs(tasks, config.eval_episodes)
    try:
        return train_dqn_agents(seeds, envs, eval_envs, config, init_states, device=device)
    finally:
        envs.close()
        eval_envs.close()


def finetune_from(
    starts: Mapping[str, Mapping[str, torch.Tensor]],
    task: CartPoleTask,
    seeds: Sequence[int] = range(10),
    config: DQNConfig = FINETUNE_CONFIG,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Fine-tune every starting network on one task, with every seed, at the same budget.

    All (start, seed) agents train in one :func:`course.dqn.train_dqn_agents` call with one
    config; seed ``s`` gives every start the same exploration and environment streams, so the
    starts can be compared seed by seed.

    Args:
        starts: Starting :class:`course.dqn.QNetwork` state dicts by name.
        task: The target task.
        seeds: ``N`` seeds.
        config: Fine-tuning hyperparameters (the same for every start).
        device: Torch device.

    Returns:
        ``(steps[T], curves)`` with ``curves[name]`` the ``[N, T]`` greedy returns on ``task``.
    """
    seeds = tuple(int(s) for s in seeds)
    agents = [(name, s) for name in starts for s in seeds]
    result = _train_on_tasks(
        config,
        [s for _, s in agents],
        [task] * len(agents),
        [dict(starts[name]) for name, _ in agents],
        device,
    )
    N = len(seeds)
    curves = {name: result.eval_mean[i * N : (i + 1) * N] for i, name in enumerate(starts)}
    return result.steps, curves
