"""Tests for course/td.py: the TD updates, the training loop and the exact evaluation."""

from __future__ import annotations

import doctest

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import course.envs  # noqa: F401  (registers course/GridFamily-v0)
from course import td
from course.envs import GridFamilyVectorEnv, GridTask
from course.mdp import from_gymnasium, gridworld, policy_evaluation, value_iteration

LESSON_01_LAYOUT = ("S...#", ".#...", "...XG")
GRID = dict(
    layout=LESSON_01_LAYOUT,
    goal=(2, 4),
    slip=0.1,
    step_reward=-1.0,
    goal_reward=0.0,
    pit_reward=-10.0,
    gamma=0.95,
    start="uniform",
)


def one_hot_states(obs: np.ndarray) -> np.ndarray:
    return np.asarray(obs).argmax(-1)


def grid_vec(num_envs: int, max_episode_steps: int = 100) -> GridFamilyVectorEnv:
    return GridFamilyVectorEnv(
        [GridTask(**GRID)],
        envs_per_task=num_envs,
        max_episode_steps=max_episode_steps,
        autoreset_mode=AutoresetMode.SAME_STEP,
    )


# --- the updates -------------------------------------------------------------------------------


def test_q_learning_update_changes_one_entry_in_place():
    Q = torch.tensor([[0.0, 1.0], [2.0, 4.0]], dtype=torch.float64)
    before = Q.clone()
    out = td.q_learning_update(Q, 0, 1, r=1.0, s_next=1, terminated=False, alpha=0.5, gamma=0.5)
    assert out is Q
    assert out[0, 1] == pytest.approx(1.0 + 0.5 * (1.0 + 0.5 * 4.0 - 1.0))
    changed = (out != before).nonzero().tolist()
    assert changed == [[0, 1]]


def test_no_bootstrap_past_terminated():
    Q = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    td.q_learning_update(Q, 0, 0, r=1.0, s_next=1, terminated=True, alpha=0.5, gamma=0.9)
    assert Q[0, 0] == pytest.approx(0.5)
    td.sarsa_update(Q, 0, 1, r=1.0, s_next=1, a_next=1, terminated=True, alpha=1.0, gamma=0.9)
    assert Q[0, 1] == pytest.approx(1.0)


def test_self_loop_reads_the_old_value():
    Q = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    td.q_learning_update(Q, 0, 0, r=0.0, s_next=0, terminated=False, alpha=0.5, gamma=1.0)
    assert Q[0, 0] == pytest.approx(2.0)  # target = 0 + max(2, 0) = 2, the old value


def test_sarsa_uses_the_next_action_not_the_max():
    Q = torch.tensor([[0.0, 0.0], [2.0, 4.0]], dtype=torch.float64)
    td.sarsa_update(Q, 0, 0, 1.0, 1, 0, False, alpha=1.0, gamma=0.5)
    td.q_learning_update(Q, 0, 1, 1.0, 1, False, alpha=1.0, gamma=0.5)
    assert Q[0].tolist() == [2.0, 3.0]


def test_updates_accept_gymnasium_scalars():
    Q = torch.zeros(3, 2)
    td.q_learning_update(Q, np.int64(0), np.int64(1), -1, np.int64(2), False, 0.5, 0.9)
    td.sarsa_update(Q, np.int64(1), np.int64(0), np.float32(2.0), np.int64(0), 1, True, 0.5, 0.9)
    assert Q.tolist() == [[0.0, -0.5], [1.0, 0.0], [0.0, 0.0]]


# --- behaviour and step sizes ------------------------------------------------------------------


def test_epsilon_greedy_policy():
    Q = torch.tensor([[1.0, 3.0, 3.0], [0.0, -1.0, -2.0]])
    pi = td.epsilon_greedy_policy(Q, 0.3)
    torch.testing.assert_close(pi.sum(-1), torch.ones(2, dtype=torch.float64))
    assert pi[0].tolist() == pytest.approx([0.1, 0.8, 0.1])  # ties to the lowest index
    assert pi[1].tolist() == pytest.approx([0.8, 0.1, 0.1])
    with pytest.raises(ValueError, match="epsilon"):
        td.epsilon_greedy_policy(Q, 1.5)


