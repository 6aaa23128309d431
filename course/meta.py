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
   training tasks, randomised tasks) at matched budgets, their returns on every task, and a
   Reptile initialisation fine-tuned on a held-out task.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from course.multitask import SineTasks, sine_tasks

__all__ = [
    "SINE_META_CONFIG",
    "SineMetaConfig",
    "SineMetaResult",
    "TaskSplit",
    "adapt_sine",
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


def _sgd_steps(
    params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int, lr: float
) -> list[list[torch.Tensor]]:
    """Plain SGD on the MSE of every stacked network on its own data; params after each step."""
    current = [p.detach() for p in params]
    history = [current]
    for _ in range(steps):
        current = [p.requires_grad_(True) for p in (q.detach().clone() for q in current)]
        # summing the networks' losses keeps each network's gradient its own
        loss = (_mlp(current, x) - y).pow(2).mean(dim=1).sum()
        grads = torch.autograd.grad(loss, current)
        current = [(p - lr * g).detach() for p, g in zip(current, grads)]
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
        wall_time: Seconds.
    """

    config: SineMetaConfig
    seeds: tuple[int, ...]
    mse: dict[str, torch.Tensor]
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
    evaluate_on: str = "test",
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
    pretrained = [p.clone().requires_grad_(True) for p in init]
    optimizer = torch.optim.Adam(pretrained, lr=cfg.mixture_lr)
    for step in range(n_steps):
        loss = (_mlp(pretrained, x_all[:, step]) - y_all[:, step]).pow(2).mean(dim=1).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    held_out = getattr(split, evaluate_on)
    inits = {"reptile": meta, "pretrained": [p.detach() for p in pretrained], "scratch": init}
    mse = {name: adapt_sine(params, held_out, cfg, seed=10**6) for name, params in inits.items()}
    return SineMetaResult(cfg, seeds, mse, time.perf_counter() - start)
