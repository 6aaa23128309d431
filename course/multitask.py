"""Multi-task learning: one network, several tasks, and a loss that ties them together.

Taught in Lesson 04. The objective over K tasks with shared parameters ``theta_shared`` (a trunk)
and task-specific parameters ``theta_k`` (one head per task) is

    sum_k L_k(theta_shared, theta_k) + lam * sum_k ||theta_k||^2,

optionally with a learning rate ``eta_k`` per task. The penalty is weight decay on the heads; its
principled relative (Evgeniou and Pontil, 2004) pulls every head toward the heads' mean instead of
toward zero: ``lam -> 0`` gives independent heads, ``lam -> inf`` one shared model.

The module reads top to bottom like the lesson:

1. the pieces the student writes: :class:`MultiHeadQNetwork`, :func:`multitask_loss`,
   :func:`mean_regularizer`, :func:`task_param_groups`, :func:`gradient_conflict`,
   :func:`pcgrad`;
2. the supervised warm-up: K sine waves fitted by one multi-head regressor
   (:func:`sine_tasks`, :func:`train_supervised`), where the loss is seen in isolation;
3. the multi-task DQN (:func:`train_multitask_dqn`, the multi-task entry point of
   :func:`course.population.train_population`): one replay holding every task's transitions
   with their task ids, a multi-head Q-network, per-task learning rates, trained for a
   *population* of agents (seeds, regularisation strengths) in one batched computation, with the
   single-task agents and the head-less baselines it is compared with; :func:`train_variants`
   trains several variants (penalties, or task input against none) in one population;
4. the summaries the lesson prints: t intervals over seeds and paired verdicts
   (:func:`course.evaluation.compare`), the single-task agents matched task by task
   (:func:`single_task_config`, :func:`compare_with_singles`), the dodge of a head-only penalty
   (:func:`rescale_trunk`, :func:`dodge`) and the gradient conflict against its same-task noise
   baseline (:func:`conflict_curves`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from course.dqn import td_target
from course.envs import (
    CartPoleTask,
    GridTask,
    make_cartpole_vec,
    make_grid_vec,
)
from course.evaluation import Comparison, compare, compare_censored, curve_band, mean_ci
from course.population import (
    Agents,
    FamilyEnvs,
    PopulationQNetwork,
    TrainerConfig,
    default_device,
    greedy_returns,
    train_population,
)
from course.replay import Batch

__all__ = [
    "ARCHITECTURES",
    "REGULARIZERS",
    "LESSON_CONFIG",
    "Dodge",
    "MultiHeadQNetwork",
    "MultiTaskConfig",
    "MultiTaskResult",
    "SineTasks",
    "SinglesComparison",
    "SupervisedConfig",
    "SupervisedResult",
    "compare_with_singles",
    "concat_results",
    "conflict_curves",
    "dodge",
    "final_mean",
    "format_conflict_over_training",
    "format_final_scores",
    "format_lam_sweep",
    "format_norm_change",
    "format_singles_comparison",
    "format_supervised_sweep",
    "grid_observations",
    "gradient_conflict",
    "lam_final_bands",
    "lam_per_seed",
    "lam_sweep_bands",
    "lam_verdicts",
    "mean_conflict",
    "mean_regularizer",
    "mean_task_curves",
    "multitask_loss",
    "multitask_update",
    "norms_per_lam",
    "pcgrad",
    "per_task_mean",
    "rescale_trunk",
    "score_band",
    "sine_data",
    "sine_tasks",
    "single_task_config",
    "singles_band",
    "singles_verdicts",
    "steps_to_threshold",
    "supervised_per_seed",
    "supervised_sweep",
    "supervised_sweep_bands",
    "task_param_groups",
    "take_agents",
    "train_multitask_dqn",
    "train_supervised",
    "train_variants",
]


# ============================================================================================
# 1. The exercises
# ============================================================================================


def _mlp(obs_dim: int, hidden: Sequence[int]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    width = obs_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers), width


class MultiHeadQNetwork(nn.Module):
    """A shared trunk and one linear head per task; each row is answered by its task's head.

    Taught in Lesson 04 (exercise ``multitask.MultiHeadQNetwork``). The trunk is the hidden
    layers of :class:`course.dqn.QNetwork` (``nn.Linear`` then ReLU, one pair per width in
    ``hidden``); head ``k`` is an ``nn.Linear(hidden[-1], n_actions)``.

    Args:
        obs_dim: Size ``D`` of an observation.
        n_actions: Number of actions ``A`` (outputs per head).
        n_tasks: Number of tasks ``K`` (heads).
        hidden: Widths of the trunk's hidden layers.

    Attributes:
        trunk: ``[B, D] -> [B, hidden[-1]]``, shared by every task.
        heads: ``nn.ModuleList`` of ``K`` heads.

    Example:
        >>> net = MultiHeadQNetwork(obs_dim=4, n_actions=2, n_tasks=3)
        >>> net(torch.zeros(5, 4), torch.tensor([0, 2, 1, 1, 0])).shape
        torch.Size([5, 2])
    """

    def __init__(
        self, obs_dim: int, n_actions: int, n_tasks: int, hidden: Sequence[int] = (64,)
    ) -> None:
        super().__init__()
        if n_tasks < 1:
            raise ValueError(f"n_tasks is {n_tasks}; a multi-head network needs at least 1 head")
        self.obs_dim, self.n_actions, self.n_tasks = obs_dim, n_actions, n_tasks
        self.hidden = tuple(hidden)
        self.trunk, width = _mlp(obs_dim, hidden)
        self.heads = nn.ModuleList(nn.Linear(width, n_actions) for _ in range(n_tasks))

    def forward(self, obs: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """Values ``[B, A]`` of observations ``[B, D]``, row ``b`` from head ``tasks[b]``.

        Every head is applied to every row (one matrix product for all heads), then each row
        keeps its own task's values: cheaper than a Python loop over rows or masks.
        """
        features = self.trunk(obs)  # [B, H]
        weight = torch.stack([head.weight for head in self.heads])  # [K, A, H]
        bias = torch.stack([head.bias for head in self.heads])  # [K, A]
        every_head = torch.einsum("bh,kah->bka", features, weight) + bias  # [B, K, A]
        index = tasks.long().view(-1, 1, 1).expand(-1, 1, self.n_actions)
        return every_head.gather(1, index).squeeze(1)

    def task_parameters(self, k: int) -> list[nn.Parameter]:
        """The parameters specific to task ``k``: those of head ``k``, nothing of the trunk."""
        return list(self.heads[k].parameters())


def multitask_loss(
    task_losses: torch.Tensor | Sequence[torch.Tensor],
    task_params: Sequence[Sequence[torch.Tensor]],
    lam: float,
) -> torch.Tensor:
    """``sum_k L_k + lam * sum_k sum_p ||p||^2``: the task losses plus weight decay on the heads.

    Taught in Lesson 04 (exercise ``multitask.multitask_loss``). The penalty is on the
    task-specific parameters only: the shared trunk is not regularised. The norm is squared
    (its gradient, ``2 lam p``, shrinks each weight in proportion to its size).

    Args:
        task_losses: ``[K]`` (or a sequence of K scalars), one loss per task.
        task_params: ``task_params[k]`` lists the parameters of task ``k``.
        lam: Strength of the penalty (>= 0).

    Returns:
        A scalar tensor, differentiable with respect to the losses and the parameters.

    Example:
        >>> multitask_loss(torch.tensor([1.0, 2.0]), [[torch.ones(2)], [torch.ones(3)]], 0.1)
        tensor(3.5000)
    """
    losses = task_losses if isinstance(task_losses, torch.Tensor) else torch.stack(task_losses)
    penalty = sum(p.pow(2).sum() for params in task_params for p in params)
    return losses.sum() + lam * penalty


def mean_regularizer(task_params: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """``sum_k sum_i ||p_k,i - mean_j p_j,i||^2``: pulls the tasks' parameters toward their mean.

    Taught in Lesson 04 (exercise ``multitask.mean_regularizer``; Evgeniou and Pontil, 2004).
    Parameter ``i`` of every task must have the same shape. With a weight ``lam``, ``lam -> 0``
    leaves K independent heads and ``lam -> inf`` forces them equal: one shared model. It is
    ``1 / (2K)`` times the sum of squared distances over all ordered pairs of tasks.

    Args:
        task_params: ``task_params[k][i]`` is parameter ``i`` of task ``k``.

    Returns:
        A scalar tensor (0 for a single task).

    Example:
        >>> mean_regularizer([[torch.tensor([1.0, 0.0])], [torch.tensor([3.0, 0.0])]])
        tensor(2.)
    """
    total = torch.zeros(())
    for same in zip(*task_params, strict=True):
        stacked = torch.stack(list(same))  # [K, *shape]
        total = total + (stacked - stacked.mean(0)).pow(2).sum()
    return total


def task_param_groups(
    model: nn.Module, shared_lr: float, task_lrs: Sequence[float]
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the shared parameters at ``shared_lr``, head ``k`` at
    ``task_lrs[k]``.

    Taught in Lesson 04 (exercise ``multitask.task_param_groups``). Every parameter of the model
    lands in exactly one group (PyTorch refuses a parameter in two groups, and one in no group
    is never trained). The shared parameters are all those that belong to no task.

    Args:
        model: A network with ``task_parameters(k)`` (e.g. :class:`MultiHeadQNetwork`).
        shared_lr: Learning rate of the shared parameters.
        task_lrs: One learning rate per task; its length is the number of tasks.

    Returns:
        ``[{"params": shared, "lr": shared_lr}, {"params": head_0, "lr": task_lrs[0]}, ...]``,
        ready for ``torch.optim.Adam(groups)``.
    """
    task_ids: set[int] = set()
    groups = []
    for k, lr in enumerate(task_lrs):
        params = list(model.task_parameters(k))
        task_ids.update(id(p) for p in params)
        groups.append({"params": params, "lr": float(lr)})
    shared = [p for p in model.parameters() if id(p) not in task_ids]
    return [{"params": shared, "lr": float(shared_lr)}, *groups]


