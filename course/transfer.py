"""Transfer by fine-tuning: start a DQN on a target task from weights learned on a source task.

Taught in Lesson 05. The pieces, in the order the lesson meets them:

- :func:`save_checkpoint` / :func:`load_checkpoint`: a pretrained network on disk, with the
  configuration that made it, so that it cannot be loaded into a network of other sizes;
- :func:`prepare_finetune`: turn a pretrained network into the starting point of one strategy
  (``"scratch"``, ``"full"``, ``"freeze_trunk"``, ``"l2sp"``);
- :func:`l2sp_penalty`: the L2-SP regulariser (Li et al., 2018), ``alpha * sum ||p - p_ref||^2``,
  which keeps fine-tuned weights near the pretrained ones;
- :func:`transfer_metrics`: jumpstart, asymptotic gain, time to threshold and transfer ratio
  (Taylor & Stone, 2009), with bootstrap confidence intervals over seeds
  (:func:`transfer_metrics_ci`);
- :func:`compare_strategies`: the whole experiment of the lesson (and of
  ``benchmarks/bench_transfer.py``): every strategy on every target task, several seeds, built on
  :func:`course.dqn.train_dqn_agents` (each agent on its own target), with a scratch arm that
  uses the fine-tuned arms' exploration schedule so that exploration is not mistaken for
  transfer;
- :func:`pretrain_multitask_source` / :func:`multitask_source_state`: Lesson 04's multi-task
  agent as another starting point (its shared trunk and one task's head), on the same
  source-step budget as the single-task source.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from course.dqn import DQNConfig, DQNResult, QNetwork, evaluate, train_dqn, train_dqn_agents
from course.envs import CARTPOLE_TASKS, CartPoleTask, make_cartpole_vec
from course.evaluation import ConfidenceInterval, curve_ci
from course.multitask import MultiHeadQNetwork, MultiTaskConfig, train_multitask_dqn
from course.population import AgentEnvs, Purpose, derive_seed, linear_init, network_sizes

__all__ = [
    "ARMS",
    "FINETUNE_CONFIG",
    "LESSON_TARGETS",
    "MULTITASK_SOURCE_CONFIG",
    "MULTITASK_SOURCE_TASKS",
    "SCRATCH_CONFIG",
    "SOURCE_CONFIG",
    "STRATEGIES",
    "Checkpoint",
    "ComparisonResult",
    "TransferMetrics",
    "compare_strategies",
    "format_comparison",
    "l2sp_penalty",
    "l2sp_regularizer",
    "load_checkpoint",
    "multitask_source_state",
    "prepare_finetune",
    "pretrain_multitask_source",
    "pretrain_source",
    "save_checkpoint",
    "transfer_metrics",
    "transfer_metrics_ci",
    "zero_shot_returns",
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


def transfer_metrics_ci(
    steps: torch.Tensor | np.ndarray,
    scratch_runs: torch.Tensor | np.ndarray,
    transfer_runs: torch.Tensor | np.ndarray,
    threshold: float,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, ConfidenceInterval]:
    """Every :func:`transfer_metrics` with a percentile-bootstrap interval over seeds.

    The metrics are those of the *mean* curves (over runs). A resample draws, independently
    for each arm, as many runs as it has with replacement (the two arms are independent
    experiments), and recomputes the metrics of the resampled mean curves. A time to threshold
    that is never reached counts as ``inf``; interval bounds are order statistics
    (inverted-CDF quantiles), so an ``inf`` bound means "not reached in at least that share of
    resamples".

    Args:
        steps: Step counts ``[T]``.
        scratch_runs: Scratch learning curves, one per seed ``[N_s, T]``.
        transfer_runs: Transfer learning curves, one per seed ``[N_t, T]``.
        threshold: As in :func:`transfer_metrics`.
        confidence: Coverage level of each interval.
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling; the same seed gives the same intervals.

    Returns:
        ``{metric name: ConfidenceInterval(estimate, low, high)}``, floats (``inf`` for
        "never").
    """
    x = _as_float64(steps, "steps")
    runs = []
    for name, curves in (("scratch_runs", scratch_runs), ("transfer_runs", transfer_runs)):
        array = np.asarray(
            curves.detach().cpu().numpy() if isinstance(curves, torch.Tensor) else curves,
            dtype=np.float64,
        )
        if array.ndim != 2 or array.shape[1] != x.size:
            raise ValueError(f"{name} has shape {array.shape}; expected [runs, {x.size}]")
        runs.append(array)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence is {confidence}; use a level in (0, 1), e.g. 0.95")
    point = transfer_metrics(x, runs[0].mean(0), runs[1].mean(0), threshold)
    rng = np.random.default_rng(seed)
    means = [
        array[rng.integers(0, array.shape[0], size=(n_resamples, array.shape[0]))].mean(1)
        for array in runs
    ]
    with np.errstate(divide="ignore", invalid="ignore"):
        resampled = _metrics_batch(x, means[0], means[1], threshold)
    alpha = (1.0 - confidence) / 2.0
    out = {}
    for name in METRIC_NAMES:
        estimate = getattr(point, name)
        low, high = np.quantile(resampled[name], [alpha, 1.0 - alpha], method="inverted_cdf")
        out[name] = ConfidenceInterval(
            math.inf if estimate is None else float(estimate), float(low), float(high)
        )
    return out


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

STRATEGIES: tuple[str, ...] = ("scratch", "scratch_same_eps", "full", "freeze_trunk", "l2sp")
"""The default arms of :func:`compare_strategies`. ``"scratch_same_eps"`` is a from-scratch
agent that explores like the fine-tuned ones (the control for the exploration confound).
:func:`compare_strategies` also knows ``"multitask"``, which needs a multi-task starting point."""

ARMS: tuple[str, ...] = (*STRATEGIES, "multitask")
"""Every arm :func:`compare_strategies` can run."""

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


# --- the experiment of the lesson ---------------------------------------------------------------

SOURCE_CONFIG = DQNConfig(
    total_steps=20_000,
    num_envs=4,
    hidden=(64, 64),
    lr=1e-3,
    lr_decay_fraction=1.0,
    buffer_size=20_000,
    batch_size=64,
    learning_starts=1_000,
    updates_per_step=0.25,
    target_update_interval=250,
    eps_start=1.0,
    eps_end=0.01,
    exploration_fraction=0.2,
    eval_every=2_500,
    eval_episodes=5,
)
"""Pretraining on the source task (CartPole-v1 physics)."""

SCRATCH_CONFIG = dataclasses.replace(
    SOURCE_CONFIG, total_steps=10_000, buffer_size=10_000, eval_every=1_000
)
"""Training on a target task from scratch: epsilon from 1 down to 0.01 over 20% of the steps."""

FINETUNE_CONFIG = dataclasses.replace(SCRATCH_CONFIG, eps_start=0.1)
"""Fine-tuning on a target task: the same budget, but epsilon starts at 0.1, because a
pretrained agent already acts sensibly and full exploration would waste its head start."""

LESSON_TARGETS: dict[str, CartPoleTask] = {
    "near (pole 1.0)": CARTPOLE_TASKS["long_pole"],
    "far (pole 2.0)": CARTPOLE_TASKS["very_long_pole"],
    "control (cart 3.0)": CARTPOLE_TASKS["heavy_cart"],
}
"""Target tasks of the lesson: a near one, a far one, and a control that the source policy
already solves zero-shot (nothing for fine-tuning to gain)."""

L2SP_ALPHA = 0.01
"""Strength of the L2-SP penalty in :func:`compare_strategies` (summed over all weights)."""


def _cartpole_env(task: CartPoleTask) -> Callable[[int], Any]:
    return lambda num_envs: make_cartpole_vec([task], num_envs)


def zero_shot_returns(
    state: Mapping[str, torch.Tensor],
    tasks: Mapping[str, CartPoleTask],
    n_episodes: int = 20,
    seed: int = 10**6,
) -> dict[str, float]:
    """Mean greedy return of a :class:`course.dqn.QNetwork` state dict on each task, untrained.

    Args:
        state: The network's weights.
        tasks: Tasks by name.
        n_episodes: Episodes per task.
        seed: Reset seed of the episodes (the same start states on every task).

    Returns:
        ``{name: mean return}``.
    """
    obs_dim, n_actions, hidden = _network_sizes(state)
    net = QNetwork(obs_dim, n_actions, hidden)
    net.load_state_dict(dict(state))
    return {
        name: evaluate(net, _cartpole_env(task), n_episodes, seed).mean().item()
        for name, task in tasks.items()
    }


def pretrain_source(
    config: DQNConfig = SOURCE_CONFIG,
    seed: int = 0,
    task: CartPoleTask = CARTPOLE_TASKS["default"],
    device: torch.device | str | None = None,
    progress: bool = False,
) -> DQNResult:
    """Train the source agent: one DQN on ``task`` (default CartPole physics).

    Args:
        config: Hyperparameters.
        seed: Seed of the agent.
        task: Source task.
        device: Torch device.
        progress: Show a progress bar.

    Returns:
        The :class:`course.dqn.DQNResult`; ``result.states[0]`` are the source weights.
    """
    return train_dqn(config, [seed], _cartpole_env(task), device=device, progress=progress)


MULTITASK_SOURCE_TASKS: tuple[CartPoleTask, ...] = (
    CARTPOLE_TASKS["default"],
    CARTPOLE_TASKS["mirrored"],
)
"""The multi-task source: Lesson 04's CartPole pair, the default task and its mirrored twin."""

