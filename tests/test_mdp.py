"""Tests for course/mdp.py: validation, builders, and the exact solvers of Lesson 01."""

import dataclasses
import doctest
import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course import mdp as mdp_module
from course.mdp import (
    ACTION_DELTAS,
    GridMDP,
    TabularMDP,
    absorption_probabilities,
    bellman_backup,
    from_gymnasium,
    greedy_policy,
    gridworld,
    outcome_probabilities,
    policy_evaluation,
    q_from_v,
    random_mdp,
    random_policy,
    uniform_policy,
    value_iteration,
)

UP, RIGHT, DOWN, LEFT = range(4)


def two_state_mdp(gamma: float = 0.9, dtype: torch.dtype = torch.float64) -> TabularMDP:
    """State 0: action 0 stays (+1), action 1 ends the episode (+5). State 1 is terminal."""
    P = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]], dtype=dtype)
    R = torch.tensor([[1.0, 5.0], [0.0, 0.0]], dtype=dtype)
    return TabularMDP(P, R, gamma, terminal=[False, True])


def valid_parts():
    P = torch.tensor(
        [
            [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]],
            [[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]],
            [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]],
        ],
        dtype=torch.float64,
    )
    R = torch.tensor([[1.0, 2.0], [0.0, -1.0], [0.0, 0.0]], dtype=torch.float64)
    return P, R


def hand_mdp(gamma: float = 0.5) -> TabularMDP:
    P, R = valid_parts()
    return TabularMDP(P, R, gamma, terminal=[False, False, True])


# --- TabularMDP validation --------------------------------------------------------------------


def _bad(**changes):
    P, R = valid_parts()
    kwargs = dict(P=P, R=R, gamma=0.9, terminal=[False, False, True], initial=None)
    for key, change in changes.items():
        kwargs[key] = change(kwargs[key]) if callable(change) else change
    return kwargs


def _set(index, value):
    def change(t):
        t = t.clone()
        t[index] = value
        return t

    return change


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (_bad(P=lambda P: P[:, 0]), "P has shape (3, 3); it must have shape [S, A, S]"),
        (_bad(P=lambda P: P[:, :, :2]), "its first and last dimensions must both be"),
        (_bad(P=_set((1, 1, 0), -0.2)), "P[1, 1, 0] is -0.2; probabilities must be non-negative"),
        (_bad(P=_set((1, 0, 0), float("nan"))), "P[1, 0, 0] is nan; probabilities must be finite"),
        (_bad(P=_set((0, 0, 0), 0.4)), "P[0, 0] sums to 0.9; each row of P must sum to 1"),
        (_bad(R=lambda R: R[:, 0]), "R has shape (3,); it must have shape [S, A] = (3, 2)"),
        (_bad(R=_set((0, 1), float("inf"))), "R[0, 1] is inf; rewards must be finite"),
        (_bad(gamma=1.5), "gamma is 1.5; it must satisfy 0 <= gamma < 1"),
        (_bad(gamma=-0.1), "gamma is -0.1; it must satisfy 0 <= gamma < 1"),
        (_bad(gamma=1.0, terminal=None), "gamma is 1 but no state is terminal"),
        (_bad(terminal=[True, False]), "terminal has shape (2,); it must be a boolean mask"),
        (_bad(terminal=[0, 2, 1]), "terminal must be a boolean mask"),
        (_bad(terminal=[True, False, False]), "terminal state 0 is not absorbing: P[0, 0, 0] is"),
        (
            _bad(R=_set((2, 1), 3.0)),
            "R[2, 1] is 3 at terminal state 2; terminal states must have zero reward",
        ),
        (_bad(terminal=[True, True, True]), "every state is terminal"),
        (_bad(initial=[0.5, 0.5]), "initial has shape (2,); it must be a distribution"),
        (_bad(initial=[1.5, -0.5, 0.0]), "initial[1] is -0.5; initial probabilities must be"),
        (_bad(initial=[0.5, 0.2, 0.0]), "initial sums to 0.7; it must sum to 1"),
    ],
)
def test_validation_errors_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TabularMDP(**kwargs)


def test_valid_mdp_defaults_and_dtypes():
    P, R = valid_parts()
    mdp = TabularMDP(P.tolist(), R.tolist(), 0.9, terminal=[0, 0, 1])
    assert (mdp.n_states, mdp.n_actions) == (3, 2)
    assert mdp.dtype == torch.float64
    assert mdp.terminal.dtype == torch.bool and mdp.terminal.tolist() == [False, False, True]
    assert mdp.initial.tolist() == [0.5, 0.5, 0.0]
    assert TabularMDP(P.float(), R.float(), 0.9).dtype == torch.float32
    assert TabularMDP(P.numpy().astype(np.float32), R.float(), 0.9).dtype == torch.float32
    assert TabularMDP(P.float(), R.double(), 0.9).R.dtype == torch.float64
    assert TabularMDP(P, R, torch.tensor(0.5)).gamma == 0.5