def gradient_conflict(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cosine similarity between every pair of (flattened) task gradients.

    Taught in Lesson 04 (exercise ``multitask.gradient_conflict``). A negative entry means the
    two tasks pull the shared parameters in opposing directions. A zero gradient has no
    direction: its similarity with every gradient, itself included, is defined as 0.

    Args:
        grads: K gradients of the shared parameters, one per task, all with the same number of
            elements.

    Returns:
        ``[K, K]`` similarities in ``[-1, 1]``, symmetric, 1 on the diagonal (0 for zero
        gradients).

    Example:
        >>> gradient_conflict([torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])])
        tensor([[ 1.0000, -0.7071],
                [-0.7071,  1.0000]])
    """
    G = torch.stack([torch.as_tensor(g).flatten() for g in grads])
    norms = G.norm(dim=1)
    unit = G / torch.where(norms > 0, norms, torch.ones_like(norms)).unsqueeze(1)
    return (unit @ unit.T).clamp(-1.0, 1.0)


def pcgrad(grads: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad (Yu et al., 2020): project away conflicting components, then sum.

    Taught in Lesson 04 (exercise ``multitask.pcgrad``). For each task ``i``, starting from
    ``g_i``, visit the other tasks ``j`` in a random order; whenever the current ``g_i`` has a
    negative dot product with the *original* ``g_j``, remove its component along ``g_j``:
    ``g_i <- g_i - (g_i . g_j) / ||g_j||^2 g_j``. Gradients that do not conflict (dot >= 0) are
    left alone. The result is the sum of the projected gradients. The inputs are not modified.

    Args:
        grads: K flat gradients of equal length.
        generator: Source of the random orders (one permutation of the tasks per task ``i``).

    Returns:
        The combined gradient, same shape as ``grads[0]``.

    Example:
        >>> pcgrad([torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])])
        tensor([0.5000, 1.5000])
    """
    G = torch.stack([torch.as_tensor(g) for g in grads])  # [K, P], the originals
    K = len(G)
    # Every projected g_i stays a combination sum_m coef[m] g_m of the originals, so the dot
    # products it needs come from the K x K Gram matrix: the same arithmetic, without touching
    # the P-dimensional vectors again until the final sum.
    gram = (G.double() @ G.double().T).tolist()
    total = [0.0] * K
    for i in range(K):
        coef = [1.0 if m == i else 0.0 for m in range(K)]
        for j in torch.randperm(K, generator=generator).tolist():
            if j == i:
                continue
            dot = sum(coef[m] * gram[m][j] for m in range(K))  # (current g_i) . g_j
            if dot < 0:
                coef[j] -= dot / gram[j][j]
        total = [t + c for t, c in zip(total, coef)]
    return torch.tensor(total, dtype=G.dtype, device=G.device) @ G


