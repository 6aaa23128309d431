"""Tests for course/envs.py: the CartPole and grid-world task families."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import course.envs as envs
from course.envs import (
    CARTPOLE_TASKS,
    GRID_LAYOUT,
    CartPoleFamilyEnv,
    CartPoleTask,
    GridFamilyEnv,
    GridTask,
    grid_tasks,
    make_cartpole_vec,
    make_grid_vec,
)
from course.mdp import value_iteration

MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP]


def _check_env_quietly(env: gym.Env) -> None:
    """check_env, failing on any warning except CartPole-v1's own infinite velocity bounds."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum)")
        check_env(env, skip_render_check=True)


def _balance(obs: np.ndarray) -> np.ndarray:
    """A hand-made CartPole controller that reaches the 500-step limit on the default task."""
    return (obs[..., 2] + 0.5 * obs[..., 3] > 0).astype(np.int64)


def _assert_lockstep(
    vec: gym.vector.VectorEnv,
    singles: list[gym.Env],
    seed: int,
    n_steps: int,
    policy: Callable[[np.ndarray, np.random.Generator], np.ndarray],
) -> dict[str, int]:
    """Steps a vector env and its single envs side by side and asserts they agree exactly.

    Sub-env i is compared with ``singles[i]`` reset with ``seed + i``; a single env is reset
    (without a seed) when its episode ends, which the vector env must mirror in its autoreset
    mode. Returns counts of terminations and truncations seen, so callers can assert coverage.
    """
    rng = np.random.default_rng(seed)
    mode = vec.metadata["autoreset_mode"]
    obs, _ = vec.reset(seed=seed)
    single_obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(singles)])
    np.testing.assert_array_equal(obs, single_obs)
    prev_done = np.zeros(vec.num_envs, dtype=bool)
    counts = {"terminated": 0, "truncated": 0}
    for t in range(n_steps):
        action = policy(obs, rng)
        obs, reward, terminated, truncated, info = vec.step(action)
        for i, env in enumerate(singles):
            where = f"step {t}, sub-env {i}"
            if mode == AutoresetMode.NEXT_STEP and prev_done[i]:
                first_obs, _ = env.reset()
                np.testing.assert_array_equal(obs[i], first_obs, err_msg=where)
                assert reward[i] == 0 and not terminated[i] and not truncated[i], where
                continue
            s_obs, s_reward, s_terminated, s_truncated, _ = env.step(int(action[i]))
            assert (reward[i], terminated[i], truncated[i]) == (
                np.float32(s_reward),
                s_terminated,
                s_truncated,
            ), where
            counts["terminated"] += int(s_terminated)
            counts["truncated"] += int(s_truncated)
            if mode == AutoresetMode.SAME_STEP:
                final_mask = info.get("_final_obs", np.zeros(vec.num_envs, dtype=bool))
                assert bool(final_mask[i]) == (s_terminated or s_truncated), where
                if s_terminated or s_truncated:
                    np.testing.assert_array_equal(info["final_obs"][i], s_obs, err_msg=where)
                    s_obs, _ = env.reset()
            np.testing.assert_array_equal(obs[i], s_obs, err_msg=where)
        prev_done = terminated | truncated
    return counts


def test_uniform_streams_match_one_draw_at_a_time_across_block_refills() -> None:
    streams = envs._UniformStreams(envs._seed_streams(4, 3), dim=2, block=3)
    singles = [
        np.random.Generator(np.random.PCG64(np.random.SeedSequence(4 + i))) for i in range(3)
    ]
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = np.flatnonzero(rng.random(3) < 0.6)
        got = streams.uniform(idx, -0.05, 0.05)
        expected = [singles[i].uniform(-0.05, 0.05, size=2) for i in idx]
        np.testing.assert_array_equal(got, np.reshape(expected, (len(idx), 2)))


# --------------------------------------------------------------------------------------------
# CartPole family: tasks
# --------------------------------------------------------------------------------------------


def test_task_defaults_are_cartpole_v1() -> None:
    reference = gym.make("CartPole-v1").unwrapped
    task = CartPoleTask()
    for name in ("length", "masspole", "masscart", "gravity", "force_mag"):
        assert getattr(task, name) == getattr(reference, name)
    assert task.name == "default"
    assert CARTPOLE_TASKS["default"] == task