def test_step_size_decays_as_a_power_of_visits():
    assert td.step_size(0.5, np.array([1, 4, 16]), 0.5).tolist() == [0.5, 0.25, 0.125]
    assert td.step_size(0.1, np.array([1, 9]), 0.0).tolist() == [0.1, 0.1]


# --- the training loop -------------------------------------------------------------------------


def one_env_loop(env, method, n_steps, alpha, decay, gamma, epsilon, seed, to_state):
    """The loop a student writes: one env, the graded updates, the documented random draws."""
    rng = np.random.default_rng(seed)
    n_states = env.observation_space.shape[0] if to_state else env.observation_space.n
    Q = torch.zeros(n_states, env.action_space.n, dtype=torch.float64)
    visits = np.zeros((n_states, env.action_space.n))

    def act(s):
        if rng.random() < epsilon:
            return int(rng.integers(env.action_space.n))
        return int(Q[s].argmax())

    state = to_state or int
    obs, _ = env.reset(seed=seed)
    s = state(obs)
    a = act(s)
    returns, total = [], 0.0
    for _ in range(n_steps):
        obs, r, terminated, truncated, _ = env.step(a)
        s_next = state(obs)
        visits[s, a] += 1
        lr = alpha / visits[s, a] ** decay
        total += r
        if method == "q_learning":
            Q = td.q_learning_update(Q, s, a, r, s_next, terminated, lr, gamma)
        else:
            a_next = act(s_next)
            Q = td.sarsa_update(Q, s, a, r, s_next, a_next, terminated, lr, gamma)
        if terminated or truncated:
            returns.append(total)
            total = 0.0
            obs, _ = env.reset()
            s = state(obs)
            a = act(s)
        else:
            s = s_next
            a = act(s) if method == "q_learning" else a_next
    return Q, returns


@pytest.mark.parametrize("method", td.METHODS)
def test_vector_loop_reproduces_the_one_env_loop_on_the_grid(method):
    # a short time limit: truncated episodes must keep bootstrapping
    env = gym.make("course/GridFamily-v0", max_episode_steps=7, **GRID)
    Q, returns = one_env_loop(env, method, 600, 1.0, 0.7, 0.95, 0.3, 5, one_hot_states)
    run = td.td_control(
        grid_vec(1, max_episode_steps=7),
        method,
        600,
        alpha=1.0,
        alpha_decay=0.7,
        gamma=0.95,
        epsilon=0.3,
        seed=5,
        n_states=Q.shape[0],
        to_state=one_hot_states,
    )
    torch.testing.assert_close(run.Q[0], Q, rtol=0, atol=1e-12)
    np.testing.assert_allclose(run.episode_returns[0], returns)


def test_vector_loop_reproduces_the_one_env_loop_on_cliff_walking():
    env = gym.make("CliffWalking-v1")
    Q, returns = one_env_loop(env, "q_learning", 400, 0.5, 0.0, 1.0, 0.1, 3, None)
    envs = gym.make_vec(
        "CliffWalking-v1",
        num_envs=1,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
    )
    run = td.td_control(envs, "q_learning", 400, alpha=0.5, gamma=1.0, epsilon=0.1, seed=3)
    torch.testing.assert_close(run.Q[0], Q, rtol=0, atol=1e-12)
    np.testing.assert_allclose(run.episode_returns[0], returns)


def test_each_sub_env_runs_as_if_alone_and_runs_repeat():
    kwargs = dict(alpha=1.0, alpha_decay=0.7, gamma=0.95, epsilon=0.5, n_states=13)
    kwargs["to_state"] = one_hot_states
    pair = td.td_control(grid_vec(2), "q_learning", 300, seed=[4, 9], **kwargs)
    alone = td.td_control(grid_vec(1), "q_learning", 300, seed=9, **kwargs)
    torch.testing.assert_close(pair.Q[1], alone.Q[0], rtol=0, atol=0)
    again = td.td_control(grid_vec(2), "q_learning", 300, seed=[4, 9], **kwargs)
    assert torch.equal(pair.Q, again.Q)


