"""Transfer by fine-tuning: start a DQN on a target task from weights learned on a source task.

Taught in Lesson 05. The pieces, in the order the lesson meets them:

- :func:`save_checkpoint` / :func:`load_checkpoint`: a pretrained network on disk, with the
  configuration that made it, so that it cannot be loaded into a network of other sizes;
- :func:`prepare_finetune`: turn a pretrained network into the starting point of one strategy
  (``"scratch"``, ``"full"``, ``"freeze_trunk"``, ``"l2sp"``);
- :func:`l2sp_penalty`: the L2-SP regulariser (Li et al., 2018), ``alpha * sum ||p - p_ref||^2``,
  which keeps fine-tuned weights near the pretrained ones;
- :func:`finetune_update`: one fine-tuning step (DQN loss, plus the penalty for L2-SP) on the
  trainable parameters;
- :func:`transfer_metrics`: jumpstart, asymptotic gain, time to threshold and transfer ratio
  (Taylor & Stone, 2009);
- :func:`compare_strategies`: the experiment of the lesson (and of
  ``benchmarks/bench_transfer.py``) on the grid family (:mod:`course.envs`): every strategy on a
  near and a far target, ten seeds, each network scored *exactly* on its target and on the source
  task (forgetting) by :func:`exact_scores`, through :func:`course.population.train_population`;
  results compared seed by seed with :func:`course.evaluation.compare`;
- :func:`pretrain_sources` / :func:`pretrain_multitask_sources`: several source networks of each
  kind (single-task, and Lesson 04's multi-task agent), on the same source-step budget;
- :func:`run_benchmark` / :func:`load_benchmark` / :func:`format_benchmark`: the benchmark's
  stored results, which the lesson prints instead of pasting them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from course.dqn import DQNConfig, QNetwork, dqn_loss, td_target
from course.envs import GRID_LAYOUT, GridTask, make_grid_vec
from course.evaluation import Comparison, compare, compare_censored, curve_band, mean_ci
from course.mdp import value_iteration
from course.multitask import MultiHeadQNetwork, MultiTaskConfig, train_multitask_dqn
from course.population import (
    Agents,
    FamilyEnvs,
    PopulationQNetwork,
    Purpose,
    default_device,
    derive_seed,
    linear_init,
    network_sizes,
    train_population,
)
from course.replay import Batch

__all__ = [
    "FINETUNE_CONFIG",
    "L2SP_ALPHAS",
    "LESSON_TARGETS",
    "MULTITASK_SOURCE_CONFIG",
    "MULTITASK_SOURCE_TASKS",
    "SCRATCH_CONFIG",
    "SOURCE_CONFIG",
    "SOURCE_TASK",
    "STRATEGIES",
    "THRESHOLD",
    "Checkpoint",
    "ComparisonResult",
    "Sources",
    "TransferMetrics",
    "compare_strategies",
    "exact_scores",
    "finetune_update",
    "format_arms",
    "format_benchmark",
    "format_l2sp_sweep",
    "l2sp_penalty",
    "l2sp_regularizer",
    "load_benchmark",
    "load_checkpoint",
    "multitask_source_state",
    "per_source",
    "prepare_finetune",
    "pretrain_multitask_sources",
    "pretrain_sources",
    "run_benchmark",
    "save_checkpoint",
    "transfer_metrics",
    "zero_shot_scores",
]


# --- transfer metrics --------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferMetrics:
    """How a transfer learning curve compares with a from-scratch one (Taylor & Stone, 2009).

    Attributes:
        jumpstart: ``transfer[0] - scratch[0]``: how much better the agent starts.
        asymptotic_gain: ``transfer[-1] - scratch[-1]``: how much better it ends (at the end of
            the budget, which need not be the asymptote).
        time_to_threshold_scratch: First step at which the scratch curve is ``>= threshold``;
            ``None`` if it never is.
        time_to_threshold_transfer: The same for the transfer curve.
        transfer_ratio: Area under the transfer curve over area under the scratch curve
            (trapezoidal rule over the steps); above 1 means more return collected overall.
    """

    jumpstart: float
    asymptotic_gain: float
    time_to_threshold_scratch: float | None
    time_to_threshold_transfer: float | None
    transfer_ratio: float


def _as_float64(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} has shape {array.shape}; expected one value per step [T]")
    return array


def _first_reach(steps: np.ndarray, curve: np.ndarray, threshold: float) -> float | None:
    reached = np.flatnonzero(curve >= threshold)
    return float(steps[reached[0]]) if reached.size else None


def transfer_metrics(
    steps: torch.Tensor | np.ndarray | Sequence[float],
    scratch: torch.Tensor | np.ndarray | Sequence[float],
    transfer: torch.Tensor | np.ndarray | Sequence[float],
    threshold: float,
) -> TransferMetrics:
    """Jumpstart, asymptotic gain, time to threshold and transfer ratio of two learning curves.

    Taught in Lesson 05. The curves are mean returns measured at the same step counts, which may
    be unevenly spaced: areas are trapezoids over the actual steps, and a time to threshold is a
    step count, not an index.

    Args:
        steps: Increasing step counts ``[T]`` (``T >= 2``) at which both curves were measured.
        scratch: Mean returns of the agent trained from scratch ``[T]``.
        transfer: Mean returns of the agent that starts from transferred knowledge ``[T]``.
        threshold: Return that counts as "reached" (``>=``).

    Returns:
        The :class:`TransferMetrics`; times to threshold are floats (the step counts) or None.

    Raises:
        ValueError: If the shapes differ, ``steps`` is not strictly increasing, or the area under
            the scratch curve is not positive. The ratio of areas only means something for
            positive areas: shift the returns first (e.g. subtract the lowest possible return)
            if they can be negative.

    Example:
        >>> m = transfer_metrics([0, 10, 30], [0.0, 1.0, 2.0], [1.0, 2.0, 2.0], threshold=2.0)
        >>> m.jumpstart, m.time_to_threshold_scratch, m.time_to_threshold_transfer
        (1.0, 30.0, 10.0)
        >>> round(m.transfer_ratio, 3)  # (15 + 40) / (5 + 30)
        1.571
    """
    x = _as_float64(steps, "steps")
    s = _as_float64(scratch, "scratch")
    t = _as_float64(transfer, "transfer")
    if not (x.shape == s.shape == t.shape):
        raise ValueError(
            f"steps, scratch and transfer have shapes {x.shape}, {s.shape}, {t.shape}; "
            "give one value per step in each"
        )
    if x.size < 2 or np.any(np.diff(x) <= 0):
        raise ValueError(f"steps {x.tolist()} must hold at least two strictly increasing counts")
    area_scratch = float(np.trapezoid(s, x))
    if not area_scratch > 0:
        raise ValueError(
            f"the area under the scratch curve is {area_scratch:g}; the transfer ratio needs a "
            "positive area: shift the returns so that they are positive"
        )
    return TransferMetrics(
        jumpstart=float(t[0] - s[0]),
        asymptotic_gain=float(t[-1] - s[-1]),
        time_to_threshold_scratch=_first_reach(x, s, threshold),
        time_to_threshold_transfer=_first_reach(x, t, threshold),
        transfer_ratio=float(np.trapezoid(t, x)) / area_scratch,
    )


METRIC_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TransferMetrics))


def _metrics_batch(
    steps: np.ndarray, scratch: np.ndarray, transfer: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """:func:`transfer_metrics` of many curve pairs ``[R, T]`` at once; "never" is ``inf``."""

    def reach(curves: np.ndarray) -> np.ndarray:
        hit = curves >= threshold
        return np.where(hit.any(axis=1), steps[hit.argmax(axis=1)], np.inf)

    return {
        "jumpstart": transfer[:, 0] - scratch[:, 0],
        "asymptotic_gain": transfer[:, -1] - scratch[:, -1],
        "time_to_threshold_scratch": reach(scratch),
        "time_to_threshold_transfer": reach(transfer),
        "transfer_ratio": np.trapezoid(transfer, steps, axis=1)
        / np.trapezoid(scratch, steps, axis=1),
    }


# --- the L2-SP penalty -------------------------------------------------------------------------


def l2sp_penalty(
    model: nn.Module,
    reference: Mapping[str, torch.Tensor],
    alpha: float,
    exclude: Sequence[str] = (),
) -> torch.Tensor:
    """L2-SP: ``alpha * sum ||p - p_ref||^2`` over the parameters named in ``reference``.

    Taught in Lesson 05 (Li, Grandvalet & Davoine, 2018). Plain weight decay pulls weights
    toward 0, which forgets the pretrained solution; L2-SP pulls them toward the *starting
    point*. A freshly initialised head has no meaningful starting point: leave it out with
    ``exclude=("head",)``.

    Args:
        model: The network being fine-tuned.
        reference: Pretrained values by parameter name (as in ``model.state_dict()``); only
            these parameters are penalised. Never modified.
        alpha: Strength of the penalty.
        exclude: Name prefixes to skip (``"head"`` skips ``head.weight`` and ``head.bias``).

    Returns:
        A scalar tensor, differentiable with respect to the model's parameters.

    Raises:
        KeyError: If ``reference`` names a parameter the model does not have.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> ref = {k: v.detach() + 1.0 for k, v in net.state_dict().items()}
        >>> l2sp_penalty(net, ref, alpha=0.5).item()  # 3 parameters, each off by 1
        1.5
    """
    params = dict(model.named_parameters())
    skip = tuple(exclude)
    total: torch.Tensor | None = None
    for name, value in reference.items():
        if skip and name.startswith(skip):
            continue
        if name not in params:
            raise KeyError(
                f"reference has {name!r}, which the model does not have; its parameters are "
                f"{sorted(params)}"
            )
        p = params[name]
        term = (p - value.to(device=p.device, dtype=p.dtype)).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        first = next(iter(params.values()), None)
        return torch.zeros((), device=first.device if first is not None else None)
    return alpha * total


def l2sp_regularizer(
    reference: Mapping[str, torch.Tensor],
    alpha: float | torch.Tensor,
    exclude: Sequence[str] = (),
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """:func:`l2sp_penalty` for a population of agents, as ``train_dqn(regularizer=...)`` wants.

    Args:
        reference: One pretrained state dict (shared by all agents), or stacked values
            ``[N, ...]`` per name (one per agent).
        alpha: Strength, a float or one per agent ``[N]`` (0 switches the penalty off for an
            agent, so penalised and unpenalised agents can train together).
        exclude: Name prefixes to skip.

    Returns:
        A function of :meth:`course.population.PopulationQNetwork.named_agent_parameters` (values
        ``[N, ...]``) returning one penalty per agent ``[N]``.
    """
    skip = tuple(exclude)
    kept = {k: v.detach() for k, v in reference.items() if not (skip and k.startswith(skip))}
    cache: dict[tuple, dict[str, torch.Tensor]] = {}

    def penalty(params: dict[str, torch.Tensor]) -> torch.Tensor:
        first = next(iter(params.values()))
        key = (first.device, first.dtype)
        if key not in cache:
            cache.clear()
            cache[key] = {k: v.to(device=first.device, dtype=first.dtype) for k, v in kept.items()}
        refs = cache[key]
        total = torch.zeros(first.shape[0], device=first.device, dtype=first.dtype)
        for name, value in refs.items():
            total = total + (params[name] - value).pow(2).flatten(1).sum(1)
        a = torch.as_tensor(alpha, device=first.device, dtype=first.dtype)
        return a * total

    return penalty


# --- preparing a pretrained network for fine-tuning -------------------------------------------

FINETUNE_STRATEGIES: tuple[str, ...] = ("scratch", "full", "freeze_trunk", "l2sp")
"""The strategies :func:`prepare_finetune` knows."""


@torch.no_grad()
def _reinitialise(module: nn.Module, generator: torch.Generator | None) -> None:
    """:func:`course.population.linear_init` for every Linear in ``module``, in module order."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            weight, bias = linear_init(layer.in_features, layer.out_features, generator)
            layer.weight.copy_(weight)
            if layer.bias is not None:
                layer.bias.copy_(bias)
        elif (
            layer is not module
            and hasattr(layer, "reset_parameters")
            and not any(True for _ in layer.children())
        ):
            layer.reset_parameters()  # other layer types: their own rule (global RNG)