def test_mdp_is_frozen_and_to_converts():
    mdp = gridworld(["S.G"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        mdp.gamma = 0.5
    mdp32 = mdp.to(dtype=torch.float32)
    assert isinstance(mdp32, GridMDP) and mdp32.dtype == torch.float32
    assert mdp32.cells == mdp.cells and mdp32.initial.dtype == torch.float32
    assert "n_states=3" in repr(mdp)


# --- gridworld ----------------------------------------------------------------------------------


def test_gridworld_states_skip_walls_and_keep_cells():
    mdp = gridworld(["S.#", "..G", "X.."])
    assert mdp.n_states == 8 and mdp.n_actions == 4
    assert (0, 2) not in mdp.cells and len(mdp.cells) == 8
    assert mdp.state(1, 2) == mdp.cells.index((1, 2))
    assert mdp.terminal.tolist() == [mdp.layout[r][c] in "GX" for r, c in mdp.cells]
    assert mdp.initial[mdp.state(0, 0)] == 1.0 and mdp.initial.sum() == 1.0
    with pytest.raises(ValueError, match=re.escape("cell (0, 2) is not a state")):
        mdp.state(0, 2)
    grid = mdp.to_grid(torch.arange(8.0))
    assert grid.shape == (3, 3) and torch.isnan(grid[0, 2])
    assert grid[2, 2] == mdp.state(2, 2)
    assert mdp.to_grid(torch.zeros(8, 4)).shape == (3, 3, 4)


def test_gridworld_moves_walls_and_borders():
    mdp = gridworld(["S.#", "..G", "X.."])
    s = mdp.state(0, 1)
    assert mdp.P[s, RIGHT, s] == 1.0  # wall
    assert mdp.P[s, UP, s] == 1.0  # border
    assert mdp.P[s, DOWN, mdp.state(1, 1)] == 1.0
    assert mdp.P[s, LEFT, mdp.state(0, 0)] == 1.0
    assert ACTION_DELTAS[DOWN] == (1, 0)


def test_gridworld_slip_and_rewards():
    slip = 0.3
    mdp = gridworld(["...", ".S.", "X.G"], slip=slip, step_reward=-1, goal_reward=10, pit_reward=-5)
    assert torch.allclose(mdp.P.sum(-1), torch.ones(9, 4, dtype=torch.float64))
    c = mdp.state(1, 1)
    assert mdp.P[c, UP, mdp.state(0, 1)] == pytest.approx(1 - slip)
    assert mdp.P[c, UP, mdp.state(1, 2)] == pytest.approx(slip / 2)
    assert mdp.P[c, UP, mdp.state(1, 0)] == pytest.approx(slip / 2)
    assert mdp.P[c, UP, mdp.state(2, 1)] == 0.0
    s = mdp.state(1, 2)
    # down enters the goal w.p. 0.7; sideways: right bumps the border, left reaches the centre
    assert mdp.R[s, DOWN] == pytest.approx(-1 + 0.7 * 10)
    s = mdp.state(2, 1)
    assert mdp.R[s, LEFT] == pytest.approx(-1 + 0.7 * -5)
    for t in (mdp.state(2, 0), mdp.state(2, 2)):
        assert mdp.terminal[t] and (mdp.P[t, :, t] == 1).all() and (mdp.R[t] == 0).all()


@pytest.mark.parametrize(
    ("layout", "error", "message"),
    [
        (["S.", "..G"], ValueError, "layout row 1 has length 3 but row 0 has length 2"),
        (["S.G", ".x."], ValueError, "layout[1][1] is 'x'; use only 'S' (start)"),
        (["..G"], ValueError, "layout has 0 'S' cells; it needs exactly one start"),
        (["S.G", "S.."], ValueError, "layout has 2 'S' cells at (0, 0), (1, 0)"),
        (["S.."], ValueError, "layout has no 'G' cell"),
        ([], ValueError, "layout is empty"),
        ("S.G", TypeError, "layout must be a list of strings"),
    ],
)
def test_gridworld_layout_errors(layout, error, message):
    with pytest.raises(error, match=re.escape(message)):
        gridworld(layout)


def test_gridworld_slip_out_of_range():
    with pytest.raises(ValueError, match=re.escape("slip is 1.5; it must be a probability")):
        gridworld(["S.G"], slip=1.5)


# --- from_gymnasium ----------------------------------------------------------------------------


@pytest.mark.parametrize("is_slippery", [True, False])
def test_from_gymnasium_frozen_lake(is_slippery):
    env = gym.make("FrozenLake-v1", is_slippery=is_slippery)
    mdp = from_gymnasium(env, gamma=1.0)
    assert isinstance(mdp, GridMDP) and mdp.layout == ("SFFF", "FHFH", "FFFH", "HFFG")
    assert torch.allclose(mdp.P.sum(-1), torch.ones(16, 4, dtype=torch.float64))
    assert mdp.terminal.tolist() == [ch in "HG" for ch in "".join(mdp.layout)]
    assert mdp.initial.tolist() == [1.0] + [0.0] * 15
    # the goal's reward is on the moves into it, from state 14
    # FrozenLake's own action order is left, down, right, up
    assert mdp.R[14, 2] == pytest.approx(1 / 3 if is_slippery else 1.0)
    # state 14 enters the goal with total probability 1 over its actions; 11 is a hole
    assert mdp.R.sum() == pytest.approx(1.0)
    V, _ = value_iteration(mdp)
    assert float(mdp.initial @ V) == pytest.approx(0.8235294 if is_slippery else 1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("FrozenLake-v1", {"is_slippery": False}), ("CliffWalking-v1", {}), ("Taxi-v4", {})],
)
def test_from_gymnasium_agrees_with_stepping_the_env(name, kwargs):
    env = gym.make(name, **kwargs)
    mdp = from_gymnasium(env)
    env.reset(seed=0)
    # states an episode can visit (Taxi also lists unreachable ones that break the rules)
    reachable = mdp.initial > 0
    while True:
        grown = reachable | (mdp.P[reachable & ~mdp.terminal] > 0).any(0).any(0)
        if torch.equal(grown, reachable):
            break
        reachable = grown
    for s in torch.arange(mdp.n_states)[reachable & ~mdp.terminal][:60].tolist():
        for a in range(mdp.n_actions):
            env.unwrapped.s = s
            obs, reward, terminated, _, _ = env.unwrapped.step(a)
            assert mdp.P[s, a, obs] == 1.0
            assert mdp.R[s, a] == reward
            assert bool(mdp.terminal[obs]) == terminated


def test_from_gymnasium_cliff_walking_and_taxi():
    cliff = from_gymnasium(gym.make("CliffWalking-v1"))
    assert cliff.terminal.nonzero().flatten().tolist() == [47]
    assert cliff.P[36, RIGHT, 36] == 1.0 and cliff.R[36, RIGHT] == -100  # cliff: back to start
    assert (cliff.P[47, :, 47] == 1).all() and (cliff.R[47] == 0).all()
    assert not isinstance(cliff, GridMDP)

    env = gym.make("Taxi-v4", is_rainy=True)
    taxi = from_gymnasium(env, gamma=0.9, dtype=torch.float32)
    assert taxi.n_states == 500 and taxi.n_actions == 6 and taxi.dtype == torch.float32
    assert int(taxi.terminal.sum()) == 4
    assert torch.allclose(taxi.P.sum(-1), torch.ones(500, 6))
    assert torch.allclose(
        taxi.initial.double(), torch.as_tensor(env.unwrapped.initial_state_distrib)
    )


def test_from_gymnasium_rejects_envs_without_a_table():
    with pytest.raises(TypeError, match="has no transition table P"):
        from_gymnasium(gym.make("CartPole-v1"))


def test_from_gymnasium_rejects_state_dependent_termination_mismatch():
    class Fake:
        # state 1 ends the episode from state 0 but not from state 2
        P = {
            0: {0: [(1.0, 1, 1.0, True)]},
            1: {0: [(1.0, 1, 0.0, True)]},
            2: {0: [(1.0, 1, 0.0, False)]},
        }

    with pytest.raises(ValueError, match=re.escape("from P[2][0]")):
        from_gymnasium(Fake())


# --- the five exercises on hand-made MDPs ------------------------------------------------------


def test_two_state_mdp_by_hand():
    mdp = two_state_mdp(gamma=0.9)
    # uniform policy: V0 = 0.5 (1 + 0.9 V0) + 0.5 * 5  =>  V0 = 3 / 0.55
    V = policy_evaluation(mdp, uniform_policy(mdp))
    assert V.tolist() == pytest.approx([3 / 0.55, 0.0])
    # staying forever is worth 1 / (1 - 0.9) = 10 > 5
    V_star, Q_star = value_iteration(mdp)
    assert V_star.tolist() == pytest.approx([10.0, 0.0], abs=1e-8)
    assert torch.allclose(Q_star, torch.tensor([[10.0, 5.0], [0.0, 0.0]], dtype=torch.float64))
    assert greedy_policy(Q_star).tolist() == [[1.0, 0.0], [1.0, 0.0]]
    # with gamma = 0.7, staying is worth 1 / 0.3 < 5
    V_star, _ = value_iteration(two_state_mdp(gamma=0.7))
    assert V_star.tolist() == pytest.approx([5.0, 0.0], abs=1e-8)


def test_three_state_mdp_by_hand():
    mdp = hand_mdp(gamma=0.5)
    V = torch.tensor([2.0, 4.0, 100.0], dtype=torch.float64)
    Q = q_from_v(mdp, V)
    # Q[0,0] = 1 + 0.5 (0.5*2 + 0.5*4); Q[0,1] = 2 + 0.5*0; Q[1,0] = 0 + 0.5*4;
    # Q[1,1] = -1 + 0.5 (0.2*2 + 0.3*4 + 0.5*0); the terminal V = 100 is never read
    expected = torch.tensor([[2.5, 2.0], [2.0, -0.2], [0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(Q, expected)
    pi = torch.tensor([[0.25, 0.75], [0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    assert bellman_backup(mdp, V, pi).tolist() == pytest.approx([2.125, 0.9, 0.0])
    # pi_det = (0, 0): V1 = 0.5 V1 => 0; V0 = 1 + 0.5 (0.5 V0 + 0.5 V1) => V0 = 4/3
    pi_det = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert policy_evaluation(mdp, pi_det).tolist() == pytest.approx([4 / 3, 0.0, 0.0])
    V_star, Q_star = value_iteration(mdp)
    # optimal: state 1 loops for 0 (> -1 + 0.5 * 0.2 * 2), state 0 ends for 2 (> 1 + 0.5 * 1)
    assert V_star.tolist() == pytest.approx([2.0, 0.0, 0.0], abs=1e-8)
    assert greedy_policy(Q_star).argmax(-1).tolist()[:2] == [1, 0]


def test_gridworld_values_by_hand():
    mdp = gridworld(["S.G"], gamma=1.0)
    V, Q = value_iteration(mdp)
    assert V.tolist() == [-2.0, -1.0, 0.0]
    right = torch.zeros(3, 4, dtype=torch.float64)
    right[:, RIGHT] = 1
    assert policy_evaluation(mdp, right).tolist() == [-2.0, -1.0, 0.0]
    assert greedy_policy(Q)[:2].argmax(-1).tolist() == [RIGHT, RIGHT]


def test_terminal_values_are_never_bootstrapped():
    mdp = hand_mdp()
    V = torch.tensor([0.0, 0.0, 1e6], dtype=torch.float64)
    assert (q_from_v(mdp, V)[2] == 0).all()
    assert bellman_backup(mdp, V, uniform_policy(mdp)).abs().max() < 10


def test_policy_shape_and_row_errors():
    mdp = hand_mdp()
    with pytest.raises(ValueError, match=re.escape("pi has shape (2, 2); a policy must have")):
        policy_evaluation(mdp, torch.ones(2, 2) / 2)
    with pytest.raises(ValueError, match=re.escape("pi[1] sums to 0.5")):
        bellman_backup(mdp, torch.zeros(3), torch.tensor([[1.0, 0], [0.25, 0.25], [1, 0]]))
    with pytest.raises(ValueError, match=re.escape("V has shape (2,)")):
        q_from_v(mdp, torch.zeros(2))


# --- greedy ties --------------------------------------------------------------------------------


def test_greedy_ties_go_to_the_lowest_index():
    Q = torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [0.0, -1.0, 5.0], [-1.0, -2.0, -1.0]])
    assert greedy_policy(Q).tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1], [1, 0, 0]]
    assert greedy_policy(Q).dtype == torch.float32
    assert greedy_policy(Q.double()).dtype == torch.float64


def test_greedy_atol_treats_near_ties_as_ties():
    Q = torch.tensor([[1.0, 1.0 + 1e-12, 0.0]], dtype=torch.float64)
    assert greedy_policy(Q).argmax().item() == 1
    assert greedy_policy(Q, atol=1e-9).argmax().item() == 0


# --- gamma = 1 ----------------------------------------------------------------------------------


def test_gamma_one_with_improper_zero_reward_policy():
    # state 0 can loop on action 0 (reward 0) or go to terminal 1 on action 1 (reward 1)
    P = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    mdp = TabularMDP(P, [[0.0, 1.0], [0.0, 0.0]], 1.0, terminal=[False, True])
    loop = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert policy_evaluation(mdp, loop).tolist() == [0.0, 0.0]
    V, _ = value_iteration(mdp)
    assert V.tolist() == pytest.approx([1.0, 0.0])
    rewarding = TabularMDP(P, [[0.5, 1.0], [0.0, 0.0]], 1.0, terminal=[False, True])
    with pytest.raises(ValueError, match="never terminates from state 0"):
        policy_evaluation(rewarding, loop)
    with pytest.raises(RuntimeError, match="did not converge in 50 sweeps"):
        value_iteration(rewarding, max_iterations=50)


def test_gamma_one_random_proper_mdps():
    g = torch.Generator().manual_seed(3)
    for trial in range(20):
        mdp = random_mdp(6, 3, 1.0, g, n_terminal=2, deterministic=trial % 2 == 0)
        pi = random_policy(mdp, g, deterministic=trial % 3 == 0)
        V = policy_evaluation(mdp, pi)
        assert torch.allclose(bellman_backup(mdp, V, pi), V, atol=1e-9)
        V_star, Q_star = value_iteration(mdp)
        assert torch.allclose(policy_evaluation(mdp, greedy_policy(Q_star)), V_star, atol=1e-7)


# --- random MDPs: exact solvers agree with independent computations ------------------------------


def _random_cases(seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        S = int(torch.randint(1, 10, (1,), generator=g))
        gamma = [0.0, 0.5, 0.9, 0.99][i % 4]
        n_terminal = int(torch.randint(0, S, (1,), generator=g))
        mdp = random_mdp(
            S,
            int(torch.randint(1, 5, (1,), generator=g)),
            gamma,
            g,
            n_terminal=n_terminal,
            deterministic=i % 3 == 0,
            max_successors=3,
        )
        yield mdp, random_policy(mdp, g, deterministic=i % 2 == 0)


def test_policy_evaluation_matches_numpy_linear_solve():
    for mdp, pi in _random_cases(seed=0, n=40):
        P_pi = np.einsum("sa,sat->st", pi.numpy(), mdp.P.numpy())
        r_pi = (pi * mdp.R).sum(-1).numpy()
        expected = np.linalg.solve(np.eye(mdp.n_states) - mdp.gamma * P_pi, r_pi)
        assert np.allclose(policy_evaluation(mdp, pi).numpy(), expected, atol=1e-10)


def test_policy_evaluation_is_the_fixed_point_of_the_backup():
    for mdp, pi in _random_cases(seed=1, n=16):
        V = torch.zeros(mdp.n_states, dtype=torch.float64)
        for _ in range(3000):
            V, V_old = bellman_backup(mdp, V, pi), V
            if (V - V_old).abs().max() < 1e-13:
                break
        assert torch.allclose(policy_evaluation(mdp, pi), V, atol=1e-9)


def test_value_iteration_satisfies_bellman_optimality_and_dominates():
    g = torch.Generator().manual_seed(2)
    for mdp, pi in _random_cases(seed=2, n=40):
        V, Q = value_iteration(mdp, tol=1e-10)
        assert torch.equal(Q.max(-1).values, V)
        assert torch.allclose(q_from_v(mdp, V), Q, atol=1e-10)
        assert (V[mdp.terminal] == 0).all() and (Q[mdp.terminal] == 0).all()
        assert (policy_evaluation(mdp, pi) <= V + 1e-9).all()
        assert (policy_evaluation(mdp, random_policy(mdp, g)) <= V + 1e-9).all()
        assert torch.allclose(policy_evaluation(mdp, greedy_policy(Q)), V, atol=1e-8)


def test_value_iteration_tolerance_is_respected():
    mdp = random_mdp(8, 3, 0.99, torch.Generator().manual_seed(5), n_terminal=1)
    V_exact, _ = value_iteration(mdp, tol=1e-12)
    V_rough, _ = value_iteration(mdp, tol=1e-3)
    assert (V_rough - V_exact).abs().max() <= 1e-3
    assert (V_rough - V_exact).abs().max() > 1e-10  # it did stop early


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    gamma=st.sampled_from([0.0, 0.3, 0.9, 0.99, 1.0]),
    deterministic=st.booleans(),
)
def test_property_exact_solutions(seed, gamma, deterministic):
    g = torch.Generator().manual_seed(seed)
    mdp = random_mdp(7, 3, gamma, g, n_terminal=2, deterministic=deterministic)
    pi = random_policy(mdp, g)
    V = policy_evaluation(mdp, pi)
    assert torch.allclose(bellman_backup(mdp, V, pi), V, atol=1e-9)
    V_star, Q_star = value_iteration(mdp)
    assert torch.allclose(q_from_v(mdp, V_star).max(-1).values, V_star, atol=1e-7)
    assert (V <= V_star + 1e-7).all()


# --- dtypes and devices -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64_give_the_same_answers(dtype):
    reference = random_mdp(9, 3, 0.95, torch.Generator().manual_seed(7), n_terminal=2)
    mdp = reference.to(dtype=dtype)
    pi = random_policy(mdp, torch.Generator().manual_seed(8))
    V = policy_evaluation(mdp, pi)
    V_star, Q_star = value_iteration(mdp)
    for out in (V, V_star, Q_star, q_from_v(mdp, V), bellman_backup(mdp, V, pi)):
        assert out.dtype == dtype
    V_ref = policy_evaluation(reference, pi.double())
    V_star_ref, _ = value_iteration(reference)
    assert torch.allclose(V.double(), V_ref, atol=1e-5)
    assert torch.allclose(V_star.double(), V_star_ref, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    mdp = gridworld(["S..", ".#.", "..G"], slip=0.1, device="cuda")
    assert mdp.device.type == "cuda"
    V, Q = value_iteration(mdp)
    V_cpu, _ = value_iteration(mdp.to("cpu"))
    assert torch.allclose(V.cpu(), V_cpu)
    pi = greedy_policy(Q)
    assert torch.allclose(policy_evaluation(mdp, pi).cpu(), V_cpu, atol=1e-7)
    B = absorption_probabilities(mdp, pi)
    assert B.device.type == "cuda"
    torch.testing.assert_close(B.cpu(), absorption_probabilities(mdp.to("cpu"), pi.cpu()))
    cpu_outcomes = outcome_probabilities(mdp.to("cpu"), pi.cpu())
    assert outcome_probabilities(mdp, pi) == pytest.approx(cpu_outcomes, abs=1e-12)
    assert (
        random_mdp(5, 2, 0.9, torch.Generator().manual_seed(0), device="cuda").device.type == "cuda"
    )


# --- where episodes end ---------------------------------------------------------------------------

EXPLORER_MAP = [".......", ".......", "S.....G", ".XXXXX."]


def _constant_policy(mdp: TabularMDP, action: int) -> torch.Tensor:
    pi = torch.zeros(mdp.n_states, mdp.n_actions, dtype=mdp.dtype)
    pi[:, action] = 1.0
    return pi


def _optimal_policy(mdp: TabularMDP) -> torch.Tensor:
    return greedy_policy(value_iteration(mdp, tol=1e-10)[1], atol=1e-9)


def _simulate_endings(
    mdp: TabularMDP, pi: torch.Tensor, start: int, n_episodes: int, max_steps: int, seed: int
) -> torch.Tensor:
    """Monte Carlo: the fraction of episodes from ``start`` that end in each state, [S]."""
    generator = torch.Generator().manual_seed(seed)
    P_pi = torch.einsum("sa,sat->st", pi.double(), mdp.P.double())
    state = torch.full((n_episodes,), start, dtype=torch.long)
    for _ in range(max_steps):
        live = ~mdp.terminal[state]
        if not live.any():
            break
        state[live] = torch.multinomial(P_pi[state[live]], 1, generator=generator).squeeze(-1)
    ended = mdp.terminal[state]
    return torch.bincount(state[ended], minlength=mdp.n_states).double() / n_episodes


def test_absorption_gamblers_ruin_by_hand():
    # a walk on 0..4 that steps up with probability p; 0 and 4 end the episode:
    # Pr(end at 4 | start i) = (1 - r^i) / (1 - r^4) with r = (1 - p) / p
    p, n = 0.6, 4
    P = torch.zeros(n + 1, 1, n + 1, dtype=torch.float64)
    P[0, 0, 0] = P[n, 0, n] = 1.0
    for i in range(1, n):
        P[i, 0, i + 1], P[i, 0, i - 1] = p, 1 - p
    mdp = TabularMDP(P, torch.zeros(n + 1, 1), 0.9, terminal=[True, False, False, False, True])
    B = absorption_probabilities(mdp, torch.ones(n + 1, 1))
    r = (1 - p) / p
    for i in range(1, n):
        assert B[i, n].item() == pytest.approx((1 - r**i) / (1 - r**n), abs=1e-12)
        assert B[i, 0].item() == pytest.approx(1 - (1 - r**i) / (1 - r**n), abs=1e-12)
    assert B[0].tolist() == [1.0, 0, 0, 0, 0] and B[n].tolist() == [0, 0, 0, 0, 1.0]
    assert (B[:, 1:n] == 0).all()  # no episode ends in a non-terminal state


def test_absorption_in_a_corridor_by_hand():
    mdp = gridworld(["XSG"], slip=0.2)  # states 0 pit, 1 start, 2 goal
    assert absorption_probabilities(mdp, _constant_policy(mdp, RIGHT))[1].tolist() == [
        0.0,
        0.0,
        1.0,
    ]  # slips go up or down: off the border, so the agent stays and tries again
    up = outcome_probabilities(mdp, _constant_policy(mdp, UP))
    assert up == pytest.approx({"goal": 0.5, "pit": 0.5, "never": 0.0}, abs=1e-12)
    # without slip, bumping into the border forever never ends the episode
    still = outcome_probabilities(gridworld(["XSG"]), _constant_policy(mdp, UP))
    assert still == pytest.approx({"goal": 0.0, "pit": 0.0, "never": 1.0}, abs=1e-12)


def test_absorption_does_not_depend_on_the_discount_or_the_rewards():
    mdp = gridworld(EXPLORER_MAP, slip=0.3, gamma=0.5)
    pi = random_policy(mdp, torch.Generator().manual_seed(0))
    B = absorption_probabilities(mdp, pi)
    other = gridworld(EXPLORER_MAP, slip=0.3, gamma=0.99, step_reward=0.0, pit_reward=-3.0)
    torch.testing.assert_close(absorption_probabilities(other, pi), B, atol=1e-12, rtol=0)


def test_absorption_agrees_with_the_chain_run_for_many_steps():
    gen = torch.Generator().manual_seed(3)
    mdp = random_mdp(12, 3, 1.0, gen, n_terminal=3)  # gamma = 1: every policy terminates
    pi = random_policy(mdp, gen)
    B = absorption_probabilities(mdp, pi)
    P_pi = torch.einsum("sa,sat->st", pi, mdp.P)
    far = torch.linalg.matrix_power(P_pi, 2000)  # mass left after 2000 steps is where it ended
    torch.testing.assert_close(B[:, mdp.terminal], far[:, mdp.terminal], atol=1e-10, rtol=0)
    torch.testing.assert_close(B.sum(-1), torch.ones(12, dtype=torch.float64), atol=1e-10, rtol=0)


def test_absorption_with_a_loop_that_never_ends():
    # state 0 moves to 1 or 2 with probability 1/2 each; 1 loops on itself forever; 2 is terminal
    P = torch.tensor([[[0.0, 0.5, 0.5]], [[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]], dtype=torch.float64)
    mdp = TabularMDP(P, torch.zeros(3, 1), 0.9, terminal=[False, False, True])
    B = absorption_probabilities(mdp, torch.ones(3, 1))
    assert B.tolist() == [[0.0, 0.0, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize("slip", [0.2, 0.5])
def test_absorption_agrees_with_monte_carlo(slip):
    mdp = gridworld(EXPLORER_MAP, slip=slip)
    start = mdp.state(2, 0)
    for pi in (_optimal_policy(mdp), random_policy(mdp, torch.Generator().manual_seed(1))):
        exact = absorption_probabilities(mdp, pi)[start]
        n = 20_000
        measured = _simulate_endings(mdp, pi, start, n, max_steps=2_000, seed=0)
        # 5 standard errors of a binomial proportion, plus a little for p near 0 or 1
        bound = 5 * (exact * (1 - exact) / n).sqrt() + 1e-3
        assert ((measured - exact).abs() <= bound).all(), (measured - exact).abs().max()


def test_outcomes_of_the_optimal_policy_on_the_lesson_map():
    # Lesson 01's explorer: a step costs 1 and a pit 10 more, so with enough slip the long
    # walk around the pits costs more than ending the episode in one
    def pit(gamma, slip, **rewards):
        mdp = gridworld(EXPLORER_MAP, slip=slip, gamma=gamma, **rewards)
        outcomes = outcome_probabilities(mdp, _optimal_policy(mdp))
        assert outcomes["goal"] + outcomes["pit"] == pytest.approx(1.0, abs=1e-9)
        assert outcomes["never"] == pytest.approx(0.0, abs=1e-9)
        return outcomes["pit"]

    assert pit(0.95, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert [round(pit(0.95, slip), 2) for slip in (0.2, 0.4, 0.6)] == [0.07, 0.58, 0.85]
    assert round(pit(0.99, 0.6), 2) == 0.98
    # walking forever is worth -1 / (1 - 0.9) = -10 > -11: at gamma 0.9 a pit never pays
    assert pit(0.9, 0.6) == pytest.approx(0.0, abs=1e-9)
    for slip in (0.2, 0.4, 0.6):  # a pit that costs 100, or no cost per step: no pit
        assert pit(0.95, slip, pit_reward=-100.0) == pytest.approx(0.0, abs=1e-9)
        assert pit(0.95, slip, step_reward=0.0, goal_reward=1.0) == pytest.approx(0.0, abs=1e-9)


def test_outcomes_on_frozen_lake_match_the_value_of_the_goal():
    # FrozenLake pays 1 at the goal only, so at gamma = 1 V^pi(start) = Pr(goal)
    lake = from_gymnasium(gym.make("FrozenLake-v1", is_slippery=True), gamma=1.0)
    V, Q = value_iteration(lake)
    outcomes = outcome_probabilities(lake, greedy_policy(Q, atol=1e-9))
    assert set(outcomes) == {"goal", "hole", "never"}
    assert outcomes["goal"] == pytest.approx(V[0].item(), abs=1e-6)
    assert sum(outcomes.values()) == pytest.approx(1.0, abs=1e-12)
    pi = random_policy(lake, torch.Generator().manual_seed(2))
    assert outcome_probabilities(lake, pi)["goal"] == pytest.approx(
        policy_evaluation(lake, pi)[0].item(), abs=1e-9
    )


def test_outcomes_keep_the_dtype_free_and_reject_bad_input():
    mdp32 = gridworld(EXPLORER_MAP, slip=0.4, dtype=torch.float32)
    mdp64 = gridworld(EXPLORER_MAP, slip=0.4)
    pi = _optimal_policy(mdp64)
    assert absorption_probabilities(mdp32, pi).dtype == torch.float32
    assert outcome_probabilities(mdp32, pi) == pytest.approx(
        outcome_probabilities(mdp64, pi), abs=1e-5
    )
    with pytest.raises(TypeError, match="needs a GridMDP"):
        outcome_probabilities(hand_mdp(), torch.ones(3, 2) / 2)
    with pytest.raises(ValueError, match="pi has shape"):
        absorption_probabilities(mdp64, torch.ones(3, 4) / 4)


# --- random MDPs and policies -------------------------------------------------------------------


def test_random_mdp_is_deterministic_and_valid():
    a = random_mdp(12, 3, 0.9, torch.Generator().manual_seed(4), n_terminal=3, max_successors=2)
    b = random_mdp(12, 3, 0.9, torch.Generator().manual_seed(4), n_terminal=3, max_successors=2)
    c = random_mdp(12, 3, 0.9, torch.Generator().manual_seed(5), n_terminal=3, max_successors=2)
    assert torch.equal(a.P, b.P) and torch.equal(a.R, b.R) and torch.equal(a.initial, b.initial)
    assert not torch.equal(a.P, c.P)
    assert int(a.terminal.sum()) == 3 and (a.initial[a.terminal] == 0).all()
    assert ((a.P > 0).sum(-1)[~a.terminal] <= 2).all()
    d = random_mdp(12, 3, 0.9, torch.Generator().manual_seed(4), deterministic=True)
    assert ((d.P == 1).sum(-1) == 1).all()


def test_random_mdp_argument_errors():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="n_terminal is 3 with n_states 3"):
        random_mdp(3, 2, 0.9, g, n_terminal=3)
    with pytest.raises(ValueError, match="gamma = 1 needs n_terminal >= 1"):
        random_mdp(3, 2, 1.0, g)


def test_random_policy_is_deterministic_and_valid():
    mdp = random_mdp(10, 4, 0.9, torch.Generator().manual_seed(0), dtype=torch.float32)
    a = random_policy(mdp, torch.Generator().manual_seed(1))
    b = random_policy(mdp, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == (10, 4)
    assert torch.allclose(a.sum(-1), torch.ones(10)) and (a >= 0).all()
    d = random_policy(mdp, torch.Generator().manual_seed(1), deterministic=True)
    assert ((d == 1).sum(-1) == 1).all() and (d.sum(-1) == 1).all()


def test_doctests():
    result = doctest.testmod(mdp_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 5
