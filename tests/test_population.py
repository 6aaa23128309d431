"""Tests for course/population.py: seeds, the stacked network and the one trainer."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

from course.dqn import DQNConfig, QNetwork, train_dqn, train_dqn_agents
from course.envs import CARTPOLE_TASKS, grid_tasks, make_cartpole_vec
from course.multitask import MultiHeadQNetwork, MultiTaskConfig, train_multitask_dqn
from course.population import (
    AgentEnvs,
    Agents,
    FusedAdam,
    PopulationQNetwork,
    Purpose,
    _StackedMLP,
    _Trainer,
    clip_grad_norm_per_agent_,
    default_device,
    derive_seed,
    linear_init,
    network_sizes,
)

TINY = DQNConfig(
    total_steps=400,
    num_envs=4,
    hidden=(16, 16),
    buffer_size=300,
    batch_size=16,
    learning_starts=100,
    target_update_interval=20,
    eval_every=200,
    eval_episodes=2,
)

# --- seeds and devices ------------------------------------------------------------------------


def test_derived_seeds_differ_by_purpose_and_key_and_are_stable():
    seeds = {derive_seed(0, p) for p in Purpose}
    assert len(seeds) == len(Purpose)
    assert derive_seed(0, Purpose.EVAL, 1) != derive_seed(0, Purpose.EVAL, 2)
    assert derive_seed(3, Purpose.ACT) == derive_seed(3, Purpose.ACT)
    # the documented scheme: numpy's SeedSequence of (seed, purpose, keys...)
    expected = np.random.SeedSequence([3, 1]).generate_state(1)[0]
    assert derive_seed(3, Purpose.ACT) == expected


def test_default_device():
    assert default_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device().type == expected


# --- the stacked network ----------------------------------------------------------------------


def test_linear_init_is_nn_linear_rule_from_the_generator():
    w, b = linear_init(9, 4, torch.Generator().manual_seed(0))
    assert w.shape == (4, 9) and b.shape == (4,)
    assert w.abs().max() <= 9**-0.5 and b.abs().max() <= 9**-0.5
    again, _ = linear_init(9, 4, torch.Generator().manual_seed(0))
    assert torch.equal(w, again)


def test_population_network_agents_match_plain_qnetworks():
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    pop = PopulationQNetwork(3, 4, 2, (8, 8), generators=gens)
    obs = torch.randn(3, 6, 4)
    out = pop(obs)
    for a in range(3):
        torch.testing.assert_close(out[a], pop.agent(a)(obs[a]))
    other = QNetwork(4, 2, (8, 8))
    pop.load_agent_state_dict(1, other.state_dict())
    torch.testing.assert_close(pop(obs)[1], other(obs[1]))
    with pytest.raises(ValueError, match="hidden"):
        pop.load_agent_state_dict(0, QNetwork(4, 2, (8,)).state_dict())
    # an agent's initialisation depends only on its own generator
    alone = PopulationQNetwork(1, 4, 2, (8, 8), generators=[torch.Generator().manual_seed(2)])
    assert torch.equal(alone.weights[0][0], pop.weights[0][2])


def test_multi_head_population_agents_match_plain_multi_head_networks():
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    pop = PopulationQNetwork(3, 4, 2, (8, 8), n_heads=3, generators=gens)
    obs, tasks = torch.randn(3, 5, 4), torch.randint(0, 3, (3, 5))
    out = pop(obs, tasks)
    for a in range(3):
        plain = pop.agent(a)
        assert isinstance(plain, MultiHeadQNetwork)
        torch.testing.assert_close(plain(obs[a], tasks[a]), out[a])
    with pytest.raises(ValueError, match="task"):
        pop(obs)


@pytest.mark.parametrize(("hidden", "n_heads"), [((), 1), ((6,), 1), ((9, 5), 1), ((6,), 3)])
def test_population_network_gradients_are_exact(hidden, n_heads):
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    pop = PopulationQNetwork(2, 4, 3, hidden, n_heads=n_heads, generators=gens).double()
    obs = torch.randn(2, 5, 4, dtype=torch.float64)
    tasks = torch.randint(0, n_heads, (2, 5))
    params = list(pop.parameters())
    layers = [t for pair in zip(pop.weights, pop.biases, strict=True) for t in pair]
    if n_heads == 1:  # the hand-written backward against finite differences
        assert torch.autograd.gradcheck(
            lambda x, *p: _StackedMLP.apply(x, *p), (obs.clone().requires_grad_(), *layers)
        )
    # ... and against autograd through the plain layer-by-layer computation
    weights = torch.randn(2, 5, 3, dtype=torch.float64)
    (pop(obs, tasks) * weights).sum().backward()
    x = obs
    for layer in range(len(hidden)):
        x = torch.baddbmm(pop.biases[layer], x, pop.weights[layer].transpose(1, 2)).relu()
    heads = []
    for k in range(n_heads):
        w, b = pop.head_parameters(k)
        heads.append(torch.baddbmm(b, x, w.transpose(1, 2)))
    q = torch.stack(heads, 2).gather(2, tasks[..., None, None].expand(-1, -1, 1, 3)).squeeze(2)
    expected = torch.autograd.grad((q * weights).sum(), params)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e)


def test_population_network_frozen_layers_get_no_gradient():
    pop = PopulationQNetwork(2, 4, 2, (8,))
    pop.weights[0].requires_grad_(False)
    pop.biases[0].requires_grad_(False)
    pop(torch.randn(2, 3, 4)).sum().backward()
    assert pop.weights[0].grad is None and pop.biases[0].grad is None
    assert pop.weights[1].grad is not None and pop.biases[1].grad is not None
    with torch.no_grad():
        assert not pop(torch.randn(2, 3, 4)).requires_grad


def test_network_sizes_reads_both_layouts_and_refuses_others():
    assert network_sizes(QNetwork(4, 2, (8, 6)).state_dict()) == (4, 2, (8, 6), 1)
    assert network_sizes(QNetwork(4, 2, ()).state_dict()) == (4, 2, (), 1)
    assert network_sizes(MultiHeadQNetwork(5, 3, 4, (7,)).state_dict()) == (5, 3, (7,), 4)
    with pytest.raises(ValueError, match="lacks"):
        network_sizes({"trunk.0.weight": torch.zeros(3, 4)})


def test_gradient_clipping_is_per_agent():
    a = torch.zeros(2, 3, requires_grad=True)
    b = torch.zeros(2, 1, requires_grad=True)
    a.grad = torch.tensor([[3.0, 0.0, 0.0], [0.3, 0.0, 0.0]])
    b.grad = torch.tensor([[4.0], [0.4]])
    norms = clip_grad_norm_per_agent_([a, b], max_norm=1.0)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.5]))
    torch.testing.assert_close(a.grad[0, 0], torch.tensor(0.6), atol=1e-5, rtol=0)
    torch.testing.assert_close(a.grad[1, 0], torch.tensor(0.3))  # under the limit: untouched


@pytest.mark.parametrize(("double_dqn", "frozen"), [(True, ()), (False, ()), (True, ("trunk",))])
def test_plain_gradients_are_autograds_bit_for_bit(double_dqn, frozen):
    cfg = dataclasses.replace(TINY, double_dqn=double_dqn, hidden=(16, 8))
    envs = AgentEnvs([gym.make_vec("CartPole-v1", num_envs=4) for _ in range(2)])
    trainer = _Trainer(Agents((0, 1), envs, 1, score=None, frozen=frozen), cfg, torch.device("cpu"))
    assert trainer.plain
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # rewards of +-3 give TD errors on both sides of the Huber loss's kink
        obs, next_obs = torch.randn(2, 2, 4, 4, generator=gen)
        trainer.replay.add(
            obs,
            torch.randint(0, 2, (2, 4), generator=gen),
            torch.randn(2, 4, generator=gen) * 3,
            next_obs,
            torch.rand(2, 4, generator=gen) < 0.3,
            torch.ones(2, 4, dtype=torch.bool),
        )
    batch = trainer.replay.sample(torch.rand(2, cfg.batch_size, generator=gen))
    plain = trainer.plain_gradients(batch)
    plain_grads = [None if p.grad is None else p.grad.clone() for p in trainer.q_params]
    trainer.plain = False
    auto = trainer.autograd_gradients(batch)
    for mine, theirs in zip(plain, auto, strict=False):
        assert torch.equal(mine, theirs)
    for i, (p, g) in enumerate(zip(trainer.q_params, plain_grads, strict=True)):
        in_trunk = i < 2 * len(cfg.hidden)
        assert (p.grad is None) == (g is None) == (bool(frozen) and in_trunk)
        assert g is None or torch.equal(p.grad, g)


def test_stacked_cartpoles_step_like_each_agents_own_env():
    def envs(n_agents):
        return [CartPoleVectorEnv(num_envs=3, max_episode_steps=15) for _ in range(n_agents)]

    stacked, alone = AgentEnvs(envs(3)), envs(3)
    assert stacked._stacked is not None
    seeds = [4, 5, 6]
    obs = stacked.reset(seeds)
    alone_obs = [e.reset(seed=derive_seed(s, Purpose.ENV))[0] for e, s in zip(alone, seeds)]
    assert np.array_equal(obs, np.stack(alone_obs))
    gen = np.random.default_rng(0)
    ends = 0
    for _ in range(200):  # many terminations, truncations and restarts
        actions = gen.integers(0, 2, (3, 3))
        got = stacked.step(actions)
        want = [e.step(a)[:4] for e, a in zip(alone, actions, strict=True)]
        for i in range(4):
            assert np.array_equal(got[i], np.stack([w[i] for w in want]))
            assert got[i].dtype == want[0][i].dtype
        ends += int(got[2].sum() + got[3].sum())
    assert ends > 20
    with pytest.raises(ValueError, match="0 or 1"):
        stacked.step(np.full((3, 3), 2))
    # any other env (a wrapper, another CartPole) is stepped env by env
    assert AgentEnvs([make_cartpole_vec([CARTPOLE_TASKS["default"]], 3)])._stacked is None


# --- the trainer ------------------------------------------------------------------------------


def test_configs_validate_their_choices_when_built():
    with pytest.raises(ValueError, match="regularizer"):
        MultiTaskConfig(regularizer="L2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="architecture"):
        MultiTaskConfig(architecture="head")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tau"):
        DQNConfig(tau=0.0)
    # one vocabulary: the shared fields mean the same in both configs
    shared = {f.name for f in dataclasses.fields(DQNConfig)}
    multi = {f.name for f in dataclasses.fields(MultiTaskConfig)}
    assert shared - {"total_steps", "num_envs"} <= multi


def test_agents_on_their_own_tasks_match_agents_trained_alone():
    tasks = [CARTPOLE_TASKS["default"], CARTPOLE_TASKS["heavy_cart"]]

    def run(chosen):
        envs = AgentEnvs([make_cartpole_vec([t], TINY.num_envs) for t in chosen])
        eval_envs = AgentEnvs([make_cartpole_vec([t], TINY.eval_episodes) for t in chosen])
        return train_dqn_agents([5] * len(chosen), envs, eval_envs, TINY)

    both, heavy = run(tasks), run(tasks[1:])
    assert torch.equal(both.eval_returns[1], heavy.eval_returns[0])
    assert torch.equal(both.states[1]["head.weight"], heavy.states[0]["head.weight"])


def test_train_dqn_accepts_a_vector_env_factory():
    calls = []

    def make_env(num_envs: int) -> gym.vector.VectorEnv:
        calls.append(num_envs)
        return gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="sync")

    result = train_dqn(TINY, seeds=[0, 1], make_env=make_env)
    assert calls == [4, 4, 2, 2] and result.eval_returns.shape == (2, 3, 2)


def test_one_task_multitask_agent_runs_with_no_conflict():
    task = grid_tasks(start="uniform")[0]
    mt = MultiTaskConfig(
        steps_per_task=400, envs_per_task=2, learning_starts=100, eval_every=200, buffer_size=500
    )
    result = train_multitask_dqn([[task]], [0], mt)
    assert result.scores.shape == (1, 3, 1) and torch.isnan(result.conflict).all()
    assert result.history[-1]["step"] == 400.0


@pytest.mark.parametrize("head_lr", [3e-3, 1e-2])  # groups of different and of equal rates
def test_fused_adam_gives_torch_adams_numbers(head_lr):
    gen = torch.Generator().manual_seed(0)
    ours = [torch.randn(3, 4, generator=gen).requires_grad_() for _ in range(2)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    groups = [{"params": ours[:1], "lr": 1e-2}, {"params": ours[1:], "lr": head_lr}]
    mine = FusedAdam(groups)
    torch_adam = torch.optim.Adam(
        [{"params": theirs[:1], "lr": 1e-2}, {"params": theirs[1:], "lr": head_lr}], fused=True
    )
    for step in range(5):
        grads = [torch.randn(3, 4, generator=gen) for _ in ours]
        for p, q, g in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        if step == 3:  # a learning-rate change between steps
            mine.param_groups[0]["lr"] = torch_adam.param_groups[0]["lr"] = 5e-4
        mine.step()
        torch_adam.step()
        for p, q in zip(ours, theirs, strict=True):
            assert torch.equal(p, q)
    mine.zero_grad()
    assert all(p.grad is None for p in ours)
