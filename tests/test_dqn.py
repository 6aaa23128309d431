"""Tests for course/dqn.py: the Lesson 03 pieces and the reference trainer."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from course.dqn import (
    DQNConfig,
    QNetwork,
    double_td_target,
    dqn_loss,
    epsilon_greedy,
    evaluate,
    linear_schedule,
    real_transitions,
    soft_update,
    td_target,
    train_dqn,
)
from course.population import PopulationQNetwork

TINY = DQNConfig(
    total_steps=400,
    num_envs=4,
    hidden=(16, 16),
    buffer_size=300,
    batch_size=16,
    learning_starts=100,
    updates_per_step=0.5,
    target_update_interval=20,
    eval_every=200,
    eval_episodes=2,
)


# --- schedules and exploration ---------------------------------------------------------------


def test_linear_schedule_endpoints_and_middle():
    assert linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert linear_schedule(1.0, 0.1, 100, 100) == pytest.approx(0.1)
    assert linear_schedule(1.0, 0.1, 100, 10_000) == pytest.approx(0.1)
    assert linear_schedule(1.0, 0.1, 100, -5) == 1.0
    assert linear_schedule(1.0, 0.1, 0, 0) == 0.1
    assert linear_schedule(0.0, 2.0, 4, 1) == 0.5  # increasing schedules work too


def test_epsilon_greedy_extremes_and_ties():
    q = torch.tensor([[0.0, 5.0, 1.0], [2.0, 2.0, 1.0], [0.0, 0.0, 9.0]])
    actions = epsilon_greedy(q, 0.0, torch.Generator().manual_seed(0))
    assert actions.dtype == torch.int64
    assert actions.tolist() == [1, 0, 2]  # a tie goes to the lowest index
    random_actions = epsilon_greedy(q.repeat(4000, 1), 1.0, torch.Generator().manual_seed(0))
    counts = torch.bincount(random_actions, minlength=3).float()
    assert ((counts / counts.sum() - 1 / 3).abs() < 0.02).all()


def test_epsilon_greedy_statistics_with_fixed_seed():
    n, n_actions, eps = 20_000, 4, 0.3
    q = torch.zeros(n, n_actions)
    q[:, 2] = 1.0
    actions = epsilon_greedy(q, eps, torch.Generator().manual_seed(42))
    greedy_rate = (actions == 2).float().mean().item()
    assert greedy_rate == pytest.approx(1 - eps + eps / n_actions, abs=0.01)
    other = torch.bincount(actions[actions != 2], minlength=4)[[0, 1, 3]].float()
    assert ((other / other.sum() - 1 / 3).abs() < 0.03).all()
    again = epsilon_greedy(q, eps, torch.Generator().manual_seed(42))
    assert torch.equal(actions, again)


# --- targets and loss --------------------------------------------------------------------------


def test_td_target_terminated_does_not_bootstrap_truncated_does():
    rewards = torch.tensor([1.0, 1.0, 0.5, 2.0])
    next_q = torch.tensor([[1.0, 3.0], [1.0, 3.0], [-2.0, -1.0], [4.0, 0.0]])
    # row 1 terminated; row 0 is a time-limit truncation: from the target's point of view it is
    # just a non-terminated row and bootstraps
    terminated = torch.tensor([False, True, False, True])
    target = td_target(rewards, next_q, terminated, gamma=0.9)
    torch.testing.assert_close(target, torch.tensor([1.0 + 0.9 * 3.0, 1.0, 0.5 - 0.9, 2.0]))


def test_td_target_ignores_garbage_values_of_terminal_rows():
    next_q = torch.tensor([[float("nan"), float("inf")], [1.0, 2.0]])
    target = td_target(torch.ones(2), next_q, torch.tensor([True, False]), gamma=0.5)
    torch.testing.assert_close(target, torch.tensor([1.0, 2.0]))


def test_double_td_target_online_selects_target_evaluates():
    rewards = torch.tensor([1.0, 1.0, 1.0])
    online = torch.tensor([[5.0, 0.0], [0.0, 5.0], [0.0, 5.0]])
    target = torch.tensor([[1.0, 10.0], [1.0, 10.0], [1.0, 10.0]])
    terminated = torch.tensor([False, False, True])
    result = double_td_target(rewards, online, target, terminated, gamma=0.5)
    # row 0: online picks 0, target values it 1 (plain DQN would use max = 10)
    torch.testing.assert_close(result, torch.tensor([1.5, 6.0, 1.0]))
    plain = td_target(rewards, target, terminated, gamma=0.5)
    assert plain[0] == 6.0


def test_targets_keep_leading_dimensions():
    r, t = torch.zeros(3, 5), torch.zeros(3, 5, dtype=torch.bool)
    q = torch.randn(3, 5, 2)
    assert td_target(r, q, t, 0.9).shape == (3, 5)
    assert double_td_target(r, q, q, t, 0.9).shape == (3, 5)


def test_dqn_loss_is_mean_huber_of_taken_actions():
    q = torch.tensor([[1.0, 2.0], [0.0, 4.0], [3.0, 3.0]], requires_grad=True)
    actions = torch.tensor([1, 0, 1])
    targets = torch.tensor([2.5, 3.0, 3.0])
    loss = dqn_loss(q, actions, targets)
    # errors 0.5 (quadratic: 0.125), 3 (linear: 2.5), 0 -> mean 0.875
    assert loss.item() == pytest.approx(0.875)
    loss.backward()
    expected = torch.tensor([[0.0, -0.5 / 3], [-1.0 / 3, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(q.grad, expected)


def test_dqn_loss_gradient_does_not_reach_targets():
    net = nn.Linear(3, 2)
    obs = torch.randn(5, 3)
    q = net(obs)
    targets = 1.0 + 0.9 * net(obs).max(dim=-1).values  # built with grad on purpose
    dqn_loss(q, torch.zeros(5, dtype=torch.long), targets).backward()
    semi = net.weight.grad.clone()
    net.zero_grad()
    dqn_loss(net(obs), torch.zeros(5, dtype=torch.long), targets.detach()).backward()
    torch.testing.assert_close(semi, net.weight.grad)


# --- target network --------------------------------------------------------------------------


def test_soft_update_math_and_hard_copy():
    target, online = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    soft_update(target, online, tau=0.25)
    for t, b, o in zip(target.parameters(), before, online.parameters(), strict=True):
        torch.testing.assert_close(t, 0.25 * o + 0.75 * b)
        assert t.grad is None
    soft_update(target, online, tau=1.0)
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        assert torch.equal(t, o)
    with torch.no_grad():
        target.weight.fill_(float("inf"))
    soft_update(target, online, tau=1.0)
    assert torch.equal(target.weight, online.weight)


def test_soft_update_does_not_track_gradients_and_checks_shapes():
    target, online = nn.Linear(3, 2), nn.Linear(3, 2)
    soft_update(target, online, tau=0.5)
    assert all(p.grad_fn is None for p in target.parameters())
    with pytest.raises(ValueError, match="different parameters"):
        soft_update(nn.Linear(3, 2), nn.Linear(4, 2), tau=0.5)


# --- autoreset -------------------------------------------------------------------------------


def test_real_transitions_on_a_hand_made_sequence():
    # env 0 terminates at t=1, env 1 is truncated at t=2; next-step autoreset makes the row after
    # each end (t=2 for env 0, t=3 for env 1) a reset row that must be dropped
    terminated = torch.tensor([[False, False], [True, False], [False, False], [False, False]])
    truncated = torch.tensor([[False, False], [False, False], [False, True], [False, False]])
    prev_done = torch.zeros(2, dtype=torch.bool)
    rows = []
    for t in range(4):
        rows.append(real_transitions(prev_done).tolist())
        prev_done = terminated[t] | truncated[t]
    assert rows == [[True, True], [True, True], [False, True], [True, False]]


def test_real_transitions_on_gymnasium_cartpole_vector_env():
    env = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="vector_entry_point")
    obs, _ = env.reset(seed=0)
    prev_done = torch.zeros(3, dtype=torch.bool)
    rng = np.random.default_rng(0)
    dropped = 0
    for _ in range(200):
        next_obs, reward, terminated, truncated, _ = env.step(rng.integers(0, 2, size=3))
        valid = real_transitions(prev_done).numpy()
        # real transitions follow the dynamics (x' = x + tau * x_dot); reset rows do not and
        # carry reward 0
        consistent = np.isclose(next_obs[:, 0], obs[:, 0] + 0.02 * obs[:, 1], atol=1e-6)
        assert (consistent[valid]).all() and (reward[valid] == 1.0).all()
        assert (reward[~valid] == 0.0).all() and (np.abs(next_obs[~valid]) <= 0.05).all()
        dropped += int((~valid).sum())
        prev_done = torch.from_numpy(terminated | truncated)
        obs = next_obs
    assert dropped > 5


# --- networks --------------------------------------------------------------------------------


def test_qnetwork_trunk_and_head():
    net = QNetwork(4, 3, hidden=(8, 5))
    assert net(torch.zeros(7, 4)).shape == (7, 3)
    assert net.trunk(torch.zeros(7, 4)).shape == (7, 5)
    assert isinstance(net.head, nn.Linear) and net.head.out_features == 3
    assert QNetwork(4, 2, hidden=())(torch.zeros(1, 4)).shape == (1, 2)


def test_qnetwork_from_a_generator_is_reproducible_and_matches_the_population():
    first = QNetwork(4, 2, (8, 8), generator=torch.Generator().manual_seed(0))
    again = QNetwork(4, 2, (8, 8), generator=torch.Generator().manual_seed(0))
    pop = PopulationQNetwork(1, 4, 2, (8, 8), generators=[torch.Generator().manual_seed(0)])
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
        assert torch.equal(value, pop.agent_state_dict(0)[key])
    other = QNetwork(4, 2, (8, 8), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(first.head.weight, other.head.weight)


# --- trainer ---------------------------------------------------------------------------------


def test_config_is_frozen_with_documented_defaults():
    cfg = DQNConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    assert dataclasses.replace(cfg, lr=0.5).lr == 0.5


def test_train_dqn_is_deterministic():
    a = train_dqn(TINY, seeds=[3], device="cpu")
    b = train_dqn(TINY, seeds=[3], device="cpu")
    assert torch.equal(a.eval_returns, b.eval_returns)
    torch.testing.assert_close(a.losses, b.losses, rtol=0, atol=0, equal_nan=True)
    assert all(torch.equal(x, y) for x, y in zip(a.episode_returns, b.episode_returns))
    for key in a.states[0]:
        assert torch.equal(a.states[0][key], b.states[0][key])
    assert a.steps.tolist() == [0, 200, 400]
    assert a.eval_returns.shape == (1, 3, 2)
    assert torch.isnan(a.losses[0, 0]) and not torch.isnan(a.losses[0, 1:]).any()


def test_population_agent_equals_agent_trained_alone():
    pair = train_dqn(TINY, seeds=[1, 2], device="cpu")
    alone = train_dqn(TINY, seeds=[2], device="cpu")
    assert torch.equal(pair.eval_returns[1], alone.eval_returns[0])
    torch.testing.assert_close(pair.losses[1], alone.losses[0], rtol=0, atol=0, equal_nan=True)
    for key in alone.states[0]:
        assert torch.equal(pair.states[1][key], alone.states[0][key])
    assert not torch.equal(pair.states[0]["head.weight"], pair.states[1]["head.weight"])


def test_result_networks_and_evaluate():
    result = train_dqn(TINY, seeds=[0], device="cpu")
    net = result.network(0)
    assert isinstance(net, QNetwork) and net.hidden == (16, 16)
    returns = evaluate(net, n_episodes=3, seed=5)
    assert returns.shape == (3,) and (returns >= 8).all()
    assert torch.equal(returns, evaluate(net, n_episodes=3, seed=5))
    assert 0 < result.eval_time < result.wall_time  # 3 evaluations, part of the whole


def test_init_state_and_freeze():
    init = QNetwork(4, 2, (16, 16)).state_dict()
    cfg = dataclasses.replace(TINY, learning_starts=10_000)  # no update at all
    untouched = train_dqn(cfg, seeds=[0, 1], init_state=init, device="cpu")
    for state in untouched.states:
        assert all(torch.equal(state[k], init[k]) for k in init)
    frozen = train_dqn(TINY, seeds=[0], init_state=init, freeze=("trunk",), device="cpu")
    state = frozen.states[0]
    assert all(torch.equal(state[k], init[k]) for k in init if k.startswith("trunk"))
    assert not torch.equal(state["head.weight"], init["head.weight"])


def test_regularizer_and_callback_are_used():
    seen = []

    def penalty(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return 1e3 * sum(p.pow(2).flatten(1).sum(1) for p in params.values())

    result = train_dqn(TINY, seeds=[0], regularizer=penalty, callback=lambda s, st: seen.append(s))
    plain = train_dqn(TINY, seeds=[0])
    assert seen == [0, 200, 400]
    # a strong pull toward zero shrinks the weights well below those of plain training
    shrunk = result.states[0]["trunk.2.weight"].norm()
    assert shrunk < 0.8 * plain.states[0]["trunk.2.weight"].norm()


def test_train_dqn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="seed"):
        train_dqn(TINY, seeds=[])
    with pytest.raises(ValueError, match="seed"):
        train_dqn(TINY, seeds=[-1])
    with pytest.raises(ValueError, match="init_state"):
        train_dqn(TINY, seeds=[0, 1], init_state=[QNetwork(4, 2, (16, 16)).state_dict()])
    with pytest.raises(ValueError, match="no parameter"):
        train_dqn(TINY, seeds=[0], freeze=("trunk", "head"))


def test_config_rejects_bad_values_when_built():
    with pytest.raises(ValueError, match="buffer"):
        dataclasses.replace(TINY, num_envs=400)
    with pytest.raises(ValueError, match="gamma"):
        DQNConfig(gamma=1.5)
    with pytest.raises(ValueError, match="total_steps"):
        DQNConfig(total_steps=0)


def test_learning_rate_schedule_is_applied():
    seen = []
    cfg = dataclasses.replace(TINY, lr_decay_fraction=0.5)
    result = train_dqn(cfg, seeds=[0], callback=lambda step, stats: seen.append(stats["lr"]))
    assert seen[0] == TINY.lr and seen[1] == seen[2] == TINY.lr * TINY.lr_end_fraction
    baseline = train_dqn(TINY, seeds=[0])
    # a faster-decaying learning rate changes the trained weights
    assert not torch.equal(result.states[0]["head.weight"], baseline.states[0]["head.weight"])


# --- the Lesson 03 additions: train_loop, episode_curve, NoisyRewards, value_bias, the record ----


def test_train_loop_learns_the_chain_and_reports_its_episodes():
    from course.dqn import train_loop
    from course.grading.exercises.dqn import _chain_q_star, _ChainEnv

    env = _ChainEnv(3, 5, 6, seed=4)
    q_net = nn.Linear(5, 2, bias=False)
    nn.init.zeros_(q_net.weight)
    target = nn.Linear(5, 2, bias=False)
    target.load_state_dict(q_net.state_dict())
    from course.replay import ReplayBuffer

    buffer = ReplayBuffer(2_000, (5,))
    episodes = train_loop(
        env,
        q_net,
        target,
        torch.optim.SGD(q_net.parameters(), lr=4.0),
        buffer,
        900,
        gamma=0.9,
        epsilon_schedule=lambda step: linear_schedule(1.0, 0.1, 450, step),
        learning_starts=90,
        train_every=1,
        target_sync_every=10,
        batch_size=32,
        generator=torch.Generator().manual_seed(0),
    )
    assert sorted(r for _, r in episodes) == sorted(env.returns)
    assert [s for s, _ in episodes] == sorted(s for s, _ in episodes)
    assert len(buffer) == len(env.real)  # the reset rows never reached the buffer
    q = q_net(torch.eye(5)).detach().numpy()
    assert np.abs(q[:4] - _chain_q_star(5, 0.9)[:4]).max() < 0.05


def test_episode_curve_reads_the_episodes_train_dqn_reports():
    """The lesson's curves of train_dqn: every window of a short run holds an episode."""
    from course.dqn import episode_curve

    config = dataclasses.replace(
        TINY, total_steps=2_000, double_dqn=False, max_grad_norm=float("inf"), lr_end_fraction=1.0
    )
    run = train_dqn(config, seeds=[0, 1])
    curves = [
        episode_curve(run.episode_steps[a], run.episode_returns[a], [0, 1_000, 2_000])
        for a in range(2)
    ]
    assert all(torch.isfinite(c).all() for c in curves)