MULTITASK_SOURCE_CONFIG = MultiTaskConfig(
    steps_per_task=SOURCE_CONFIG.total_steps // len(MULTITASK_SOURCE_TASKS),
    envs_per_task=SOURCE_CONFIG.num_envs // len(MULTITASK_SOURCE_TASKS),
    hidden=SOURCE_CONFIG.hidden,
    lr=SOURCE_CONFIG.lr,
    lr_end_fraction=0.0,
    gamma=SOURCE_CONFIG.gamma,
    buffer_size=SOURCE_CONFIG.buffer_size,
    batch_size=SOURCE_CONFIG.batch_size,
    learning_starts=SOURCE_CONFIG.learning_starts,
    updates_per_step=SOURCE_CONFIG.updates_per_step,
    target_update_interval=SOURCE_CONFIG.target_update_interval,
    eps_end=SOURCE_CONFIG.eps_end,
    exploration_fraction=SOURCE_CONFIG.exploration_fraction,
    eval_every=SOURCE_CONFIG.eval_every // len(MULTITASK_SOURCE_TASKS),
    eval_episodes=SOURCE_CONFIG.eval_episodes,
)
"""Pretraining of the multi-task source: :data:`SOURCE_CONFIG`'s network, hyperparameters and
total budget (its 20,000 steps split between the two tasks, its 4 envs too), so that the
single-task and the multi-task starting points cost the same number of source steps."""