def test_task_names_and_presets() -> None:
    assert CartPoleTask(length=2.0, mirrored=True).name == "length=2,mirrored"
    assert CARTPOLE_TASKS["long_pole"].length == 1.0
    assert CARTPOLE_TASKS["very_long_pole"].length == 2.0
    assert CARTPOLE_TASKS["mirrored"].mirrored
    assert len({t.name for t in CARTPOLE_TASKS.values()}) == len(CARTPOLE_TASKS)


@pytest.mark.parametrize("field", ["length", "masspole", "masscart", "gravity", "force_mag"])
def test_task_rejects_non_positive_physics(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CartPoleTask(**{field: 0.0})


# --------------------------------------------------------------------------------------------
# CartPole family: single env
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_default_task_matches_cartpole_v1_across_episodes(seed: int) -> None:
    reference = gym.make("CartPole-v1")
    family = gym.make("course/CartPoleFamily-v0")
    rng = np.random.default_rng(seed)
    np.testing.assert_array_equal(reference.reset(seed=seed)[0], family.reset(seed=seed)[0])
    episodes = 0
    for _ in range(400):
        action = int(rng.integers(2))
        ref = reference.step(action)
        got = family.step(action)
        np.testing.assert_array_equal(got[0], ref[0])
        assert got[1:4] == ref[1:4]
        if ref[2] or ref[3]:
            episodes += 1
            np.testing.assert_array_equal(reference.reset()[0], family.reset()[0])
    assert episodes >= 5


def test_default_task_truncates_at_500_like_cartpole_v1() -> None:
    reference = gym.make("CartPole-v1")
    family = gym.make("course/CartPoleFamily-v0")
    ref_obs, _ = reference.reset(seed=3)
    obs, _ = family.reset(seed=3)
    for t in range(1, 501):
        action = int(_balance(ref_obs))
        ref_obs, ref_reward, ref_terminated, ref_truncated, _ = reference.step(action)
        obs, reward, terminated, truncated, _ = family.step(action)
        np.testing.assert_array_equal(obs, ref_obs)
        assert (reward, terminated, truncated) == (ref_reward, ref_terminated, ref_truncated)
        assert truncated == (t == 500)
    assert not terminated


def _rollout(env: gym.Env, seed: int, actions: np.ndarray) -> np.ndarray:
    obs = [env.reset(seed=seed)[0]]
    for action in actions:
        obs.append(env.step(int(action))[0])
    return np.stack(obs)


def test_non_default_task_changes_dynamics() -> None:
    actions = np.random.default_rng(0).integers(2, size=8)
    default = _rollout(CartPoleFamilyEnv(), 0, actions)
    long_pole = _rollout(CartPoleFamilyEnv(CARTPOLE_TASKS["long_pole"]), 0, actions)
    np.testing.assert_array_equal(default[0], long_pole[0])
    assert not np.allclose(default[1:, 3], long_pole[1:, 3])


def test_mirrored_task_swaps_the_actions() -> None:
    actions = np.random.default_rng(1).integers(2, size=8)
    mirrored = _rollout(CartPoleFamilyEnv(CARTPOLE_TASKS["mirrored"]), 5, actions)
    default = _rollout(CartPoleFamilyEnv(), 5, 1 - actions)
    np.testing.assert_array_equal(mirrored, default)
    same_actions = _rollout(CartPoleFamilyEnv(), 5, actions)
    assert not np.allclose(mirrored[1:], same_actions[1:])


def test_derived_quantities_follow_parameter_changes() -> None:
    env = CartPoleFamilyEnv()
    assert env.total_mass == pytest.approx(1.1)
    assert env.polemass_length == pytest.approx(0.05)
    env.length = 2.0
    env.masspole = 0.5
    assert env.total_mass == pytest.approx(1.5)
    assert env.polemass_length == pytest.approx(1.0)
    assert env.task == CartPoleTask(length=2.0, masspole=0.5)
    env.set_task(CartPoleTask(masscart=3.0))
    assert env.total_mass == pytest.approx(3.1)
    assert env.polemass_length == pytest.approx(0.05)
    with pytest.raises(AttributeError, match="derived"):
        env.total_mass = 10.0


def test_set_task_gives_the_dynamics_of_a_fresh_env() -> None:
    actions = np.random.default_rng(2).integers(2, size=10)
    task = CartPoleTask(length=1.5, masspole=0.3, masscart=2.0, gravity=7.0, force_mag=15.0)
    switched = CartPoleFamilyEnv()
    switched.set_task(task)
    np.testing.assert_array_equal(
        _rollout(switched, 4, actions), _rollout(CartPoleFamilyEnv(task), 4, actions)
    )


def test_make_passes_the_task_through() -> None:
    env = gym.make("course/CartPoleFamily-v0", task=CARTPOLE_TASKS["very_long_pole"])
    assert env.unwrapped.task == CARTPOLE_TASKS["very_long_pole"]
    assert env.spec is not None and env.spec.max_episode_steps == 500


@pytest.mark.parametrize("name", ["default", "very_long_pole", "mirrored"])
def test_cartpole_single_env_passes_check_env(name: str) -> None:
    env = gym.make("course/CartPoleFamily-v0", task=CARTPOLE_TASKS[name])
    _check_env_quietly(env.unwrapped)


def test_registration_is_idempotent() -> None:
    # What a module reload does; reloading here would replace the classes other tests imported.
    spec = gym.registry["course/CartPoleFamily-v0"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        envs._register("course/CartPoleFamily-v0", entry_point="course.envs:CartPoleFamilyEnv")
    assert gym.registry["course/CartPoleFamily-v0"] is spec
    assert "course/GridFamily-v0" in gym.registry


# --------------------------------------------------------------------------------------------
# CartPole family: batched env
# --------------------------------------------------------------------------------------------


def test_cartpole_vec_layout() -> None:
    tasks = [CARTPOLE_TASKS["default"], CARTPOLE_TASKS["long_pole"], CARTPOLE_TASKS["mirrored"]]
    vec = make_cartpole_vec(tasks, envs_per_task=2)
    assert vec.num_envs == 6
    assert vec.task_ids.dtype == np.int64
    np.testing.assert_array_equal(vec.task_ids, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(vec.length, [0.5, 0.5, 1.0, 1.0, 0.5, 0.5])
    np.testing.assert_array_equal(vec.mirrored, [False, False, False, False, True, True])
    np.testing.assert_allclose(vec.polemass_length, vec.masspole * vec.length)
    np.testing.assert_allclose(vec.total_mass, vec.masspole + vec.masscart)
    obs, info = vec.reset(seed=0)
    assert obs.shape == (6, 4) and obs.dtype == np.float32 and info == {}
    obs, reward, terminated, truncated, info = vec.step(torch.zeros(6, dtype=torch.int64))
    assert obs.shape == (6, 4) and reward.dtype == np.float32
    assert terminated.shape == truncated.shape == (6,)
    assert vec.observation_space.contains(obs)


@pytest.mark.parametrize("mode", MODES)
def test_cartpole_vec_and_single_agree_in_lockstep(mode: AutoresetMode) -> None:
    tasks = list(CARTPOLE_TASKS.values())
    vec = make_cartpole_vec(tasks, envs_per_task=2, max_episode_steps=25, autoreset_mode=mode)
    singles = [
        gym.make("course/CartPoleFamily-v0", task=tasks[k], max_episode_steps=25)
        for k in vec.task_ids
    ]
    counts = _assert_lockstep(
        vec, singles, seed=11, n_steps=120, policy=lambda o, g: g.integers(2, size=len(o))
    )
    assert counts["terminated"] > 10 and counts["truncated"] > 0


@pytest.mark.parametrize("mode", MODES)
def test_cartpole_vec_truncates_at_500(mode: AutoresetMode) -> None:
    vec = make_cartpole_vec([CartPoleTask()], envs_per_task=2, autoreset_mode=mode)
    singles = [gym.make("CartPole-v1") for _ in range(2)]
    counts = _assert_lockstep(vec, singles, seed=0, n_steps=503, policy=lambda o, g: _balance(o))
    assert counts["truncated"] == 2


def test_cartpole_vec_seeds_and_streams() -> None:
    vec = make_cartpole_vec([CartPoleTask()], envs_per_task=3)
    first, _ = vec.reset(seed=[5, 6, 7])
    again, _ = vec.reset(seed=5)
    np.testing.assert_array_equal(first, again)
    assert len({tuple(row) for row in first}) == 3
    continued, _ = vec.reset()
    assert not np.array_equal(continued, first)
    with pytest.raises(ValueError, match="seeds"):
        vec.reset(seed=[1, 2])


def test_cartpole_vec_rejects_bad_actions() -> None:
    vec = make_cartpole_vec([CartPoleTask()], envs_per_task=2)
    with pytest.raises(RuntimeError, match="reset"):
        vec.step(np.zeros(2, dtype=np.int64))
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="0 or 1"):
        vec.step(np.array([0, 2]))


def test_cartpole_make_vec_entry_point() -> None:
    vec = gym.make_vec(
        "course/CartPoleFamily-v0",
        num_envs=4,
        vectorization_mode="vector_entry_point",
        task=CARTPOLE_TASKS["long_pole"],
    )
    assert vec.num_envs == 4 and vec.max_episode_steps == 500
    np.testing.assert_array_equal(vec.unwrapped.length, np.full(4, 1.0))


# --------------------------------------------------------------------------------------------
# Grid-world family: tasks and their MDPs
# --------------------------------------------------------------------------------------------


def test_grid_tasks_one_per_goal_cell() -> None:
    tasks = grid_tasks(slip=0.1)
    assert [t.goal for t in tasks] == [(0, 0), (0, 6), (6, 0), (6, 6)]
    assert all(t.slip == 0.1 and t.layout == GRID_LAYOUT for t in tasks)
    assert tasks[1].name == "goal=(0,6)"
    assert sum(row.count("G") for row in tasks[1].task_layout) == 1
    assert tasks[1].task_layout[0][6] == "G"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"goal": (2, 2)}, "'#'"),
        ({"goal": (3, 3)}, "'S'"),
        ({"goal": (7, 0)}, "outside"),
        ({"goal": (0, 0), "start": "random"}, "start"),
    ],
)
def test_grid_task_rejects_bad_fields(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GridTask(GRID_LAYOUT, **kwargs)


def test_grid_tasks_share_dynamics_and_differ_in_reward() -> None:
    mdps = [t.mdp() for t in grid_tasks(slip=0.2)]
    either_terminal = torch.stack([m.terminal for m in mdps]).any(0)
    for mdp in mdps[1:]:
        assert mdp.cells == mdps[0].cells
        torch.testing.assert_close(mdp.P[~either_terminal], mdps[0].P[~either_terminal])
        assert not torch.equal(mdp.R, mdps[0].R)
    # Opposite corners: the optimal moves disagree in most cells.
    greedy = [value_iteration(mdps[k])[1].argmax(-1) for k in (0, 3)]
    free = ~either_terminal
    assert (greedy[0][free] != greedy[1][free]).float().mean() > 0.5


def test_grid_uniform_start_is_the_mdp_initial_distribution() -> None:
    mdp = GridTask(GRID_LAYOUT, (0, 0), start="uniform").mdp()
    assert torch.allclose(mdp.initial[~mdp.terminal], mdp.initial[~mdp.terminal][0])
    assert mdp.initial[mdp.terminal].sum() == 0
    env = GridFamilyEnv(goal=(0, 0), start="uniform")
    counts = np.zeros(mdp.n_states)
    for seed in range(900):
        counts[env.obs_to_state(env.reset(seed=seed)[0])] += 1
    expected = mdp.initial.numpy() * 900
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected.max())