def test_episode_curve_windows_and_empty_windows():
    from course.dqn import episode_curve

    out = episode_curve([5, 10, 11, 30], [1.0, 3.0, 10.0, 4.0], [0, 10, 20, 30])
    assert out[0] == 2.0 and out[1] == 10.0 and out[2] == 4.0
    assert torch.isnan(episode_curve([5], [1.0], [0, 10, 20]))[1]
    with pytest.raises(ValueError, match="one of each"):
        episode_curve([1, 2], [1.0], [0, 10])
    with pytest.raises(ValueError, match="increasing"):
        episode_curve([1], [1.0], [10, 0])


def test_noisy_rewards_keep_the_mean_and_are_reproducible():
    from course.dqn import NoisyRewards

    def rewards(seed: int) -> np.ndarray:
        env = NoisyRewards(gym.make_vec("CartPole-v1", num_envs=8), std=2.0)
        env.reset(seed=seed)
        out = [env.step(np.zeros(8, dtype=np.int64))[1] for _ in range(5)]
        env.close()
        return np.stack(out)

    a, b, c = rewards(0), rewards(0), rewards(1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    noise = a[0] - 1.0  # CartPole pays 1 per step before any episode can end
    assert noise.std() > 0.5 and abs(noise.mean()) < 2.0
    with pytest.raises(ValueError, match="std"):
        NoisyRewards(gym.make_vec("CartPole-v1", num_envs=1), std=-1.0)


def test_value_bias_and_first_reached_by_hand():
    from course.dqn import first_reached, value_bias

    q_star = torch.tensor([[1.0, 0.5], [0.2, 0.4], [0.0, 0.0]])
    q = torch.tensor([[1.2, 0.0], [0.0, 0.1], [7.0, 7.0]])
    terminal = torch.tensor([False, False, True])
    assert value_bias(q, q_star, terminal) == pytest.approx((0.2 - 0.3) / 2)
    curves = torch.tensor([[0.0, 480.0, 400.0], [0.0, 0.0, 475.0], [1.0, 2.0, 3.0]])
    assert first_reached(torch.tensor([0, 5, 10]), curves, 475) == [5, 10, None]


def test_q_comparison_plot_leaves_terminal_cells_out_of_the_error_scale():
    import course.envs  # noqa: F401  (registers course/GridFamily-v0)
    from course.mdp import value_iteration
    from course.plots import plot_q_comparison

    env = gym.make_vec("course/GridFamily-v0", num_envs=1, vectorization_mode="vector_entry_point")
    mdp = env.mdp()
    _, q_star = value_iteration(mdp)
    q = torch.as_tensor(q_star).clone()
    q[mdp.terminal] = 50.0  # a terminal error must not set the colour scale
    q[~mdp.terminal] += 0.1
    fig = plot_q_comparison(mdp, q, q_star, terminal=mdp.terminal)
    low, high = fig.axes[2].images[0].get_clim()
    assert high == pytest.approx(0.1, abs=1e-6)


def test_stored_cartpole_record_is_reproduced_by_the_current_code():
    """The run Lesson 03 plots: its config is today's default, and seed 0 retrains to it."""
    from course.dqn import load_record

    record = load_record()
    default = json.loads(json.dumps(dataclasses.asdict(DQNConfig())))
    assert record["config"] == default
    torch.set_num_threads(1)
    seed = record["seeds"][0]
    again = train_dqn(DQNConfig(), seeds=[seed])
    assert torch.equal(again.steps, record["steps"])
    assert again.eval_mean[0].tolist() == record["eval_mean"][0].tolist()


def test_train_dqn_with_train_loops_settings_learns_the_same_chain():
    """The same loop, batched: on the check's chain train_dqn also comes within 0.1 of Q*."""
    from course.grading.exercises.dqn import _chain_q_star, _ChainEnv

    config = DQNConfig(
        total_steps=1_200,
        num_envs=4,
        hidden=(32,),
        lr=1e-2,
        lr_end_fraction=1.0,
        gamma=0.9,
        buffer_size=2_000,
        batch_size=32,
        learning_starts=100,
        updates_per_step=0.25,  # one update per vector step of 4 copies, as train_every=1
        target_update_interval=10,
        double_dqn=False,
        eps_end=0.1,
        exploration_fraction=0.5,
        max_grad_norm=float("inf"),
        eval_every=1_200,
        eval_episodes=2,
    )
    run = train_dqn(config, seeds=[0, 1, 2], make_env=lambda n: _ChainEnv(n, 5, 6, seed=n))
    q_star = _chain_q_star(5, 0.9)
    for agent in range(3):
        q = run.network(agent)(torch.eye(5)).detach().numpy()
        assert np.abs(q[:4] - q_star[:4]).max() < 0.1


def test_measure_overestimation_pairs_the_variants_by_seed_and_measures_against_q_star():
    import dataclasses

    from course.dqn import OVERESTIMATION_CONFIG, measure_overestimation, value_bias

    config = dataclasses.replace(OVERESTIMATION_CONFIG, total_steps=800, learning_starts=200)
    first = measure_overestimation([3, 4], config)
    again = measure_overestimation([3, 4], config)
    assert list(first.bias) == ["DQN", "Double DQN"]
    assert first.bias == again.bias  # deterministic
    assert first.runs["DQN"].seeds == first.runs["Double DQN"].seeds == (3, 4)
    assert first.runs["Double DQN"].config.double_dqn and not first.runs["DQN"].config.double_dqn
    q = first.q_values["DQN"][1]
    assert q.shape == first.q_star.shape
    assert first.bias["DQN"][1] == value_bias(q, first.q_star, first.mdp.terminal)
    quiet = measure_overestimation([3], config, noise_std=0.0)
    assert quiet.bias["DQN"][0] != first.bias["DQN"][0]  # the noise reaches the targets