def test_q_learning_converges_to_lesson_01_q_star():
    mdp = GridTask(**GRID).mdp()
    lesson_01 = gridworld(list(LESSON_01_LAYOUT), slip=0.1, gamma=0.95)
    assert torch.equal(mdp.P, lesson_01.P) and torch.equal(mdp.R, lesson_01.R)
    q_star = value_iteration(mdp)[1]
    run = td.td_control(
        grid_vec(2),
        "q_learning",
        8000,
        alpha=1.0,
        alpha_decay=0.7,
        gamma=0.95,
        epsilon=0.5,
        seed=0,
        n_states=mdp.n_states,
        to_state=one_hot_states,
        q_star=q_star,
        terminal=mdp.terminal,
        eval_every=2000,
    )
    assert run.max_error.shape == (2, 4) and run.steps.tolist() == [2000, 4000, 6000, 8000]
    assert (run.max_error[:, -1] < 1.0).all()
    assert (run.max_error[:, -1] < run.max_error[:, 0]).all()
    assert (run.Q[:, mdp.terminal] == 0).all()  # never updated: nothing starts there


def test_td_control_rejects_bad_settings():
    with pytest.raises(ValueError, match="method"):
        td.td_control(grid_vec(1), "expected_sarsa", 10, alpha=1, gamma=1, epsilon=0, seed=0)
    next_step = GridFamilyVectorEnv([GridTask(**GRID)], envs_per_task=1)
    with pytest.raises(ValueError, match="same-step autoreset"):
        td.td_control(next_step, "sarsa", 10, alpha=1, gamma=1, epsilon=0, seed=0)
    with pytest.raises(ValueError, match="seeds"):
        td.td_control(
            grid_vec(2), "sarsa", 10, alpha=1, gamma=1, epsilon=0, seed=[1, 2, 3], n_states=13
        )
    with pytest.raises(ValueError, match="n_states"):
        td.td_control(grid_vec(2), "sarsa", 10, alpha=1, gamma=1, epsilon=0, seed=0)
    with pytest.raises(ValueError, match="epsilon is 1.5"):
        td.td_control(grid_vec(1), "sarsa", 10, alpha=1, gamma=1, epsilon=1.5, seed=0, n_states=13)


def test_first_episodes():
    run = td.TabularRun(
        Q=torch.zeros(2, 1, 1),
        steps=np.zeros(0),
        max_error=np.zeros((2, 0)),
        episode_returns=(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0])),
        seeds=(0, 1),
    )
    assert run.first_episodes().tolist() == [[1.0, 2.0], [4.0, 5.0]]
    with pytest.raises(ValueError, match="only 2 episodes"):
        run.first_episodes(3)


# --- exact evaluation --------------------------------------------------------------------------


def test_expected_return_matches_policy_evaluation():
    mdp = gridworld(list(LESSON_01_LAYOUT), slip=0.1, gamma=0.95)
    Q = value_iteration(mdp)[1]
    for epsilon in (0.0, 0.2, 1.0):
        pi = td.epsilon_greedy_policy(Q, epsilon)
        V = policy_evaluation(mdp, pi)
        assert td.expected_return(mdp, pi) == pytest.approx(float(mdp.initial @ V))


def cliff_walking():
    return from_gymnasium(gym.make("CliffWalking-v1"), gamma=1.0)


def test_expected_return_ignores_states_the_policy_never_reaches():
    cliff = cliff_walking()
    Q = value_iteration(cliff)[1].clone()
    Q[:12] = 0.0  # the top row: greedy "up" there would bump into the wall forever
    greedy = td.epsilon_greedy_policy(Q, 0.0)
    assert td.expected_return(cliff, greedy) == pytest.approx(-13.0)
    with pytest.raises(ValueError, match="never ends the episode"):
        td.expected_return(cliff, td.epsilon_greedy_policy(torch.zeros(48, 4), 0.0))


def test_greedy_path_along_the_cliff_edge():
    cliff = cliff_walking()
    path = td.greedy_path(cliff, value_iteration(cliff)[1])
    assert path[0] == 36 and path[-1] == 47 and len(path) == 14
    drawn = td.cliff_map(path).splitlines()
    assert drawn[3] == "S C C C C C C C C C C G"
    assert drawn[2] == "o " * 11 + "o"
    assert drawn[0] == ". " * 11 + "."


