"""Tests for course/replay_demo.py: the online-versus-replay experiment of Lesson 02."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from course.envs import GridFamilyEnv
from course.evaluation import mean_ci
from course.replay_demo import (
    ReplayDemoConfig,
    distinct_states,
    greedy_optimal_fraction,
    q_error,
    random_walk,
    run_replay_demo,
)

SMALL = ReplayDemoConfig(n_updates=200, batch_size=16, hidden=(16,), eval_every=50)


def test_q_error_is_the_rms_over_masked_states():
    q_star = torch.zeros(3, 2)
    q = torch.tensor([[[1.0, 1.0], [3.0, -3.0], [100.0, 100.0]]])
    mask = torch.tensor([True, True, False])
    assert torch.allclose(q_error(q, q_star, mask), torch.tensor([5.0**0.5]))


def test_greedy_optimal_fraction_counts_tied_optimal_actions():
    q_star = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [5.0, 0.0, 0.0]])
    q = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [9.0, 0.0, 0.0]])
    both = torch.stack([q, q_star])
    result = greedy_optimal_fraction(both, q_star, torch.tensor([True, True, False]))
    assert torch.allclose(result, torch.tensor([0.5, 1.0]))


def test_distinct_states_counts_different_rows():
    obs = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]], [[2.0, 2.0]] * 3])
    assert distinct_states(obs).tolist() == [2, 1]


def test_random_walk_follows_the_mdp_and_is_consecutive():
    env = GridFamilyEnv(goal=(6, 6), start="uniform", obs_mode="coords")
    mdp = env.mdp()
    walk = random_walk(env, 400, seed=3)
    s = torch.as_tensor(env.obs_to_state(walk.obs.numpy()))
    s_next = torch.as_tensor(env.obs_to_state(walk.next_obs.numpy()))
    assert walk.obs.dtype == torch.float32 and walk.actions.dtype == torch.int64
    assert (mdp.P[s, walk.actions, s_next] > 0).all()
    assert torch.equal(walk.terminated, mdp.terminal[s_next])
    assert walk.terminated.any()  # the walk reaches the goal and starts again
    entered_goal = walk.terminated.float()
    assert torch.allclose(walk.rewards, entered_goal)  # goal reward 1, no step reward
    # consecutive: each transition starts where the previous one ended, unless it terminated
    follows = ~walk.terminated[:-1]
    assert torch.equal(walk.obs[1:][follows], walk.next_obs[:-1][follows])


def test_random_walk_is_reproducible():
    env = GridFamilyEnv(goal=(6, 6), start="uniform")
    first, again = random_walk(env, 100, seed=1), random_walk(env, 100, seed=1)
    other = random_walk(env, 100, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first.actions, other.actions)


def test_run_returns_one_curve_per_seed_and_is_deterministic():
    first = run_replay_demo(SMALL, seeds=(0, 1))
    again = run_replay_demo(SMALL, seeds=(0, 1))
    assert first.steps.tolist() == [50, 100, 150, 200]
    for arm in ("online", "replay"):
        assert first.error[arm].shape == (2, 4)
        assert first.greedy_optimal[arm].shape == (2, 4)
        assert first.q_values[arm].shape == (2, *first.q_star.shape)
        assert np.array_equal(first.error[arm], again.error[arm])
        assert np.all((first.greedy_optimal[arm] >= 0) & (first.greedy_optimal[arm] <= 1))
        assert 1 <= first.distinct_states[arm] <= SMALL.batch_size
    assert first.distinct_states["online"] < first.distinct_states["replay"]


def test_final_averages_the_last_measurements_of_each_seed():
    result = run_replay_demo(SMALL, seeds=(0, 1, 2))
    summary = result.final(last=2)
    for arm in ("online", "replay"):
        per_seed = result.error[arm][:, -2:].mean(1)
        ci = summary[arm]["error"]
        assert ci.estimate == pytest.approx(per_seed.mean())
        assert (ci.low, ci.high) == pytest.approx(tuple(mean_ci(per_seed))[1:])
        assert ci.low < ci.estimate < ci.high
        assert 0 <= summary[arm]["greedy_optimal"].estimate <= 1
    with pytest.raises(ValueError, match="last is 9"):
        result.final(last=9)


def test_both_learners_start_from_the_same_weights():
    frozen = dataclasses.replace(SMALL, lr=0.0)
    result = run_replay_demo(frozen, seeds=(0, 1))
    assert np.array_equal(result.error["online"], result.error["replay"])
    assert not np.array_equal(result.error["online"][0], result.error["online"][1])


def test_error_is_measured_against_the_exact_q_star():
    result = run_replay_demo(SMALL, seeds=(0,))
    env = GridFamilyEnv(goal=SMALL.goal, start="uniform", gamma=SMALL.gamma)
    mask = ~env.mdp().terminal
    for arm in ("online", "replay"):
        q = torch.as_tensor(result.q_values[arm])
        expected = q_error(q, torch.as_tensor(result.q_star), mask)
        assert np.allclose(result.error[arm][:, -1], expected.numpy(), atol=1e-6)


@pytest.mark.slow
def test_replay_learns_q_star_better_than_online_updates():
    result = run_replay_demo(ReplayDemoConfig(), seeds=(0, 1, 2, 3, 4))
    final = slice(-5, None)  # the last five measurements
    online = result.error["online"][:, final].mean()
    replay = result.error["replay"][:, final].mean()
    assert replay < online / 2
    assert result.greedy_optimal["replay"][:, final].mean() > 0.9
