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
   single-task agents and the head-less baselines it is compared with.
"""

from __future__ import annotations

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
from course.evaluation import bootstrap_ci, curve_ci
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
    "MultiHeadQNetwork",
    "MultiTaskConfig",
    "MultiTaskResult",
    "SineTasks",
    "SupervisedConfig",
    "SupervisedResult",
    "ThresholdComparison",
    "compare_with_singles",
    "format_final_scores",
    "format_lam_sweep",
    "format_supervised_sweep",
    "format_threshold_comparison",
    "lam_final_bands",
    "lam_sweep_bands",
    "mean_conflict",
    "mean_task_curves",
    "score_band",
    "singles_band",
    "supervised_sweep_bands",
    "gradient_conflict",
    "mean_regularizer",
    "multitask_loss",
    "multitask_update",
    "pcgrad",
    "per_task_mean",
    "sine_data",
    "sine_tasks",
    "steps_to_threshold",
    "task_param_groups",
    "train_multitask_dqn",
    "train_supervised",
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
    originals = [torch.as_tensor(g) for g in grads]
    total = torch.zeros_like(originals[0])
    for i, g_i in enumerate(originals):
        projected = g_i.clone()
        for j in torch.randperm(len(originals), generator=generator).tolist():
            if j == i:
                continue
            g_j = originals[j]
            dot = projected @ g_j
            if dot < 0:
                projected = projected - dot / (g_j @ g_j) * g_j
        total = total + projected
    return total


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
    start = time.perf_counter()
    tasks = sine_tasks(config.n_tasks, config.task_seed)
    K = config.n_tasks
    run_lams = torch.tensor([float(lam) for lam in lams for _ in seeds], dtype=torch.float64)
    run_seeds = torch.tensor([int(s) for _ in lams for s in seeds])
    N = len(run_lams)
    gens = [torch.Generator().manual_seed(int(s)) for s in run_seeds]
    net = PopulationQNetwork(N, 1, 1, config.hidden, n_heads=K, generators=gens)
    data = [sine_data(tasks, config.n_train, g, config.noise) for g in gens]
    x = torch.stack([d[0] for d in data])  # [N, K*n, 1]
    y = torch.stack([d[1] for d in data])
    task_ids = torch.stack([d[2] for d in data])
    test_gen = torch.Generator().manual_seed(10**6 + config.task_seed)
    tx, ty, tt = sine_data(tasks, config.n_test, test_gen)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    history: list[dict[str, float]] = []
    losses = []
    for _ in range(config.steps):
        optimizer.zero_grad(set_to_none=True)
        pred = net(x, task_ids).squeeze(-1)
        task_mse = per_task_mean((pred - y).pow(2), task_ids, K)  # [N, K]
        heads = [net.head_parameters(k) for k in range(K)]
        penalty = _agent_penalty(heads, regularizer)  # [N]
        loss = task_mse.sum() + (run_lams.float() * penalty).sum()
        loss.backward()
        optimizer.step()
        losses.append(task_mse.detach().sum(1))
        history.append(
            {
                "train_mse": float(task_mse.detach().mean()),
                "penalty": float(penalty.detach().mean()),
                "loss": float(loss.detach()) / N,
            }
        )
    with torch.no_grad():
        pred = net(tx.expand(N, -1, -1), tt.expand(N, -1)).squeeze(-1)
        test_mse = per_task_mean((pred - ty).pow(2), tt.expand(N, -1), K)
    return SupervisedResult(
        config=config,
        lams=run_lams,
        seeds=run_seeds,
        regularizer=regularizer,
        history=history,
        train_loss=torch.stack(losses, dim=1),
        test_mse=test_mse,
        network=net,
        wall_time=time.perf_counter() - start,
    )


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
appended to the observation. ``"shared"``: one head and no task information at all (the
tasks' conflicting targets are averaged)."""


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

    @property
    def total_steps(self) -> torch.Tensor:
        """``[T]`` environment steps of one agent over all its tasks."""
        return self.steps * self.scores.shape[2]

    @property
    def final_scores(self) -> torch.Tensor:
        """``[N, K]`` the last evaluation."""
        return self.scores[:, -1]


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
    """Exact normalised return ``[N, K]`` of every agent's greedy policy on every task."""
    N, K = len(agent_tasks), len(agent_tasks[0])
    S = obs_table.shape[0]
    obs = obs_table.repeat(K, 1).unsqueeze(0).expand(N, -1, -1)
    tasks = torch.arange(K).repeat_interleave(S).expand(N, -1)
    with torch.no_grad():
        q = q_fn(obs, tasks).view(N, K, S, -1).double().cpu()
    greedy = F.one_hot(q.argmax(-1), q.shape[-1]).double()  # [N, K, S, A]
    scores = torch.empty(N, K)
    for a, tasks_a in enumerate(agent_tasks):
        for k, task in enumerate(tasks_a):
            P, R, initial, gamma, optimum = solved[task]
            P_pi = torch.einsum("sa,sat->st", greedy[a, k], P)
            r_pi = (greedy[a, k] * R).sum(-1)
            V = torch.linalg.solve(torch.eye(S, dtype=torch.float64) - gamma * P_pi, r_pi)
            scores[a, k] = float(initial @ V) / optimum
    return scores