def _heads(model: nn.Module) -> nn.Module:
    if hasattr(model, "heads"):
        return model.heads
    if hasattr(model, "head"):
        return model.head
    raise ValueError(
        f"{type(model).__name__} has no `head` or `heads`; prepare_finetune needs a network "
        "split into `.trunk` (shared features) and `.head` (or `.heads`)"
    )


def prepare_finetune(
    model: nn.Module,
    strategy: str,
    reference: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Make a pretrained network the starting point of a fine-tuning strategy, in place.

    Taught in Lesson 05. The caller then builds the optimizer from the parameters that still
    require gradients, ``[p for p in model.parameters() if p.requires_grad]`` (as
    :func:`course.population.train_population` does): a frozen parameter must neither receive
    gradients nor sit in the optimizer (weight decay or momentum would still move it).

    Strategies:

    - ``"scratch"``: re-initialise every parameter; all trainable (the baseline).
    - ``"full"``: keep the pretrained weights; all trainable.
    - ``"freeze_trunk"``: keep the trunk, ``requires_grad = False`` on it; re-initialise the
      head (or every head of ``.heads``), trainable.
    - ``"l2sp"``: keep the weights, all trainable, and store the anchor of the penalty as
      ``model.l2sp_reference`` (a detached copy of ``reference``, or of the current weights
      when ``reference`` is None). The caller adds
      ``l2sp_penalty(model, model.l2sp_reference, alpha, exclude=...)`` to the loss.

    Args:
        model: A network with a ``.trunk`` and a ``.head`` (or ``.heads``), e.g.
            :class:`course.dqn.QNetwork`, holding the pretrained weights.
        strategy: One of ``"scratch"``, ``"full"``, ``"freeze_trunk"``, ``"l2sp"``.
        reference: Pretrained state dict; when given, it is loaded into the model first
            (except for ``"scratch"``).
        generator: Source of randomness for re-initialisation (``nn.Linear`` layers); None
            draws a fresh, unseeded one.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: For an unknown strategy or a model without ``.trunk`` and a head.
    """
    if strategy not in FINETUNE_STRATEGIES:
        raise ValueError(
            f"unknown strategy {strategy!r}; use one of {', '.join(map(repr, FINETUNE_STRATEGIES))}"
        )
    if not hasattr(model, "trunk"):
        raise ValueError(
            f"{type(model).__name__} has no `trunk`; prepare_finetune needs a network split "
            "into `.trunk` (shared features) and `.head` (or `.heads`)"
        )
    heads = _heads(model)
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    if reference is not None and strategy != "scratch":
        model.load_state_dict(dict(reference))
    model.requires_grad_(True)
    if strategy == "scratch":
        _reinitialise(model, generator)
    elif strategy == "freeze_trunk":
        model.trunk.requires_grad_(False)
        _reinitialise(heads, generator)
    elif strategy == "l2sp":
        source = model.state_dict() if reference is None else reference
        # clone: state_dict() shares storage with the parameters, so an uncloned anchor would
        # follow the weights and the penalty would stay 0
        model.l2sp_reference = {k: v.detach().clone() for k, v in source.items()}
    return model


# --- one fine-tuning step ----------------------------------------------------------------------


def finetune_update(
    q_net: nn.Module,
    target_net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    gamma: float,
    alpha: float = 0.0,
    exclude: Sequence[str] = ("head",),
) -> float:
    """One gradient step of fine-tuning: the DQN loss plus, for L2-SP, the penalty.

    Taught in Lesson 05, where the student assembles it from Lesson 03's pieces
    (:func:`course.dqn.td_target`, :func:`course.dqn.dqn_loss`) and :func:`l2sp_penalty`,
    for a network prepared by :func:`prepare_finetune` and an optimizer over its trainable
    parameters only:

    1. targets from ``target_net`` without gradient (the plain target of :func:`td_target`);
    2. the mean Huber loss on the taken actions (:func:`dqn_loss`);
    3. if ``q_net`` has an ``l2sp_reference`` (the ``"l2sp"`` strategy), plus
       ``l2sp_penalty(q_net, q_net.l2sp_reference, alpha, exclude)``: the pull back toward the
       *pretrained* weights, the fresh or task-specific head excluded;
    4. gradients zeroed before ``backward``, then one ``optimizer.step()``.

    Args:
        q_net: Online network ``[B, D] -> [B, A]``, updated in place by ``optimizer``.
        target_net: Target network of the same shape; only read.
        optimizer: Optimizer over ``q_net``'s trainable parameters.
        batch: Replay transitions (:class:`course.replay.Batch`).
        gamma: Discount factor.
        alpha: Strength of the L2-SP penalty (used only when ``q_net`` has an anchor).
        exclude: Name prefixes the penalty skips.

    Returns:
        The loss of this batch before the step (TD loss plus penalty), as a Python float.
    """
    with torch.no_grad():
        targets = td_target(batch.rewards, target_net(batch.next_obs), batch.terminated, gamma)
    loss = dqn_loss(q_net(batch.obs), batch.actions, targets)
    reference = getattr(q_net, "l2sp_reference", None)
    if reference is not None:
        loss = loss + l2sp_penalty(q_net, reference, alpha, exclude)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


# --- checkpoints --------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "course.transfer.checkpoint/1"


class Checkpoint(NamedTuple):
    """A pretrained network read back from disk.

    Attributes:
        state_dict: The :class:`course.dqn.QNetwork` weights.
        config: The :class:`course.dqn.DQNConfig` that trained it.
        obs_dim: Observation size of the network.
        n_actions: Number of actions of the network.
        info: Anything else saved with it (e.g. the source task, seed, steps), plain data.
    """

    state_dict: dict[str, torch.Tensor]
    config: DQNConfig
    obs_dim: int
    n_actions: int
    info: dict[str, Any]

    def network(self) -> QNetwork:
        """A :class:`course.dqn.QNetwork` of the saved sizes holding the saved weights."""
        net = QNetwork(self.obs_dim, self.n_actions, self.config.hidden)
        net.load_state_dict(self.state_dict)
        return net


def _network_sizes(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, int, tuple[int, ...]]:
    """(obs_dim, n_actions, hidden) of a QNetwork state dict (:func:`network_sizes`)."""
    return network_sizes(state_dict)[:3]


def save_checkpoint(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    config: DQNConfig,
    info: Mapping[str, Any] | None = None,
) -> None:
    """Save a :class:`course.dqn.QNetwork` state dict with the config that trained it.

    Args:
        path: File to write (``torch.save`` format, loadable with ``weights_only=True``).
        state_dict: The network's weights.
        config: The training configuration; its ``hidden`` must match the weights.
        info: Extra plain data to keep (numbers, strings, lists, dicts).

    Raises:
        ValueError: If the weights do not have the sizes ``config.hidden`` describes.
    """
    obs_dim, n_actions, hidden = _network_sizes(state_dict)
    if hidden != tuple(config.hidden):
        raise ValueError(
            f"the weights have hidden sizes {hidden} but config.hidden is {config.hidden}; "
            "save the config that trained these weights"
        )
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        "config": dataclasses.asdict(config),
        "network": {"obs_dim": obs_dim, "n_actions": n_actions, "hidden": list(hidden)},
        "info": dict(info or {}),
    }
    torch.save(payload, path)


def load_checkpoint(
    path: str | os.PathLike, expected_config: DQNConfig | None = None
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, checking that it is consistent.

    Args:
        path: The file.
        expected_config: If given, the network sizes it describes (``hidden``) must be those of
            the checkpoint; other fields (budgets, exploration) may differ, as they do between
            pretraining and fine-tuning.

    Returns:
        The :class:`Checkpoint`.

    Raises:
        ValueError: If the file is not such a checkpoint, its weights do not match its own
            config, or its network does not match ``expected_config``.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    name = os.path.basename(path)  # messages name the file, not the folder it sits in
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{name} is not a checkpoint written by course.transfer.save_checkpoint")
    known = {f.name for f in dataclasses.fields(DQNConfig)}
    unknown = sorted(set(payload["config"]) - known)
    if unknown:
        raise ValueError(
            f"{name} has config fields {unknown} that DQNConfig does not know; it was saved by "
            "another version of the course: regenerate it"
        )
    raw = dict(payload["config"])
    raw["hidden"] = tuple(raw["hidden"])
    config = DQNConfig(**raw)
    state_dict = payload["state_dict"]
    obs_dim, n_actions, hidden = _network_sizes(state_dict)
    if hidden != tuple(config.hidden):
        raise ValueError(
            f"{name}: its weights have hidden sizes {hidden} but its config says {config.hidden}"
        )
    if expected_config is not None and tuple(expected_config.hidden) != hidden:
        raise ValueError(
            f"{name} holds a network with hidden sizes {hidden}, but the expected config has "
            f"hidden={tuple(expected_config.hidden)}; use hidden={hidden} to fine-tune it"
        )
    return Checkpoint(state_dict, config, obs_dim, n_actions, dict(payload.get("info", {})))


# --- the experiment of the lesson: the grid family ---------------------------------------------
#
# Why the grid family: its tasks learn in a few thousand steps and are scored exactly (the
# greedy policy's expected return from the MDP, no evaluation episodes), so ten seeds of every
# arm fit in the lesson's budget and an effect is not drowned in evaluation noise. The goals
# make "near" and "far" concrete: a goal next to the source's shares most of its greedy moves,
# the opposite corner shares none.


def _grid_task(goal: tuple[int, int]) -> GridTask:
    return GridTask(GRID_LAYOUT, goal, start="uniform")


SOURCE_TASK: GridTask = _grid_task((0, 6))
"""The source task: reach the top-right corner of Lesson 04's grid, starting anywhere (a
uniform start makes every cell's greedy move count in the score)."""

LESSON_TARGETS: dict[str, GridTask] = {
    "near (goal 1,6)": _grid_task((1, 6)),
    "far (goal 6,0)": _grid_task((6, 0)),
}
"""Target tasks: a goal one cell below the source's (most greedy moves are shared), and the
opposite corner (every greedy move of the source points the wrong way)."""

SCRATCH_CONFIG = DQNConfig(
    total_steps=2_000,
    num_envs=4,
    hidden=(64,),
    lr=1e-3,
    lr_end_fraction=0.1,
    lr_decay_fraction=1.0,
    gamma=0.9,
    buffer_size=10_000,
    batch_size=64,
    learning_starts=200,
    updates_per_step=0.5,
    target_update_interval=50,
    eps_start=1.0,
    eps_end=0.05,
    exploration_fraction=0.3,
    eval_every=250,
    eval_episodes=1,
)
"""Training a fresh network (or a fresh head) on a target: epsilon from 1 down to 0.05 over the
first 30% of 2,000 steps (900 updates). The grid is scored exactly, so ``eval_episodes`` is
unused."""

FINETUNE_CONFIG = dataclasses.replace(SCRATCH_CONFIG, eps_start=0.2)
"""Fine-tuning a pretrained network: the same budget, but epsilon starts at 0.2, since the
pretrained policy already acts; only the exploration differs from :data:`SCRATCH_CONFIG`."""

SOURCE_CONFIG = dataclasses.replace(SCRATCH_CONFIG, total_steps=3_000)
"""Pretraining on the source task: :data:`SCRATCH_CONFIG` with 3,000 steps."""

MULTITASK_SOURCE_TASKS: tuple[GridTask, ...] = (SOURCE_TASK, _grid_task((6, 6)))
"""The multi-task source: the source task and the bottom-right corner (Lesson 04's heads)."""

MULTITASK_SOURCE_CONFIG = MultiTaskConfig(
    steps_per_task=SOURCE_CONFIG.total_steps // len(MULTITASK_SOURCE_TASKS),
    envs_per_task=SOURCE_CONFIG.num_envs // len(MULTITASK_SOURCE_TASKS),
    hidden=SOURCE_CONFIG.hidden,
    lr=SOURCE_CONFIG.lr,
    lr_end_fraction=SOURCE_CONFIG.lr_end_fraction,
    lr_decay_fraction=SOURCE_CONFIG.lr_decay_fraction,
    gamma=SOURCE_CONFIG.gamma,
    buffer_size=SOURCE_CONFIG.buffer_size,
    batch_size=SOURCE_CONFIG.batch_size,
    learning_starts=SOURCE_CONFIG.learning_starts,
    updates_per_step=SOURCE_CONFIG.updates_per_step,
    target_update_interval=SOURCE_CONFIG.target_update_interval,
    eps_start=SOURCE_CONFIG.eps_start,
    eps_end=SOURCE_CONFIG.eps_end,
    exploration_fraction=SOURCE_CONFIG.exploration_fraction,
    eval_every=SOURCE_CONFIG.eval_every // len(MULTITASK_SOURCE_TASKS),
)
"""The multi-task source's training: :data:`SOURCE_CONFIG`'s network, hyperparameters and total
budget (its 3,000 steps and 4 envs split between the two tasks), so that both kinds of starting
point cost the same source steps."""

L2SP_ALPHAS: tuple[float, ...] = (0.01, 0.1, 1.0)
"""Strengths of the L2-SP arms (the penalty is summed over the trunk's weights)."""

THRESHOLD = 0.9
"""Normalised return that counts as "reached" (90% of the optimal expected return)."""

STRATEGIES: tuple[str, ...] = ("scratch", "scratch_same_eps", "full", "freeze_trunk", "l2sp")
"""The arms of :func:`compare_strategies` (``"l2sp"`` runs one arm per strength,
``"l2sp_<alpha>"``). ``"scratch_same_eps"`` is the **exploration control**: a fresh network
trained with the fine-tuned arms' exploration; ``"freeze_trunk"``'s fresh head explores like
``"scratch"``."""


def exact_scores(q_values: torch.Tensor, tasks: Sequence[GridTask]) -> torch.Tensor:
    """Normalised exact return of greedy policies: ``V^pi(start) / V*(start)`` per agent.

    Taught in Lesson 05. The greedy policy of agent ``n`` (first maximum on ties) is evaluated
    exactly on ``tasks[n]``'s MDP (:func:`course.mdp.policy_evaluation`'s linear system) and
    divided by the optimal value, both averaged over the task's start distribution: 1 is
    optimal, 0 never reaches the goal.

    Args:
        q_values: ``[N, S, A]`` action values of every state, rows in the MDP's state order
            (the rows of ``env.observations()``).
        tasks: ``N`` grid tasks on one layout.

    Returns:
        ``[N]`` float32 scores in ``[0, 1]``.
    """
    if q_values.dim() != 3 or q_values.shape[0] != len(tasks):
        raise ValueError(
            f"q_values has shape {tuple(q_values.shape)} for {len(tasks)} tasks; "
            "expected [N, S, A] with one task per row"
        )
    solved = [_solve(task) for task in tasks]
    P = torch.stack([s[0] for s in solved])  # [N, S, A, S]
    R = torch.stack([s[1] for s in solved])  # [N, S, A]
    initial = torch.stack([s[2] for s in solved])  # [N, S]
    optimum = torch.tensor([s[4] for s in solved], dtype=torch.float64)
    gamma = solved[0][3]
    n_states = P.shape[1]
    greedy = F.one_hot(q_values.detach().cpu().argmax(-1), P.shape[2]).double()
    P_pi = torch.einsum("nsa,nsat->nst", greedy, P)
    r_pi = (greedy * R).sum(-1)
    eye = torch.eye(n_states, dtype=torch.float64)
    values = torch.linalg.solve(eye - gamma * P_pi, r_pi.unsqueeze(-1)).squeeze(-1)
    return ((initial * values).sum(-1) / optimum).float()


_SOLVED: dict[GridTask, tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]] = {}


