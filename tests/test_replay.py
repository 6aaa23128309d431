"""Tests for course/replay.py: ring-buffer invariants, copying, dtypes, uniform sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course.replay import Batch, PopulationReplay, ReplayBuffer


def make_rows(start: int, n: int, obs_dim: int = 3) -> dict[str, np.ndarray]:
    """Transitions numbered start..start+n-1; every field encodes the transition's number."""
    ids = np.arange(start, start + n)
    return {
        "obs": np.repeat(ids[:, None], obs_dim, axis=1).astype(np.float32),
        "action": ids % 5,
        "reward": ids.astype(np.float32) / 2,
        "next_obs": np.repeat(ids[:, None] + 0.5, obs_dim, axis=1).astype(np.float32),
        "terminated": ids % 3 == 0,
        "task": ids % 4,
    }


def stored_ids(buf: ReplayBuffer) -> list[int]:
    return buf.storage.obs[: len(buf), 0].long().tolist()


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 12),
    chunks=st.lists(st.integers(0, 20), min_size=1, max_size=8),
    single=st.booleans(),
)
def test_ring_keeps_last_capacity_transitions_in_slot_i_mod_capacity(capacity, chunks, single):
    buf = ReplayBuffer(capacity, (3,), n_tasks=4)
    total = 0
    for n in chunks:
        rows = make_rows(total, n)
        if single:
            for k in range(n):
                buf.add(**{key: value[k] for key, value in rows.items()})
        else:
            buf.add(**rows)
        total += n
    assert len(buf) == min(total, capacity)
    assert buf.n_added == total
    assert buf.cursor == total % capacity
    survivors = range(max(0, total - capacity), total)
    for i in survivors:
        slot = i % capacity
        assert buf.storage.obs[slot].tolist() == [float(i)] * 3
        assert buf.storage.next_obs[slot].tolist() == [i + 0.5] * 3
        assert buf.storage.actions[slot].item() == i % 5
        assert buf.storage.rewards[slot].item() == i / 2
        assert buf.storage.terminated[slot].item() == (i % 3 == 0)
        assert buf.storage.tasks[slot].item() == i % 4
    assert sorted(stored_ids(buf)) == list(survivors)


def test_batch_larger_than_capacity_keeps_last_rows():
    buf = ReplayBuffer(4, (3,), n_tasks=4)
    buf.add(**make_rows(0, 2))
    buf.add(**make_rows(2, 7))  # transitions 0..8; 5..8 survive
    assert len(buf) == 4
    assert buf.storage.obs[:, 0].tolist() == [8.0, 5.0, 6.0, 7.0]
    assert buf.cursor == 1


def test_stored_data_does_not_alias_caller_arrays():
    buf = ReplayBuffer(5, (3,))
    obs = np.ones((2, 3), dtype=np.float32)
    next_obs = torch.ones(2, 3)
    actions = torch.tensor([1, 0])
    rewards = np.array([1.0, 2.0], dtype=np.float32)
    buf.add(obs, actions, rewards, next_obs, np.array([False, True]))
    obs[:] = 7
    next_obs += 7
    actions[:] = 9
    rewards[:] = 9
    single = np.zeros(3, dtype=np.float32)
    buf.add(single, 1, 0.0, single, False)
    single[:] = 5
    assert buf.storage.obs[:3].tolist() == [[1.0] * 3, [1.0] * 3, [0.0] * 3]
    assert buf.storage.next_obs[:2].tolist() == [[1.0] * 3] * 2
    assert buf.storage.actions[:2].tolist() == [1, 0]
    assert buf.storage.rewards[:2].tolist() == [1.0, 2.0]
    batch = buf.sample(4, torch.Generator().manual_seed(0))
    batch.obs.add_(100)  # a sampled batch is a copy too
    assert buf.storage.obs.max().item() == 1.0


def test_dtypes_and_shapes_of_a_sample():
    buf = ReplayBuffer(10, (2, 3), n_tasks=3)
    buf.add(np.zeros((4, 2, 3)), [0, 1, 2, 1], [1, 1, 1, 1], np.ones((4, 2, 3)), [0, 1, 0, 0], 2)
    batch = buf.sample(7, torch.Generator().manual_seed(1))
    assert isinstance(batch, Batch)
    assert batch.obs.shape == (7, 2, 3) and batch.obs.dtype == torch.float32
    assert batch.next_obs.shape == (7, 2, 3) and batch.next_obs.dtype == torch.float32
    assert batch.actions.shape == (7,) and batch.actions.dtype == torch.int64
    assert batch.rewards.shape == (7,) and batch.rewards.dtype == torch.float32
    assert batch.terminated.shape == (7,) and batch.terminated.dtype == torch.bool
    assert batch.tasks.shape == (7,) and batch.tasks.dtype == torch.int64
    assert batch.tasks.tolist() == [2] * 7


def test_sample_on_empty_buffer_raises_clear_error():
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(3, 4).sample(1)


def test_sampling_is_uniform_over_stored_transitions():
    capacity, n_draws = 10, 20_000
    buf = ReplayBuffer(capacity, (1,))
    buf.add(**{k: v for k, v in make_rows(0, 17, obs_dim=1).items() if k != "task"})
    ids = buf.sample(n_draws, torch.Generator().manual_seed(123)).obs[:, 0].long()
    counts = torch.bincount(ids, minlength=17).numpy()
    assert counts[:7].sum() == 0  # overwritten transitions are never drawn
    observed = counts[7:]
    expected = n_draws / capacity
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 27.88  # 99.9% quantile of chi-square with 9 degrees of freedom


