"""Tests for course/evaluation.py: episode evaluation and aggregate statistics."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from course.evaluation import (
    ConfidenceInterval,
    compare,
    compare_censored,
    curve_band,
    evaluate_policy,
    mean_ci,
    wilson_interval,
)


def cartpole(n: int) -> gym.vector.VectorEnv:
    return gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")


def balance(obs: torch.Tensor) -> torch.Tensor:
    """A good hand-written CartPole policy: push toward where the pole falls."""
    return (obs[:, 2] + obs[:, 3] > 0).long()


def always_left(obs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(len(obs), dtype=torch.long)


def single_env_returns(policy, seed: int, n: int) -> list[float]:
    """Reference: one plain CartPole env, episodes one after another."""
    env = gym.make("CartPole-v1")
    out = []
    obs, _ = env.reset(seed=seed)
    for _ in range(n):
        total, done = 0.0, False
        while not done:
            action = int(policy(torch.as_tensor(obs)[None])[0])
            obs, reward, terminated, truncated, _ = env.step(action)
            total += reward
            done = terminated or truncated
        out.append(total)
        obs, _ = env.reset()
    return out


def test_evaluate_policy_counts_whole_episodes_and_skips_autoreset_steps():
    returns = evaluate_policy(always_left, cartpole(3), n_episodes=7, seed=0)
    assert returns.shape == (7,) and returns.dtype == torch.float64
    # always pushing left ends every episode after 8 to 11 steps, reward 1 per real step
    assert ((returns >= 8) & (returns <= 11)).all()
    returns_good = evaluate_policy(balance, cartpole(2), n_episodes=4, seed=0)
    assert (returns_good > 100).all()


def test_evaluate_policy_one_env_matches_sequential_episodes():
    # with one sub-env, next-step autoreset continues the env's own random stream
    vec = evaluate_policy(always_left, cartpole(1), n_episodes=5, seed=3).tolist()
    assert vec == single_env_returns(always_left, seed=3, n=5)


def test_evaluate_policy_is_deterministic_and_seed_dependent():
    a = evaluate_policy(always_left, cartpole(4), n_episodes=8, seed=11)
    b = evaluate_policy(always_left, cartpole(4), n_episodes=8, seed=11)
    c = evaluate_policy(always_left, cartpole(4), n_episodes=8, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_evaluate_policy_supports_same_step_autoreset():
    env = gym.make_vec(
        "CartPole-v1",
        num_envs=2,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
    )
    returns = evaluate_policy(always_left, env, n_episodes=4, seed=0)
    assert ((returns >= 8) & (returns <= 11)).all()


def test_evaluate_policy_errors():
    with pytest.raises(ValueError, match="at least one"):
        evaluate_policy(always_left, cartpole(1), n_episodes=0, seed=0)
    with pytest.raises(ValueError, match="max_steps"):
        evaluate_policy(balance, cartpole(1), n_episodes=1, seed=0, max_steps=5)


def test_wilson_interval_known_values_and_edges():
    ci = wilson_interval(8, 10)
    assert ci.estimate == 0.8
    assert ci.low == pytest.approx(0.4902, abs=1e-4)
    assert ci.high == pytest.approx(0.9433, abs=1e-4)
    zero = wilson_interval(0, 20)
    assert zero.low == 0.0 and 0.0 < zero.high < 0.2
    full = wilson_interval(20, 20)
    assert full.high == 1.0 and 0.8 < full.low < 1.0
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)


def test_wilson_interval_coverage():
    rng = np.random.default_rng(7)
    p, n = 0.3, 50
    hits = sum(
        wilson_interval(int(k), n).low <= p <= wilson_interval(int(k), n).high
        for k in rng.binomial(n, p, size=500)
    )
    assert 0.92 <= hits / 500 <= 0.98


def test_q_comparison_by_hand():
    from course.evaluation import q_comparison

    q_star = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    q = torch.tensor([[1.5, 0.0], [0.0, -1.0], [9.0, 9.0]])  # state 2 is terminal: ignored
    c = q_comparison(q, q_star, torch.tensor([False, False, True]))
    assert c.max_error == pytest.approx(2.0)
    assert c.mean_error == pytest.approx((0.5 + 0 + 0 + 2.0) / 4)
    assert c.greedy_optimal == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        q_comparison(q[:2], q_star, torch.tensor([False, False, True]))


# ---------------------------------------------------------------------------------------------
# t intervals and verdicts
# ---------------------------------------------------------------------------------------------


def test_t_quantile_matches_tables():
    from course.evaluation import t_quantile

    # two-sided 95% critical values from any t table
    for df, expected in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)]:
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.025, 9) == pytest.approx(-2.2622, abs=1e-4)
    assert t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="degree of freedom"):
        t_quantile(0.9, 0)


def _coverage(draw, n: int, trials: int, interval) -> float:
    rng = np.random.default_rng(n)
    hits = 0
    for _ in range(trials):
        values, truth = draw(rng, n)
        ci = interval(values)
        hits += ci.low <= truth <= ci.high
    return hits / trials


NORMAL = ("normal", lambda rng, n: (rng.normal(3.0, 2.0, n), 3.0))
SKEWED = ("gamma(2)", lambda rng, n: (rng.gamma(2.0, 1.0, n), 2.0))


@pytest.mark.parametrize("n", [5, 10, 20])
@pytest.mark.parametrize("name,draw", [NORMAL, SKEWED])
def test_mean_ci_keeps_its_coverage_at_the_seed_counts_the_lessons_use(name, draw, n):
    coverage = _coverage(draw, n, 2000, mean_ci)
    assert coverage >= 0.90, f"{name}, n={n}: a nominal 95% interval covered {coverage:.1%}"
    assert coverage <= 0.98


def test_percentile_bootstrap_undercovers_at_five_seeds():
    # the reason mean_ci exists: the bootstrap treats 5 values as the whole population
    def percentile_bootstrap(values, n_resamples=400):
        rng = np.random.default_rng(0)
        means = rng.choice(values, size=(n_resamples, values.size)).mean(1)
        low, high = np.quantile(means, [0.025, 0.975])
        return ConfidenceInterval(float(values.mean()), float(low), float(high))

    coverage = _coverage(NORMAL[1], 5, 1000, percentile_bootstrap)
    assert coverage < 0.90


def test_curve_band_is_mean_ci_at_every_step():
    curves = np.random.default_rng(1).normal(size=(6, 4))
    estimate, low, high = curve_band(curves)
    for t in range(4):
        ci = mean_ci(curves[:, t])
        assert (estimate[t], low[t], high[t]) == pytest.approx(tuple(ci))
    with pytest.raises(ValueError, match="at least 2"):
        curve_band(curves[:1])


def test_compare_paired_uses_per_seed_differences():
    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0.0, 10.0, 10)  # shared by both arms: cancels when paired
    a, b = seed_effect + 1.0 + rng.normal(0, 0.1, 10), seed_effect
    paired = compare(a, b, names=("new", "old"))
    assert paired.verdict == "new better"
    assert paired.difference.estimate == pytest.approx(np.mean(a - b))
    assert paired.difference == mean_ci(a - b)
    unpaired = compare(a, b, names=("new", "old"), paired=False)
    assert unpaired.verdict == "cannot tell at 10 seeds"
    assert "new - old" in str(paired) and "-> new better" in str(paired)


def test_compare_verdicts_and_direction():
    low, high = [1.0, 1.2, 0.9, 1.1], [2.0, 2.1, 1.9, 2.2]
    assert compare(high, low).verdict == "A better"
    assert compare(low, high).verdict == "B better"
    assert compare(low, high, higher_is_better=False).verdict == "A better"
    assert compare(low, low).verdict == "cannot tell at 4 seeds"
    with pytest.raises(ValueError, match="shared seed"):
        compare([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least 2"):
        compare([1.0], [2.0])


def test_compare_paired_coverage_of_the_difference():
    def interval(values):
        return compare(values[0], values[1]).difference

    def draw(rng, n):
        base = rng.normal(0, 5, n)
        return (base + rng.normal(0.5, 1.0, n), base), 0.5

    assert _coverage(draw, 5, 2000, interval) >= 0.90


def test_compare_censored_counts_never_as_the_budget():
    result = compare_censored(
        [100, 200, 150, 120],
        [None, 900, float("inf"), 800],
        budget=1000,
        names=("fine-tuned", "scratch"),
    )
    assert result.verdict == "fine-tuned better"
    assert result.difference.estimate == pytest.approx(
        np.mean([100 - 1000, 200 - 900, 150 - 1000, 120 - 800])
    )
    assert "2 of scratch" in str(result) and "0 run(s) of fine-tuned" in str(result)