# --------------------------------------------------------------------------------------------
# Grid-world family: single env
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"goal": (6, 6), "obs_mode": "coords", "slip": 0.2, "start": "uniform"}],
)
def test_grid_single_env_passes_check_env(kwargs: dict) -> None:
    env = gym.make("course/GridFamily-v0", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    assert env.spec is not None and env.spec.max_episode_steps == 100


@pytest.mark.parametrize("obs_mode", ["onehot", "coords"])
def test_grid_observations_map_to_states_and_back(obs_mode: str) -> None:
    env = GridFamilyEnv(goal=(6, 0), obs_mode=obs_mode)
    mdp = env.mdp()
    table = env.observations()
    assert table.shape[0] == mdp.n_states and table.dtype == np.float32
    assert len(np.unique(table, axis=0)) == mdp.n_states
    np.testing.assert_array_equal(env.obs_to_state(table), np.arange(mdp.n_states))
    np.testing.assert_array_equal(env.state_to_obs(np.arange(mdp.n_states)), table)
    obs, _ = env.reset(seed=0)
    assert env.obs_to_state(obs) == mdp.state(3, 3) == int(mdp.initial.argmax())
    assert env.observation_space.contains(table[5])
    if obs_mode == "coords":
        np.testing.assert_allclose(table[mdp.state(6, 6)], [1.0, 1.0])


def test_grid_deterministic_moves_match_the_mdp_exactly() -> None:
    env = GridFamilyEnv(goal=(0, 6), step_reward=-0.1, goal_reward=2.0)
    mdp = env.mdp()
    env.reset(seed=0)
    for s in range(mdp.n_states):
        if mdp.terminal[s]:
            continue
        for a in range(mdp.n_actions):
            env.state = s
            obs, reward, terminated, truncated, _ = env.step(a)
            next_state = env.obs_to_state(obs)
            assert mdp.P[s, a, next_state] == 1.0
            assert reward == mdp.R[s, a].item()
            assert terminated == bool(mdp.terminal[next_state]) and not truncated


def test_grid_slip_frequencies_match_the_mdp() -> None:
    env = GridFamilyEnv(goal=(0, 6), slip=0.3, step_reward=-0.1)
    mdp = env.mdp()
    env.reset(seed=1)
    n = 3000
    # Next to the goal (rewards vary with the outcome) and against a wall (outcomes merge).
    for (row, col), action in [((1, 6), 0), ((0, 5), 1), ((3, 2), 1), ((6, 3), 2)]:
        s = mdp.state(row, col)
        counts = np.zeros(mdp.n_states)
        rewards = np.zeros(n)
        for t in range(n):
            env.state = s
            obs, rewards[t], _, _, _ = env.step(action)
            counts[env.obs_to_state(obs)] += 1
        p = mdp.P[s, action].numpy()
        tolerance = 5 * np.sqrt(p * (1 - p) / n) + 1e-12
        assert np.all(np.abs(counts / n - p) <= tolerance), (row, col, action)
        assert (
            abs(rewards.mean() - mdp.R[s, action].item()) < 5 * rewards.std() / np.sqrt(n) + 1e-12
        )


def test_grid_rejects_bad_actions_and_step_before_reset() -> None:
    env = GridFamilyEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="up"):
        env.step(4)