def pretrain_multitask_source(
    config: MultiTaskConfig = MULTITASK_SOURCE_CONFIG,
    seed: int = 0,
    tasks: Sequence[CartPoleTask] = MULTITASK_SOURCE_TASKS,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> MultiHeadQNetwork:
    """Train the multi-task source: one multi-head DQN (Lesson 04) on ``tasks``.

    Args:
        config: Hyperparameters (``architecture`` must be ``"heads"``).
        seed: Seed of the agent.
        tasks: Source tasks; head ``k`` answers ``tasks[k]``.
        device: Torch device.
        progress: Show a progress bar.

    Returns:
        The trained :class:`course.multitask.MultiHeadQNetwork` (on the CPU).
    """
    if config.architecture != "heads":
        raise ValueError(f"architecture is {config.architecture!r}; the source needs 'heads'")
    result = train_multitask_dqn([list(tasks)], [seed], config, device=device, progress=progress)
    return result.network.agent(0)


def multitask_source_state(network: MultiHeadQNetwork, head: int = 0) -> dict[str, torch.Tensor]:
    """A multi-head network as a single-task :class:`course.dqn.QNetwork` state dict.

    The shared trunk is kept as it is and head ``head`` becomes the network's only head: the
    multi-task agent's policy for that task, ready for :func:`compare_strategies`.

    Args:
        network: A trained :class:`course.multitask.MultiHeadQNetwork`.
        head: Which task's head to keep (the task most related to the targets).

    Returns:
        ``{"trunk.0.weight": ..., "head.weight": ..., "head.bias": ...}`` (copies).

    Raises:
        ValueError: If ``head`` is not one of the network's heads.
    """
    if not 0 <= head < network.n_tasks:
        raise ValueError(f"head {head} does not exist; the network has {network.n_tasks} heads")
    state = {k: v.detach().clone() for k, v in network.trunk.state_dict().items()}
    state = {f"trunk.{k}": v for k, v in state.items()}
    chosen = network.heads[head]
    state["head.weight"] = chosen.weight.detach().clone()
    state["head.bias"] = chosen.bias.detach().clone()
    return state


@dataclass
class ComparisonResult:
    """Learning curves of every strategy on every target task.

    Attributes:
        steps: Target-task environment steps at each evaluation ``[T]``.
        curves: ``curves[target][strategy]`` is the mean greedy return per seed ``[N, T]``.
        seeds: The ``N`` seeds.
        source_steps: Environment steps spent on the source task to make the pretrained
            network (not included in ``steps``).
        wall_time: Seconds spent training.
    """

    steps: torch.Tensor
    curves: dict[str, dict[str, torch.Tensor]]
    seeds: tuple[int, ...]
    source_steps: int
    wall_time: float

    def metrics_ci(
        self,
        target: str,
        strategy: str,
        threshold: float,
        baseline: str = "scratch",
        n_resamples: int = 2000,
        seed: int = 0,
    ) -> dict[str, ConfidenceInterval]:
        """:func:`transfer_metrics_ci` of ``strategy`` against ``baseline`` on ``target``."""
        arms = self.curves[target]
        return transfer_metrics_ci(
            self.steps,
            arms[baseline],
            arms[strategy],
            threshold,
            n_resamples=n_resamples,
            seed=seed,
        )

    def band(self, target: str, strategy: str, seed: int = 0) -> tuple[np.ndarray, ...]:
        """``(mean, low, high)`` ``[T]`` of a strategy's curves, a 95% bootstrap band."""
        return curve_ci(self.curves[target][strategy], seed=seed)

    def with_arms(self, other: ComparisonResult) -> ComparisonResult:
        """This comparison plus the arms of ``other``, run later on the same grid.

        Raises:
            ValueError: If ``other`` has other targets, seeds, evaluation steps or source steps
                (its curves would not be comparable), or an arm this comparison already has.
        """
        same = (
            set(other.curves) == set(self.curves)
            and other.seeds == self.seeds
            and torch.equal(other.steps, self.steps)
            and other.source_steps == self.source_steps
        )
        if not same:
            raise ValueError(
                "the two comparisons differ in targets, seeds, evaluation steps or source steps; "
                "run the new arms with the same arguments"
            )
        twice = [(t, s) for t, arms in other.curves.items() for s in arms if s in self.curves[t]]
        if twice:
            raise ValueError(f"arms {twice} are in both comparisons; keep them in one")
        curves = {t: {**arms, **other.curves[t]} for t, arms in self.curves.items()}
        return dataclasses.replace(self, curves=curves, wall_time=self.wall_time + other.wall_time)


def _fresh_state(template: Mapping[str, torch.Tensor], strategy: str, seed: int) -> dict:
    """The starting weights of a strategy for one seed (fresh parts drawn from the seed)."""
    obs_dim, n_actions, hidden = _network_sizes(template)
    net = QNetwork(obs_dim, n_actions, hidden)
    net.load_state_dict(dict(template))
    kind = {"scratch_same_eps": "scratch", "multitask": "full"}.get(strategy, strategy)
    generator = torch.Generator().manual_seed(derive_seed(seed, Purpose.FRESH))
    prepare_finetune(net, kind, generator=generator)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def compare_strategies(
    source_state: Mapping[str, torch.Tensor],
    targets: Mapping[str, CartPoleTask] = LESSON_TARGETS,
    strategies: Sequence[str] = STRATEGIES,
    seeds: Sequence[int] = range(5),
    config: DQNConfig = FINETUNE_CONFIG,
    scratch_config: DQNConfig = SCRATCH_CONFIG,
    l2sp_alpha: float = L2SP_ALPHA,
    source_steps: int = 0,
    multitask_state: Mapping[str, torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ComparisonResult:
    """Fine-tune from ``source_state`` with every strategy on every target, several seeds each.

    Arms (``strategies``):

    - ``"scratch"``: fresh weights, trained with ``scratch_config`` (full exploration);
    - ``"scratch_same_eps"``: the same fresh weights, trained with ``config``, the fine-tuned
      arms' exploration schedule: any gap between this arm and ``"scratch"`` is the effect of
      exploration alone, not of transfer;
    - ``"full"``: the source weights, all trained, with ``config``;
    - ``"freeze_trunk"``: the source trunk, frozen, and a fresh head, with ``config``;
    - ``"l2sp"``: the source weights, all trained, with ``config`` plus the L2-SP penalty
      toward the source weights (``l2sp_alpha``; the head is excluded);
    - ``"multitask"``: ``multitask_state`` (a multi-task agent's trunk and one head, see
      :func:`multitask_source_state`), all trained, with ``config``: full fine-tuning from
      another starting point.

    Seed ``s`` gives the same fresh weights (scratch arms) and the same fresh head to every
    target, and the same environment and exploration random streams to every arm (common random
    numbers make the arms' differences less noisy). Arms that share a config and frozen parts are
    trained in one :func:`course.dqn.train_dqn_agents` call, each agent on its own target.

    Args:
        source_state: The pretrained :class:`course.dqn.QNetwork` state dict.
        targets: Target tasks by name.
        strategies: Arms to run (any of :data:`ARMS`).
        seeds: Seeds; each arm runs every seed on every target.
        config: Fine-tuning configuration (also ``"scratch_same_eps"``).
        scratch_config: Configuration of ``"scratch"``; same budget and evaluation grid as
            ``config``.
        l2sp_alpha: Strength of the L2-SP penalty.
        source_steps: Environment steps spent pretraining, recorded in the result so that a
            report can say whether they are counted.
        multitask_state: Starting weights of the ``"multitask"`` arm; same sizes as
            ``source_state``.
        device: Torch device.
        progress: Show progress bars.

    Returns:
        A :class:`ComparisonResult`.

    Raises:
        ValueError: For an unknown strategy, a ``"multitask"`` arm without (or with a
            mismatched) ``multitask_state``, or configs with different budgets or grids.
    """
    start = time.perf_counter()
    unknown = [s for s in strategies if s not in ARMS]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; use some of {list(ARMS)}")
    if "multitask" in strategies:
        if multitask_state is None:
            raise ValueError("the 'multitask' arm needs multitask_state (multitask_source_state)")
        if _network_sizes(multitask_state) != _network_sizes(source_state):
            raise ValueError(
                f"multitask_state has sizes {_network_sizes(multitask_state)} but the source "
                f"has {_network_sizes(source_state)}; pretrain both with the same hidden sizes"
            )
    grid = ("total_steps", "num_envs", "eval_every", "hidden")
    if any(getattr(config, f) != getattr(scratch_config, f) for f in grid):
        raise ValueError(f"config and scratch_config must agree on {', '.join(grid)}")
    seeds = tuple(int(s) for s in seeds)
    starts = {"source": source_state, "multitask": multitask_state or source_state}
    starts = {name: {k: v.detach().cpu() for k, v in st.items()} for name, st in starts.items()}
    source = starts["source"]

    # one train_dqn call per (config, frozen prefixes); agents listed as (target, strategy, seed)
    groups: dict[tuple[str, tuple[str, ...]], list[tuple[str, str, int]]] = {}
    for strategy in strategies:
        key = (
            "scratch" if strategy == "scratch" else "finetune",
            ("trunk",) if strategy == "freeze_trunk" else (),
        )
        groups.setdefault(key, []).extend(
            (target, strategy, seed) for target in targets for seed in seeds
        )

    curves: dict[str, dict[str, torch.Tensor]] = {t: {} for t in targets}
    steps = torch.empty(0)
    for (kind, freeze), agents in groups.items():
        cfg = scratch_config if kind == "scratch" else config
        states = [
            _fresh_state(starts["multitask" if s == "multitask" else "source"], s, seed)
            for _, s, seed in agents
        ]
        alpha = torch.tensor([l2sp_alpha if s == "l2sp" else 0.0 for _, s, _ in agents])
        tasks = [targets[t] for t, _, _ in agents]
        envs = AgentEnvs([make_cartpole_vec([task], cfg.num_envs) for task in tasks])
        eval_envs = AgentEnvs([make_cartpole_vec([task], cfg.eval_episodes) for task in tasks])
        try:
            result = train_dqn_agents(
                [seed for _, _, seed in agents],
                envs,
                eval_envs,
                cfg,
                init_states=states,
                regularizer=l2sp_regularizer(source, alpha, exclude=("head",))
                if bool(alpha.any())
                else None,
                freeze=freeze,
                device=device,
                progress=progress,
            )
        finally:
            envs.close()
            eval_envs.close()
        steps = result.steps
        for (target, strategy, _), curve in zip(agents, result.eval_mean, strict=True):
            curves[target].setdefault(strategy, []).append(curve)  # type: ignore[arg-type]
    stacked = {
        t: {s: torch.stack(arms[s]) for s in strategies}  # type: ignore[misc]
        for t, arms in curves.items()
    }
    return ComparisonResult(
        steps=steps,
        curves=stacked,
        seeds=seeds,
        source_steps=int(source_steps),
        wall_time=time.perf_counter() - start,
    )


def _show(value: float, digits: int) -> str:
    if math.isinf(value):
        return "never"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0"


def format_comparison(
    result: ComparisonResult,
    threshold: float,
    baseline: str = "scratch",
    n_resamples: int = 2000,
) -> str:
    """A plain-text table: every metric with its 95% interval, per target and strategy.

    Times to threshold are in thousands of target-task steps; the source task's steps are not
    counted in them (the header says how many there were).
    """
    columns = ("jumpstart", "asymptotic_gain", "time_to_threshold_transfer", "transfer_ratio")
    heads = ("jumpstart", "asymptotic gain", "k steps to threshold", "transfer ratio")
    lines = [
        f"threshold {threshold:g}, baseline {baseline!r}, {len(result.seeds)} seeds, 95% "
        f"bootstrap intervals; {result.source_steps} source steps not counted",
    ]
    for target, arms in result.curves.items():
        lines.append("")
        lines.append(f"{target:<20}" + "".join(f"{h:>24}" for h in heads))
        for strategy in arms:
            cis = result.metrics_ci(target, strategy, threshold, baseline, n_resamples)
            cells = []
            for name in columns:
                ci = cis[name]
                scale, digits = (1e-3, 1) if name.startswith("time") else (1.0, 2)
                if name == "jumpstart" or name == "asymptotic_gain":
                    digits = 0
                est, low, high = (_show(v * scale, digits) for v in ci)
                cells.append(f"{est} [{low}, {high}]")
            lines.append(f"{strategy:<20}" + "".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)