def _solve(task: GridTask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    """``(P, R, initial, gamma, optimal start value)`` of a task, cached (tasks are frozen)."""
    if task not in _SOLVED:
        mdp = task.mdp()
        V, _ = value_iteration(mdp)
        _SOLVED[task] = (mdp.P, mdp.R, mdp.initial, mdp.gamma, float(mdp.initial @ V))
    return _SOLVED[task]


def _grid_envs(tasks: Sequence[GridTask], num_envs: int) -> FamilyEnvs:
    """Agent ``n`` steps ``num_envs`` sub-envs of ``tasks[n]``."""
    return FamilyEnvs(make_grid_vec(list(tasks), num_envs), len(tasks), 1)


def _scorer(
    envs: FamilyEnvs, columns: Sequence[Sequence[GridTask]], device: torch.device
) -> Callable[[Callable, int], torch.Tensor]:
    """``score(q_fn, index) -> [N, M]``: column ``m`` is :func:`exact_scores` on
    ``columns[m]`` (one task per agent)."""
    obs_table = torch.from_numpy(envs.env.observations()).to(device)
    obs = obs_table.unsqueeze(0).expand(envs.n_agents, -1, -1)
    rows = torch.zeros(obs.shape[:2], dtype=torch.int64, device=device)

    def score(q_fn: Callable, index: int) -> torch.Tensor:
        q = q_fn(obs, rows)
        return torch.stack([exact_scores(q, tasks) for tasks in columns], dim=-1)

    return score


def _train(
    seeds: Sequence[int],
    tasks: Sequence[GridTask],
    config: DQNConfig,
    columns: Sequence[Sequence[GridTask]],
    device: torch.device,
    init_states: Sequence[Mapping[str, torch.Tensor]] | None = None,
    frozen: tuple[str, ...] = (),
    penalty: Callable[[PopulationQNetwork], torch.Tensor] | None = None,
) -> Any:
    """One :func:`course.population.train_population` call: agent ``n`` trains on
    ``tasks[n]`` and is scored on every column."""
    envs = _grid_envs(tasks, config.num_envs)
    score = _scorer(envs, columns, device)
    agents = Agents(
        seeds=tuple(seeds),
        envs=envs,
        n_tasks=1,
        score=score,
        init_states=init_states,
        frozen=frozen,
        penalty=penalty,
    )
    try:
        return train_population(agents, config, config.total_steps, config.eval_every, device)
    finally:
        envs.close()


class Sources(NamedTuple):
    """Pretrained source networks, one per seed.

    Attributes:
        states: One :class:`course.dqn.QNetwork` state dict per seed (on the CPU).
        scores: ``[n_sources]`` their exact normalised return on the source task.
        steps: Source-task environment steps each one cost.
    """

    states: list[dict[str, torch.Tensor]]
    scores: torch.Tensor
    steps: int


def pretrain_sources(
    seeds: Sequence[int],
    config: DQNConfig = SOURCE_CONFIG,
    task: GridTask = SOURCE_TASK,
    device: torch.device | str | None = None,
) -> Sources:
    """Train one single-task DQN per seed on the source task (all at once).

    Args:
        seeds: Seeds of the source networks.
        config: Hyperparameters and budget.
        task: The source task.
        device: Torch device.

    Returns:
        The :class:`Sources`.
    """
    dev = default_device(device)
    run = _train(seeds, [task] * len(seeds), config, [[task] * len(seeds)], dev)
    states = [
        {k: v.cpu() for k, v in run.network.agent_state_dict(a).items()} for a in range(len(seeds))
    ]
    return Sources(states, run.scores[:, -1, 0].clone(), config.total_steps)


def pretrain_multitask_sources(
    seeds: Sequence[int],
    config: MultiTaskConfig = MULTITASK_SOURCE_CONFIG,
    tasks: Sequence[GridTask] = MULTITASK_SOURCE_TASKS,
    device: torch.device | str | None = None,
) -> Sources:
    """Train one multi-head DQN (Lesson 04) per seed on ``tasks``; keep head 0 as the source.

    Each network's shared trunk and the head of ``tasks[0]`` (the source task) become a
    single-task state dict (:func:`multitask_source_state`), scored on ``tasks[0]``.

    Args:
        seeds: Seeds of the networks.
        config: Hyperparameters (``architecture`` must be ``"heads"``).
        tasks: The source tasks; ``tasks[0]`` is the one whose head is kept.
        device: Torch device.

    Returns:
        The :class:`Sources`; ``steps`` counts every task's steps.
    """
    if config.architecture != "heads":
        raise ValueError(f"architecture is {config.architecture!r}; the source needs 'heads'")
    result = train_multitask_dqn([list(tasks)] * len(seeds), seeds, config, device=device)
    states = [multitask_source_state(result.network.agent(a), head=0) for a in range(len(seeds))]
    return Sources(states, result.scores[:, -1, 0].clone(), config.steps_per_task * len(tasks))


def multitask_source_state(network: MultiHeadQNetwork, head: int = 0) -> dict[str, torch.Tensor]:
    """A multi-head network as a single-task :class:`course.dqn.QNetwork` state dict.

    The shared trunk is kept as it is and head ``head`` becomes the network's only head: the
    multi-task agent's policy for that task.

    Args:
        network: A trained :class:`course.multitask.MultiHeadQNetwork`.
        head: Which task's head to keep.

    Returns:
        ``{"trunk.0.weight": ..., "head.weight": ..., "head.bias": ...}`` (copies, CPU).

    Raises:
        ValueError: If ``head`` is not one of the network's heads.
    """
    if not 0 <= head < network.n_tasks:
        raise ValueError(f"head {head} does not exist; the network has {network.n_tasks} heads")
    state = {f"trunk.{k}": v.detach().cpu().clone() for k, v in network.trunk.state_dict().items()}
    chosen = network.heads[head]
    state["head.weight"] = chosen.weight.detach().cpu().clone()
    state["head.bias"] = chosen.bias.detach().cpu().clone()
    return state


def zero_shot_scores(
    states: Sequence[Mapping[str, torch.Tensor]], tasks: Mapping[str, GridTask]
) -> dict[str, torch.Tensor]:
    """Exact normalised return of untrained networks on each task (their zero-shot score).

    Args:
        states: :class:`course.dqn.QNetwork` state dicts (grid observations, one-hot).
        tasks: Tasks by name.

    Returns:
        ``{name: [len(states)] scores}``.
    """
    obs = torch.from_numpy(make_grid_vec([next(iter(tasks.values()))]).observations())
    q = []
    for state in states:
        sizes = network_sizes(state)
        net = QNetwork(sizes.obs_dim, sizes.n_actions, sizes.hidden)
        net.load_state_dict(dict(state))
        with torch.no_grad():
            q.append(net(obs))
    stacked = torch.stack(q)
    return {name: exact_scores(stacked, [task] * len(states)) for name, task in tasks.items()}


def _arm_names(strategies: Sequence[str], alphas: Sequence[float]) -> list[str]:
    names = []
    for strategy in strategies:
        if strategy == "l2sp":
            names += [f"l2sp_{alpha:g}" for alpha in alphas]
        elif strategy in STRATEGIES:
            names.append(strategy)
        else:
            raise ValueError(f"unknown strategy {strategy!r}; use some of {list(STRATEGIES)}")
    return names


def _start_state(source: Mapping[str, torch.Tensor], arm: str, seed: int) -> dict:
    """The starting weights of an arm for one seed (fresh parts drawn from the seed)."""
    sizes = network_sizes(source)
    net = QNetwork(sizes.obs_dim, sizes.n_actions, sizes.hidden)
    net.load_state_dict(dict(source))
    kind = "scratch" if arm.startswith("scratch") else "full" if arm.startswith("l2sp") else arm
    generator = torch.Generator().manual_seed(derive_seed(seed, Purpose.FRESH))
    prepare_finetune(net, kind, generator=generator)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _population_penalty(
    regularizer: Callable[[dict[str, torch.Tensor]], torch.Tensor],
) -> Callable[[PopulationQNetwork], torch.Tensor]:
    """``Agents.penalty`` from a function of the stacked named parameters."""
    return lambda q_net: regularizer(q_net.named_agent_parameters())


@dataclass
class ComparisonResult:
    """Every arm on every target, one run per seed, with what each run did to the source task.

    Attributes:
        steps: Target-task environment steps at each evaluation ``[T]``.
        curves: ``curves[target][arm]``: exact normalised return on the target ``[N, T]``.
        source_curves: ``source_curves[target][arm]``: the same network's return on the source
            task ``[N, T]`` (forgetting: it starts at the source network's own score).
        distances: ``distances[target][arm]``: L2 distance of the final trunk from the
            pretrained trunk ``[N]`` (what L2-SP penalises).
        seeds: The ``N`` seeds.
        source_of_seed: ``[N]`` index of the source network seed ``i`` started from.
        alphas: L2-SP strength of each ``"l2sp_<alpha>"`` arm.
        source_steps: Environment steps spent on the source task per source network (not
            counted in ``steps``).
        wall_time: Seconds spent training.
    """

    steps: torch.Tensor
    curves: dict[str, dict[str, torch.Tensor]]
    source_curves: dict[str, dict[str, torch.Tensor]]
    distances: dict[str, dict[str, torch.Tensor]]
    seeds: tuple[int, ...]
    source_of_seed: tuple[int, ...]
    alphas: dict[str, float]
    source_steps: int
    wall_time: float

    def band(self, target: str, arm: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, low, high)`` ``[T]``: a 95% Student-t band over seeds of an arm's curves."""
        return curve_band(self.curves[target][arm])

    def measure(self, target: str, arm: str, name: str, threshold: float = THRESHOLD) -> np.ndarray:
        """One number per seed ``[N]`` of an arm on a target.

        Names: ``"start"`` (the score before any update: zero-shot for pretrained starts),
        ``"final"``, ``"area"`` (mean score over the budget, trapezoids over ``steps``),
        ``"steps_to_threshold"`` (first evaluation step with score ``>= threshold``; ``inf``
        if never), ``"source_before"`` / ``"source_after"`` (score on the source task before
        and after), ``"distance"`` (see :attr:`distances`).
        """
        curve = self.curves[target][arm].double().numpy()
        x = self.steps.double().numpy()
        if name == "start":
            return curve[:, 0]
        if name == "final":
            return curve[:, -1]
        if name == "area":
            return np.trapezoid(curve, x, axis=1) / (x[-1] - x[0])
        if name == "steps_to_threshold":
            hit = curve >= threshold
            return np.where(hit.any(1), x[hit.argmax(1)], np.inf)
        if name in ("source_before", "source_after"):
            source = self.source_curves[target][arm].double().numpy()
            return source[:, 0 if name == "source_before" else -1]
        if name == "distance":
            return self.distances[target][arm].double().numpy()
        raise ValueError(
            f"unknown measure {name!r}; use start, final, area, steps_to_threshold, "
            "source_before, source_after or distance"
        )

    def compare(
        self,
        target: str,
        a: str,
        b: str,
        name: str = "area",
        b_name: str | None = None,
        threshold: float = THRESHOLD,
    ) -> Comparison:
        """:func:`course.evaluation.compare` of measure ``name`` of arm ``a`` against arm
        ``b``'s measure ``b_name`` (default the same), paired by seed.

        ``"steps_to_threshold"`` uses :func:`course.evaluation.compare_censored` ("never"
        counted at the budget). ``compare(t, "full", "full", "final", "start")`` asks whether
        fine-tuning improved on its own zero-shot start.
        """
        b_name = b_name or name
        x = self.measure(target, a, name, threshold)
        y = self.measure(target, b, b_name, threshold)
        label_a = a if b_name == name else f"{a} {name}"
        label_b = b if b_name == name else f"{b} {b_name}"
        if name == "steps_to_threshold" and b_name == name:
            budget = float(self.steps[-1])
            return compare_censored(x, y, budget, names=(label_a, label_b))
        higher = name != "distance"
        return compare(x, y, names=(label_a, label_b), higher_is_better=higher)

    def reached(self, target: str, arm: str, threshold: float = THRESHOLD) -> int:
        """How many seeds reached ``threshold`` within the budget."""
        return int(np.isfinite(self.measure(target, arm, "steps_to_threshold", threshold)).sum())

    def metrics(self, target: str, arm: str, baseline: str = "scratch") -> TransferMetrics:
        """:func:`transfer_metrics` of the mean curves of ``arm`` against ``baseline``."""
        arms = self.curves[target]
        return transfer_metrics(self.steps, arms[baseline].mean(0), arms[arm].mean(0), THRESHOLD)


def compare_strategies(
    sources: Sequence[Mapping[str, torch.Tensor]],
    targets: Mapping[str, GridTask] = LESSON_TARGETS,
    strategies: Sequence[str] = STRATEGIES,
    seeds: Sequence[int] = range(10),
    config: DQNConfig = FINETUNE_CONFIG,
    scratch_config: DQNConfig = SCRATCH_CONFIG,
    l2sp_alphas: Sequence[float] = L2SP_ALPHAS,
    source_task: GridTask = SOURCE_TASK,
    source_steps: int = 0,
    device: torch.device | str | None = None,
) -> ComparisonResult:
    """Fine-tune with every strategy on every target, one run per seed; the lesson's experiment.

    Seed ``i`` starts from ``sources[i % len(sources)]``. Arms (``strategies``):

    - ``"scratch"``: fresh weights, ``scratch_config`` (full exploration);
    - ``"scratch_same_eps"``: the exploration control: the same fresh weights, trained with
      ``config``, the fine-tuned arms' exploration;
    - ``"full"``: the source weights, all trained, ``config``;
    - ``"freeze_trunk"``: the source trunk, frozen, and a fresh head, ``scratch_config``: a
      fresh head needs the exploration of a fresh network;
    - ``"l2sp"``: one arm ``"l2sp_<alpha>"`` per strength: the source weights, all trained,
      ``config``, plus :func:`l2sp_penalty` toward the source weights (head excluded).

    Seed ``i`` gives every arm and target the same fresh weights, fresh head, environment and
    exploration streams (common random numbers), so arms compare seed by seed. Arms that share
    a config and frozen parts train in one :func:`course.population.train_population` call;
    every network is scored exactly on its target and on the source task at each evaluation.

    Args:
        sources: Pretrained :class:`course.dqn.QNetwork` state dicts (same sizes).
        targets: Target tasks by name (grid tasks on the source's layout).
        strategies: Arms to run (some of :data:`STRATEGIES`).
        seeds: Seeds.
        config: Configuration of the pretrained arms and of the exploration control.
        scratch_config: Configuration of ``"scratch"`` and ``"freeze_trunk"``; same budget and
            evaluation grid as ``config``.
        l2sp_alphas: Strengths of the L2-SP arms.
        source_task: The task the sources were trained on (scored for forgetting).
        source_steps: Source steps per source network, recorded in the result.
        device: Torch device.

    Returns:
        A :class:`ComparisonResult`.

    Raises:
        ValueError: For an unknown strategy, sources of different sizes, or configs with
            different budgets or grids.
    """
    start = time.perf_counter()
    arms = _arm_names(strategies, l2sp_alphas)
    grid = ("total_steps", "num_envs", "eval_every", "hidden")
    if any(getattr(config, f) != getattr(scratch_config, f) for f in grid):
        raise ValueError(f"config and scratch_config must agree on {', '.join(grid)}")
    sources = [{k: v.detach().cpu() for k, v in s.items()} for s in sources]
    if not sources or any(network_sizes(s) != network_sizes(sources[0]) for s in sources):
        raise ValueError("give at least one source, all of the same sizes")
    seeds = tuple(int(s) for s in seeds)
    source_of = {s: i % len(sources) for i, s in enumerate(seeds)}
    alphas = {f"l2sp_{a:g}": float(a) for a in l2sp_alphas}
    dev = default_device(device)

    groups: dict[tuple[bool, tuple[str, ...]], list[tuple[str, str, int]]] = {}
    for arm in arms:
        fresh_exploration = arm in ("scratch", "freeze_trunk")
        frozen = ("trunk",) if arm == "freeze_trunk" else ()
        groups.setdefault((fresh_exploration, frozen), []).extend(
            (target, arm, seed) for target in targets for seed in seeds
        )
    out: dict[str, dict[str, dict[str, list]]] = {
        key: {t: {} for t in targets} for key in ("curves", "source", "distance")
    }
    steps = torch.empty(0)
    for (fresh_exploration, frozen), agents in groups.items():
        cfg = scratch_config if fresh_exploration else config
        refs = [sources[source_of[seed]] for _, _, seed in agents]
        inits = [_start_state(ref, arm, seed) for (_, arm, seed), ref in zip(agents, refs)]
        alpha = torch.tensor([alphas.get(arm, 0.0) for _, arm, _ in agents])
        penalty = None
        if bool(alpha.any()):
            stacked = {k: torch.stack([r[k] for r in refs]) for k in refs[0]}
            penalty = _population_penalty(l2sp_regularizer(stacked, alpha.to(dev), ("head",)))
        tasks = [targets[t] for t, _, _ in agents]
        run = _train(
            [seed for _, _, seed in agents],
            tasks,
            cfg,
            [tasks, [source_task] * len(agents)],
            dev,
            init_states=inits,
            frozen=frozen,
            penalty=penalty,
        )
        steps = run.steps
        for a, ((target, arm, _), ref) in enumerate(zip(agents, refs, strict=True)):
            final = run.network.agent_state_dict(a)
            trunk = [k for k in ref if k.startswith("trunk.")]
            distance = sum(float((final[k].cpu() - ref[k]).pow(2).sum()) for k in trunk)
            out["curves"][target].setdefault(arm, []).append(run.scores[a, :, 0])
            out["source"][target].setdefault(arm, []).append(run.scores[a, :, 1])
            out["distance"][target].setdefault(arm, []).append(torch.tensor(math.sqrt(distance)))

    def stack(key: str) -> dict[str, dict[str, torch.Tensor]]:
        return {t: {arm: torch.stack(out[key][t][arm]) for arm in arms} for t in targets}

    return ComparisonResult(
        steps=steps,
        curves=stack("curves"),
        source_curves=stack("source"),
        distances=stack("distance"),
        seeds=seeds,
        source_of_seed=tuple(source_of[s] for s in seeds),
        alphas={k: v for k, v in alphas.items() if k in arms},
        source_steps=int(source_steps),
        wall_time=time.perf_counter() - start,
    )


def per_source(values: np.ndarray | Sequence[float], source_of_seed: Sequence[int]) -> np.ndarray:
    """The mean of per-seed values over the seeds of each source network ``[n_sources]``.

    A claim about *kinds* of starting points has one independent value per source network,
    not per fine-tuning seed: average the seeds that share a source first.
    """
    values = np.asarray(values, dtype=np.float64)
    index = np.asarray(source_of_seed)
    return np.array([values[index == i].mean() for i in range(int(index.max()) + 1)])


def _ci(values: np.ndarray, digits: int = 2) -> str:
    ci = mean_ci(values)
    return f"{ci.estimate:.{digits}f} [{ci.low:.{digits}f}, {ci.high:.{digits}f}]"


def format_arms(result: ComparisonResult, threshold: float = THRESHOLD) -> str:
    """A plain-text table per target: each arm's start, final score, area, seeds that reached
    ``threshold``, source-task score after, all as means with 95% t intervals over seeds."""
    heads = ("start", "final", "area", "reached", "source after")
    lines = [
        f"{len(result.seeds)} seeds, {int(result.steps[-1])} target steps, threshold "
        f"{threshold:g}; 95% t intervals over seeds; {result.source_steps} source steps not "
        "counted"
    ]
    for target, arms in result.curves.items():
        lines += ["", f"{target:<18}" + "".join(f"{h:>19}" for h in heads)]
        for arm in arms:
            cells = [_ci(result.measure(target, arm, m)) for m in ("start", "final", "area")]
            cells.append(f"{result.reached(target, arm, threshold)}/{len(result.seeds)}")
            cells.append(_ci(result.measure(target, arm, "source_after")))
            lines.append(f"{arm:<18}" + "".join(f"{c:>19}" for c in cells))
    return "\n".join(lines)


def format_l2sp_sweep(result: ComparisonResult, target: str) -> str:
    """The L2-SP arms (and ``"full"``, alpha 0) on one target: distance of the trunk from the
    pretrained one, final target score and source score after, with 95% t intervals."""
    rows = [("full", 0.0)] if "full" in result.curves[target] else []
    rows += sorted(result.alphas.items(), key=lambda kv: kv[1])
    lines = [f"{target}: {'alpha':>6}{'trunk distance':>22}{'final':>19}{'source after':>19}"]
    for arm, alpha in rows:
        cells = [_ci(result.measure(target, arm, m)) for m in ("distance", "final", "source_after")]
        lines.append(
            " " * (len(target) + 2)
            + f"{alpha:>6g}"
            + "".join(f"{c:>{w}}" for c, w in zip(cells, (22, 19, 19)))
        )
    return "\n".join(lines)


# --- the benchmark's stored results ------------------------------------------------------------

BENCHMARK_RESULTS = (
    Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "transfer.json"
)
"""Where ``benchmarks/bench_transfer.py`` stores its results (read by the lesson)."""


def benchmark_config(
    seeds: int = 20, n_sources: int = 5, total_steps: int = 3_000
) -> dict[str, Any]:
    """The configuration of ``benchmarks/bench_transfer.py`` as plain data (what the stored
    results file records, and what a test compares it with)."""
    config = {
        "seeds": seeds,
        "n_sources": n_sources,
        "source_seeds": [1000 + i for i in range(n_sources)],
        "targets": {name: list(task.goal) for name, task in LESSON_TARGETS.items()},
        "source_goal": list(SOURCE_TASK.goal),
        "multitask_goals": [list(t.goal) for t in MULTITASK_SOURCE_TASKS],
        "source_config": dataclasses.asdict(SOURCE_CONFIG),
        "scratch_config": dataclasses.asdict(
            dataclasses.replace(SCRATCH_CONFIG, total_steps=total_steps)
        ),
        "finetune_config": dataclasses.asdict(
            dataclasses.replace(FINETUNE_CONFIG, total_steps=total_steps)
        ),
        "multitask_source_config": dataclasses.asdict(MULTITASK_SOURCE_CONFIG),
        "l2sp_alphas": list(L2SP_ALPHAS),
        "threshold": THRESHOLD,
    }
    return json.loads(json.dumps(config))  # tuples as lists: what the file holds


def _from_plain(config: dict[str, Any], key: str, kind: type) -> Any:
    raw = dict(config[key])
    raw["hidden"] = tuple(raw["hidden"])
    if raw.get("task_lrs") is not None:
        raw["task_lrs"] = tuple(raw["task_lrs"])
    return kind(**raw)


def run_benchmark(config: dict[str, Any], device: torch.device | str | None = None) -> dict:
    """Run the benchmark that ``config`` (:func:`benchmark_config`) describes.

    Both kinds of source (``n_sources`` each), then every arm on every target from the
    single-task sources, and full fine-tuning from the multi-task sources, ``seeds`` seeds each
    (seed ``i`` from source ``i % n_sources``).

    Returns:
        Plain data: ``config``, the per-seed measures ``runs[kind][target][arm][measure]``
        (lists), the sources' own scores, and the verdicts (one line each) the lesson prints.
    """
    scratch = _from_plain(config, "scratch_config", DQNConfig)
    finetune = _from_plain(config, "finetune_config", DQNConfig)
    source_cfg = _from_plain(config, "source_config", DQNConfig)
    multi_cfg = _from_plain(config, "multitask_source_config", MultiTaskConfig)
    seeds = range(config["seeds"])
    single = pretrain_sources(config["source_seeds"], source_cfg, device=device)
    multi = pretrain_multitask_sources(config["source_seeds"], multi_cfg, device=device)
    common = dict(
        seeds=seeds,
        config=finetune,
        scratch_config=scratch,
        device=device,
        l2sp_alphas=config["l2sp_alphas"],
    )
    results = {
        "single": compare_strategies(single.states, source_steps=single.steps, **common),
        "multi": compare_strategies(
            multi.states, strategies=["full"], source_steps=multi.steps, **common
        ),
    }
    measures = ("start", "final", "area", "steps_to_threshold", "source_after", "distance")
    runs = {
        kind: {
            target: {
                arm: {m: [float(v) for v in r.measure(target, arm, m)] for m in measures}
                for arm in arms
            }
            for target, arms in r.curves.items()
        }
        for kind, r in results.items()
    }
    return {
        "config": config,
        "source_scores": {"single": single.scores.tolist(), "multi": multi.scores.tolist()},
        "source_of_seed": list(results["single"].source_of_seed),
        "runs": runs,
        "verdicts": _benchmark_verdicts(results, config["threshold"]),
    }


def _benchmark_verdicts(results: dict[str, ComparisonResult], threshold: float) -> list[str]:
    single, multi = results["single"], results["multi"]
    lines = []
    for target in single.curves:
        lines.append(f"{target}:")
        n = len(single.seeds)
        lines.append(f"  scratch reached {threshold:g} in {single.reached(target, 'scratch')}/{n}")
        for a, b in (
            ("full", "scratch"),
            ("full", "scratch_same_eps"),
            ("freeze_trunk", "scratch"),
        ):
            lines.append(f"  area   {single.compare(target, a, b)}")
        lines.append(f"  final  {single.compare(target, 'full', 'full', 'final', 'start')}")
        lines.append(
            f"  source {single.compare(target, 'full', 'full', 'source_after', 'source_before')}"
        )
        x = per_source(single.measure(target, "full", "area"), single.source_of_seed)
        y = per_source(multi.measure(target, "full", "area"), multi.source_of_seed)
        verdict = compare(x, y, names=("single-task", "multi-task"), paired=False)
        lines.append(f"  area per source network  {verdict}")
    return lines


def save_benchmark(data: dict, path: str | os.PathLike = BENCHMARK_RESULTS) -> None:
    """Write :func:`run_benchmark`'s data as JSON."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def load_benchmark(path: str | os.PathLike = BENCHMARK_RESULTS) -> dict:
    """Read the stored benchmark results (written by ``benchmarks/bench_transfer.py``).

    Raises:
        ValueError: If the file's configuration is not the benchmark's current one (the stored
            numbers would describe another experiment): rerun the benchmark.
    """
    data = json.loads(Path(path).read_text())
    current = benchmark_config(
        data["config"]["seeds"],
        data["config"]["n_sources"],
        data["config"]["scratch_config"]["total_steps"],
    )
    if data["config"] != current:
        raise ValueError(
            f"{Path(path).name} was made with another configuration than the benchmark's "
            "current one; rerun benchmarks/bench_transfer.py"
        )
    return data


def format_benchmark(data: dict) -> str:
    """The stored benchmark as text: its budget, per-arm means with 95% t intervals, verdicts."""
    config = data["config"]
    lines = [
        f"{config['seeds']} seeds, {config['n_sources']} source networks per kind, "
        f"{config['scratch_config']['total_steps']} target steps, threshold {config['threshold']:g}"
        "; means with 95% t intervals over seeds",
    ]
    for kind, targets in data["runs"].items():
        for target, arms in targets.items():
            lines.append(f"{kind}-task sources, {target}:")
            for arm, measures in arms.items():
                reached = int(np.isfinite(measures["steps_to_threshold"]).sum())
                cells = "  ".join(
                    f"{m} {_ci(np.array(measures[m]))}" for m in ("start", "final", "area")
                )
                lines.append(f"  {arm:<17} {cells}  reached {reached}/{config['seeds']}")
    return "\n".join([*lines, "", *data["verdicts"]])
