"""Tests for course/marl.py: the landmark world, its exact MDPs, the graded pieces, the learners."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test

from course import marl
from course.marl import BatchedLandmarkEnv, LandmarkEnv, LandmarkTask
from course.mdp import policy_evaluation, value_iteration

# --- the world --------------------------------------------------------------------------------


@pytest.mark.parametrize("observe_landmark", [True, False])
@pytest.mark.parametrize("n_agents", [1, 3, 8])
def test_env_passes_pettingzoo_parallel_api_test(n_agents, observe_landmark):
    env = LandmarkEnv(n_agents=n_agents, observe_landmark=observe_landmark)
    parallel_api_test(env, num_cycles=200)


def test_landmarks_are_distinct_border_cells_spread_out():
    task = LandmarkTask(n_agents=12, size=4)
    cells = task.landmarks
    assert len(set(cells)) == 12
    assert all(c // 4 in (0, 3) or c % 4 in (0, 3) for c in cells)
    assert cells[:4] == (0, 15, 3, 12)  # the corners first


@pytest.mark.parametrize(
    ("fields", "word"),
    [
        ({"n_agents": 0}, "n_agents"),
        ({"n_agents": 13}, "room for"),
        ({"size": 1}, "size"),
        ({"gamma": 1.0}, "gamma"),
        ({"max_steps": 0}, "max_steps"),
    ],
)
def test_bad_settings_say_what_to_fix(fields, word):
    with pytest.raises(ValueError, match=word):
        LandmarkTask(**fields)


def test_an_agent_that_reaches_its_landmark_scores_once_and_stays():
    env = LandmarkEnv(n_agents=2, size=3, max_steps=20)
    env.reset(seed=0)
    env.cells = np.array([1, 7])  # agent 0's landmark is cell 0, agent 1's is cell 8
    obs, rewards, terms, truncs, _ = env.step({"agent_0": 4, "agent_1": 0})  # left, stay
    assert rewards == {"agent_0": 1.0, "agent_1": 1.0}  # the team reward, for every agent
    assert env.arrived.tolist() == [True, False] and not any(terms.values())
    assert obs["agent_0"][9] == 1.0 and obs["agent_0"][0] == 1.0  # arrived flag, cell 0
    obs, rewards, terms, _, _ = env.step({"agent_0": 2, "agent_1": 2})  # agent 0 ignores it
    assert env.cells.tolist() == [0, 8] and rewards["agent_0"] == 1.0
    assert all(terms.values()) and env.agents == []


def test_observations_show_the_landmark_only_when_asked():
    same = LandmarkTask(n_agents=3, observe_landmark=True).observations()
    different = LandmarkTask(n_agents=3, observe_landmark=False).observations()
    assert same.shape == (3, 16, 33) and different.shape == (3, 16, 17)
    assert torch.equal(different[0], different[2])  # agents are indistinguishable
    assert not torch.equal(same[0], same[2])


def test_truncation_after_max_steps():
    env = LandmarkEnv(n_agents=2, max_steps=3)
    env.reset(seed=1)
    for _ in range(3):
        _, _, terms, truncs, _ = env.step({a: 0 for a in env.agents})
    assert all(truncs.values()) and not any(terms.values()) and env.agents == []
    with pytest.raises(RuntimeError, match="reset"):
        env.step({"agent_0": 0, "agent_1": 0})


def test_bad_actions_are_refused_clearly():
    env = LandmarkEnv(n_agents=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="no action for"):
        env.step({"agent_0": 0})
    with pytest.raises(ValueError, match="each must be 0 to 4"):
        env.step({"agent_0": 0, "agent_1": 7})


def test_same_seed_same_episode():
    def episode(seed):
        env = LandmarkEnv(n_agents=3)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        out = [env.cells.copy()]
        while env.agents:
            env.step({a: int(rng.integers(5)) for a in env.agents})
            out.append(env.cells.copy())
        return np.stack(out)

    assert np.array_equal(episode(3), episode(3))
    assert not np.array_equal(episode(3), episode(4))


@pytest.mark.parametrize("observe_landmark", [True, False])
def test_batched_env_steps_in_lockstep_with_the_pettingzoo_env(observe_landmark):
    task = LandmarkTask(n_agents=3, size=4, observe_landmark=observe_landmark, max_steps=6)
    seeds = [11, 12, 13, 14]
    singles = [LandmarkEnv(task) for _ in seeds]
    firsts = [env.reset(seed=s)[0] for env, s in zip(singles, seeds)]
    batched = BatchedLandmarkEnv(task, len(seeds))
    obs = batched.reset(seeds)
    names = singles[0].possible_agents
    for e, first in enumerate(firsts):
        assert np.array_equal(obs[e], np.stack([first[n] for n in names]))
    rng = np.random.default_rng(0)
    n_ends = 0
    for _ in range(60):
        actions = rng.integers(0, 5, size=(len(seeds), task.n_agents))
        step = batched.step(actions)
        for e, env in enumerate(singles):
            o, r, term, trunc, _ = env.step(dict(zip(names, actions[e].tolist())))
            assert np.array_equal(step.next_obs[e], np.stack([o[n] for n in names]))
            assert step.reward[e] == r["agent_0"]
            assert step.terminated[e] == term["agent_0"] and step.truncated[e] == trunc["agent_0"]
            if term["agent_0"] or trunc["agent_0"]:
                n_ends += 1
                o, _ = env.reset()
            assert np.array_equal(step.obs[e], np.stack([o[n] for n in names]))
    assert n_ends > 10


# --- the exact MDPs ---------------------------------------------------------------------------


def test_agent_mdp_value_is_the_discounted_distance():
    task = LandmarkTask(n_agents=2, size=4, gamma=0.9)
    V, _ = value_iteration(marl.agent_mdp(task, 1))
    landmark = task.landmarks[1]
    for cell in range(16):
        if cell != landmark:
            d = abs(cell // 4 - landmark // 4) + abs(cell % 4 - landmark % 4)
            assert V[cell] == pytest.approx(0.9 ** (d - 1))


def test_joint_optimum_is_the_sum_of_the_agents_optima_and_vdn_shaped():
    task = LandmarkTask(n_agents=2, size=3, gamma=0.8)
    joint = marl.joint_mdp(task)
    V, Q = value_iteration(joint)
    parts = [value_iteration(marl.agent_mdp(task, i)) for i in range(2)]
    (V0, Q0), (V1, Q1) = parts
    # joint state s0 + 10 * s1, joint action a0 + 5 * a1
    assert torch.allclose(V, (V1[:, None] + V0[None, :]).flatten(), atol=1e-6)
    team_q = (Q1[:, None, :, None] + Q0[None, :, None, :]).reshape(100, 25)
    assert torch.allclose(Q, team_q, atol=1e-6)
    assert float(joint.initial @ V) == pytest.approx(
        float(parts[0][0] @ marl.agent_mdp(task, 0).initial)
        + float(parts[1][0] @ marl.agent_mdp(task, 1).initial)
    )


def test_joint_mdp_refuses_a_team_too_large():
    with pytest.raises(ValueError, match="max_states"):
        marl.joint_mdp(LandmarkTask(n_agents=4))


def test_joint_action_index_round_trips():
    actions = torch.tensor([[0, 0, 0], [4, 0, 1], [4, 4, 4]])
    index = marl.joint_action_index(actions, 5)
    assert index.tolist() == [0, 4 + 25, 124]
    assert torch.equal(marl.joint_actions(index, 3, 5), actions)


def _optimal_actions(task):
    return torch.stack(
        [
            value_iteration(marl.agent_mdp(task, i))[1][: task.n_cells].argmax(-1)
            for i in range(task.n_agents)
        ]
    )


def test_team_score_of_the_optimal_policy_is_one_and_of_staying_put_zero():
    task = LandmarkTask(n_agents=4)
    best = _optimal_actions(task)
    assert float(marl.team_score(task, best)) == pytest.approx(1.0)
    assert float(marl.team_score(task, torch.zeros_like(best))) == 0.0
    batch = torch.stack([best, torch.zeros_like(best)]).unsqueeze(0)  # [1, 2, N, S]
    assert marl.team_score(task, batch).shape == (1, 2)


def test_team_return_matches_policy_evaluation_with_a_long_horizon():
    task = LandmarkTask(n_agents=3, max_steps=400, gamma=0.9)
    actions = torch.randint(0, 5, (3, 16), generator=torch.Generator().manual_seed(0))
    want = 0.0
    for i in range(3):
        mdp = marl.agent_mdp(task, i)
        pi = torch.zeros(17, 5, dtype=torch.float64)
        pi[torch.arange(16), actions[i]] = 1.0
        pi[16, 0] = 1.0
        want += float(mdp.initial @ policy_evaluation(mdp, pi))
    assert float(marl.team_return(task, actions)) == pytest.approx(want, abs=1e-9)


def test_team_return_counts_only_what_arrives_within_the_episode():
    task = LandmarkTask(n_agents=1, size=4, max_steps=2, gamma=0.5)
    right = torch.full((1, 16), 2)  # agent 0's landmark is cell 0: going right never arrives
    assert float(marl.team_return(task, right)) == 0.0
    best = _optimal_actions(task)
    # only the cells within 2 moves of the landmark (1, 2, 4, 5, 8) arrive in time
    assert float(marl.team_return(task, best)) == pytest.approx((2 * 1 + 3 * 0.5) / 15)


# --- the graded pieces ------------------------------------------------------------------------


def test_with_agent_id_appends_a_one_hot_of_n_agents_columns():
    obs = torch.ones(2, 3, dtype=torch.float64)
    out = marl.with_agent_id(obs, torch.tensor([0, 0]), 4)
    assert out.dtype == torch.float64 and out.shape == (2, 7)
    assert out[:, 3:].tolist() == [[1, 0, 0, 0], [1, 0, 0, 0]]


def test_vdn_td_target_sums_the_maxes_and_stops_at_the_end():
    next_q = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[9.0, 9.0], [9.0, 9.0]]])
    out = marl.vdn_td_target(torch.tensor([1.0, 1.0]), next_q, torch.tensor([False, True]), 0.5)
    assert out.tolist() == [2.5, 1.0]  # the max of the sum would give 2.0 in row 0


def test_doctests():
    import doctest

    result = doctest.testmod(marl, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 3 and result.failed == 0


# --- the learners -----------------------------------------------------------------------------

SMALL = {"steps": 40, "num_envs": 2, "eval_interval": 20, "learning_starts": 10}


def test_agent_networks_are_independent():
    net = marl.AgentNetworks(3, 4, 5, 8, torch.Generator().manual_seed(0))
    x = torch.randn(3, 6, 4)
    net(x)[1].sum().backward()
    for p in net.parameters():
        assert p.grad[1].abs().sum() > 0
        assert p.grad[0].abs().sum() == 0 and p.grad[2].abs().sum() == 0


@pytest.mark.parametrize("sharing", ["independent", "shared", "shared_id"])
def test_each_agent_is_answered_by_its_network(sharing):
    task = LandmarkTask(n_agents=3, size=3, observe_landmark=False)
    config = marl.MARLConfig(sharing=sharing)
    n_nets = 2 * (3 if sharing == "independent" else 1)
    in_dim = task.obs_dim + (3 if sharing == "shared_id" else 0)
    net = marl.AgentNetworks(n_nets, in_dim, 5, 8, torch.Generator().manual_seed(0))
    obs = task.observations()[:, 4].expand(2, 5, 3, -1)  # every agent in the centre cell
    q = marl._q_values(net, obs, config, 3)
    assert q.shape == (2, 5, 3, 5)
    same_across_agents = torch.allclose(q[:, :, 0], q[:, :, 1])
    assert same_across_agents == (sharing == "shared")  # without an id, agents look alike
    with torch.no_grad():
        net.w2[-1] += 1.0  # the last network: run 1's (its agent 2's when independent)
    changed = (marl._q_values(net, obs, config, 3) != q).any(-1)  # [R, K, N]
    assert not changed[0].any()
    if sharing == "independent":
        assert changed[1, :, 2].all() and not changed[1, :, :2].any()
    else:
        assert changed[1].all()


@pytest.mark.parametrize("arm", list(marl.ARMS))
def test_every_arm_trains_and_reports_exact_scores(arm):
    task = LandmarkTask(n_agents=2, size=3, max_steps=8)
    result = marl.train_marl(task, marl.arm_config(arm, **SMALL), seeds=[0, 1, 2])
    assert result.scores.shape == (3, 2) and result.steps.tolist() == [40, 80]
    assert ((result.scores >= 0) & (result.scores <= 1 + 1e-9)).all()
    assert result.final.shape == (3,) and result.seeds == (0, 1, 2)


def test_same_seeds_same_numbers_other_seeds_other_numbers():
    task = LandmarkTask(n_agents=2, size=3)
    config = marl.arm_config("VDN", **SMALL)
    a = marl.train_marl(task, config, [3, 4])
    b = marl.train_marl(task, config, [3, 4])
    c = marl.train_marl(task, config, [5, 6])
    assert np.array_equal(a.scores, b.scores) and not np.array_equal(a.scores, c.scores)


def test_bad_configs_say_what_to_fix():
    with pytest.raises(ValueError, match="sharing"):
        marl.MARLConfig(sharing="everything")
    with pytest.raises(ValueError, match="batch_size"):
        marl.MARLConfig(batch_size=0)
    with pytest.raises(ValueError, match="unknown arm"):
        marl.arm_config("telepathy")
    with pytest.raises(ValueError, match="seeds"):
        marl.train_marl(LandmarkTask(), marl.MARLConfig(), [])


@pytest.mark.slow
def test_vdn_learns_a_two_agent_team_at_the_lesson_budget():
    task = LandmarkTask(n_agents=2, **marl.LESSON_TASK)
    result = marl.train_marl(task, marl.arm_config("VDN", **marl.LESSON_CONFIG), range(4))
    assert result.final.mean() > 0.8 and result.scores[:, 0].mean() < 0.5


@pytest.mark.slow
def test_without_an_id_a_shared_network_fails_different_jobs():
    task = LandmarkTask(n_agents=4, observe_landmark=False, **marl.LESSON_TASK)
    results = marl.train_arms(task, ["shared", "shared + id"], range(6), **marl.LESSON_CONFIG)
    comparison = marl.compare_arms(results, "shared + id", "shared")
    assert comparison.verdict == "shared + id better", str(comparison)


# --- summaries and plots ----------------------------------------------------------------------


def _fake(scores, seeds=(0, 1, 2)):
    task = LandmarkTask(n_agents=2)
    scores = np.asarray(scores, dtype=float)
    steps = np.arange(1, scores.shape[1] + 1) * 10
    return marl.MARLResult(task, marl.MARLConfig(), tuple(seeds), steps, scores, 0.0)


def test_summaries_pair_seeds_and_print_verdicts():
    good = _fake([[0.1, 0.9], [0.2, 1.0], [0.1, 0.95]])
    bad = _fake([[0.1, 0.2], [0.1, 0.3], [0.2, 0.25]])
    results = {"VDN": good, "shared": bad}
    assert marl.compare_arms(results, "VDN", "shared").verdict == "VDN better"
    with pytest.raises(ValueError, match="different seeds"):
        marl.compare_arms({"a": good, "b": _fake(bad.scores, seeds=(5, 6, 7))}, "a", "b")
    bands = marl.score_bands(results)
    assert bands["VDN"][0] == pytest.approx([0.4 / 3, 0.95])
    scaling = {2: results, 4: {"VDN": bad, "shared": good}}
    estimate, low, high = marl.scaling_bands(scaling)["VDN"]
    assert estimate == pytest.approx([0.95, 0.25]) and (low < estimate).all()
    kept = marl.compare_to_end(good, "VDN", 10)
    assert kept.paired and kept.verdict == "VDN at 20 better"
    with pytest.raises(ValueError, match="no evaluation at step 15"):
        marl.compare_to_end(good, "VDN", 15)
    longer = marl.scaled_config(3)
    assert longer["steps"] == 3 * marl.LESSON_CONFIG["steps"]
    assert longer["batch_size"] == marl.LESSON_CONFIG["batch_size"]
    verdict = marl.compare_scaling(scaling, "VDN", 2, 4)
    assert not verdict.paired and verdict.verdict == "VDN, 2 agents better"
    table = marl.format_scaling(scaling)
    assert "2 agents" in table and "0.95 [" in table and table.count("\n") == 3


def test_plots_draw_one_line_per_arm():
    import matplotlib

    matplotlib.use("Agg")
    from course.plots import plot_marl_curves, plot_marl_scaling

    results = {
        "VDN": _fake([[0.1, 0.9], [0.2, 1.0]], (0, 1)),
        "shared": _fake([[0, 0.2], [0, 0.3]], (0, 1)),
    }
    fig = plot_marl_curves(results["VDN"].steps, marl.score_bands(results), title="t")
    assert [line.get_label() for line in fig.axes[0].lines] == ["VDN", "shared"]
    fig = plot_marl_scaling([2, 4], marl.scaling_bands({2: results, 4: results}))
    assert fig.axes[0].lines[0].get_xdata().tolist() == [2, 4]
