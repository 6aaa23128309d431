"""Tests for the domain-randomised CartPole family (course/envs.py, Lesson 06)."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from course.envs import (
    CartPoleRandomisedVectorEnv,
    CartPoleTask,
    CartPoleTaskDistribution,
    make_cartpole_vec,
    make_randomised_cartpole_vec,
)

LENGTHS = CartPoleTaskDistribution((("length", 0.25, 1.0),))


def _run(env, steps, seed=0, actions_seed=1):
    rng = np.random.default_rng(actions_seed)
    obs, _ = env.reset(seed=seed)
    out = [obs]
    tasks = [env.length.copy()]
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(rng.integers(0, 2, env.num_envs))
        out.append(np.concatenate([obs.ravel(), reward, terminated, truncated]))
        tasks.append(env.length.copy())
    return out, tasks


def test_a_point_distribution_reproduces_the_family_env_step_for_step():
    task = CartPoleTask(length=0.7, masspole=0.2)
    point = CartPoleTaskDistribution((("length", 0.7, 0.7),), base=task)
    a, _ = _run(make_randomised_cartpole_vec(point, 3), 400)
    b, _ = _run(make_cartpole_vec([task], 3), 400)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_tasks_change_exactly_when_an_episode_starts(mode):
    env = make_randomised_cartpole_vec(LENGTHS, 4, autoreset_mode=mode)
    rng = np.random.default_rng(0)
    env.reset(seed=3)
    lengths = env.length.copy()
    assert len(set(lengths.tolist())) == 4
    n_changes = 0
    prev_done = np.zeros(4, dtype=bool)
    for _ in range(300):
        _, _, terminated, truncated, _ = env.step(rng.integers(0, 2, 4))
        done = terminated | truncated
        starts = prev_done if mode == AutoresetMode.NEXT_STEP else done
        changed = env.length != lengths
        np.testing.assert_array_equal(changed, starts)
        n_changes += int(changed.sum())
        lengths = env.length.copy()
        prev_done = done
    assert n_changes > 10  # random actions end episodes quickly


def test_draws_stay_in_range_and_cover_it():
    env = make_randomised_cartpole_vec(LENGTHS, 16)
    _, tasks = _run(env, 600)
    values = np.unique(np.concatenate(tasks))
    assert values.min() >= 0.25 and values.max() < 1.0
    assert values.size > 100
    # uniform: about a third of the draws below 0.5
    assert 0.2 < np.mean(values < 0.5) < 0.47


def test_log_uniform_draws_are_uniform_in_log():
    dist = CartPoleTaskDistribution((("length", 0.25, 4.0),), log_uniform=True)
    env = make_randomised_cartpole_vec(dist, 16)
    _, tasks = _run(env, 600)
    values = np.unique(np.concatenate(tasks))
    assert 0.4 < np.mean(values < 1.0) < 0.6  # the geometric midpoint of 0.25 and 4 is 1


def test_same_seed_same_tasks_other_seed_other_tasks():
    a, ta = _run(make_randomised_cartpole_vec(LENGTHS, 3), 200, seed=5)
    b, tb = _run(make_randomised_cartpole_vec(LENGTHS, 3), 200, seed=5)
    c, tc = _run(make_randomised_cartpole_vec(LENGTHS, 3), 200, seed=6)
    for x, y in zip(ta, tb, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(ta[0], tc[0])


def test_task_draws_do_not_change_the_start_states():
    """The start states come from the family env's streams, whatever the tasks drawn."""
    env = make_randomised_cartpole_vec(LENGTHS, 3)
    family = make_cartpole_vec([CartPoleTask()], 3)
    obs, _ = env.reset(seed=9)
    expected, _ = family.reset(seed=9)
    np.testing.assert_array_equal(obs, expected)


def test_physics_follows_the_drawn_task():
    dist = CartPoleTaskDistribution((("length", 1.5, 2.0), ("masspole", 0.2, 0.4)))
    env = make_randomised_cartpole_vec(dist, 5)
    env.reset(seed=0)
    for i, task in enumerate(env.current_tasks()):
        assert 1.5 <= task.length < 2.0 and 0.2 <= task.masspole < 0.4
        assert env.polemass_length[i] == pytest.approx(task.masspole * task.length)
        assert env.total_mass[i] == pytest.approx(task.masspole + task.masscart)
    # one step with the drawn physics equals a family env built on those tasks
    family = make_cartpole_vec(env.current_tasks(), 1)
    family.reset(seed=0)
    family.state = env.state.copy()
    actions = np.array([0, 1, 1, 0, 1])
    np.testing.assert_array_equal(env.step(actions)[0], family.step(actions)[0])


def test_train_dqn_accepts_it_as_make_env():
    import dataclasses

    from course.dqn import DQNConfig, train_dqn

    config = dataclasses.replace(
        DQNConfig(),
        total_steps=400,
        learning_starts=100,
        eval_every=200,
        eval_episodes=2,
        hidden=(8,),
        buffer_size=400,
    )
    result = train_dqn(
        config, [0], lambda n: make_randomised_cartpole_vec(LENGTHS, n), device="cpu"
    )
    assert result.eval_returns.shape == (1, 3, 2)


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ((), "ranges is empty"),
        ((("colour", 0.1, 1.0),), "cannot randomise 'colour'"),
        ((("length", 0.0, 1.0),), "0 < low <= high"),
        ((("length", 2.0, 1.0),), "0 < low <= high"),
        ((("length", 0.2, 1.0), ("length", 0.3, 0.4)), "twice"),
    ],
)
def test_bad_distributions_are_refused(ranges, message):
    with pytest.raises(ValueError, match=message):
        CartPoleTaskDistribution(ranges)


def test_needs_a_distribution():
    with pytest.raises(TypeError, match="CartPoleTaskDistribution"):
        CartPoleRandomisedVectorEnv(CartPoleTask(), 2)


def test_task_from_unit():
    dist = CartPoleTaskDistribution((("length", 0.25, 1.0),))
    assert dist.task_from_unit([0.5]).length == pytest.approx(0.625)
    log = CartPoleTaskDistribution((("length", 0.25, 4.0),), log_uniform=True)
    assert log.task_from_unit([0.5]).length == pytest.approx(1.0)