def test_sarsa_takes_the_safe_path_and_q_learning_the_edge():
    cliff = cliff_walking()
    runs = {}
    for method in td.METHODS:
        envs = gym.make_vec(
            "CliffWalking-v1",
            num_envs=2,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        )
        runs[method] = td.td_control(envs, method, 5000, alpha=0.5, gamma=1.0, epsilon=0.1, seed=0)
    for i in range(2):
        q_greedy = td.epsilon_greedy_policy(runs["q_learning"].Q[i], 0.0)
        assert td.expected_return(cliff, q_greedy) == pytest.approx(-13.0)
        explore = {m: td.epsilon_greedy_policy(runs[m].Q[i], 0.1) for m in td.METHODS}
        values = {m: td.expected_return(cliff, pi) for m, pi in explore.items()}
        assert values["sarsa"] > values["q_learning"] + 10


def test_doctests():
    result = doctest.testmod(td, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 4 and result.failed == 0


def test_epsilon_soft_optimum_is_the_best_exploring_policy():
    cliff = cliff_walking()
    q_star = value_iteration(cliff)[1]
    torch.testing.assert_close(td.epsilon_soft_optimum(cliff, 0.0), q_star, atol=1e-6, rtol=0)
    safe = td.epsilon_soft_optimum(cliff, 0.1)
    explore = {
        name: td.epsilon_greedy_policy(Q, 0.1) for name, Q in (("safe", safe), ("edge", q_star))
    }
    values = {name: td.expected_return(cliff, pi) for name, pi in explore.items()}
    # its value is its own fixed point, and it beats exploring along the edge
    start = int(cliff.initial.argmax())
    assert values["safe"] == pytest.approx(float((explore["safe"][start] * safe[start]).sum()))
    assert values["safe"] > values["edge"] + 20
    assert td.greedy_return(cliff, safe) == -15.0  # one row above the edge
    assert td.greedy_return(cliff, q_star) == -13.0


def test_greedy_return_cuts_walks_that_never_end():
    cliff = cliff_walking()
    assert td.greedy_return(cliff, torch.zeros(48, 4), max_steps=100) == -100.0
    slippery = gridworld(list(LESSON_01_LAYOUT), slip=0.1)
    with pytest.raises(ValueError, match="deterministic"):
        td.greedy_return(slippery, value_iteration(slippery)[1])


def test_moving_average():
    values = np.array([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 4.0]])
    assert td.moving_average(values, 2).tolist() == [[1.5, 2.5, 4.5], [0.0, 2.0, 4.0]]
    assert td.moving_average(values, 4).tolist() == [[3.0], [2.0]]
    with pytest.raises(ValueError, match="window"):
        td.moving_average(values, 5)


# --- Lesson 02's replay measurements (course/replay_demo.py) -----------------------------------


def test_expected_uses_total_the_same_but_weigh_transitions_differently():
    from course.replay_demo import expected_uses

    uses = expected_uses(1500, 32)
    assert uses["online"].shape == uses["replay"].shape == (1531,)
    assert uses["online"].sum() == pytest.approx(48_000)
    assert uses["replay"].sum() == pytest.approx(48_000)
    assert uses["online"].max() == 32 and uses["online"][0] == uses["online"][-1] == 1
    assert uses["replay"][0] > 100 > 1 > uses["replay"][-1]
    assert (np.diff(uses["replay"]) <= 1e-12).all()  # older transitions are drawn more


def test_expected_uses_matches_a_count_of_the_replay_draws():
    from course.replay_demo import expected_uses

    K, B = 40, 4
    rng = np.random.default_rng(0)
    counts = np.zeros(K + B - 1)
    for _ in range(400):
        for k in range(K):
            np.add.at(counts, rng.integers(0, k + B, size=B), 1)
    np.testing.assert_allclose(counts / 400, expected_uses(K, B)["replay"], atol=0.25)


def test_largest_rise():
    from course.replay_demo import largest_rise

    curves = np.array([[3.0, 1.0, 2.5, 0.5, 0.9], [3.0, 2.0, 1.0, 1.0, 0.5]])
    assert largest_rise(curves).tolist() == [1.5, 0.0]
    with pytest.raises(ValueError, match="runs, E"):
        largest_rise(np.zeros(3))