def test_grid_render_ansi_marks_the_agent() -> None:
    env = GridFamilyEnv(goal=(6, 6), render_mode="ansi")
    env.reset(seed=0)
    text = env.render()
    assert text.splitlines()[3] == "...@..." and text.splitlines()[6] == "......G"


# --------------------------------------------------------------------------------------------
# Grid-world family: batched env
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_grid_vec_and_single_agree_in_lockstep(mode: AutoresetMode) -> None:
    tasks = grid_tasks(slip=0.3, start="uniform") + grid_tasks(step_reward=-0.1)
    vec = make_grid_vec(tasks, envs_per_task=2, max_episode_steps=15, autoreset_mode=mode)
    singles = [
        gym.wrappers.TimeLimit(GridFamilyEnv.from_task(tasks[k]), max_episode_steps=15)
        for k in vec.task_ids
    ]
    counts = _assert_lockstep(
        vec, singles, seed=3, n_steps=150, policy=lambda o, g: g.integers(4, size=len(o))
    )
    assert counts["terminated"] > 3 and counts["truncated"] > 3


def test_grid_vec_layout_and_errors() -> None:
    tasks = grid_tasks()
    vec = make_grid_vec(tasks, envs_per_task=3, obs_mode="coords")
    assert vec.num_envs == 12 and vec.task_ids.dtype == np.int64
    np.testing.assert_array_equal(vec.task_ids, np.repeat(np.arange(4), 3))
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (12, 2) and vec.observation_space.contains(obs)
    np.testing.assert_array_equal(vec.obs_to_state(obs), np.full(12, vec.mdp(0).state(3, 3)))
    assert vec.mdp(2).terminal[vec.mdp(2).state(6, 0)]
    obs, reward, _, _, _ = vec.step(torch.full((12,), 1, dtype=torch.int64))
    np.testing.assert_array_equal(vec.obs_to_state(obs), np.full(12, vec.mdp(0).state(3, 4)))
    with pytest.raises(ValueError, match="0..3"):
        vec.step(np.full(12, 4))
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.zeros(5, dtype=np.int64))
    other = GridTask(("S.G",), (0, 2))
    with pytest.raises(ValueError, match="same layout"):
        make_grid_vec([tasks[0], other])


def test_grid_make_vec_entry_point() -> None:
    vec = gym.make_vec(
        "course/GridFamily-v0", num_envs=3, vectorization_mode="vector_entry_point", goal=(6, 6)
    )
    assert vec.num_envs == 3 and vec.max_episode_steps == 100
    assert vec.unwrapped.tasks[0].goal == (6, 6)
