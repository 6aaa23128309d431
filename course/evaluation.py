"""Evaluating policies and aggregating results the way the literature reports them.

Shared by every lesson (introduced in Lesson 01, used for every results plot). Two halves:

- :func:`evaluate_policy` runs a policy for a fixed number of episodes on a gymnasium vector
  env, with an explicit seed, and returns one return per episode;
- intervals and verdicts at the seed counts the lessons can afford: the Student-t interval of a
  mean (:func:`mean_ci`, :func:`curve_band`), :func:`compare`, which turns the interval of a
  difference between two arms into a verdict ("A better", "B better" or "cannot tell"), its
  censored form for steps to a threshold (:func:`compare_censored`), and the Wilson interval for
  a success rate (:func:`wilson_interval`). A percentile bootstrap over 5 seeds would cover a
  nominal 95% interval only about 85% of the time (it treats the 5 values as the whole
  population); the t interval keeps close to its nominal coverage there for roughly normal
  per-seed results, which ``tests/test_evaluation.py`` measures.

Everything is deterministic given its ``seed``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

__all__ = [
    "Comparison",
    "ConfidenceInterval",
    "compare",
    "compare_censored",
    "curve_band",
    "mean_ci",
    "evaluate_policy",
    "wilson_interval",
]


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
# Intervals and verdicts over a handful of seeds (every lesson's comparisons)
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def t_quantile(q: float, df: int) -> float:
    """The ``q``-quantile of Student's t distribution with ``df`` degrees of freedom.

    Computed here (the course does not depend on scipy): the density is integrated with
    Simpson's rule and the quantile found by bisection, accurate to about 1e-9.

    Example:
        >>> round(t_quantile(0.975, 9), 4)
        2.2622
    """
    if df < 1:
        raise ValueError(f"df is {df}; Student's t needs at least 1 degree of freedom")
    if not 0.0 < q < 1.0:
        raise ValueError(f"q is {q}; a quantile level lies in (0, 1)")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:  # for x >= 0
        grid = np.linspace(0.0, x, 4001)
        pdf = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid * grid / df))
        h = x / 4000
        return 0.5 + h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())

    low, high = 0.0, 1.0
    while cdf(high) < q:
        low, high = high, 2 * high
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < q else (low, mid)
    return (low + high) / 2


def _t_interval(array: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the t interval along axis 0 of ``array`` (``n >= 2`` rows)."""
    n = array.shape[0]
    if n < 2:
        raise ValueError(f"got {n} value(s); an interval over seeds needs at least 2")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence is {confidence}; use a level in (0, 1), e.g. 0.95")
    half = t_quantile(0.5 + confidence / 2, n - 1) * array.std(axis=0, ddof=1) / math.sqrt(n)
    return array.mean(axis=0), half


def mean_ci(values: Any, confidence: float = 0.95) -> ConfidenceInterval:
    """Student-t confidence interval of the mean of independent values (one per seed).

    Args:
        values: ``[n]`` measurements, ``n >= 2`` (e.g. one final return per seed).
        confidence: Coverage level of the interval.

    Returns:
        The mean and the interval's bounds.

    Example:
        >>> ci = mean_ci([1.0, 2.0, 3.0, 4.0])
        >>> round(ci.estimate, 2), round(ci.low, 2), round(ci.high, 2)
        (2.5, 0.45, 4.55)
    """
    centre, half = _t_interval(_as_array(values).reshape(-1), confidence)
    return ConfidenceInterval(float(centre), float(centre - half), float(centre + half))