def _solve_grid(task: GridTask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    from course.mdp import value_iteration

    mdp = task.mdp()
    V, _ = value_iteration(mdp)
    return mdp.P, mdp.R, mdp.initial, mdp.gamma, float(mdp.initial @ V)


def train_multitask_dqn(
    agent_tasks: Sequence[Sequence[GridTask | CartPoleTask]],
    seeds: Sequence[int],
    config: MultiTaskConfig = MultiTaskConfig(),
    lams: Sequence[float] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
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
    of their sum. The agents are independent; they are only computed together. Single-task
    agents are the case ``K = 1``.

    Args:
        agent_tasks: ``N`` sequences of ``K`` tasks (all grid tasks on one layout, or all
            CartPole tasks); ``K`` must be the same for every agent.
        seeds: ``N`` non-negative seeds.
        config: Hyperparameters.
        lams: ``N`` penalty weights (default: ``config.lam`` for every agent).
        device: Torch device (:func:`course.population.default_device`).
        progress: Show a progress bar.

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
    run_lams = torch.tensor(
        [cfg.lam] * N if lams is None else [float(x) for x in lams], dtype=torch.float64
    )
    if len(run_lams) != N:
        raise ValueError(f"got {len(run_lams)} lams for {N} agents")
    task_lrs = cfg.task_lrs if cfg.task_lrs is not None else (cfg.lr,) * K
    if len(task_lrs) != K:
        raise ValueError(f"task_lrs has {len(task_lrs)} entries for {K} tasks; give one per task")
    flat_tasks = [t for tasks in agent_tasks for t in tasks]
    envs = FamilyEnvs(_family_env(flat_tasks, cfg.envs_per_task), N, K)
    n_heads = K if cfg.architecture == "heads" else 1
    lam_dev = run_lams.float().to(device)

    def inputs(obs: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        if cfg.architecture == "task_input":
            return torch.cat([obs, F.one_hot(tasks, K).to(obs.dtype)], dim=-1)
        return obs

    def penalty(q_net: PopulationQNetwork) -> torch.Tensor:
        heads = [q_net.head_parameters(k) for k in range(n_heads)]
        return lam_dev * _agent_penalty(heads, cfg.regularizer)

    eval_envs = None
    if isinstance(flat_tasks[0], GridTask):
        obs_table = torch.from_numpy(envs.env.observations()).to(device)
        solved = {task: _solve_grid(task) for task in set(flat_tasks)}

        def score(q_fn: Any, index: int) -> torch.Tensor:
            return _grid_scores(q_fn, agent_tasks, obs_table, solved)
    else:
        eval_envs = FamilyEnvs(_family_env(flat_tasks, cfg.eval_episodes), N, K)

        def score(q_fn: Any, index: int) -> torch.Tensor:
            returns = greedy_returns(q_fn, eval_envs, seeds, index, device)
            return returns.view(N, K, cfg.eval_episodes).mean(-1)

    agents = Agents(
        seeds=tuple(seeds),
        envs=envs,
        n_tasks=K,
        score=score,
        n_heads=n_heads,
        inputs=inputs,
        input_dim=envs.obs_dim + (K if cfg.architecture == "task_input" else 0),
        penalty=penalty if bool(run_lams.any()) else None,
        head_lrs=tuple(task_lrs[:n_heads]),
        pcgrad=cfg.use_pcgrad,
    )
    try:
        run = train_population(
            agents, cfg, cfg.steps_per_task * K, cfg.eval_every * K, device, progress
        )
    finally:
        envs.close()
        if eval_envs is not None:
            eval_envs.close()
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
        config=cfg,
        seeds=torch.tensor(seeds),
        lams=run_lams,
        task_names=[[t.name for t in tasks] for tasks in agent_tasks],
        steps=run.steps // K,
        scores=run.scores,
        conflict=run.conflict,
        history=history,
        network=run.network.cpu(),
        wall_time=run.wall_time,
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


def _fmt_ci(values: Any, digits: int = 2, seed: int = 0) -> str:
    ci = bootstrap_ci(np.asarray(values, dtype=np.float64), seed=seed)
    return f"{ci.estimate:.{digits}f} [{ci.low:.{digits}f}, {ci.high:.{digits}f}]"


def format_supervised_sweep(results: dict[str, SupervisedResult]) -> str:
    """Mean test MSE over tasks for every lam, with a 95% bootstrap interval over seeds.

    Args:
        results: Regulariser name -> result of :func:`train_supervised` (same lams and seeds).

    Returns:
        A table, one row per lam.
    """
    names = list(results)
    first = results[names[0]]
    lams = sorted(set(first.lams.tolist()))
    header = f"{'lam':>8} | " + " | ".join(f"{n:^22}" for n in names)
    lines = [
        f"test MSE (mean over tasks, 95% CI over {len(set(first.seeds.tolist()))} seeds)",
        header,
        "-" * len(header),
    ]
    for lam in lams:
        cells = []
        for name in names:
            r = results[name]
            mse = r.test_mse[r.lams == lam].mean(-1)
            cells.append(f"{_fmt_ci(mse, 3):^22}")
        lines.append(f"{lam:>8g} | " + " | ".join(cells))
    return "\n".join(lines)


def supervised_sweep_bands(
    result: SupervisedResult,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(lams [L], (estimate, low, high) [L])`` of the mean test MSE, CIs over seeds."""
    lams = np.array(sorted(set(result.lams.tolist())))
    per_seed = np.stack([result.test_mse[result.lams == lam].mean(-1).numpy() for lam in lams])
    cis = [bootstrap_ci(row) for row in per_seed]
    return lams, tuple(np.array([getattr(c, f) for c in cis]) for f in ("estimate", "low", "high"))


def mean_task_curves(result: MultiTaskResult, agents: Sequence[int] | None = None) -> torch.Tensor:
    """``[n, T]`` the score averaged over tasks, for the chosen agents (default all)."""
    scores = result.scores if agents is None else result.scores[list(agents)]
    return scores.mean(-1)


def score_band(
    result: MultiTaskResult, agents: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean-over-tasks learning curve with a 95% bootstrap band over the agents (seeds)."""
    return curve_ci(mean_task_curves(result, agents).numpy())


def format_final_scores(results: dict[str, MultiTaskResult]) -> str:
    """Final score of every task for every arm, with 95% bootstrap intervals over seeds.

    Args:
        results: Arm name -> result whose agents are the seeds of one multi-task arm.

    Returns:
        A table, one row per arm, one column per task and their mean.
    """
    first = next(iter(results.values()))
    tasks = first.task_names[0]
    header = f"{'arm':<12} | " + " | ".join(f"{t:^18}" for t in [*tasks, "mean"])
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        final = r.final_scores
        cells = [f"{_fmt_ci(final[:, k]):^18}" for k in range(final.shape[1])]
        cells.append(f"{_fmt_ci(final.mean(1)):^18}")
        lines.append(f"{name:<12} | " + " | ".join(cells))
    return "\n".join(lines)


@dataclass(frozen=True)
class ThresholdComparison:
    """Total environment steps until every task reaches the threshold, per seed.

    Attributes:
        multitask: ``[S]`` steps of one multi-task agent (all tasks counted), inf if never.
        singles: ``[S]`` summed steps of the K single-task agents of each seed, inf if any
            never gets there.
        singles_per_task: ``[S, K]`` steps of each single-task agent.
        final_multitask: ``[S, K]`` final scores of the multi-task agents.
        final_singles: ``[S, K]`` scores of the single-task agents after the same number of
            steps per task as the multi-task agents (their evaluation at that step).
        final_singles_end: ``[S, K]`` their scores at the end of their own budget.
        budget: Steps per task of the multi-task agents.
    """

    multitask: torch.Tensor
    singles: torch.Tensor
    singles_per_task: torch.Tensor
    final_multitask: torch.Tensor
    final_singles: torch.Tensor
    final_singles_end: torch.Tensor
    budget: int


def compare_with_singles(
    multi: MultiTaskResult, singles: MultiTaskResult, threshold: float
) -> ThresholdComparison:
    """Steps to threshold of one multi-task agent against K single-task agents, per seed.

    Args:
        multi: ``S`` agents (one per seed), each with the same K tasks.
        singles: ``S * K`` single-task agents, seed-major (agent ``s * K + k`` learns task
            ``k`` with seed ``s``), trained for at least as many steps per task, evaluated at
            the multi-task agents' last step among others.
        threshold: Score every task must reach (the multi-task agent: all tasks at the same
            evaluation).

    Returns:
        A :class:`ThresholdComparison`.
    """
    S, _, K = multi.scores.shape
    if singles.scores.shape[0] != S * K or singles.scores.shape[2] != 1:
        raise ValueError(f"expected {S * K} single-task agents for {S} seeds and {K} tasks")
    every_task = multi.scores.min(-1).values  # [S, T]
    multi_steps = steps_to_threshold(multi.total_steps, every_task, threshold)
    per_task = steps_to_threshold(singles.steps, singles.scores[..., 0], threshold).view(S, K)
    budget = int(multi.steps[-1])
    at_budget = (singles.steps == budget).nonzero().flatten()
    if len(at_budget) != 1:
        raise ValueError(f"the single-task agents were not evaluated at step {budget}")
    return ThresholdComparison(
        multitask=multi_steps,
        singles=per_task.sum(1),
        singles_per_task=per_task,
        final_multitask=multi.final_scores,
        final_singles=singles.scores[:, int(at_budget[0]), 0].view(S, K),
        final_singles_end=singles.final_scores[:, 0].view(S, K),
        budget=budget,
    )


def format_threshold_comparison(comparison: ThresholdComparison, threshold: float) -> str:
    """The comparison as text: median total steps (thousands) with a 95% bootstrap interval over
    seeds; a seed that never reaches the threshold counts as infinitely slow ("never")."""

    def steps(values: torch.Tensor) -> str:
        never = 1e12  # a finite stand-in for "never": quantiles of inf are undefined
        finite = np.where(np.isfinite(values.numpy()), values.numpy() / 1000, never)
        ci = bootstrap_ci(finite, statistic=np.median)
        shown = [f"{v:.1f}" if v < never else "never" for v in ci]
        per_seed = ", ".join(f"{v / 1000:.1f}" if math.isfinite(v) else "never" for v in values)
        return f"{shown[0]} k [{shown[1]}, {shown[2]}]   (per seed: {per_seed})"

    lines = [
        f"total environment steps until every task scores >= {threshold:g} "
        "(median, 95% CI over seeds)",
        f"  one multi-task agent : {steps(comparison.multitask)}",
        f"  K single-task agents : {steps(comparison.singles)}",
        f"score after {comparison.budget} steps per task (mean over tasks, 95% CI over seeds)",
        f"  one multi-task agent : {_fmt_ci(comparison.final_multitask.mean(1))}",
        f"  K single-task agents : {_fmt_ci(comparison.final_singles.mean(1))}",
        f"  K single-task agents, at the end of their budget: "
        f"{_fmt_ci(comparison.final_singles_end.mean(1))}",
    ]
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
    """Final mean-over-tasks score per lam and regulariser, 95% CI over seeds.

    Args:
        results: Regulariser name -> a lam sweep of :func:`train_multitask_dqn`.
        last: Average the score over the last ``last`` evaluations (less noisy).
    """
    names = list(results)
    lams = sorted(set(results[names[0]].lams.tolist()))
    header = f"{'lam':>8} | " + " | ".join(f"{n:^18}" for n in names)
    lines = [header, "-" * len(header)]
    for lam in lams:
        cells = []
        for name in names:
            r = results[name]
            final = r.scores[r.lams == lam][:, -last:].mean((1, 2))
            cells.append(f"{_fmt_ci(final):^18}")
        lines.append(f"{lam:>8g} | " + " | ".join(cells))
    return "\n".join(lines)


def mean_conflict(result: MultiTaskResult, evaluation: int = -1) -> torch.Tensor:
    """``[K, K]`` gradient cosine similarity averaged over agents at one evaluation."""
    return result.conflict[:, evaluation].nanmean(0)


def lam_final_bands(
    result: MultiTaskResult, last: int = 1
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(lams [L], (estimate, low, high) [L])``: final mean-over-tasks score per lam, with a
    95% bootstrap interval over seeds (the score averaged over the last ``last`` evaluations)."""
    lams = np.array(sorted(set(result.lams.tolist())))
    cis = [
        bootstrap_ci(result.scores[result.lams == lam][:, -last:].mean((1, 2)).numpy())
        for lam in lams
    ]
    return lams, tuple(np.array([getattr(c, f) for c in cis]) for f in ("estimate", "low", "high"))


LESSON_CONFIG = MultiTaskConfig(
    steps_per_task=3_000,
    envs_per_task=4,
    lr=3e-3,
    updates_per_step=0.0625,
    buffer_size=5_000,
    batch_size=128,
    target_update_interval=50,
)
"""The grid-family configuration of Lesson 04 (a few seconds per arm of 5 seeds on one core)."""


def singles_band(
    singles: MultiTaskResult, n_tasks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Learning curve of K single-task agents (seed-major, see :func:`compare_with_singles`):
    the score averaged over the K agents of a seed, with a 95% bootstrap band over seeds."""
    scores = singles.scores[..., 0]  # [S * K, T]
    per_seed = scores.view(-1, n_tasks, scores.shape[-1]).mean(1)
    return curve_ci(per_seed.numpy())