def test_sampling_is_deterministic_given_generator_and_covers_partial_buffer():
    buf = ReplayBuffer(100, (1,))
    buf.add(**{k: v for k, v in make_rows(0, 3, obs_dim=1).items() if k != "task"})
    a = buf.sample(50, torch.Generator().manual_seed(5)).obs
    b = buf.sample(50, torch.Generator().manual_seed(5)).obs
    assert torch.equal(a, b)
    assert set(a[:, 0].long().tolist()) == {0, 1, 2}  # only the filled slots


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"obs": np.zeros(4)}, "obs has shape"),
        ({"next_obs": np.zeros((2, 4))}, "next_obs has shape"),
        ({"action": [0, 1, 0]}, "action has shape"),
        ({"reward": [1.0]}, "reward has shape"),
        ({"action": [0.5, 1.0]}, "integers"),
        ({"task": [0, 3]}, "task ids"),
        ({"action": [-1, 0]}, "non-negative"),
    ],
)
def test_add_rejects_bad_inputs_with_clear_errors(kwargs, message):
    buf = ReplayBuffer(5, (3,), n_tasks=2)
    args = {
        "obs": np.zeros((2, 3)),
        "action": [0, 1],
        "reward": [1.0, 1.0],
        "next_obs": np.zeros((2, 3)),
        "terminated": [False, True],
        "task": 0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        buf.add(**args)
    assert len(buf) == 0


def test_constructor_validation():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, 3)
    with pytest.raises(ValueError, match="n_tasks"):
        ReplayBuffer(3, 3, n_tasks=0)
    assert ReplayBuffer(3, 4).obs_shape == (4,)


@settings(max_examples=40, deadline=None)
@given(
    capacity=st.integers(3, 7),
    masks=st.lists(st.lists(st.booleans(), min_size=3, max_size=3), min_size=2, max_size=2),
    n_steps=st.integers(1, 6),
)
def test_population_replay_matches_one_buffer_per_agent(capacity, masks, n_steps):
    n_agents, n_envs = 2, 3
    pop = PopulationReplay(n_agents, capacity, (1,))
    singles = [ReplayBuffer(capacity, (1,)) for _ in range(n_agents)]
    valid = torch.tensor(masks)
    for t in range(n_steps):
        obs = (torch.arange(n_agents * n_envs).view(n_agents, n_envs, 1) + 10 * t).float()
        actions = torch.arange(n_envs).expand(n_agents, n_envs) + t
        rewards = obs[..., 0] / 2
        terminated = (obs[..., 0] % 2) == 0
        pop.add(obs, actions, rewards, obs + 0.5, terminated, valid)
        for a, buf in enumerate(singles):
            m = valid[a]
            buf.add(obs[a][m], actions[a][m], rewards[a][m], obs[a][m] + 0.5, terminated[a][m])
    for a, buf in enumerate(singles):
        assert pop.size[a].item() == len(buf) and pop.cursor[a].item() == buf.cursor
        for name in ("obs", "actions", "rewards", "next_obs", "terminated"):
            assert torch.equal(getattr(pop.storage, name)[a], getattr(buf.storage, name))


def test_population_replay_samples_only_each_agents_own_transitions():
    pop = PopulationReplay(2, 8, (1,))
    obs = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])
    valid = torch.tensor([[True, True], [True, False]])
    zeros = torch.zeros(2, 2)
    pop.add(obs, zeros.long(), zeros, obs, zeros.bool(), valid)
    batch = pop.sample(torch.rand(2, 500, generator=torch.Generator().manual_seed(0)))
    assert batch.obs.shape == (2, 500, 1)
    assert set(batch.obs[0, :, 0].tolist()) == {1.0, 2.0}
    assert set(batch.obs[1, :, 0].tolist()) == {3.0}


def test_population_replay_rejects_more_rows_than_capacity():
    pop = PopulationReplay(1, 2, (1,))
    rows = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="capacity"):
        pop.add(rows[..., None], rows.long(), rows, rows[..., None], rows.bool(), rows.bool())


def test_population_replay_empty_agent_raises():
    pop = PopulationReplay(2, 4, (1,))
    with pytest.raises(ValueError, match="empty"):
        pop.sample(torch.rand(2, 3))


def test_population_replay_keeps_fields_and_dtypes_through_its_rows():
    pop = PopulationReplay(2, 4, (2, 3))
    obs = torch.randn(2, 3, 2, 3)
    actions = torch.tensor([[0, 7, 2], [5, 1, 3]])
    tasks = torch.tensor([[2, 0, 1], [1, 1, 0]])
    terminated = torch.tensor([[True, False, True], [False, False, True]])
    rewards = torch.randn(2, 3)
    pop.add(obs, actions, rewards, obs * 2, terminated, torch.ones(2, 3, dtype=torch.bool), tasks)
    # the slots of the first three transitions, in order: uniform draws in the first 3/3
    batch = pop.sample(torch.tensor([[0.1, 0.4, 0.7], [0.1, 0.4, 0.7]]))
    assert batch.obs.shape == (2, 3, 2, 3) and torch.equal(batch.obs, obs)
    assert torch.equal(batch.next_obs, obs * 2) and torch.equal(batch.rewards, rewards)
    assert batch.actions.dtype == torch.int64 and torch.equal(batch.actions, actions)
    assert batch.tasks.dtype == torch.int64 and torch.equal(batch.tasks, tasks)
    assert batch.terminated.dtype == torch.bool and torch.equal(batch.terminated, terminated)
    assert torch.equal(pop.storage.tasks[:, :3], tasks)  # the Batch view of the storage agrees