def curve_band(curves: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise Student-t band of learning curves over runs (seeds).

    Args:
        curves: ``[runs, T]``, one curve per run on a common step grid, ``runs >= 2``.
        confidence: Coverage level of each pointwise interval.

    Returns:
        ``(estimate, low, high)``, each ``[T]``: ready for ``plt.fill_between``.
    """
    array = _as_array(curves)
    if array.ndim != 2:
        raise ValueError(f"curves has shape {array.shape}; expected [runs, T]")
    centre, half = _t_interval(array, confidence)
    return centre, centre - half, centre + half


@dataclass(frozen=True)
class Comparison:
    """Two arms compared by the confidence interval of their difference, and the verdict.

    Attributes:
        names: The arms' names ``(A, B)``.
        difference: Mean of ``A - B`` with its interval (of the per-seed differences when paired).
        n: Seeds per arm (the smaller count when unpaired arms differ).
        paired: Whether the arms shared seeds and were compared seed by seed.
        higher_is_better: Whether a larger value is the better result.
        verdict: ``"A better"``, ``"B better"`` or ``"cannot tell at n seeds"`` (with the names).
        note: How the values were treated, when that needs saying (e.g. censored runs).
    """

    names: tuple[str, str]
    difference: ConfidenceInterval
    n: int
    paired: bool
    higher_is_better: bool
    verdict: str
    note: str = ""

    def __str__(self) -> str:
        a, b = self.names
        d = self.difference
        kind = "paired seeds" if self.paired else "seeds per arm"
        note = f"; {self.note}" if self.note else ""
        return (
            f"{a} - {b}: {d.estimate:.3g} [{d.low:.3g}, {d.high:.3g}] "
            f"({self.n} {kind}{note}) -> {self.verdict}"
        )


def compare(
    a: Any,
    b: Any,
    *,
    names: tuple[str, str] = ("A", "B"),
    paired: bool = True,
    higher_is_better: bool = True,
    confidence: float = 0.95,
) -> Comparison:
    """Compare two arms by the t interval of their difference and say which is better.

    Paired (the arms share seeds: the same seed drives both, common random numbers): the
    interval of the mean per-seed difference ``a[i] - b[i]``. Unpaired: Welch's interval of the
    difference of means. The verdict names the better arm only when the interval excludes 0.

    Args:
        a: ``[n]`` one result per seed for arm A.
        b: ``[n]`` (paired) or ``[m]`` results for arm B.
        names: What to call A and B in the verdict.
        paired: Compare seed by seed (``a[i]`` and ``b[i]`` share seed ``i``).
        higher_is_better: ``False`` for costs such as steps to a threshold.
        confidence: Coverage level of the interval.

    Returns:
        The :class:`Comparison`; ``print`` it for a one-line report.

    Example:
        >>> print(compare([3.0, 4.0, 5.0], [1.0, 1.5, 2.5], names=("replay", "online")))
        replay - online: 2.33 [1.62, 3.05] (3 paired seeds) -> replay better
    """
    x, y = _as_array(a).reshape(-1), _as_array(b).reshape(-1)
    if paired:
        if x.size != y.size:
            raise ValueError(
                f"paired arms need one result per shared seed; got {x.size} and {y.size}"
            )
        centre, half = _t_interval(x - y, confidence)
        n = x.size
    else:
        if x.size < 2 or y.size < 2:
            raise ValueError(f"got {x.size} and {y.size} results; each arm needs at least 2")
        va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
        centre = x.mean() - y.mean()
        if va + vb == 0.0:
            half = 0.0
        else:  # Welch-Satterthwaite degrees of freedom, rounded down (conservative)
            df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
            half = t_quantile(0.5 + confidence / 2, max(1, int(df))) * math.sqrt(va + vb)
        n = min(x.size, y.size)
    low, high = float(centre - half), float(centre + half)
    if low > 0 or high < 0:
        a_wins = (low > 0) == higher_is_better
        verdict = f"{names[0] if a_wins else names[1]} better"
    else:
        verdict = f"cannot tell at {n} seeds"
    return Comparison(
        names, ConfidenceInterval(float(centre), low, high), n, paired, higher_is_better, verdict
    )


def compare_censored(
    a_steps: Any,
    b_steps: Any,
    budget: float,
    *,
    names: tuple[str, str] = ("A", "B"),
    paired: bool = True,
    confidence: float = 0.95,
) -> Comparison:
    """Compare steps-to-threshold where some runs never got there (lower is better).

    A run that never reached the threshold (``None``, ``nan`` or ``inf``) is counted as
    reaching it at ``budget``, the last step it was watched. That is the conservative
    treatment: the true time of such a run is later, so the arm with more "never" runs can only
    look better than it is, and a verdict against it still holds.

    Args:
        a_steps: ``[n]`` first step at which each of A's runs reached the threshold, or None.
        b_steps: ``[n]`` (paired) or ``[m]`` for arm B.
        budget: The training budget of each run (the censoring point).
        names: What to call A and B.
        paired: Compare seed by seed.
        confidence: Coverage level.

    Returns:
        The :class:`Comparison`, whose note counts the censored runs.
    """

    def filled(steps: Any) -> tuple[np.ndarray, int]:
        raw = np.array([np.nan if s is None else float(s) for s in np.asarray(steps).reshape(-1)])
        never = ~np.isfinite(raw)
        return np.where(never, float(budget), raw), int(never.sum())

    (x, nx), (y, ny) = filled(a_steps), filled(b_steps)
    result = compare(
        x, y, names=names, paired=paired, higher_is_better=False, confidence=confidence
    )
    note = f"never = {budget:g} steps: {nx} run(s) of {names[0]}, {ny} of {names[1]}"
    return dataclasses.replace(result, note=note)


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