def multitask_update(
    q_net: MultiHeadQNetwork,
    target_net: MultiHeadQNetwork,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    gamma: float,
    lam: float = 0.0,
    regularizer: str = "l2",
    use_pcgrad: bool = False,
    generator: torch.Generator | None = None,
) -> float:
    """One gradient step of multi-task DQN on a batch mixing the tasks; returns the task loss.

    Taught in Lesson 04 (exercise ``multitask.multitask_update``), from the pieces above:

    1. TD targets from ``target_net`` without gradient, each row through its own task's head,
       no bootstrap past ``terminated``;
    2. ``L_k`` = the mean Huber loss over the batch rows of task ``k``; the task loss is the sum
       of ``L_k`` over the tasks present in the batch (a task with more rows does not weigh
       more: one mean over all rows would let it);
    3. the penalty ``lam * R`` on the task parameters (the heads) only: ``R`` is the squared
       norm of the heads (``regularizer="l2"``, :func:`multitask_loss`) or
       :func:`mean_regularizer` (``"mean"``);
    4. gradients zeroed, then either one ``backward`` of ``task loss + penalty`` or, with
       ``use_pcgrad``, each head's gradient from its own task's loss (plus the penalty) and the
       trunk's gradient :func:`pcgrad` of the tasks' trunk gradients;
    5. one ``optimizer.step()``.

    Args:
        q_net: Online multi-head network; updated in place by ``optimizer``.
        target_net: Target network of the same shape; only read.
        optimizer: Optimizer over ``q_net``'s parameters.
        batch: Transitions with their task ids (:class:`course.replay.Batch`).
        gamma: Discount factor.
        lam: Penalty weight (>= 0).
        regularizer: ``"l2"`` or ``"mean"``.
        use_pcgrad: Combine the tasks' trunk gradients with PCGrad instead of summing them.
        generator: Source of PCGrad's random projection orders.

    Returns:
        The task loss ``sum_k L_k`` before the step (without the penalty), as a Python float.
    """
    if regularizer not in ("l2", "mean"):
        raise ValueError(f'regularizer is {regularizer!r}; use "l2" or "mean"')
    with torch.no_grad():
        next_q = target_net(batch.next_obs, batch.tasks)
        targets = td_target(batch.rewards, next_q, batch.terminated, gamma)
    taken = q_net(batch.obs, batch.tasks).gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
    errors = F.smooth_l1_loss(taken, targets, reduction="none")
    present = batch.tasks.unique().tolist()
    task_losses = [errors[batch.tasks == k].mean() for k in present]
    heads = [q_net.task_parameters(k) for k in range(q_net.n_tasks)]
    if regularizer == "l2":
        penalty = lam * sum(p.pow(2).sum() for params in heads for p in params)
    else:
        penalty = lam * mean_regularizer(heads)
    total = torch.stack(task_losses).sum()
    optimizer.zero_grad()
    if use_pcgrad:
        trunk = list(q_net.trunk.parameters())
        per_task = [
            torch.cat([g.flatten() for g in torch.autograd.grad(loss, trunk, retain_graph=True)])
            for loss in task_losses
        ]
        (total + penalty).backward()  # the heads' gradients: each from its own task's rows
        combined = pcgrad(per_task, generator)
        offset = 0
        for p in trunk:
            p.grad = combined[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
    else:
        (total + penalty).backward()
    optimizer.step()
    return float(total.detach())


# ============================================================================================
# 2. A population of multi-head networks, and the supervised warm-up
# ============================================================================================


def _agent_penalty(task_params: Sequence[Sequence[torch.Tensor]], kind: str) -> torch.Tensor:
    """Per-agent penalty ``[N]`` of stacked task parameters ``[N, ...]``.

    ``"l2"`` is the penalty of :func:`multitask_loss` and ``"mean"`` :func:`mean_regularizer`,
    computed for every agent's slice at once (the tests check both against the library
    functions agent by agent).
    """
    n_agents = task_params[0][0].shape[0]
    total = torch.zeros(n_agents, device=task_params[0][0].device)
    if kind == "l2":
        for params in task_params:
            for p in params:
                total = total + p.pow(2).flatten(1).sum(1)
    elif kind == "mean":
        for same in zip(*task_params, strict=True):
            stacked = torch.stack(list(same))  # [K, N, ...]
            total = total + (stacked - stacked.mean(0)).pow(2).flatten(2).sum((0, 2))
    else:
        raise ValueError(f"regularizer is {kind!r}; use 'l2' (weight decay) or 'mean'")
    return total


def per_task_mean(values: torch.Tensor, tasks: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """Mean of ``values`` over the rows of each task, for every agent.

    Args:
        values: ``[N, B]`` per-row losses.
        tasks: ``[N, B]`` int64 task ids in ``[0, n_tasks)``.
        n_tasks: ``K``.

    Returns:
        ``[N, K]``; 0 for a task with no row (it then contributes no gradient).
    """
    sums = torch.zeros(*values.shape[:-1], n_tasks, dtype=values.dtype, device=values.device)
    counts = torch.zeros_like(sums)
    sums = sums.scatter_add(-1, tasks, values)
    counts = counts.scatter_add(-1, tasks, torch.ones_like(values))
    return sums / counts.clamp(min=1)


@dataclass(frozen=True)
class SineTasks:
    """K regression tasks ``y = amplitude_k * sin(x + phase_k)``, ``x`` uniform in ``x_range``."""

    amplitudes: tuple[float, ...]
    phases: tuple[float, ...]
    x_range: tuple[float, float] = (-math.pi, math.pi)

    @property
    def n_tasks(self) -> int:
        return len(self.amplitudes)


def sine_tasks(
    n_tasks: int,
    seed: int = 0,
    amplitude: tuple[float, float] = (0.5, 1.5),
    phase: tuple[float, float] = (0.0, 1.0),
) -> SineTasks:
    """K related sine waves: amplitudes and phases drawn uniformly in narrow ranges.

    Args:
        n_tasks: ``K``.
        seed: Seed of the draws.
        amplitude: Range of the amplitudes.
        phase: Range of the phases (radians).

    Returns:
        The tasks.
    """
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(2, n_tasks, generator=generator, dtype=torch.float64)
    amps = amplitude[0] + (amplitude[1] - amplitude[0]) * u[0]
    phases = phase[0] + (phase[1] - phase[0]) * u[1]
    return SineTasks(tuple(amps.tolist()), tuple(phases.tolist()))


def sine_data(
    tasks: SineTasks, n_per_task: int, generator: torch.Generator, noise: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n_per_task`` noisy samples of every task.

    Args:
        tasks: The sine tasks.
        n_per_task: Samples per task.
        generator: Source of the inputs and the noise.
        noise: Standard deviation of Gaussian noise added to ``y``.

    Returns:
        ``(x[K * n, 1], y[K * n], task_ids[K * n])``, float32, float32 and int64, task by task.
    """
    K = tasks.n_tasks
    low, high = tasks.x_range
    x = low + (high - low) * torch.rand(K, n_per_task, generator=generator)
    amps = torch.tensor(tasks.amplitudes, dtype=torch.float32)[:, None]
    phases = torch.tensor(tasks.phases, dtype=torch.float32)[:, None]
    y = amps * torch.sin(x + phases) + noise * torch.randn(K, n_per_task, generator=generator)
    task_ids = torch.arange(K).repeat_interleave(n_per_task)
    return x.reshape(-1, 1), y.reshape(-1), task_ids


@dataclass(frozen=True)
class SupervisedConfig:
    """Hyperparameters of :func:`train_supervised` (a few-shot setting where sharing matters)."""

    n_tasks: int = 4
    """number of sine waves"""
    n_train: int = 6
    """training samples per task (few: independent heads overfit)"""
    n_test: int = 200
    """test samples per task"""
    noise: float = 0.3
    """standard deviation of the label noise of the training samples"""
    hidden: tuple[int, ...] = (32, 32)
    """trunk widths"""
    steps: int = 400
    """full-batch Adam steps"""
    lr: float = 1e-2
    """learning rate of every parameter"""
    task_seed: int = 0
    """seed of the tasks (amplitudes and phases), shared by every run"""


@dataclass
class SupervisedResult:
    """What :func:`train_supervised` returns for ``N`` runs.

    Attributes:
        config: The configuration.
        lams: ``[N]`` penalty weight of each run.
        seeds: ``[N]`` seed of each run.
        regularizer: ``"l2"`` or ``"mean"``.
        history: One stats dict per step (means over runs), CS285-style.
        train_loss: ``[N, T]`` sum of the per-task training MSEs at each step.
        test_mse: ``[N, K]`` final test MSE per task (measured without gradient).
        network: The trained population.
        wall_time: Seconds.
    """

    config: SupervisedConfig
    lams: torch.Tensor
    seeds: torch.Tensor
    regularizer: str
    history: list[dict[str, float]]
    train_loss: torch.Tensor
    test_mse: torch.Tensor
    network: PopulationQNetwork
    wall_time: float


def train_supervised(
    config: SupervisedConfig = SupervisedConfig(),
    lams: Sequence[float] = (0.0,),
    seeds: Sequence[int] = (0,),
    regularizer: str = "l2",
) -> SupervisedResult:
    """Fit the K sine tasks with a shared trunk and one head per task, for every (lam, seed).

    Each run minimises ``sum_k MSE_k + lam * R(theta_1..theta_K)`` with ``R`` the weight decay
    of :func:`multitask_loss` (``"l2"``) or :func:`mean_regularizer` (``"mean"``) on the heads.
    Runs are independent (own initialisation and training sample, from the seed) and trained
    together by a :class:`course.population.PopulationQNetwork` with K heads. Each step zeroes
    the gradients, computes the loss, back-propagates and steps; the test error is measured
    under ``torch.no_grad()``.

    Args:
        config: Hyperparameters.
        lams: Penalty weights; every lam is run with every seed.
        seeds: Seeds of the runs (initialisation and training samples).
        regularizer: ``"l2"`` or ``"mean"``.

    Returns:
        A :class:`SupervisedResult` over the ``len(lams) * len(seeds)`` runs, lam-major.
    """
    return supervised_sweep(config, lams, seeds, (regularizer,))[regularizer]


def supervised_sweep(
    config: SupervisedConfig = SupervisedConfig(),
    lams: Sequence[float] = (0.0,),
    seeds: Sequence[int] = (0,),
    regularizers: Sequence[str] = ("l2", "mean"),
) -> dict[str, SupervisedResult]:
    """:func:`train_supervised` for every regulariser, all runs trained in one population.

    A run's numbers depend only on its own lam, seed and regulariser, so this gives each
    regulariser's result of :func:`train_supervised` in one pass over the steps.

    Returns:
        Regulariser -> its :class:`SupervisedResult` (runs lam-major).
    """
    start = time.perf_counter()
    if not regularizers or any(r not in REGULARIZERS for r in regularizers):
        raise ValueError(f"regularizers are {regularizers!r}; use 'l2' (weight decay) or 'mean'")
    tasks = sine_tasks(config.n_tasks, config.task_seed)
    K = config.n_tasks
    runs = [(r, float(lam), int(s)) for r in regularizers for lam in lams for s in seeds]
    run_lams = torch.tensor([lam for _, lam, _ in runs], dtype=torch.float64)
    use_mean = torch.tensor([r == "mean" for r, _, _ in runs])
    N = len(runs)
    gens = [torch.Generator().manual_seed(s) for _, _, s in runs]
    net = PopulationQNetwork(N, 1, 1, config.hidden, n_heads=K, generators=gens)
    data = [sine_data(tasks, config.n_train, g, config.noise) for g in gens]
    x = torch.stack([d[0] for d in data])  # [N, K*n, 1]
    y = torch.stack([d[1] for d in data])
    task_ids = torch.stack([d[2] for d in data])
    test_gen = torch.Generator().manual_seed(10**6 + config.task_seed)
    tx, ty, tt = sine_data(tasks, config.n_test, test_gen)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    kinds = [kind for kind in REGULARIZERS if kind in regularizers]
    losses, penalties = [], []
    for _ in range(config.steps):
        optimizer.zero_grad(set_to_none=True)
        pred = net(x, task_ids).squeeze(-1)
        task_mse = per_task_mean((pred - y).pow(2), task_ids, K)  # [N, K]
        heads = [net.head_parameters(k) for k in range(K)]
        per_kind = {kind: _agent_penalty(heads, kind) for kind in kinds}
        penalty = (
            torch.where(use_mean, per_kind["mean"], per_kind["l2"])
            if len(per_kind) == 2
            else per_kind[kinds[0]]
        )  # [N]
        loss = task_mse.sum() + (run_lams.float() * penalty).sum()
        loss.backward()
        optimizer.step()
        losses.append(task_mse.detach().sum(1))
        penalties.append(penalty.detach())
    with torch.no_grad():
        pred = net(tx.expand(N, -1, -1), tt.expand(N, -1)).squeeze(-1)
        test_mse = per_task_mean((pred - ty).pow(2), tt.expand(N, -1), K)
    train_loss, penalty_path = torch.stack(losses, dim=1), torch.stack(penalties, dim=1)
    wall_time = time.perf_counter() - start
    out = {}
    for name in regularizers:
        index = torch.tensor([i for i, (r, _, _) in enumerate(runs) if r == name])
        lam_n = run_lams[index].float().unsqueeze(1)
        n = len(index)
        weighted = train_loss[index] + lam_n * penalty_path[index]  # [n, T]
        history = [
            {
                "train_mse": float(train_loss[index, t].mean()) / K,
                "penalty": float(penalty_path[index, t].mean()),
                "loss": float(weighted[:, t].sum()) / n,
            }
            for t in range(config.steps)
        ]
        out[name] = SupervisedResult(
            config=config,
            lams=run_lams[index],
            seeds=torch.tensor([s for r, _, s in runs if r == name]),
            regularizer=name,
            history=history,
            train_loss=train_loss[index],
            test_mse=test_mse[index],
            network=_take_population(net, index),
            wall_time=wall_time,
        )
    return out


def _take_population(net: PopulationQNetwork, index: torch.Tensor) -> PopulationQNetwork:
    """A population of the chosen agents of ``net`` (copies of their weights)."""
    part = PopulationQNetwork(len(index), net.obs_dim, net.n_actions, net.hidden, net.n_heads)
    with torch.no_grad():
        for (w, b), (w_all, b_all) in zip(part.layers(), net.layers(), strict=True):
            w.copy_(w_all[index])
            b.copy_(b_all[index])
    return part


# ============================================================================================
# 3. Multi-task DQN on a task family
# ============================================================================================

Architecture = Literal["heads", "task_input", "shared"]
Regularizer = Literal["l2", "mean"]
REGULARIZERS: tuple[str, ...] = get_args(Regularizer)
"""``"l2"``: weight decay on the heads (:func:`multitask_loss`). ``"mean"``: the heads pulled
toward their mean (:func:`mean_regularizer`)."""
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
"""``"heads"``: shared trunk, one head per task. ``"task_input"``: one head, the task's one-hot
appended to the observation. ``"shared"``: the ``task_input`` network with the one-hot always 0,
so one head and no task information at all (the tasks' conflicting targets are averaged): the
same network and initialisation as ``task_input``, without what it says, so the two can share a
population."""


@dataclass(frozen=True)
class MultiTaskConfig(TrainerConfig):
    """Hyperparameters of :func:`train_multitask_dqn` (defaults: the grid family).

    The fields of :class:`course.population.TrainerConfig` (with the grid family's defaults),
    the multi-task budget and the multi-task choices. String choices are checked when the
    config is built.
    """

    hidden: tuple[int, ...] = (64,)
    """trunk widths"""
    lr: float = 1e-3
    """Adam learning rate of the shared parameters"""
    lr_end_fraction: float = 0.1
    """every learning rate decays linearly to this fraction of its start"""
    lr_decay_fraction: float = 1.0
    """fraction of training over which the learning rates decay"""
    gamma: float = 0.9
    """discount factor (the grid tasks' own gamma, so Q can be compared with Q*)"""
    buffer_size: int = 20_000
    """replay capacity per agent, shared by its tasks"""
    learning_starts: int = 500
    """environment steps (per agent, all tasks together) before the first update"""
    updates_per_step: float = 0.25
    """gradient updates per environment step of the agent"""
    target_update_interval: int = 100
    """updates between target-network updates"""
    eps_end: float = 0.05
    """exploration after the decay"""
    exploration_fraction: float = 0.3
    """fraction of training over which epsilon decays"""
    steps_per_task: int = 6_000
    """environment steps per task (an agent with K tasks takes K times as many)"""
    envs_per_task: int = 4
    """parallel environments per task"""
    eval_every: int = 500
    """environment steps per task between evaluations (CartPole: eval_episodes per task; the
    grid is evaluated exactly)"""
    architecture: Architecture = "heads"
    """one of ARCHITECTURES"""
    task_lrs: tuple[float, ...] | None = None
    """one learning rate per head (None: lr for every head)"""
    lam: float = 0.0
    """penalty weight on the heads (overridden per agent by the `lams` argument)"""
    regularizer: Regularizer = "l2"
    """"l2" (weight decay, multitask_loss) or "mean" (mean_regularizer)"""
    use_pcgrad: bool = False
    """combine the tasks' gradients of the trunk with pcgrad instead of summing them"""
    penalize_trunk: bool = False
    """also add lam * ||trunk||^2 (weight decay on the shared layers) to the penalty, so that
    the heads' penalty cannot be dodged by scaling the trunk up and the heads down"""
    noise_baseline: bool = False
    """also measure each task's gradient similarity across two independent batches
    (MultiTaskResult.same_task), the noise baseline of the gradient conflict"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture is {self.architecture!r}; use one of {', '.join(ARCHITECTURES)}"
            )
        if self.regularizer not in REGULARIZERS:
            raise ValueError(
                f"regularizer is {self.regularizer!r}; use 'l2' (weight decay) or 'mean'"
            )
        for name in ("steps_per_task", "envs_per_task", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}; it must be at least 1")
        if self.lam < 0 or any(lr < 0 for lr in self.task_lrs or ()):
            raise ValueError("lam and task_lrs must be non-negative")


@dataclass
class MultiTaskResult:
    """What :func:`train_multitask_dqn` returns for ``N`` agents with ``K`` tasks each.

    Attributes:
        config: The configuration.
        seeds: ``[N]``.
        lams: ``[N]`` penalty weight of each agent.
        task_names: ``[N][K]`` names of each agent's tasks.
        steps: ``[T]`` environment steps *per task* at each evaluation (an agent's total is
            ``K`` times more).
        scores: ``[N, T, K]`` evaluation of every task: for the grid the exact expected return
            of the greedy policy over the task's start distribution divided by the optimal one
            (1 = optimal); for CartPole the mean greedy return.
        conflict: ``[N, T, K, K]`` :func:`gradient_conflict` of the tasks' trunk gradients on
            one replay batch at each evaluation (nan before learning starts or with one task).
        same_task: ``[N, T, K]`` cosine of task ``k``'s trunk gradient on that batch with its
            gradient on an independent batch (``config.noise_baseline``; else None).
        history: One stats dict (means over agents) per evaluation.
        network: The trained population.
        wall_time: Seconds.
    """

    config: MultiTaskConfig
    seeds: torch.Tensor
    lams: torch.Tensor
    task_names: list[list[str]]
    steps: torch.Tensor
    scores: torch.Tensor
    conflict: torch.Tensor
    history: list[dict[str, float]]
    network: PopulationQNetwork
    wall_time: float = 0.0
    same_task: torch.Tensor | None = None

    @property
    def total_steps(self) -> torch.Tensor:
        """``[T]`` environment steps of one agent over all its tasks."""
        return self.steps * self.scores.shape[2]

    @property
    def final_scores(self) -> torch.Tensor:
        """``[N, K]`` the last evaluation."""
        return self.scores[:, -1]


def concat_results(results: Sequence[MultiTaskResult]) -> MultiTaskResult:
    """The agents of several runs as one result (e.g. a lam sweep that reuses an arm at lam = 0).

    The runs must share the tasks and the evaluation steps; agents keep their order, run by run.
    ``config`` and ``wall_time`` are the first run's and the sum; ``history`` is re-averaged over
    all agents.

    Args:
        results: Results of :func:`train_multitask_dqn` with the same steps and network sizes.

    Returns:
        One :class:`MultiTaskResult` over all their agents.
    """
    first = results[0]
    if any(not torch.equal(r.steps, first.steps) for r in results):
        raise ValueError("the runs were evaluated at different steps; train them with one config")
    nets = [r.network for r in results]
    sizes = {(n.obs_dim, n.n_actions, n.hidden, n.n_heads) for n in nets}
    if len(sizes) != 1:
        raise ValueError(f"the runs' networks differ in size ({sorted(sizes)}); use one config")
    counts = [len(r.seeds) for r in results]
    net = PopulationQNetwork(
        sum(counts), nets[0].obs_dim, nets[0].n_actions, nets[0].hidden, nets[0].n_heads
    )
    with torch.no_grad():
        for i, (w, b) in enumerate(net.layers()):
            w.copy_(torch.cat([n.layers()[i][0] for n in nets]))
            b.copy_(torch.cat([n.layers()[i][1] for n in nets]))
    history = [
        {k: sum(r.history[t][k] * n for r, n in zip(results, counts)) / sum(counts) for k in row}
        for t, row in enumerate(first.history)
    ]
    same = [r.same_task for r in results]
    return MultiTaskResult(
        config=first.config,
        seeds=torch.cat([r.seeds for r in results]),
        lams=torch.cat([r.lams for r in results]),
        task_names=[names for r in results for names in r.task_names],
        steps=first.steps,
        scores=torch.cat([r.scores for r in results]),
        conflict=torch.cat([r.conflict for r in results]),
        history=history,
        network=net,
        wall_time=sum(r.wall_time for r in results),
        same_task=None if any(x is None for x in same) else torch.cat(same),
    )


def _family_env(tasks: Sequence[Any], envs_per_task: int) -> Any:
    if all(isinstance(t, GridTask) for t in tasks):
        return make_grid_vec(tasks, envs_per_task)
    if all(isinstance(t, CartPoleTask) for t in tasks):
        return make_cartpole_vec(tasks, envs_per_task)
    raise ValueError("tasks must all be GridTask or all CartPoleTask (see course.envs)")


def _grid_scores(
    q_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    agent_tasks: Sequence[Sequence[GridTask]],
    obs_table: torch.Tensor,
    solved: dict[GridTask, tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]],
) -> torch.Tensor:
    """Exact normalised return ``[N, K]`` of every agent's greedy policy on every task: one
    batched linear solve ``(I - gamma P_pi) V = r_pi`` for all ``N * K`` policies."""
    N, K = len(agent_tasks), len(agent_tasks[0])
    S = obs_table.shape[0]
    obs = obs_table.repeat(K, 1).unsqueeze(0).expand(N, -1, -1)
    tasks = torch.arange(K).repeat_interleave(S).expand(N, -1)
    with torch.no_grad():
        q = q_fn(obs, tasks).view(N * K, S, -1).double().cpu()
    greedy = F.one_hot(q.argmax(-1), q.shape[-1]).double()  # [N * K, S, A]
    unique = list(dict.fromkeys(t for tasks_a in agent_tasks for t in tasks_a))
    which = torch.tensor([unique.index(t) for tasks_a in agent_tasks for t in tasks_a])
    P, R, initial, gamma, optimum = (
        torch.stack([torch.as_tensor(solved[t][i], dtype=torch.float64) for t in unique])[which]
        for i in range(5)
    )
    P_pi = torch.einsum("nsa,nsat->nst", greedy, P)
    r_pi = (greedy * R).sum(-1)
    eye = torch.eye(S, dtype=torch.float64)
    V = torch.linalg.solve(eye - gamma.view(-1, 1, 1) * P_pi, r_pi)  # [N * K, S]
    return ((initial * V).sum(-1) / optimum).float().view(N, K)


def _solve_grid(task: GridTask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    from course.mdp import value_iteration

    mdp = task.mdp()
    V, _ = value_iteration(mdp)
    return mdp.P, mdp.R, mdp.initial, mdp.gamma, float(mdp.initial @ V)


@dataclass(frozen=True)
class _AgentPenalties:
    """Per-agent penalty settings ``[N]``: weight, kind of head penalty, trunk included."""

    lams: torch.Tensor  # float64
    mean: torch.Tensor  # bool: mean_regularizer instead of weight decay on the heads
    trunk: torch.Tensor  # bool: also lam * ||trunk||^2


def _per_agent(values: Sequence[Any] | None, default: Any, n_agents: int, name: str) -> list[Any]:
    if values is None:
        return [default] * n_agents
    values = list(values)
    if len(values) != n_agents:
        raise ValueError(f"got {len(values)} {name} for {n_agents} agents; give one per agent")
    return values


def _agent_penalties(
    config: MultiTaskConfig,
    n_agents: int,
    lams: Sequence[float] | None,
    regularizers: Sequence[str] | None,
    penalize_trunk: Sequence[bool] | None,
) -> _AgentPenalties:
    run_lams = [float(x) for x in _per_agent(lams, config.lam, n_agents, "lams")]
    kinds = _per_agent(regularizers, config.regularizer, n_agents, "regularizers")
    trunk = _per_agent(penalize_trunk, config.penalize_trunk, n_agents, "penalize_trunk")
    if any(kind not in REGULARIZERS for kind in kinds) or min(run_lams) < 0:
        raise ValueError("each regularizer must be 'l2' or 'mean' and each lam non-negative")
    return _AgentPenalties(
        lams=torch.tensor(run_lams, dtype=torch.float64),
        mean=torch.tensor([kind == "mean" for kind in kinds]),
        trunk=torch.tensor([bool(t) for t in trunk]),
    )


def _penalty_fn(
    settings: _AgentPenalties, n_heads: int, device: torch.device
) -> Callable[[PopulationQNetwork], torch.Tensor] | None:
    """``penalty(q_net) -> [N]``, each agent's ``lam * R`` (None when every lam is 0).

    Only the kinds some agent uses are computed; an agent's penalty is exactly that of a
    population where every agent has its settings.
    """
    if not bool(settings.lams.any()):
        return None
    lams = settings.lams.float().to(device)
    mean, trunk = settings.mean.to(device), settings.trunk.float().to(device)
    kinds = [k for k, used in (("l2", ~settings.mean), ("mean", settings.mean)) if used.any()]
    any_trunk = bool(settings.trunk.any())

    def penalty(q_net: PopulationQNetwork) -> torch.Tensor:
        heads = [q_net.head_parameters(k) for k in range(n_heads)]
        per_kind = {kind: _agent_penalty(heads, kind) for kind in kinds}
        if len(per_kind) == 1:
            total = next(iter(per_kind.values()))
        else:
            total = torch.where(mean, per_kind["mean"], per_kind["l2"])
        if any_trunk:  # the shared layers are one parameter set: plain weight decay
            total = total + trunk * _agent_penalty([q_net.trunk_parameters()], "l2")
        return lams * total

    return penalty


def _score_fn(
    agent_tasks: Sequence[Sequence[Any]],
    seeds: Sequence[int],
    config: MultiTaskConfig,
    envs: FamilyEnvs,
    device: torch.device,
) -> tuple[Callable[[Any, int], torch.Tensor], FamilyEnvs | None]:
    """``(score, eval_envs)``: exact scores for the grid family (no envs), else greedy
    episodes on their own envs (to be closed by the caller)."""
    N, K = len(agent_tasks), len(agent_tasks[0])
    flat_tasks = [t for tasks in agent_tasks for t in tasks]
    if isinstance(flat_tasks[0], GridTask):
        obs_table = torch.from_numpy(envs.env.observations()).to(device)
        solved = {task: _solve_grid(task) for task in set(flat_tasks)}

        def grid_score(q_fn: Any, index: int) -> torch.Tensor:
            return _grid_scores(q_fn, agent_tasks, obs_table, solved)

        return grid_score, None
    eval_envs = FamilyEnvs(_family_env(flat_tasks, config.eval_episodes), N, K)

    def episode_score(q_fn: Any, index: int) -> torch.Tensor:
        returns = greedy_returns(q_fn, eval_envs, seeds, index, device)
        return returns.view(N, K, config.eval_episodes).mean(-1)

    return episode_score, eval_envs


def train_multitask_dqn(
    agent_tasks: Sequence[Sequence[GridTask | CartPoleTask]],
    seeds: Sequence[int],
    config: MultiTaskConfig = MultiTaskConfig(),
    lams: Sequence[float] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    regularizers: Sequence[str] | None = None,
    penalize_trunk: Sequence[bool] | None = None,
    architectures: Sequence[str] | None = None,
) -> MultiTaskResult:
    """Train ``N`` multi-task DQN agents at once; agent ``a`` learns the K tasks ``agent_tasks[a]``.

    The multi-task entry point of :func:`course.population.train_population` (read its
    docstring for the loop). Per agent: one task-family env stepping all its tasks
    (``envs_per_task`` sub-envs each), one replay holding every task's transitions with their
    task ids, a multi-head Q-network (or a head-less baseline, ``config.architecture``), Adam
    with one parameter group for the trunk and one per head (the groups of
    :func:`task_param_groups`: per-task learning rates), and the loss
    ``sum_k L_k + lam * R(heads)`` of :func:`multitask_loss` (or with :func:`mean_regularizer`),
    where ``L_k`` is the mean Huber TD loss over the batch rows of task ``k``. With
    ``use_pcgrad`` the trunk's gradient is :func:`pcgrad` of the tasks' trunk gradients instead
    of their sum. The agents are independent; they are only computed together, so agents that
    differ only in their penalty (``lams``, ``regularizers``, ``penalize_trunk``), or one-head
    agents that differ in whether they see the task (``architectures``: ``"task_input"`` and
    ``"shared"``), can share one call (:func:`train_variants`). Single-task agents are the case
    ``K = 1``.

    Args:
        agent_tasks: ``N`` sequences of ``K`` tasks (all grid tasks on one layout, or all
            CartPole tasks); ``K`` must be the same for every agent.
        seeds: ``N`` non-negative seeds.
        config: Hyperparameters.
        lams: ``N`` penalty weights (default: ``config.lam`` for every agent).
        device: Torch device (:func:`course.population.default_device`).
        progress: Show a progress bar.
        regularizers: ``N`` of ``"l2"`` and ``"mean"`` (default: ``config.regularizer``).
        penalize_trunk: ``N`` flags (default: ``config.penalize_trunk``).
        architectures: ``N`` architectures (default: ``config.architecture``): all ``"heads"``,
            or any mix of ``"task_input"`` and ``"shared"``.

    Returns:
        A :class:`MultiTaskResult`.
    """
    cfg, device = config, default_device(device)
    N = len(agent_tasks)
    if N == 0 or len(seeds) != N:
        raise ValueError(f"got {N} task lists and {len(seeds)} seeds; give one seed per agent")
    K = len(agent_tasks[0])
    if K == 0 or any(len(t) != K for t in agent_tasks):
        raise ValueError("every agent needs the same (non-zero) number of tasks")
    seeds = [int(s) for s in seeds]
    settings = _agent_penalties(cfg, N, lams, regularizers, penalize_trunk)
    task_lrs = cfg.task_lrs if cfg.task_lrs is not None else (cfg.lr,) * K
    if len(task_lrs) != K:
        raise ValueError(f"task_lrs has {len(task_lrs)} entries for {K} tasks; give one per task")
    flat_tasks = [t for tasks in agent_tasks for t in tasks]
    envs = FamilyEnvs(_family_env(flat_tasks, cfg.envs_per_task), N, K)
    archs = _per_agent(architectures, cfg.architecture, N, "architectures")
    if len(set(archs)) > 1 and "heads" in archs or any(a not in ARCHITECTURES for a in archs):
        raise ValueError(
            f"architectures {sorted(set(archs))}: 'heads' agents need a population of their "
            "own; 'task_input' and 'shared' (one head each) can share one"
        )
    one_head = archs[0] != "heads"
    n_heads = 1 if one_head else K
    sees_task = torch.tensor([a == "task_input" for a in archs], device=device)
    blind = bool((~sees_task).any())

    def inputs(obs: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        if not one_head:
            return obs
        one_hot = F.one_hot(tasks, K).to(obs.dtype)  # [N, B, K]
        if blind:  # the shared agents' task input is always 0
            one_hot = one_hot * sees_task.view(-1, 1, 1)
        return torch.cat([obs, one_hot], dim=-1)

    score, eval_envs = _score_fn(agent_tasks, seeds, cfg, envs, device)
    agents = Agents(
        seeds=tuple(seeds),
        envs=envs,
        n_tasks=K,
        score=score,
        n_heads=n_heads,
        inputs=inputs,
        input_dim=envs.obs_dim + (K if one_head else 0),
        penalty=_penalty_fn(settings, n_heads, device),
        head_lrs=tuple(task_lrs[:n_heads]),
        pcgrad=cfg.use_pcgrad,
        noise_baseline=cfg.noise_baseline,
    )
    try:
        run = train_population(
            agents, cfg, cfg.steps_per_task * K, cfg.eval_every * K, device, progress
        )
    finally:
        envs.close()
        if eval_envs is not None:
            eval_envs.close()
    return _result_from_run(run, cfg, seeds, settings.lams, agent_tasks)


def _result_from_run(
    run: Any,
    config: MultiTaskConfig,
    seeds: Sequence[int],
    lams: torch.Tensor,
    agent_tasks: Sequence[Sequence[Any]],
) -> MultiTaskResult:
    """A :class:`MultiTaskResult` from a :class:`course.population.PopulationRun` whose steps
    count every task (``K`` environment steps per step of each task)."""
    K = len(agent_tasks[0])
    history = [
        {
            "step": float(run.steps[t] // K),
            "score": float(run.scores[:, t].mean()),
            "epsilon": float(run.stats["epsilon"][t]),
            "lr": float(run.stats["lr"][t]),
            "loss": float(run.stats["loss"][:, t].mean()),
            "penalty": float(run.stats["penalty"][:, t].mean()),
        }
        for t in range(len(run.steps))
    ]
    return MultiTaskResult(
        config=config,
        seeds=torch.tensor(list(seeds)),
        lams=lams,
        task_names=[[t.name for t in tasks] for tasks in agent_tasks],
        steps=run.steps // K,
        scores=run.scores,
        conflict=run.conflict,
        history=history,
        network=run.network.cpu(),
        wall_time=run.wall_time,
        same_task=run.same_task,
    )


_PER_AGENT = {
    "lam": "lams",
    "regularizer": "regularizers",
    "penalize_trunk": "penalize_trunk",
    "architecture": "architectures",
}


def train_variants(
    tasks: Sequence[GridTask | CartPoleTask],
    seeds: Sequence[int],
    config: MultiTaskConfig,
    variants: dict[str, dict[str, Any]],
    device: torch.device | str | None = None,
) -> dict[str, MultiTaskResult]:
    """Train every variant of ``config`` with every seed in one population, one result each.

    Taught in Lesson 04. A variant changes only what can differ between the agents of one
    population: ``lam``, ``regularizer``, ``penalize_trunk``, and ``architecture`` between
    ``"task_input"`` and ``"shared"`` (``"heads"`` variants need a call of their own). One call
    costs much less than one per variant (the trainer's cost is mostly per update, shared by the
    whole population), and each agent's numbers depend only on its own seed and settings.

    Args:
        tasks: The ``K`` tasks of every agent.
        seeds: The seeds, the same for every variant (so the variants pair up seed by seed).
        config: The configuration every variant starts from.
        variants: Name -> the fields of ``config`` it changes (``{}`` for ``config`` itself).
        device: Torch device.

    Returns:
        Name -> the :class:`MultiTaskResult` of that variant's agents (its ``config`` with the
        changes applied), in the order of ``variants``.

    Example:
        >>> variants = {"heads": {}, "l2 lam=0.1": {"lam": 0.1}}  # doctest: +SKIP
    """
    seeds = [int(s) for s in seeds]
    configs = {}
    for name, changes in variants.items():
        other = sorted(set(changes) - set(_PER_AGENT))
        if other:
            raise ValueError(
                f"variant {name!r} changes {', '.join(other)}; only {', '.join(_PER_AGENT)} can "
                "differ within one population: train the others with their own call"
            )
        configs[name] = dataclasses.replace(config, **changes)
    agents = [(name, s) for name in configs for s in seeds]
    overrides = {
        arg: [getattr(configs[name], field) for name, _ in agents]
        for field, arg in _PER_AGENT.items()
    }
    first = configs[agents[0][0]]  # the population's architecture: its number of heads
    run = train_multitask_dqn(
        [list(tasks)] * len(agents), [s for _, s in agents], first, device=device, **overrides
    )
    n = len(seeds)
    return {
        name: dataclasses.replace(take_agents(run, range(i * n, (i + 1) * n)), config=cfg)
        for i, (name, cfg) in enumerate(configs.items())
    }


def take_agents(result: MultiTaskResult, agents: Sequence[int]) -> MultiTaskResult:
    """The chosen agents of a result, in the order given (the inverse of
    :func:`concat_results`); ``history`` is re-averaged over them only where it can be (the
    scores), and ``wall_time`` is the run's."""
    index = torch.as_tensor(list(agents), dtype=torch.long)
    if len(index) == 0 or int(index.min()) < 0 or int(index.max()) >= len(result.seeds):
        raise ValueError(f"agents must be indices in [0, {len(result.seeds)}), at least one")
    part = _take_population(result.network, index)
    scores = result.scores[index]
    history = [dict(row, score=float(scores[:, t].mean())) for t, row in enumerate(result.history)]
    return dataclasses.replace(
        result,
        seeds=result.seeds[index],
        lams=result.lams[index],
        task_names=[result.task_names[i] for i in index.tolist()],
        scores=scores,
        conflict=result.conflict[index],
        history=history,
        network=part,
        same_task=None if result.same_task is None else result.same_task[index],
    )


def steps_to_threshold(steps: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The first evaluation step at which a score reaches ``threshold`` (inf if never).

    Args:
        steps: ``[T]`` step counts of the evaluations.
        scores: ``[..., T]`` scores.
        threshold: The level that counts as reached (``>=``).

    Returns:
        ``[...]`` float, ``inf`` where the threshold is never reached.
    """
    reached = scores >= threshold
    first = torch.where(
        reached.any(-1), reached.float().argmax(-1), torch.full(reached.shape[:-1], -1)
    )
    values = steps.double()[first.clamp(min=0)]
    return torch.where(first >= 0, values, torch.full_like(values, math.inf))


# ============================================================================================
# 4. Summaries: every number the lesson prints
# ============================================================================================


def _fmt_ci(values: Any, digits: int = 2) -> str:
    ci = mean_ci(np.asarray(values, dtype=np.float64))
    return f"{ci.estimate:.{digits}f} [{ci.low:.{digits}f}, {ci.high:.{digits}f}]"


def _by_seed(values: torch.Tensor, seeds: torch.Tensor) -> np.ndarray:
    """``values`` ordered by seed, so that two arms with the same seeds pair up row by row."""
    order = torch.argsort(seeds, stable=True)
    return values[order].double().numpy()


def supervised_per_seed(result: SupervisedResult) -> dict[float, np.ndarray]:
    """lam -> ``[S]`` mean test MSE over tasks of each seed (ordered by seed)."""
    lams = sorted(set(result.lams.tolist()))
    mse, seeds = result.test_mse.mean(-1), result.seeds
    return {lam: _by_seed(mse[result.lams == lam], seeds[result.lams == lam]) for lam in lams}


def format_supervised_sweep(results: dict[str, SupervisedResult]) -> str:
    """Mean test MSE over tasks for every lam, with a 95% t interval over seeds.

    Args:
        results: Regulariser name -> result of :func:`train_supervised` (same lams and seeds).

    Returns:
        A table, one row per lam.
    """
    names = list(results)
    per_seed = {name: supervised_per_seed(r) for name, r in results.items()}
    lams = list(per_seed[names[0]])
    header = f"{'lam':>8} | " + " | ".join(f"{n:^22}" for n in names)
    n_seeds = len(set(results[names[0]].seeds.tolist()))
    lines = [
        f"test MSE (mean over tasks, 95% CI over {n_seeds} seeds)",
        header,
        "-" * len(header),
    ]
    for lam in lams:
        cells = [f"{_fmt_ci(per_seed[name][lam], 3):^22}" for name in names]
        lines.append(f"{lam:>8g} | " + " | ".join(cells))
    return "\n".join(lines)


def lam_verdicts(
    per_seed: dict[str, dict[float, np.ndarray]],
    higher_is_better: bool,
    lams: Sequence[float] | None = None,
) -> list[Comparison]:
    """Paired verdicts of a lam sweep: each lam against lam = 0, then the regularisers at each lam.

    Every lam is trained with the same seeds, so two settings pair up seed by seed.

    Args:
        per_seed: Regulariser -> lam -> ``[S]`` one result per seed, ordered by seed
            (:func:`supervised_per_seed`, :func:`lam_sweep_per_seed`).
        higher_is_better: ``False`` for an error such as the test MSE.
        lams: The lams to report (default every lam of the sweep but 0).

    Returns:
        The :class:`course.evaluation.Comparison` of each pair; ``print`` them.
    """
    names = list(per_seed)
    chosen = [lam for lam in (lams or per_seed[names[0]]) if lam != 0]
    out = [
        compare(
            per_seed[name][lam],
            per_seed[name][0.0],
            names=(f"{name} lam={lam:g}", "lam=0"),
            higher_is_better=higher_is_better,
        )
        for name in names
        for lam in chosen
    ]
    if len(names) == 2:
        a, b = names
        out += [
            compare(
                per_seed[a][lam],
                per_seed[b][lam],
                names=(f"{a} lam={lam:g}", f"{b} lam={lam:g}"),
                higher_is_better=higher_is_better,
            )
            for lam in chosen
        ]
    return out


def supervised_sweep_bands(
    result: SupervisedResult,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(lams [L], (estimate, low, high) [L])`` of the mean test MSE, t intervals over seeds."""
    per_seed = supervised_per_seed(result)
    cis = [mean_ci(v) for v in per_seed.values()]
    bands = tuple(np.array([getattr(c, f) for c in cis]) for f in ("estimate", "low", "high"))
    return np.array(list(per_seed)), bands


def mean_task_curves(result: MultiTaskResult, agents: Sequence[int] | None = None) -> torch.Tensor:
    """``[n, T]`` the score averaged over tasks, for the chosen agents (default all)."""
    scores = result.scores if agents is None else result.scores[list(agents)]
    return scores.mean(-1)


def score_band(
    result: MultiTaskResult, agents: Sequence[int] | None = None, task: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Learning curve with a pointwise 95% t band over the agents (seeds): the mean over tasks,
    or the score of one ``task``."""
    if task is None:
        return curve_band(mean_task_curves(result, agents).numpy())
    scores = result.scores if agents is None else result.scores[list(agents)]
    return curve_band(scores[..., task].numpy())


def final_mean(result: MultiTaskResult, last: int = 1) -> np.ndarray:
    """``[N]`` each agent's score averaged over tasks and its last ``last`` evaluations, ordered
    by seed (two arms trained with the same seeds pair up row by row)."""
    return _by_seed(result.scores[:, -last:].mean((1, 2)), result.seeds)


def format_final_scores(results: dict[str, MultiTaskResult]) -> str:
    """Final score of every task for every arm, with 95% t intervals over seeds.

    Args:
        results: Arm name -> result whose agents are the seeds of one multi-task arm.

    Returns:
        A table, one row per arm, one column per task and their mean.
    """
    first = next(iter(results.values()))
    tasks = first.task_names[0]
    header = f"{'arm':<20} | " + " | ".join(f"{t:^18}" for t in [*tasks, "mean"])
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        final = r.final_scores
        cells = [f"{_fmt_ci(final[:, k]):^18}" for k in range(final.shape[1])]
        cells.append(f"{_fmt_ci(final.mean(1)):^18}")
        lines.append(f"{name:<20} | " + " | ".join(cells))
    return "\n".join(lines)


def single_task_config(config: MultiTaskConfig, n_tasks: int) -> MultiTaskConfig:
    """The single-task agents' configuration matched, task by task, to a K-task agent.

    The K-task agent takes ``K`` environment steps (one per task) per step of each task, and
    its schedules run over ``K * steps_per_task`` steps. A single-task agent with the same
    ``steps_per_task`` already runs the same exploration and learning-rate schedule *per step of
    its task*; these changes match the rest per task as well: ``K`` times as many updates per
    environment step on batches ``K`` times smaller (the same number of updates, each with as
    many rows of the task as the K-task batch holds on average, so the target network is
    updated as often), and ``1/K`` of the replay and of the warm-up. The K agents together then
    spend the same environment steps and the same gradient rows as the one K-task agent.

    Args:
        config: The K-task agent's configuration.
        n_tasks: ``K``.

    Returns:
        The configuration of each of the K single-task agents.
    """
    if n_tasks < 1 or config.batch_size % n_tasks or config.buffer_size % n_tasks:
        raise ValueError(
            f"batch_size {config.batch_size} and buffer_size {config.buffer_size} must be "
            f"multiples of n_tasks={n_tasks} to split them evenly between the tasks"
        )
    return dataclasses.replace(
        config,
        updates_per_step=config.updates_per_step * n_tasks,
        batch_size=config.batch_size // n_tasks,
        buffer_size=config.buffer_size // n_tasks,
        learning_starts=config.learning_starts // n_tasks,
        task_lrs=None if config.task_lrs is None else config.task_lrs[:1],
    )


@dataclass(frozen=True)
class SinglesComparison:
    """One K-task agent per seed against K single-task agents with the same seed.

    Attributes:
        steps_multitask: ``[S, K]`` steps of task ``k`` at the multi-task agent's first
            evaluation with task ``k`` at or above the threshold (inf if never).
        steps_singles: ``[S, K]`` the same for the single-task agent of task ``k``.
        final_multitask: ``[S, K]`` final scores of the multi-task agents.
        final_singles: ``[S, K]`` final scores of the single-task agents.
        budget: Steps per task of both (the censoring point of "never").
        task_names: The K tasks.
    """

    steps_multitask: torch.Tensor
    steps_singles: torch.Tensor
    final_multitask: torch.Tensor
    final_singles: torch.Tensor
    budget: int
    task_names: list[str]

    @property
    def n_tasks(self) -> int:
        return self.final_multitask.shape[1]

    def total_steps(self) -> tuple[np.ndarray, np.ndarray]:
        """``([S], [S])`` total environment steps until every task has reached the threshold,
        "never" counted at the budget: the multi-task agent steps every task, so ``K`` times its
        slowest task; the single-task agents add up their own times."""
        multi = self.steps_multitask.clamp(max=self.budget).max(1).values * self.n_tasks
        singles = self.steps_singles.clamp(max=self.budget).sum(1)
        return multi.numpy(), singles.numpy()


def compare_with_singles(
    multi: MultiTaskResult, singles: MultiTaskResult, threshold: float
) -> SinglesComparison:
    """Per-task steps to threshold and final scores of multi-task and single-task agents.

    Args:
        multi: ``S`` agents (one per seed), each with the same K tasks.
        singles: ``S * K`` single-task agents, seed-major (agent ``s * K + k`` learns task
            ``k`` with the seed of multi-task agent ``s``), evaluated at the same steps per task.
        threshold: The score that counts as reached (``>=``).

    Returns:
        A :class:`SinglesComparison`.
    """
    S, _, K = multi.scores.shape
    if singles.scores.shape[0] != S * K or singles.scores.shape[2] != 1:
        raise ValueError(f"expected {S * K} single-task agents for {S} seeds and {K} tasks")
    if not torch.equal(singles.seeds.view(S, K), multi.seeds.view(S, 1).expand(S, K)):
        raise ValueError("single-task agent s * K + k must share the seed of multi-task agent s")
    if not torch.equal(singles.steps, multi.steps):
        raise ValueError(
            "the single-task agents must be evaluated at the same steps per task: train them "
            "with the same steps_per_task and eval_every"
        )
    per_task = steps_to_threshold(multi.steps, multi.scores.transpose(1, 2), threshold)
    alone = steps_to_threshold(singles.steps, singles.scores[..., 0], threshold).view(S, K)
    return SinglesComparison(
        steps_multitask=per_task,
        steps_singles=alone,
        final_multitask=multi.final_scores,
        final_singles=singles.final_scores[:, 0].view(S, K),
        budget=int(multi.steps[-1]),
        task_names=list(multi.task_names[0]),
    )


def singles_verdicts(
    comparison: SinglesComparison, names: tuple[str, str] = ("multi-task", "singles")
) -> list[Comparison]:
    """Paired verdicts (seed by seed): final score and steps to threshold per task, then the
    mean score over tasks and the total environment steps until every task got there."""
    c, out = comparison, []
    for k, task in enumerate(c.task_names):
        out.append(
            compare(
                c.final_multitask[:, k].numpy(),
                c.final_singles[:, k].numpy(),
                names=(f"{names[0]} {task} score", names[1]),
            )
        )
        out.append(
            compare_censored(
                c.steps_multitask[:, k].numpy(),
                c.steps_singles[:, k].numpy(),
                c.budget,
                names=(f"{names[0]} {task} steps", names[1]),
            )
        )
    out.append(
        compare(
            c.final_multitask.mean(1).numpy(),
            c.final_singles.mean(1).numpy(),
            names=(f"{names[0]} mean score", names[1]),
        )
    )
    multi, singles = c.total_steps()
    never = (~torch.isfinite(c.steps_multitask)).any(1).sum(), (~torch.isfinite(c.steps_singles))
    total = compare(
        multi, singles, names=(f"{names[0]} total steps", names[1]), higher_is_better=False
    )
    note = (
        f"never = {c.budget:g} steps per task: {int(never[0])} of {names[0]}'s seeds, "
        f"{int(never[1].any(1).sum())} of {names[1]}'s"
    )
    out.append(dataclasses.replace(total, note=note))
    return out


def format_singles_comparison(
    comparison: SinglesComparison, names: tuple[str, str] = ("multi-task", "singles")
) -> str:
    """The final scores (mean, 95% t interval over seeds) and the verdicts of
    :func:`singles_verdicts`, one per line."""
    c = comparison
    lines = [
        f"final score after {c.budget} steps per task (mean over tasks, 95% CI over "
        f"{len(c.final_multitask)} seeds)",
        f"  {names[0]:<12}: {_fmt_ci(c.final_multitask.mean(1))}",
        f"  {names[1]:<12}: {_fmt_ci(c.final_singles.mean(1))}",
        "paired verdicts (score: higher is better; steps to threshold: lower is better)",
    ]
    lines += [f"  {v}" for v in singles_verdicts(c, names)]
    return "\n".join(lines)


def singles_band(
    singles: MultiTaskResult, n_tasks: int, task: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Learning curve of K single-task agents (seed-major, see :func:`compare_with_singles`)
    with a pointwise 95% t band over seeds: the score averaged over the K agents of a seed, or
    the curve of the agents of one ``task``."""
    scores = singles.scores[..., 0].view(-1, n_tasks, singles.scores.shape[1])  # [S, K, T]
    per_seed = scores.mean(1) if task is None else scores[:, task]
    return curve_band(per_seed.numpy())


def lam_per_seed(result: MultiTaskResult, last: int = 1) -> dict[float, np.ndarray]:
    """lam -> ``[S]`` final mean-over-tasks score of each seed trained with it (ordered by
    seed), averaged over the last ``last`` evaluations."""
    lams = sorted(set(result.lams.tolist()))
    final = result.scores[:, -last:].mean((1, 2))
    return {
        lam: _by_seed(final[result.lams == lam], result.seeds[result.lams == lam]) for lam in lams
    }


def norms_per_lam(result: MultiTaskResult) -> dict[str, dict[float, np.ndarray]]:
    """``{"trunk": lam -> [S], "heads": lam -> [S]}``: each trained agent's squared parameter
    norm of the trunk and of all its heads (ordered by seed), to see whether a penalty on the
    heads is dodged by a growing trunk."""
    net = result.network
    trunk = _agent_penalty([net.trunk_parameters()], "l2").detach()
    heads = _agent_penalty([net.head_parameters(k) for k in range(net.n_heads)], "l2").detach()
    out: dict[str, dict[float, np.ndarray]] = {}
    for name, values in (("trunk", trunk), ("heads", heads)):
        out[name] = {
            lam: _by_seed(values[result.lams == lam], result.seeds[result.lams == lam])
            for lam in sorted(set(result.lams.tolist()))
        }
    return out


def format_norm_change(result: MultiTaskResult, lam: float, reference: float = 0.0) -> str:
    """Seed by seed, the trained trunk's and heads' squared norms at ``lam`` against
    ``reference`` (:func:`norms_per_lam`): one line each, the paired interval of the difference
    and whether the norm is larger at one of them."""
    norms = norms_per_lam(result)
    lines = []
    for part in ("trunk", "heads"):
        c = compare(
            norms[part][lam], norms[part][reference], names=(f"lam={lam:g}", f"lam={reference:g}")
        )
        said = {f"{n} better": f"larger at {n}" for n in c.names}.get(c.verdict, c.verdict)
        d = c.difference
        lines.append(
            f"{part} ||.||^2, lam={lam:g} - lam={reference:g}: {d.estimate:.3g} "
            f"[{d.low:.3g}, {d.high:.3g}] ({c.n} paired seeds) -> {said}"
        )
    return "\n".join(lines)


def lam_sweep_bands(
    result: MultiTaskResult,
) -> dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """lam -> mean-over-tasks learning curve band over the seeds trained with that lam."""
    lams = sorted(set(result.lams.tolist()))
    return {
        lam: score_band(result, (result.lams == lam).nonzero().flatten().tolist()) for lam in lams
    }


def format_lam_sweep(results: dict[str, MultiTaskResult], last: int = 1) -> str:
    """Final mean-over-tasks score per lam and regulariser, 95% t interval over seeds.

    Args:
        results: Regulariser name -> a lam sweep of :func:`train_multitask_dqn`.
        last: Average the score over the last ``last`` evaluations (less noisy).
    """
    names = list(results)
    per_seed = {name: lam_per_seed(r, last) for name, r in results.items()}
    header = f"{'lam':>8} | " + " | ".join(f"{n:^18}" for n in names)
    lines = [header, "-" * len(header)]
    for lam in per_seed[names[0]]:
        cells = [f"{_fmt_ci(per_seed[name][lam]):^18}" for name in names]
        lines.append(f"{lam:>8g} | " + " | ".join(cells))
    return "\n".join(lines)


def lam_final_bands(
    result: MultiTaskResult, last: int = 1
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(lams [L], (estimate, low, high) [L])``: final mean-over-tasks score per lam, with a
    95% t interval over seeds (the score averaged over the last ``last`` evaluations)."""
    per_seed = lam_per_seed(result, last)
    cis = [mean_ci(v) for v in per_seed.values()]
    bands = tuple(np.array([getattr(c, f) for c in cis]) for f in ("estimate", "low", "high"))
    return np.array(list(per_seed)), bands


def mean_conflict(result: MultiTaskResult, evaluation: int = -1) -> torch.Tensor:
    """``[K, K]`` gradient cosine similarity averaged over agents at one evaluation."""
    return result.conflict[:, evaluation].nanmean(0)


def conflict_curves(result: MultiTaskResult) -> tuple[torch.Tensor, torch.Tensor]:
    """``([N, T], [N, T])``: per agent and evaluation, the mean cosine between two *different*
    tasks' trunk gradients (off-diagonal of :func:`gradient_conflict`, same batch) and the mean
    cosine between one task's gradients on two independent batches (its noise baseline).

    Raises:
        ValueError: If the run did not measure the baseline (``config.noise_baseline``).
    """
    if result.same_task is None:
        raise ValueError("train with MultiTaskConfig(noise_baseline=True) to measure the baseline")
    K = result.conflict.shape[-1]
    off = ~torch.eye(K, dtype=torch.bool)
    return result.conflict[..., off].mean(-1), result.same_task.mean(-1)


def format_conflict_over_training(result: MultiTaskResult, every: int = 1) -> str:
    """At every ``every``-th evaluation (with data): the two cosines of :func:`conflict_curves`
    with 95% t intervals over agents, and the paired verdict (seed by seed) on whether two
    different tasks' gradients are more or less aligned than one task's on two batches."""
    cross, same = conflict_curves(result)
    lines = [
        f"{'step':>6} | {'two tasks':^20} | {'one task, 2 batches':^20} | verdict (paired)",
    ]
    for t in range(0, len(result.steps), every):
        if torch.isnan(cross[:, t]).any() or torch.isnan(same[:, t]).any():
            continue
        c = compare(cross[:, t].numpy(), same[:, t].numpy(), names=("two tasks", "one task"))
        verdict = {
            "two tasks better": "two tasks more aligned than one",
            "one task better": "two tasks less aligned than one",
        }.get(c.verdict, c.verdict)
        lines.append(
            f"{int(result.steps[t]):>6} | {_fmt_ci(cross[:, t]):^20} | {_fmt_ci(same[:, t]):^20} "
            f"| {verdict}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Dodge:
    """A network and its rescaled twin (:func:`rescale_trunk`): same Q-values, other penalties.

    Attributes:
        c: The factor.
        max_q_change: Largest absolute change of any Q-value on the observations given.
        head_penalty: ``(before, after)`` squared norm of the heads (weights and biases).
        head_weight_penalty: ``(before, after)`` squared norm of the heads' weights alone.
        trunk_penalty: ``(before, after)`` squared norm of the trunk.
    """

    c: float
    max_q_change: float
    head_penalty: tuple[float, float]
    head_weight_penalty: tuple[float, float]
    trunk_penalty: tuple[float, float]

    def __str__(self) -> str:
        def pair(name: str, values: tuple[float, float]) -> str:
            return f"  {name:<22}: {values[0]:9.3f} -> {values[1]:9.3f}"

        return "\n".join(
            [
                f"trunk's last layer x {self.c:g}, heads' weights / {self.c:g}:",
                f"  largest change of a Q-value: {self.max_q_change:.2g}",
                pair("heads' weights ||W||^2", self.head_weight_penalty),
                pair("heads (weights + bias)", self.head_penalty),
                pair("trunk ||.||^2", self.trunk_penalty),
            ]
        )


def grid_observations(tasks: Sequence[GridTask]) -> torch.Tensor:
    """``[S, D]`` the observation of every cell of the tasks' (shared) layout."""
    env = make_grid_vec(list(tasks), 1)
    try:
        return torch.from_numpy(env.observations())
    finally:
        env.close()


def rescale_trunk(net: MultiHeadQNetwork, c: float) -> MultiHeadQNetwork:
    """A copy of ``net`` with its last trunk layer multiplied by ``c`` and its heads' weights
    divided by ``c``: the same function (ReLU is positively homogeneous, ``relu(c x) = c
    relu(x)`` for ``c > 0``), so a penalty on the heads alone can be lowered for free.

    Taught in Lesson 04 (the dodge of a head-only penalty).

    Args:
        net: A multi-head network with at least one hidden layer.
        c: A positive factor.

    Returns:
        The rescaled copy (``net`` is unchanged).
    """
    if not c > 0:
        raise ValueError(f"c is {c}; the factor must be positive (ReLU only commutes with c > 0)")
    linears = [m for m in net.trunk if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the network has no hidden layer to rescale; give hidden=(width, ...)")
    twin = MultiHeadQNetwork(net.obs_dim, net.n_actions, net.n_tasks, net.hidden)
    twin.load_state_dict(net.state_dict())
    last = [m for m in twin.trunk if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(c)
        last.bias.mul_(c)
        for head in twin.heads:
            head.weight.div_(c)
    return twin


def dodge(net: MultiHeadQNetwork, obs: torch.Tensor, c: float) -> Dodge:
    """Measure :func:`rescale_trunk` on observations ``obs`` ``[B, D]``, every task's head."""
    twin = rescale_trunk(net, c)

    def norms(model: MultiHeadQNetwork) -> tuple[float, float, float]:
        heads = sum(float(p.pow(2).sum()) for h in model.heads for p in h.parameters())
        weights = sum(float(h.weight.pow(2).sum()) for h in model.heads)
        trunk = sum(float(p.pow(2).sum()) for p in model.trunk.parameters())
        return heads, weights, trunk

    change = 0.0
    with torch.no_grad():
        for k in range(net.n_tasks):
            tasks = torch.full((len(obs),), k, dtype=torch.long)
            change = max(change, float((net(obs, tasks) - twin(obs, tasks)).abs().max()))
        before, after = norms(net), norms(twin)
    return Dodge(
        c=float(c),
        max_q_change=change,
        head_penalty=(before[0], after[0]),
        head_weight_penalty=(before[1], after[1]),
        trunk_penalty=(before[2], after[2]),
    )


LESSON_CONFIG = MultiTaskConfig(
    steps_per_task=3_000,
    envs_per_task=4,
    lr=5e-3,
    updates_per_step=0.03125,
    buffer_size=5_000,
    batch_size=128,
    target_update_interval=25,
)
"""The grid-family configuration of Lesson 04 (about two seconds per arm of 10 seeds on one
core): 375 updates of 128 rows over the 12,000 steps of an agent. The trainer's cost is mostly
per update, so few updates at a larger learning rate, with the target network copied every 25,
learn nearly as much per environment step as twice as many at a smaller one."""
