"""Tests for course/evaluation.py: episode evaluation and aggregate statistics."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from course.evaluation import (
    ConfidenceInterval,
    bootstrap_ci,
    curve_ci,
    evaluate_policy,
    iqm,
    mean,
    stratified_bootstrap_ci,
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


def test_mean_and_iqm_on_hand_made_arrays():
    assert mean([1, 2, 3, 6]) == 3.0
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == 4.5  # drops 1, 2 and 7, 100
    assert iqm([5.0]) == 5.0
    assert iqm([1, 2, 3]) == 2.0  # n // 4 == 0: nothing dropped
    assert iqm([0, 10, 10, 1000]) == 10.0
    np.testing.assert_allclose(iqm([[1, 2, 3, 100], [4, 4, 4, 4]], axis=1), [2.5, 4.0])
    np.testing.assert_allclose(mean(torch.tensor([[1.0, 3.0], [5.0, 7.0]]), axis=0), [3.0, 5.0])
    with pytest.raises(ValueError, match="no values"):
        mean([])


def test_iqm_is_robust_to_outliers():
    values = np.r_[np.full(9, 10.0), 1e6, -1e6, 1e9]
    assert iqm(values) == 10.0


def test_bootstrap_ci_is_deterministic_and_brackets_the_estimate():
    values = np.random.default_rng(0).normal(3.0, 1.0, size=20)
    ci = bootstrap_ci(values, seed=4)
    assert isinstance(ci, ConfidenceInterval)
    assert ci == bootstrap_ci(values, seed=4)
    assert ci != bootstrap_ci(values, seed=5)
    assert ci.low < ci.estimate < ci.high
    assert ci.estimate == pytest.approx(values.mean())
    wide = bootstrap_ci(values, confidence=0.99, seed=4)
    assert wide.low <= ci.low and wide.high >= ci.high


def test_bootstrap_ci_coverage_on_a_known_distribution():
    # 200 experiments of 30 draws from N(0, 1): a 90% interval should cover 0 about 90% of the
    # time (percentile bootstrap undercovers slightly at n = 30)
    rng = np.random.default_rng(2024)
    covered = 0
    for k in range(200):
        ci = bootstrap_ci(rng.normal(size=30), confidence=0.9, n_resamples=1000, seed=k)
        covered += ci.low <= 0.0 <= ci.high
    assert 0.80 <= covered / 200 <= 0.97


def test_stratified_bootstrap_resamples_within_tasks():
    # task 0 always scores 0 and task 1 always 1: within-task resampling keeps the mean at 0.5
    scores = np.array([[0.0, 1.0]] * 6)
    ci = stratified_bootstrap_ci(scores, statistic=mean, seed=0)
    assert ci == (0.5, 0.5, 0.5)
    varied = np.random.default_rng(1).uniform(size=(10, 3))
    ci = stratified_bootstrap_ci(varied, seed=0)
    assert ci.estimate == pytest.approx(iqm(varied))
    assert ci.low < ci.estimate < ci.high
    with pytest.raises(ValueError, match="runs, tasks"):
        stratified_bootstrap_ci(np.zeros(4))


def test_stratified_with_one_task_equals_plain_bootstrap():
    values = np.random.default_rng(3).normal(size=12)
    plain = bootstrap_ci(values, seed=9)
    strat = stratified_bootstrap_ci(values[:, None], statistic=mean, seed=9)
    assert strat == pytest.approx(plain)


def test_curve_ci_pointwise_band():
    curves = np.array([[0.0, 1.0, 2.0], [0.0, 3.0, 4.0], [0.0, 2.0, 6.0]])
    estimate, low, high = curve_ci(curves, seed=0)
    np.testing.assert_allclose(estimate, [0.0, 2.0, 4.0])
    assert low[0] == high[0] == 0.0  # no spread, no band
    assert (low <= estimate).all() and (estimate <= high).all()
    assert low[1] >= 1.0 and high[1] <= 3.0  # inside the range of the runs


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
