"""Evaluating policies and aggregating results the way the literature reports them.

Shared by every lesson (introduced in Lesson 01, used for every results plot). Two halves:

- :func:`evaluate_policy` runs a policy for a fixed number of episodes on a gymnasium vector
  env, with an explicit seed, and returns one return per episode;
- aggregate statistics over runs: :func:`mean`, :func:`iqm` (interquartile mean),
  percentile-bootstrap confidence intervals (:func:`bootstrap_ci`, :func:`curve_ci`), the
  stratified bootstrap over a runs x tasks score matrix (:func:`stratified_bootstrap_ci`, as in
  rliable, Agarwal et al. 2021), and the Wilson interval for a success rate
  (:func:`wilson_interval`).

Everything is deterministic given its ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

__all__ = [
    "ConfidenceInterval",
    "bootstrap_ci",
    "curve_ci",
    "evaluate_policy",
    "iqm",
    "mean",
    "stratified_bootstrap_ci",
    "wilson_interval",
]

Statistic = Callable[..., Any]


class ConfidenceInterval(NamedTuple):
    """A point estimate with the bounds of its confidence interval."""

    estimate: float
    low: float
    high: float


def evaluate_policy(
    policy: Callable[[torch.Tensor], torch.Tensor | np.ndarray],
    env: VectorEnv,
    n_episodes: int,
    seed: int,
    device: torch.device | str = "cpu",
    max_steps: int | None = None,
) -> torch.Tensor:
    """Run ``policy`` for exactly ``n_episodes`` episodes on a vector env; return their returns.

    Episode ``i`` runs on sub-env ``i % E`` as its ``(i // E)``-th episode, so every sub-env
    runs a fixed number of episodes. (Counting the first ``n_episodes`` episodes to finish,
    whatever sub-env they come from, would favour short episodes.) The env is reset once, with
    ``seed``; the same policy, env and seed give the same returns. Both next-step and same-step
    autoreset are handled: the extra step of next-step autoreset is not part of any episode.

    Args:
        policy: Maps observations ``[E, *obs_shape]`` (float32, on ``device``) to actions
            ``[E]``, e.g. a greedy policy ``lambda obs: q_net(obs).argmax(-1)`` under
            ``torch.no_grad()``.
        env: A gymnasium vector env with ``E = env.num_envs`` sub-envs.
        n_episodes: Number of episodes to run (>= 1).
        seed: Seed for ``env.reset``.
        device: Where observations are sent before calling ``policy``.
        max_steps: Optional limit on vector steps; exceeding it raises (for envs without a
            time limit).

    Returns:
        Returns ``[n_episodes]``, float64 (undiscounted sums of rewards).

    Raises:
        ValueError: If ``n_episodes < 1``, the env's autoreset mode is not supported, or
            ``max_steps`` is exceeded.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes is {n_episodes}; evaluate at least one episode")
    mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
        raise ValueError(f"autoreset mode {mode} is not supported; use next-step or same-step")
    n_envs = env.num_envs
    targets = np.array([len(range(j, n_episodes, n_envs)) for j in range(n_envs)])
    finished = np.zeros(n_envs, dtype=np.int64)
    running = np.zeros(n_envs, dtype=np.float64)
    prev_done = np.zeros(n_envs, dtype=bool)
    returns = np.zeros(n_episodes, dtype=np.float64)
    obs, _ = env.reset(seed=seed)
    steps = 0
    while (finished < targets).any():
        if max_steps is not None and steps >= max_steps:
            raise ValueError(f"episodes did not end within max_steps={max_steps} vector steps")
        with torch.no_grad():
            actions = policy(torch.as_tensor(obs, dtype=torch.float32, device=device))
        if isinstance(actions, torch.Tensor):
            actions = actions.cpu().numpy()
        obs, rewards, terminated, truncated, _ = env.step(actions)
        steps += 1
        valid = ~prev_done if mode == AutoresetMode.NEXT_STEP else np.ones(n_envs, dtype=bool)
        running = np.where(valid, running + rewards, 0.0)
        done = valid & (terminated | truncated)
        for j in np.flatnonzero(done & (finished < targets)):
            returns[j + finished[j] * n_envs] = running[j]
            finished[j] += 1
        running[done] = 0.0
        prev_done = terminated | truncated
    return torch.from_numpy(returns)


def _as_array(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("no values given; statistics need at least one value")
    return array


def mean(values: Any, axis: int | None = None) -> Any:
    """Arithmetic mean (over everything, or along ``axis``).

    Args:
        values: Numbers, any shape (array, tensor or nested lists).
        axis: Axis to reduce, or ``None`` for all values.

    Returns:
        A float when ``axis`` is ``None``, else an array.
    """
    result = _as_array(values).mean(axis=axis)
    return float(result) if axis is None else result


def iqm(values: Any, axis: int | None = None) -> Any:
    """Interquartile mean: the mean of the middle 50% of the values.

    The ``floor(n / 4)`` smallest and ``floor(n / 4)`` largest values are dropped and the rest
    averaged (``scipy.stats.trim_mean(values, 0.25)``, the definition rliable uses). More robust
    than the mean to a few failed runs, more efficient than the median.

    Args:
        values: Numbers, any shape.
        axis: Axis to reduce, or ``None`` for all values.

    Returns:
        A float when ``axis`` is ``None``, else an array.

    Example:
        >>> iqm([1, 2, 3, 4, 5, 6, 7, 100])
        4.5
    """
    array = _as_array(values)
    if axis is None:
        array, axis = array.reshape(-1), 0
    array = np.sort(np.moveaxis(array, axis, -1), axis=-1)
    n = array.shape[-1]
    cut = n // 4
    result = array[..., cut : n - cut].mean(axis=-1)
    return float(result) if result.ndim == 0 else result


def _percentile_interval(
    estimate: float, resampled: np.ndarray, confidence: float
) -> ConfidenceInterval:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [alpha, 1.0 - alpha], axis=0)
    return ConfidenceInterval(float(estimate), float(low), float(high))


def _check_confidence(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence is {confidence}; use a level in (0, 1), e.g. 0.95")
    if n_resamples < 1:
        raise ValueError(f"n_resamples is {n_resamples}; use at least 1 (typically 2000+)")


def bootstrap_ci(
    values: Any,
    statistic: Statistic = mean,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile-bootstrap confidence interval of a statistic of independent values.

    Args:
        values: ``[n]`` independent measurements (e.g. one final return per seed).
        statistic: Reduces the last axis of an array, called as ``statistic(x, axis=-1)``;
            :func:`mean` or :func:`iqm`.
        confidence: Coverage level of the interval.
        n_resamples: Number of bootstrap resamples.
        seed: Seed of the resampling; the same seed gives the same interval.

    Returns:
        The statistic of ``values`` and the interval's bounds.
    """
    _check_confidence(confidence, n_resamples)
    array = _as_array(values).reshape(-1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, array.size, size=(n_resamples, array.size))
    resampled = np.asarray(statistic(array[idx], axis=-1))
    return _percentile_interval(statistic(array, axis=None), resampled, confidence)


def stratified_bootstrap_ci(
    scores: Any,
    statistic: Statistic = iqm,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> ConfidenceInterval:
    """Stratified bootstrap over a runs x tasks score matrix (rliable's aggregate intervals).

    Each resample draws, for every task separately, ``runs`` runs with replacement from that
    task's column, then computes ``statistic`` over all the resampled scores together. With one
    task this is :func:`bootstrap_ci`.

    Args:
        scores: ``[runs, tasks]`` (e.g. normalised final returns, one row per seed).
        statistic: Reduces the last axis (``statistic(x, axis=-1)``); :func:`iqm` by default.
        confidence: Coverage level.
        n_resamples: Number of bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        The statistic over all scores and the interval's bounds.

    Raises:
        ValueError: If ``scores`` is not two-dimensional.
    """
    _check_confidence(confidence, n_resamples)
    array = _as_array(scores)
    if array.ndim != 2:
        raise ValueError(f"scores has shape {array.shape}; expected a [runs, tasks] matrix")
    runs, tasks = array.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, runs, size=(n_resamples, runs, tasks))
    resampled = np.take_along_axis(array[None], idx, axis=1).reshape(n_resamples, -1)
    estimate = statistic(array, axis=None)
    return _percentile_interval(estimate, np.asarray(statistic(resampled, axis=-1)), confidence)


def curve_ci(
    curves: Any,
    statistic: Statistic = mean,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise bootstrap band of learning curves, resampling whole runs.

    Args:
        curves: ``[runs, T]``, one curve per run on a common step grid.
        statistic: Reduces the last axis; :func:`mean` or :func:`iqm`.
        confidence: Coverage level of each pointwise interval.
        n_resamples: Number of bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        ``(estimate, low, high)``, each ``[T]``: ready for ``plt.fill_between``.
    """
    _check_confidence(confidence, n_resamples)
    array = _as_array(curves)
    if array.ndim != 2:
        raise ValueError(f"curves has shape {array.shape}; expected [runs, T]")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, array.shape[0], size=(n_resamples, array.shape[0]))
    resampled = np.asarray(statistic(np.swapaxes(array[idx], 1, 2), axis=-1))  # [R, T]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [alpha, 1.0 - alpha], axis=0)
    estimate = np.asarray(statistic(array.T, axis=-1), dtype=np.float64)
    return estimate, low, high


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> ConfidenceInterval:
    """Wilson score interval for a success probability from ``successes`` out of ``trials``.

    Better behaved than the normal approximation near 0 and 1 (it never leaves ``[0, 1]`` and
    is not empty at 0 or ``trials`` successes).

    Args:
        successes: Number of successes, ``0 <= successes <= trials``.
        trials: Number of independent trials (>= 1).
        confidence: Coverage level.

    Returns:
        The observed rate ``successes / trials`` and the interval's bounds.

    Example:
        >>> ci = wilson_interval(8, 10)
        >>> round(ci.low, 3), round(ci.high, 3)
        (0.49, 0.943)
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(
            f"got {successes} successes in {trials} trials; need trials >= 1 and "
            "0 <= successes <= trials"
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence is {confidence}; use a level in (0, 1), e.g. 0.95")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / trials
    denom = 1.0 + z * z / trials
    center = (p + z * z / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # the bounds are exactly 0 and 1 at the edges; rounding would leave them a hair inside
    low = 0.0 if successes == 0 else float(max(0.0, center - half))
    high = 1.0 if successes == trials else float(min(1.0, center + half))
    return ConfidenceInterval(p, low, high)


# ---------------------------------------------------------------------------------------------
# Learned Q-values against the exact Q* of a finite MDP (Lessons 02 and 03)
# ---------------------------------------------------------------------------------------------


def greedy_optimal_fraction(
    q: torch.Tensor, q_star: torch.Tensor, mask: torch.Tensor, atol: float = 1e-6
) -> torch.Tensor:
    """Fraction of the states in ``mask`` whose greedy action under ``q`` is optimal.

    An action is optimal when its ``Q*`` is within ``atol`` of the best (ties all count).

    Args:
        q: Learned values, ``[..., S, A]``.
        q_star: Exact values, ``[S, A]``.
        mask: Which states count, bool ``[S]``.
        atol: Tolerance for ties in ``Q*``.

    Returns:
        ``[...]``, fractions in ``[0, 1]``.

    Example:
        >>> q_star = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> greedy_optimal_fraction(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), q_star,
        ...                         torch.tensor([True, True]))
        tensor(0.5000)
    """
    q_star = q_star.to(q.dtype)
    greedy = q.argmax(-1, keepdim=True)  # [..., S, 1]
    chosen = torch.gather(q_star.expand_as(q), -1, greedy).squeeze(-1)
    optimal = chosen >= q_star.max(-1).values - atol
    return optimal[..., mask].to(q.dtype).mean(-1)


class QComparison(NamedTuple):
    """How close a learned Q is to Q*, over the non-terminal states (Lesson 03)."""

    max_error: float
    """largest ``|Q(s, a) - Q*(s, a)|``"""
    mean_error: float
    """mean ``|Q(s, a) - Q*(s, a)|``"""
    greedy_optimal: float
    """fraction of states whose greedy action under Q is optimal under Q* (ties allowed)"""


def q_comparison(
    q: torch.Tensor, q_star: torch.Tensor, terminal: torch.Tensor, atol: float = 1e-6
) -> QComparison:
    """Compare a learned Q with the exact Q* state by state (the numbers beside the figure).

    Args:
        q: Learned action values ``[S, A]``.
        q_star: Exact optimal action values ``[S, A]`` (from `course.mdp.value_iteration`).
        terminal: ``[S]`` bool; terminal states are left out (nothing is learned there).
        atol: Actions within ``atol`` of the best under Q* all count as optimal.

    Returns:
        The largest and mean absolute errors and the fraction of greedy-optimal states.
    """
    q = torch.as_tensor(q).detach().cpu().double()
    q_star = torch.as_tensor(q_star).detach().cpu().double()
    keep = ~torch.as_tensor(terminal).cpu().bool()
    if q.shape != q_star.shape:
        raise ValueError(f"q has shape {tuple(q.shape)} but q_star {tuple(q_star.shape)}")
    error = (q - q_star)[keep].abs()
    return QComparison(
        max_error=float(error.max()),
        mean_error=float(error.mean()),
        greedy_optimal=float(greedy_optimal_fraction(q, q_star, keep, atol)),
    )
