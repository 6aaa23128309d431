"""Tests for course/grading/exercises/replay.py: the check of the student's ReplayBuffer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from course import replay as ref
from course.grading import check, get_exercise
from course.grading.exercises import replay as ex

EXERCISE = get_exercise("replay.ReplayBuffer")
N_PARTS = len(EXERCISE.parts)


def as_student(cls: type) -> type:
    """The class as if a student had written it in a notebook (not library code)."""
    return type("ReplayBuffer", (cls,), {"__module__": "__main__"})


# --- correct answers written in other ways ---------------------------------------------------


class ReferenceCopy(ref.ReplayBuffer):
    pass


class ListBuffer:
    """Python lists, one transition at a time, and another way of drawing slots."""

    def __init__(self, capacity, obs_shape, n_tasks=1):
        self.capacity, self.obs_shape = capacity, tuple(obs_shape)
        self.items: list[tuple] = []
        self.next = 0

    def __len__(self):
        return len(self.items)

    def add(self, obs, action, reward, next_obs, terminated, task=0):
        obs = torch.as_tensor(obs, dtype=torch.float32)
        if tuple(obs.shape) == self.obs_shape:
            self._put(obs, action, reward, next_obs, terminated, task)
            return
        n = len(obs)
        task = torch.as_tensor(task).expand(n)
        for k in range(n):
            self._put(obs[k], action[k], reward[k], next_obs[k], terminated[k], task[k])

    def _put(self, obs, action, reward, next_obs, terminated, task):
        item = (
            torch.as_tensor(obs, dtype=torch.float32).clone(),
            int(action),
            float(reward),
            torch.as_tensor(next_obs, dtype=torch.float32).clone(),
            bool(terminated),
            int(task),
        )
        if len(self.items) < self.capacity:
            self.items.append(item)
        else:
            self.items[self.next] = item
        self.next = (self.next + 1) % self.capacity

    def sample(self, batch_size, generator=None):
        if not self.items:
            raise ValueError("empty buffer")
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        idx = (u * len(self.items)).long().tolist()
        rows = [self.items[i] for i in idx]
        return ref.Batch(
            obs=torch.stack([r[0] for r in rows]),
            actions=torch.tensor([r[1] for r in rows], dtype=torch.int64),
            rewards=torch.tensor([r[2] for r in rows], dtype=torch.float32),
            next_obs=torch.stack([r[3] for r in rows]),
            terminated=torch.tensor([r[4] for r in rows], dtype=torch.bool),
            tasks=torch.tensor([r[5] for r in rows], dtype=torch.int64),
        )


class NumpyBuffer:
    """numpy storage, a vectorised batched add, slots drawn by torch.multinomial."""

    def __init__(self, capacity, obs_shape, n_tasks=1):
        shape = tuple(obs_shape)
        self.capacity, self.ndim = capacity, len(shape)
        self.obs = np.zeros((capacity, *shape), np.float32)
        self.next_obs = np.zeros((capacity, *shape), np.float32)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, bool)
        self.tasks = np.zeros(capacity, np.int64)
        self.count = 0  # transitions ever added

    def __len__(self):
        return min(self.count, self.capacity)

    def add(self, obs, action, reward, next_obs, terminated, task=0):
        obs = np.asarray(obs)
        single = obs.ndim == self.ndim
        n = 1 if single else len(obs)
        slots = (self.count + np.arange(n)) % self.capacity  # numpy: the last of repeats wins
        for store, value in (
            (self.obs, obs),
            (self.next_obs, np.asarray(next_obs)),
            (self.actions, np.asarray(action)),
            (self.rewards, np.asarray(reward)),
            (self.terminated, np.asarray(terminated)),
            (self.tasks, np.asarray(task)),
        ):
            store[slots] = value
        self.count += n

    def sample(self, batch_size, generator=None):
        if len(self) == 0:
            raise ValueError("nothing to sample")
        weights = torch.ones(len(self))
        idx = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
        idx = idx.numpy()
        return ref.Batch(
            *(
                torch.from_numpy(a[idx])
                for a in (
                    self.obs,
                    self.actions,
                    self.rewards,
                    self.next_obs,
                    self.terminated,
                    self.tasks,
                )
            )
        )


class NewestFirstBuffer(ref.ReplayBuffer):
    """The reference storage, but draw k means "the k-th newest": still uniform."""

    def sample(self, batch_size, generator=None):
        if len(self) == 0:
            raise ValueError("empty")
        back = torch.randint(len(self), (batch_size,), generator=generator)
        idx = (self.cursor - 1 - back) % self.capacity
        return ref.Batch(*(store[idx] for store in self.storage))


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_passes(seed):
    result = check("replay.ReplayBuffer", as_student(ReferenceCopy), seed=seed)
    assert result.passed, result.message
    assert result.score == result.max_score == N_PARTS


@pytest.mark.parametrize(
    ("cls", "seed"), [(ListBuffer, 0), (NumpyBuffer, 0), (NewestFirstBuffer, 2)]
)
def test_other_correct_answers_pass(cls, seed):
    result = check("replay.ReplayBuffer", as_student(cls), seed=seed)
    assert result.passed, result.message


def test_the_library_class_itself_is_refused():
    result = check("replay.ReplayBuffer", ref.ReplayBuffer)
    assert not result.passed
    assert "library's own" in result.message


# --- classic mistakes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hint", "wrong"),
    list(EXERCISE.mistakes().items()),
    ids=[cls.__name__ for cls in EXERCISE.mistakes().values()],
)
def test_each_classic_mistake_fails_with_its_hint(hint, wrong):
    result = check("replay.ReplayBuffer", as_student(wrong))
    assert result.status == "failed"
    assert result.score < result.max_score
    assert f"hint: {hint}" in result.message


def test_the_sketch_the_mistakes_start_from_is_correct():
    result = check("replay.ReplayBuffer", as_student(ex._Sketch))
    assert result.passed, result.message


# --- unfinished and broken answers -----------------------------------------------------------


class Stub:
    def __init__(self, capacity, obs_shape, n_tasks=1):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError

    def add(self, obs, action, reward, next_obs, terminated, task=0):
        raise NotImplementedError

    def sample(self, batch_size, generator=None):
        raise NotImplementedError


def test_a_stub_is_not_attempted():
    result = check("replay.ReplayBuffer", as_student(Stub))
    assert result.status == "not attempted"
    assert "NotImplementedError" in result.message


def test_a_missing_class_is_not_attempted():
    assert check("replay.ReplayBuffer", None).status == "not attempted"


def test_a_function_is_not_a_class():
    def ReplayBuffer(capacity, obs_shape, n_tasks=1):  # noqa: N802
        return None

    result = check("replay.ReplayBuffer", ReplayBuffer)
    assert result.status == "failed"
    assert "should be a class" in result.message


class SampleNotWritten(ReferenceCopy):
    def sample(self, batch_size, generator=None):
        raise NotImplementedError


def test_one_unwritten_method_fails_without_a_traceback():
    result = check("replay.ReplayBuffer", as_student(SampleNotWritten))
    assert result.status == "failed"
    assert result.score == 0  # every part reads the buffer back through `sample`
    assert "Traceback" not in result.message
    assert "NotImplementedError" in result.message


class InitRaises(ReferenceCopy):
    def __init__(self, capacity, obs_shape, n_tasks=1):
        raise ValueError("oops")


class NoAdd:
    def __init__(self, capacity, obs_shape, n_tasks=1):
        pass

    def __len__(self):
        return 0

    def sample(self, batch_size, generator=None):
        raise ValueError("empty")


class SampleReturnsNone(ReferenceCopy):
    def sample(self, batch_size, generator=None):
        return None


class SampleReturnsPlainTuple(ReferenceCopy):
    def sample(self, batch_size, generator=None):
        return tuple(super().sample(batch_size, generator))


class LenReturnsString(ReferenceCopy):
    def __len__(self):
        return "three"


class SampleReturnsNaN(ReferenceCopy):
    def sample(self, batch_size, generator=None):
        batch = super().sample(batch_size, generator)
        return batch._replace(rewards=torch.full_like(batch.rewards, float("nan")))


class ActionsAsColumn(ReferenceCopy):
    def sample(self, batch_size, generator=None):
        batch = super().sample(batch_size, generator)
        return batch._replace(actions=batch.actions[:, None])


class NumpyBatch(ReferenceCopy):
    def sample(self, batch_size, generator=None):
        return ref.Batch(*(t.numpy() for t in super().sample(batch_size, generator)))


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (InitRaises, "raised ValueError"),
        (NoAdd, "AttributeError"),
        (SampleReturnsNone, "has no `.obs`"),
        (SampleReturnsPlainTuple, "has no `.obs`"),
        (LenReturnsString, "TypeError"),
        (SampleReturnsNaN, "batch.rewards holds NaN"),
        (ActionsAsColumn, "batch.actions has shape (4, 1); expected (4,)"),
        (NumpyBatch, "batch.obs is a numpy array; expected a torch.Tensor"),
    ],
)
def test_broken_answers_fail_with_a_readable_reason(cls, expected):
    result = check("replay.ReplayBuffer", as_student(cls))
    assert result.status == "failed"
    assert expected in result.message, result.message


class LoopsForever(ReferenceCopy):
    def add(self, *args: Any, **kwargs: Any) -> None:
        while True:
            pass


def test_an_infinite_loop_is_stopped(monkeypatch):
    monkeypatch.setattr(EXERCISE, "time_limit", 0.3)
    result = check("replay.ReplayBuffer", as_student(LoopsForever))
    assert result.status == "failed"
    assert "did not finish within 0.3 s" in result.message


# --- the pieces of the judgement -------------------------------------------------------------


def test_grading_needs_only_the_plain_record():
    """The two halves agree when the record travels as JSON, as under `course grade`."""
    import json

    outcomes = EXERCISE.collect(as_student(ListBuffer), seed=3)
    shipped = json.loads(json.dumps([o.to_json() for o in outcomes]))
    from course.grading.core import Outcome

    result = EXERCISE.grade([Outcome.from_json(o) for o in shipped], seed=3)
    assert result.passed, result.message


def test_uniformity_test_passes_uniform_counts_and_catches_a_biased_slot():
    rng = np.random.default_rng(0)
    rows = [[float(i)] for i in range(1, 9)]
    reference = rng.multinomial(ex.UNIFORM_DRAWS, [1 / 8] * 8).tolist()
    for _ in range(200):
        uniform = rng.multinomial(ex.UNIFORM_DRAWS, [1 / 8] * 8).tolist()
        assert ex._compare_counts(uniform, reference, rows) is None
    biased = rng.multinomial(ex.UNIFORM_DRAWS, [0.125 * 1.25] + [0.875 / 7 - 0.125 * 0.25 / 7] * 7)
    reason = ex._compare_counts(biased.tolist(), reference, rows)
    assert reason is not None and "not uniform" in reason


def test_unique_rows_matches_torch_unique():
    rows = torch.tensor([[3.0, 1.0], [1.0, 2.0], [3.0, 1.0], [1.0, 2.0], [2.0, 0.0]])
    for candidate in (rows, torch.cat([rows, torch.tensor([[3.0, 5.0]])])):
        unique, counts = ex._unique_rows(candidate)
        want_unique, want_counts = torch.unique(candidate, dim=0, return_counts=True)
        assert torch.equal(unique, want_unique) and torch.equal(counts, want_counts)


def test_cases_are_reproducible_and_depend_on_the_seed():
    first, again, other = (EXERCISE.build_cases(s) for s in (0, 0, 1))
    assert [c.shown for c in first] == [c.shown for c in again]
    assert [c.shown for c in first] != [c.shown for c in other]
    assert [c.part for c in first][0] == ex.STORING
    assert {c.part for c in first} == set(EXERCISE.parts)
