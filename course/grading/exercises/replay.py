"""Checks for Lesson 02 (experience replay): the student's ``ReplayBuffer`` class.

A class is checked through scenarios: each case builds a buffer, adds numbered transitions in
some form (one at a time or as a batch, as tensors, numpy arrays or scalars), and looks at the
buffer only through its public interface, ``len(buf)`` and ``buf.sample``, never through the
names of its attributes (the syllabus does not fix them). What a buffer holds is read by
sampling many times with a seeded generator and collecting the distinct transitions that come
back; transition ``t`` has ``obs[0] == t``, so each one is recognisable.

The probe records plain data (lengths, the distinct sampled transitions, how often each came
back, the dtypes and shapes of a batch, the kind of exception raised); the judge compares it
with the record of the reference ``course.replay.ReplayBuffer`` on the same scenario. Random
things are judged statistically: sampling frequencies by a two-sample chi-square test against the
reference's frequencies, failing only below p = 1e-6, so any correct sampler passes whatever
order it draws its random numbers in.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from course import replay as ref
from course.grading.core import Case, CheckTimeout, Exercise, Outcome, register, run_guarded

LESSON = "02_replay"
# The parts of the ReplayBuffer exercise, one point each.
STORING = "storing: construction, len, single and batched adds, no aliasing"
OVERWRITE = "ring overwrite"
SAMPLING = "sampling: shapes, dtypes, uniform draws, an empty buffer raises ValueError"
FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated", "tasks")
SAMPLES_PER_SLOT = 64  # draws per slot when reading contents: missing one has odds below 1e-20
UNIFORM_DRAWS = 40_000  # draws of the uniformity test
P_VALUE = 1e-6  # a correct sampler fails the uniformity test with at most this probability
MUTATED = -7.0  # what the caller writes into its own arrays after add returned

# --- forms in which transitions are handed to add ----------------------------------------------

SINGLE_FORMS = {
    "torch": "obs as a float32 tensor, Python scalars",
    "numpy": "obs as a float32 numpy array, numpy scalars",
    "numpy64": "obs as a float64 numpy array, Python scalars",
    "tensor0d": "obs as a tensor, 0-d tensors for the scalars",
}
BATCH_FORMS = {
    "torch batch": "tensors",
    "numpy batch": "numpy arrays",
    "mixed batch": "numpy float64 obs and rewards, int32 actions and tasks",
    "torch batch, no task": "tensors, task left to its default",
}


def _table(generator: torch.Generator, n: int, obs_shape: tuple[int, ...], n_tasks: int) -> dict:
    """Transitions 1..n (row t - 1 is transition t): obs[0] == t makes each one recognisable."""
    size = math.prod(obs_shape)
    ids = torch.arange(1, n + 1, dtype=torch.float32)
    obs = (ids[:, None] + torch.arange(size) / 8).reshape(n, *obs_shape)
    return {
        "obs": obs,
        "actions": torch.randint(0, 4, (n,), generator=generator),
        "rewards": torch.randint(-8, 9, (n,), generator=generator).float() / 4,
        "next_obs": obs + 0.5,
        "terminated": torch.rand(n, generator=generator) < 0.3,
        "tasks": torch.randint(0, n_tasks, (n,), generator=generator),
    }


def _inputs(table: dict, first: int, last: int, form: str, n_tasks: int) -> tuple[tuple, dict]:
    """Fresh arguments of ``add`` for transitions ``first..last``, in the given form."""
    rows = slice(first - 1, last)
    obs, actions, rewards, next_obs, terminated, tasks = (
        table[name][rows].clone() for name in FIELDS
    )
    if form in SINGLE_FORMS:
        o, no = obs[0], next_obs[0]
        a, r, d, k = actions[0], rewards[0], terminated[0], tasks[0]
        if form == "torch":
            args = (o, int(a), float(r), no, bool(d))
            task: Any = int(k)
        elif form == "numpy":
            args = (o.numpy(), np.int64(a), np.float32(r), no.numpy(), np.bool_(bool(d)))
            task = np.int64(k)
        elif form == "numpy64":
            args = (o.double().numpy(), int(a), float(r), no.double().numpy(), bool(d))
            task = int(k)
        else:
            args = (o, a.clone(), r.clone(), no, d.clone())
            task = k.clone()
    elif form == "torch batch" or form == "torch batch, no task":
        args, task = (obs, actions, rewards, next_obs, terminated), tasks
    elif form == "numpy batch":
        args = tuple(t.numpy() for t in (obs, actions, rewards, next_obs, terminated))
        task = tasks.numpy()
    elif form == "mixed batch":
        args = (
            obs.double().numpy(),
            actions.int().numpy(),
            rewards.double().numpy(),
            next_obs.double().numpy(),
            terminated.numpy(),
        )
        task = tasks.int().numpy()
    else:
        raise ValueError(f"unknown form {form!r}")
    kwargs = {} if n_tasks == 1 or form.endswith("no task") else {"task": task}
    return args, kwargs


def _overwrite(args: tuple, kwargs: dict) -> None:
    """What a careless caller does after add returned: reuse its arrays for the next step."""
    values = dict(zip(("obs", "actions", "rewards", "next_obs", "terminated"), args))
    values["tasks"] = kwargs.get("task")
    fill = {"obs": MUTATED, "rewards": MUTATED, "next_obs": MUTATED, "actions": 3, "tasks": 0}
    for name, value in values.items():
        if isinstance(value, (torch.Tensor, np.ndarray)):
            if name == "terminated":
                value[...] = ~value
            else:
                value[...] = fill[name]


# --- reading what the student's sample returned ----------------------------------------------


def _read_batch(batch: Any, size: int) -> dict[str, torch.Tensor] | str:
    """The fields of a sampled batch as CPU tensors, or one sentence saying what is wrong."""
    fields = {}
    for name in FIELDS:
        try:
            value = getattr(batch, name)
        except Exception:
            return (
                f"sample returned {type(batch).__name__}, which has no `.{name}`; return a "
                "`Batch(obs, actions, rewards, next_obs, terminated, tasks)` (from course.replay)"
            )
        if isinstance(value, np.ndarray) and value.dtype != object:
            value = torch.from_numpy(value.copy())
        if not isinstance(value, torch.Tensor):
            return f"batch.{name} is a {type(value).__name__}; expected a tensor"
        value = torch.Tensor.detach(value).cpu()
        if value.dim() == 0 or value.shape[0] != size:
            return (
                f"sample({size}) returned batch.{name} of shape {tuple(value.shape)}; expected "
                f"{size} rows (one per sampled transition)"
            )
        fields[name] = value
    return fields


def _rows(fields: dict[str, torch.Tensor], obs_size: int) -> torch.Tensor | str:
    """One row per sampled transition: obs | action | reward | next_obs | terminated | task."""
    columns = []
    for name in FIELDS:
        t = fields[name]
        width = obs_size if name in ("obs", "next_obs") else 1
        if t.is_complex() or t[0].numel() != width:
            want = "the observation shape" if width > 1 else "a scalar per row"
            return f"batch.{name} has shape {tuple(t.shape)}; expected {want}"
        column = t.reshape(t.shape[0], width).double()
        if not bool(torch.isfinite(column).all()):
            return f"batch.{name} holds NaN or infinite values; every added value was finite"
        columns.append(column)
    return torch.cat(columns, 1)


def _unique_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows, sorted, and how often each occurs (as torch.unique(dim=0), faster)."""
    keys, inverse = torch.unique(rows[:, 0], return_inverse=True)
    positions = torch.arange(len(rows))
    first = torch.full((len(keys),), len(rows)).scatter_reduce(0, inverse, positions, "amin")
    if torch.equal(rows, rows[first][inverse]):  # each obs[0] always comes with the same row
        return rows[first], torch.bincount(inverse, minlength=len(keys))
    return torch.unique(rows, dim=0, return_counts=True)


def _plain_rows(rows: torch.Tensor) -> list[list[Any]]:
    return [[_number(x) for x in row] for row in rows.tolist()]


def _number(x: float) -> float | str:
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return round(x, 6)


# --- the scenarios -----------------------------------------------------------------------------


def _scenario(
    label: str,
    part: str,
    generator: torch.Generator,
    capacity: int,
    obs_shape: tuple[int, ...],
    steps: list[tuple],
    n_tasks: int = 1,
) -> Case:
    """A case: build a buffer, then run ``steps`` on it.

    Steps: ``("add", first, last, form)``, ``("len",)``, ``("contents",)``, ``("overwrite",)``,
    ``("fields", batch_size)``, ``("counts",)``, ``("seeded",)``, ``("empty",)``.
    """
    n = max([s[2] for s in steps if s[0] == "add"], default=1)
    table = _table(generator, n, obs_shape, n_tasks)
    steps = [("new", capacity, obs_shape, n_tasks), *steps]
    lines = [_describe(step, capacity) for step in steps]
    shown = "\n".join(f"{i + 1:>2}  {line}" for i, line in enumerate(lines))
    if n:
        shown += (
            f"\ntransition(t): obs = t + [0, 0.125, ...] in shape {obs_shape} (obs[0] == t), "
            "next_obs = obs + 0.5, random action in 0..3, reward, terminated"
            + (f" and task in 0..{n_tasks - 1}" if n_tasks > 1 else ", task 0")
        )
    data = {"table": table, "steps": steps, "lines": lines, "obs_size": math.prod(obs_shape)}
    return Case(label, shown=shown, part=part, data=data)


def _describe(step: tuple, capacity: int) -> str:
    op = step[0]
    if op == "new":
        _, cap, shape, n_tasks = step
        extra = f", n_tasks={n_tasks}" if n_tasks != 1 else ""
        return f"buf = ReplayBuffer({cap}, {shape}{extra})"
    if op == "add":
        _, first, last, form = step
        if form in SINGLE_FORMS:
            return f"buf.add(*transition({first}))  # {SINGLE_FORMS[form]}"
        return (
            f"buf.add(*transitions({first}..{last}))  # one batch of {last - first + 1}, "
            f"{BATCH_FORMS[form]}"
        )
    if op == "len":
        return "len(buf)"
    if op == "contents":
        return (
            f"buf.sample({SAMPLES_PER_SLOT * capacity}, generator=g)  # which transitions "
            "are stored"
        )
    if op == "overwrite":
        return "the caller overwrites the arrays it passed to add (obs[...] = -7, ...)"
    if op == "fields":
        return f"buf.sample({step[1]})  # types, dtypes and shapes of the batch"
    if op == "counts":
        return f"buf.sample({UNIFORM_DRAWS}, generator=g)  # how often each transition comes back"
    if op == "seeded":
        return (
            "buf.sample(64, generator=torch.Generator().manual_seed(s)) with s = 1, 1, 2, "
            "then buf.sample(64)"
        )
    if op == "empty":
        return "buf.sample(1)  # on an empty buffer"
    raise ValueError(f"unknown step {op!r}")


def _adds(first: int, last: int, form: str | list[str]) -> list[tuple]:
    forms = [form] if isinstance(form, str) else form
    return [("add", t, t, forms[i % len(forms)]) for i, t in enumerate(range(first, last + 1))]


def _random_adds(
    generator: torch.Generator, total: int, max_batch: int, n_tasks: int
) -> list[tuple]:
    """Single and batched adds of transitions 1..total, in random forms."""
    singles = list(SINGLE_FORMS)
    batches = [f for f in BATCH_FORMS if n_tasks == 1 or not f.endswith("no task")]
    steps, t = [], 1
    while t <= total:
        if int(torch.randint(0, 2, (1,), generator=generator)) == 0:
            form = singles[int(torch.randint(0, len(singles), (1,), generator=generator))]
            steps.append(("add", t, t, form))
            t += 1
        else:
            n = int(torch.randint(1, max_batch + 1, (1,), generator=generator))
            n = min(n, total - t + 1)
            form = batches[int(torch.randint(0, len(batches), (1,), generator=generator))]
            steps.append(("add", t, t + n - 1, form))
            t += n
    return steps


def _random_shape(generator: torch.Generator) -> tuple[int, ...]:
    shapes = [(1,), (2,), (3,), (4,), (2, 2), (3, 2)]
    return shapes[int(torch.randint(0, len(shapes), (1,), generator=generator))]


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """A random integer in ``[low, high]``."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


# --- classic mistakes ----------------------------------------------------------------------------


class _Sketch:
    """A plain correct buffer; each classic mistake below changes one thing about it."""

    obs_dtype = torch.float32
    index_dtype = torch.int64
    terminated_dtype = torch.bool

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], n_tasks: int = 1) -> None:
        self.capacity, self.obs_ndim = capacity, len(obs_shape)
        self.obs = torch.zeros((capacity, *obs_shape), dtype=self.obs_dtype)
        self.actions = torch.zeros(capacity, dtype=self.index_dtype)
        self.rewards = torch.zeros(capacity)
        self.next_obs = torch.zeros((capacity, *obs_shape), dtype=self.obs_dtype)
        self.terminated = torch.zeros(capacity, dtype=self.terminated_dtype)
        self.tasks = torch.zeros(capacity, dtype=self.index_dtype)
        self.pos = self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(
        self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any, task: Any = 0
    ) -> None:
        values = [torch.as_tensor(v) for v in (obs, action, reward, next_obs, terminated, task)]
        if values[0].dim() == self.obs_ndim:
            self.write(*values)
            return
        n = values[0].shape[0]
        values = [v.expand(n) if v.dim() == 0 else v for v in values]
        for k in self.rows(n):
            self.write(*(v[k] for v in values))

    def rows(self, n: int) -> range:
        return range(n)

    def write(self, *values: torch.Tensor) -> None:
        for store, value in zip(self.stores(), values):
            store[self.pos] = value
        self.advance()

    def stores(self) -> tuple[torch.Tensor, ...]:
        return self.obs, self.actions, self.rewards, self.next_obs, self.terminated, self.tasks

    def advance(self) -> None:
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def indices(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randint(0, self.size, (batch_size,), generator=generator)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> ref.Batch:
        if self.size == 0:
            raise ValueError("the buffer is empty")
        idx = self.indices(batch_size, generator)
        return ref.Batch(*(store[idx] for store in self.stores()))


class _LenPastCapacity(_Sketch):
    def advance(self) -> None:
        self.pos = (self.pos + 1) % self.capacity
        self.size += 1


class _OverwriteNewest(_Sketch):
    def advance(self) -> None:
        self.pos = min(self.pos + 1, self.capacity - 1)
        self.size = min(self.size + 1, self.capacity)


class _DropWhenFull(_Sketch):
    def write(self, *values: torch.Tensor) -> None:
        if self.size < self.capacity:
            super().write(*values)


class _WrapEarly(_Sketch):
    def advance(self) -> None:
        self.pos = (self.pos + 1) % max(self.capacity - 1, 1)
        self.size = min(self.size + 1, self.capacity)


class _Aliasing(_Sketch):
    """Keeps what it was given (torch.as_tensor shares memory with tensors and numpy arrays)."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], n_tasks: int = 1) -> None:
        super().__init__(capacity, obs_shape, n_tasks)
        self.items: list[tuple[torch.Tensor, ...]] = []

    def write(self, *values: torch.Tensor) -> None:
        if self.pos == len(self.items):
            self.items.append(values)
        else:
            self.items[self.pos] = values
        self.advance()

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> ref.Batch:
        if self.size == 0:
            raise ValueError("the buffer is empty")
        idx = self.indices(batch_size, generator).tolist()
        dtypes = (torch.float32, torch.int64, torch.float32, torch.float32, torch.bool, torch.int64)
        return ref.Batch(
            *(
                torch.stack([self.items[i][f] for i in idx]).to(dtype)
                for f, dtype in enumerate(dtypes)
            )
        )


class _FirstRowOnly(_Sketch):
    def rows(self, n: int) -> range:
        return range(1)


class _ObsFloat64(_Sketch):
    obs_dtype = torch.float64


class _IndicesAsFloats(_Sketch):
    index_dtype = torch.float32


class _TerminatedAsFloat(_Sketch):
    terminated_dtype = torch.float32


class _EmptySlots(_Sketch):
    def indices(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randint(0, self.capacity, (batch_size,), generator=generator)


class _ModuloBias(_Sketch):
    def indices(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randint(0, self.capacity, (batch_size,), generator=generator) % self.size


class _ExcludeNewest(_Sketch):
    def indices(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randint(0, self.size - 1, (batch_size,), generator=generator)


class _WithoutReplacement(_Sketch):
    def indices(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randperm(self.size, generator=generator)[:batch_size]


class _IgnoresGenerator(_Sketch):
    def indices(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randint(0, self.size, (batch_size,))


class _NoEmptyCheck(_Sketch):
    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> ref.Batch:
        idx = self.indices(batch_size, generator)
        return ref.Batch(*(store[idx] for store in self.stores()))


# --- cases: a table of fixed scenarios and a builder of random ones per part, in order --------

# The fixed scenarios of each part: (label, capacity, obs_shape, n_tasks, steps).
# fmt: off
_LENGTHS = [
    ("a new buffer is empty", 3, (2,), 1, [("len",)]),
    ("len counts adds up to capacity 4", 4, (3,), 1,
     [("len",), *(s for step in _adds(1, 7, "torch") for s in (step, ("len",)))]),
    ("capacity 1", 1, (2,), 1,
     [("len",), *(s for step in _adds(1, 3, "numpy") for s in (step, ("len",)))]),
]
_SINGLE_ADDS = [
    ("three transitions", 5, (3,), 1, [*_adds(1, 3, "torch"), ("contents",)]),
    ("numpy inputs, obs of shape (2, 2), three tasks", 6, (2, 2), 3,
     [*_adds(1, 4, ["numpy", "numpy64"]), ("contents",)]),
    ("0-d tensors for action, reward, terminated and task", 4, (2,), 2,
     [*_adds(1, 3, "tensor0d"), ("contents",)]),
    ("one transition in a buffer of capacity 1", 1, (1,), 1,
     [*_adds(1, 1, "torch"), ("contents",)]),
]
_BATCH_ADDS = [
    ("one batch of 3", 8, (2,), 1,
     [("add", 1, 3, "torch batch, no task"), ("len",), ("contents",)]),
    ("two batches that fill the buffer exactly", 6, (3,), 2,
     [("add", 1, 4, "numpy batch"), ("add", 5, 6, "torch batch"), ("len",), ("contents",)]),
    ("single adds and batches mixed, a batch of 1", 7, (2, 2), 3,
     [("add", 1, 1, "torch"), ("add", 2, 4, "mixed batch"), ("add", 5, 5, "numpy"),
      ("add", 6, 6, "torch batch"), ("len",), ("contents",)]),
]
_OVERWRITES = [
    ("one transition past capacity 3", 3, (2,), 1, [*_adds(1, 4, "torch"), ("contents",)]),
    ("the oldest goes first, add after add (capacity 4)", 4, (2,), 1,
     [*_adds(1, 3, "torch"), *(s for step in _adds(4, 9, "torch") for s in (step, ("contents",)))]),
    ("a batch that wraps around the end", 5, (3,), 2,
     [*_adds(1, 3, "numpy"), ("add", 4, 7, "torch batch"), ("len",), ("contents",)]),
    ("a batch larger than the capacity: its last rows survive", 4, (2,), 1,
     [("add", 1, 6, "numpy batch"), ("len",), ("contents",)]),
    ("capacity 1", 1, (2,), 1, [*_adds(1, 3, "torch"), ("contents",)]),
]
_ALIASING = [
    *((f"single adds ({SINGLE_FORMS[form]}), then the caller reuses its arrays", 4, shape, 2,
       [*_adds(1, 2, form), ("overwrite",), ("contents",)])
      for form, shape in (("numpy", (3,)), ("torch", (3,)), ("tensor0d", (2,)))),
    *((f"a batch ({BATCH_FORMS[form]}), then the caller reuses its arrays", 6, (2,), 2,
       [("add", 1, 3, form), ("overwrite",), ("contents",)])
      for form in ("numpy batch", "torch batch")),
]
_SAMPLING = [
    ("a batch of 4", 5, (3,), 1, [*_adds(1, 3, "torch"), ("fields", 4)]),
    ("a batch of 1, obs of shape (2, 3)", 6, (2, 3), 2,
     [("add", 1, 4, "numpy batch"), ("fields", 1)]),
    ("float64 observations in, a batch larger than the buffer out", 4, (2,), 1,
     [*_adds(1, 2, "numpy64"), ("fields", 10)]),
    ("float64 and int32 arrays in", 8, (4,), 3, [("add", 1, 5, "mixed batch"), ("fields", 6)]),
    ("a full buffer of 4", 4, (2,), 1, [*_adds(1, 4, "torch"), ("counts",)]),
    ("6 transitions in a buffer of capacity 10", 10, (2,), 1, [*_adds(1, 6, "torch"), ("counts",)]),
    ("after wrapping around (capacity 6, 9 added)", 6, (3,), 2,
     [("add", 1, 5, "torch batch"), *_adds(6, 9, "numpy"), ("counts",)]),
    ("the generator decides the batch", 8, (2,), 1,
     [("add", 1, 8, "torch batch, no task"), ("seeded",)]),
    ("sample before any add", 4, (2,), 1, [("empty",)]),
]
# fmt: on


def _fixed(g: torch.Generator, part: str, rows: list[tuple]) -> list[Case]:
    """One scenario of ``part`` per row of a table above, in order."""
    return [
        _scenario(label, part, g, capacity, obs_shape, steps, n_tasks)
        for label, capacity, obs_shape, n_tasks, steps in rows
    ]


def _random_len_cases(g: torch.Generator) -> list[Case]:
    """len after each of random single and batched adds, up to and past capacity."""
    out = []
    for k in range(2):
        capacity, n_tasks = _randint(g, 2, 8), _randint(g, 1, 3)
        steps = []
        for step in _random_adds(g, capacity + _randint(g, 1, 4), capacity, n_tasks):
            steps += [step, ("len",)]
        label = f"random single and batched adds #{k + 1} (capacity {capacity})"
        out.append(_scenario(label, STORING, g, capacity, _random_shape(g), steps, n_tasks))
    return out


def _random_single_add_cases(g: torch.Generator) -> list[Case]:
    """What random single adds, in random forms, store."""
    out = []
    for k in range(2):
        capacity, n_tasks = _randint(g, 3, 10), _randint(g, 1, 4)
        n = _randint(g, 1, capacity)
        forms = [list(SINGLE_FORMS)[_randint(g, 0, 3)] for _ in range(n)]
        steps = [*_adds(1, n, forms), ("contents",)]
        label = f"random single adds #{k + 1}"
        out.append(_scenario(label, STORING, g, capacity, _random_shape(g), steps, n_tasks))
    return out


def _random_batch_cases(g: torch.Generator, part: str, n: int, past_capacity: bool) -> list[Case]:
    """What random batches store: up to capacity, or past it (the ring overwrites)."""
    out = []
    for k in range(n):
        if past_capacity:
            capacity, n_tasks = _randint(g, 2, 9), _randint(g, 1, 3)
            total = capacity + _randint(g, 1, 2 * capacity)
            label = f"random adds past capacity #{k + 1}"
        else:
            capacity, n_tasks = _randint(g, 4, 10), _randint(g, 1, 3)
            total = capacity
            label = f"random batches #{k + 1}"
        steps = [*_random_adds(g, total, capacity, n_tasks), ("len",), ("contents",)]
        out.append(_scenario(label, part, g, capacity, _random_shape(g), steps, n_tasks))
    return out


# --- the exercise --------------------------------------------------------------------------------


@register
class ReplayBufferExercise(Exercise):
    solves = ref.ReplayBuffer
    lesson = LESSON
    parts = {STORING: 1, OVERWRITE: 1, SAMPLING: 1}  # the ring and uniform draws carry the idea

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        return {
            "len(buf) must stop at capacity: once the buffer is full, an add overwrites a "
            "transition instead of adding one (e.g. `self.size = min(self.size + 1, "
            "self.capacity)`)": _LenPastCapacity,
            "once full, overwrite the OLDEST transition: the write position must wrap around to "
            "slot 0 (`self.pos = (self.pos + 1) % self.capacity`), not stay on the last slot, "
            "which overwrites the newest one again and again": _OverwriteNewest,
            "once full, keep adding: each new transition overwrites the oldest one, it is not "
            "thrown away": _DropWhenFull,
            "off by one: the write position must wrap after slot capacity - 1, with "
            "`(pos + 1) % capacity`, so that all capacity slots are used": _WrapEarly,
            "store a copy, not the caller's array: write into tensors the buffer owns (e.g. "
            "preallocated with torch.zeros, `self.obs[i] = torch.as_tensor(obs)`), or "
            "`.clone()`; torch.as_tensor and torch.from_numpy share memory with a numpy array, "
            "and a list of the caller's tensors keeps them": _Aliasing,
            "a batched add stores every row: with obs of shape (N, *obs_shape), write all N "
            "transitions, one slot after the other, wrapping around": _FirstRowOnly,
            "store observations (obs and next_obs) as float32, whatever dtype the caller "
            "passes, e.g. preallocate `torch.zeros(..., dtype=torch.float32)`": _ObsFloat64,
            "actions and tasks are indices: store them as torch.int64 (`dtype=torch.long`), "
            "so that `q.gather(1, actions[:, None])` works": _IndicesAsFloats,
            "store `terminated` as bool (`dtype=torch.bool`), so that `~terminated` masks the "
            "bootstrap": _TerminatedAsFloat,
            "sample only among the stored transitions: draw slots with "
            "`torch.randint(0, len(self), ...)`, not up to capacity (unwritten slots hold "
            "zeros)": _EmptySlots,
            (
                "`torch.randint(0, capacity) % len(self)` is not uniform: slots below "
                "capacity % len come up more often; draw `torch.randint(0, len(self), ...)`"
            ): _ModuloBias,
            (
                "torch.randint's upper bound is already exclusive: `torch.randint(0, len(self), "
                "...)` can return every stored slot; `len(self) - 1` never returns the last one"
            ): _ExcludeNewest,
            "sample WITH replacement (torch.randint, not torch.randperm): a batch may repeat "
            "transitions and may be larger than the buffer": _WithoutReplacement,
            "use the generator you are given: `torch.randint(..., generator=generator)`, so "
            "the same seed gives the same batch": _IgnoresGenerator,
            (
                "check for an empty buffer first and raise a ValueError that says so (e.g. `if "
                "len(self) == 0: raise ValueError('the buffer is empty; add transitions first')`)"
            ): _NoEmptyCheck,
        }

    # --- cases -------------------------------------------------------------------------------

    def cases(self, generator: torch.Generator) -> list[Case]:
        g = generator
        return [
            *_fixed(g, STORING, _LENGTHS),
            *_random_len_cases(g),
            *_fixed(g, STORING, _SINGLE_ADDS),
            *_random_single_add_cases(g),
            *_fixed(g, STORING, _BATCH_ADDS),
            *_random_batch_cases(g, STORING, 2, past_capacity=False),
            *_fixed(g, OVERWRITE, _OVERWRITES),
            *_random_batch_cases(g, OVERWRITE, 3, past_capacity=True),
            *_fixed(g, STORING, _ALIASING),
            *_fixed(g, SAMPLING, _SAMPLING),
        ]

    # --- half 1: run the scenario on a class ------------------------------------------------

    def probe(self, obj: Any, case: Case) -> Any:
        data = copy.deepcopy(case.data)
        table, size = data["table"], data["obs_size"]
        passed: list[tuple[tuple, dict]] = []
        records: list[dict] = []
        buf: Any = None
        capacity = 1
        for number, step in enumerate(data["steps"]):
            op = step[0]
            if op == "new":
                _, capacity, shape, n_tasks = step
                buf = (
                    obj(capacity, shape) if n_tasks == 1 else obj(capacity, shape, n_tasks=n_tasks)
                )
            elif op == "add":
                args, kwargs = _inputs(table, step[1], step[2], step[3], data["steps"][0][3])
                passed.append((args, kwargs))
                buf.add(*args, **kwargs)
            elif op == "overwrite":
                for args, kwargs in passed:
                    _overwrite(args, kwargs)
            elif op == "len":
                records.append({"step": number, "len": len(buf)})
            elif op in ("contents", "counts"):
                draws = SAMPLES_PER_SLOT * capacity if op == "contents" else UNIFORM_DRAWS
                g = torch.Generator().manual_seed(1000 + number)
                record: dict[str, Any] = {"step": number, "len": len(buf)}
                rows = _rows_or_problem(buf.sample(draws, generator=g), draws, size)
                if isinstance(rows, str):
                    record["problem"] = rows
                else:
                    unique, counts = _unique_rows(rows)
                    record["rows"] = _plain_rows(unique)
                    if op == "counts":
                        record["counts"] = counts.tolist()
                records.append(record)
            elif op == "fields":
                records.append({"step": number, "fields": _describe_batch(buf.sample(step[1]))})
            elif op == "seeded":
                records.append({"step": number, **_seeded(buf, size)})
            elif op == "empty":
                records.append({"step": number, **_empty(buf)})
        return {"records": records}

    def collect(
        self, obj: Any, seed: int = 0, judge_as_you_go: bool = False
    ) -> list[Outcome | None]:
        """As `Exercise.collect`, but a method still raising NotImplementedError after the
        first case fails only its own cases: a class has several methods, written one by one."""
        outcomes: list[Outcome | None] = []
        failed_parts: set[str] = set()
        for index, case in enumerate(self.build_cases(seed)):
            if case.part in failed_parts:
                outcomes.append(None)
                continue
            outcome = run_guarded(lambda case=case: self.probe(obj, case), self.time_limit)
            outcomes.append(outcome)
            if outcome.error == "CheckTimeout" or (
                outcome.error == "NotImplementedError" and index == 0
            ):
                break
            if judge_as_you_go and self._verdict(case, outcome) is not None:
                failed_parts.add(case.part)
        return outcomes

    # --- half 2: judge the records ----------------------------------------------------------

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        if not isinstance(got, dict) or not isinstance(got.get("records"), list):
            return "the check could not read what the buffer did"
        got_records, want_records = got["records"], want["records"]
        if len(got_records) != len(want_records):
            return "the scenario did not run to its end"
        lines, steps = case.data["lines"], case.data["steps"]
        for g, w in zip(got_records, want_records):
            number = w["step"]
            reason = _judge_record(g, w, case.data)
            if reason is not None:
                overwritten = any(s[0] == "overwrite" for s in steps[:number])
                if overwritten and "caller" not in reason:
                    reason += (
                        " (the caller overwrote its arrays after `add` returned: the buffer "
                        "must have kept its own copy)"
                    )
                return f"line {number + 1} (`{lines[number].split('  #')[0]}`): {reason}"
        return None


# --- probe helpers: they see the student's objects, return plain data ---------------------------


def _rows_or_problem(batch: Any, draws: int, size: int) -> torch.Tensor | str:
    fields = _read_batch(batch, draws)
    if isinstance(fields, str):
        return fields
    return _rows(fields, size)


def _describe_batch(batch: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIELDS:
        try:
            value = getattr(batch, name)
        except Exception:
            out[name] = {"kind": "missing", "batch": type(batch).__name__}
            continue
        if isinstance(value, torch.Tensor):
            kind, dtype = "tensor", str(value.dtype)
        elif isinstance(value, np.ndarray):
            kind, dtype = "numpy array", f"numpy.{value.dtype}"
        else:
            kind, dtype = type(value).__name__, ""
        shape = list(value.shape) if kind != type(value).__name__ else None
        out[name] = {"kind": kind, "dtype": dtype, "shape": shape}
    return out


def _seeded(buf: Any, size: int) -> dict[str, Any]:
    batches = []
    for seed in (1, 1, 2):
        rows = _rows_or_problem(
            buf.sample(64, generator=torch.Generator().manual_seed(seed)), 64, size
        )
        if isinstance(rows, str):
            return {"problem": rows}
        batches.append(rows)
    unseeded = _rows_or_problem(buf.sample(64), 64, size)
    return {
        "same": bool(torch.equal(batches[0], batches[1])),
        "differ": not torch.equal(batches[0], batches[2]),
        "unseeded": unseeded if isinstance(unseeded, str) else None,
    }


def _empty(buf: Any) -> dict[str, Any]:
    try:
        buf.sample(1)
    except (NotImplementedError, CheckTimeout):
        raise
    except Exception as exc:
        return {"raised": type(exc).__name__, "value_error": isinstance(exc, ValueError)}
    return {"raised": None, "value_error": False}


# --- judge helpers: plain data only ------------------------------------------------------------


def _judge_record(got: Any, want: dict, data: dict) -> str | None:
    if not isinstance(got, dict):
        return "the check could not read this step"
    if "problem" in got or "problem" in want:
        if got.get("problem") == want.get("problem"):
            return None
        return str(got.get("problem") or "the sampled batch differs from the expected one")
    if "len" in want and got.get("len") != want["len"]:
        return f"len(buf) is {got.get('len')}; expected {want['len']}"
    if "rows" in want:
        reason = _compare_contents(got.get("rows"), want["rows"], data)
        if reason is not None or "counts" not in want:
            return reason
        return _compare_counts(got.get("counts"), want["counts"], want["rows"])
    if "fields" in want:
        return _compare_fields(got.get("fields"), want["fields"])
    if "same" in want:
        return _compare_seeded(got, want)
    if "value_error" in want:
        return _compare_empty(got, want)
    return None


def _transition_id(row: list, n: int) -> int | None:
    x = row[0] if row else None
    if isinstance(x, (int, float)) and float(x).is_integer() and 1 <= x <= n:
        return int(x)
    return None


def _column_name(j: int, size: int) -> str:
    names = ["obs"] * size + ["action", "reward"] + ["next_obs"] * size + ["terminated", "task"]
    if j >= len(names):
        return f"column {j}"
    name = names[j]
    if name in ("obs", "next_obs") and size > 1:
        return f"{name} (flattened element {j if name == 'obs' else j - size - 2})"
    return name


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _compare_contents(got: Any, want: list, data: dict) -> str | None:
    if got == want:
        return None
    if not isinstance(got, list) or not all(isinstance(r, list) for r in got):
        return "the check could not read the sampled transitions"
    n, size = len(data["table"]["obs"]), data["obs_size"]
    for row in got:
        if row and row[0] == MUTATED:
            return (
                "sample returned obs = -7, the value the caller wrote into its own array AFTER "
                "add returned: the buffer still refers to the caller's array instead of a copy"
            )
    for row in got:
        if _transition_id(row, n) is None:
            obs = ", ".join(_show(x) for x in row[:size])
            empty = " (all zeros: a slot that was never written)" if not any(row) else ""
            return f"sample returned a transition that was never added, with obs [{obs}]{empty}"
    got_ids = sorted({_transition_id(r, n) for r in got})
    want_ids = sorted({_transition_id(r, n) for r in want})
    if got_ids != want_ids:
        return f"the buffer holds transitions {got_ids}; expected {want_ids}"
    for t in want_ids:
        got_rows = [r for r in got if _transition_id(r, n) == t]
        want_rows = [r for r in want if _transition_id(r, n) == t]
        if got_rows == want_rows:
            continue
        if len(got_rows) > 1:
            return f"transition {t} comes back with {len(got_rows)} different sets of values"
        for j, (a, b) in enumerate(zip(got_rows[0], want_rows[0])):
            if a != b:
                return (
                    f"transition {t} comes back with {_column_name(j, size)} = {_show(a)}; "
                    f"expected {_show(b)}"
                )
        return f"transition {t} comes back with the wrong number of values"
    return "the sampled transitions differ from the expected ones"


def _compare_counts(got: Any, want: list, rows: list) -> str | None:
    if not isinstance(got, list) or len(got) != len(want):
        return "the check could not read how often each transition came back"
    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    if g.sum() != w.sum() or len(w) < 2:
        return None if len(w) < 2 else "the number of sampled transitions is wrong"
    statistic = float(((g - w) ** 2 / np.maximum(g + w, 1)).sum())
    dof = len(w) - 1
    p_value = float(
        torch.special.gammaincc(
            torch.tensor(dof / 2, dtype=torch.float64),
            torch.tensor(statistic / 2, dtype=torch.float64),
        )
    )
    if p_value >= P_VALUE:
        return None
    counts = ", ".join(f"{int(c)}" for c in g)
    ids = [int(r[0]) if isinstance(r[0], (int, float)) else r[0] for r in rows]
    p_shown = f"p = {p_value:.1e}" if p_value > 1e-12 else "p < 1e-12"
    return (
        f"sample is not uniform: out of {int(g.sum())} draws, transitions {ids} came back "
        f"[{counts}] times; expected about {g.sum() / len(g):.0f} each (chi-square test, "
        f"{p_shown})"
    )


def _compare_fields(got: Any, want: dict) -> str | None:
    if not isinstance(got, dict):
        return "the check could not read the sampled batch"
    for name in FIELDS:
        g, w = got.get(name), want[name]
        if not isinstance(g, dict):
            return f"the check could not read batch.{name}"
        if g.get("kind") == "missing":
            return (
                f"sample returned {g.get('batch')}, which has no `.{name}`; return a "
                "`Batch(obs, actions, rewards, next_obs, terminated, tasks)`"
            )
        if g.get("kind") != w["kind"]:
            return f"batch.{name} is a {g.get('kind')}; expected a torch.Tensor"
        if g.get("shape") != w["shape"]:
            shape = tuple(g.get("shape") or ())
            return f"batch.{name} has shape {shape}; expected {tuple(w['shape'])}"
        if g.get("dtype") != w["dtype"]:
            return f"batch.{name} has dtype {g.get('dtype')}; expected {w['dtype']}"
    return None


def _compare_seeded(got: dict, want: dict) -> str | None:
    if got.get("problem"):
        return str(got["problem"])
    if got.get("same") != want["same"]:
        return (
            "two calls with generators seeded alike returned different batches: draw the "
            "random slots from the `generator` argument"
        )
    if got.get("differ") != want["differ"]:
        return "generators with different seeds returned the same batch"
    if got.get("unseeded") != want["unseeded"]:
        return f"without a generator: {got.get('unseeded')}"
    return None


def _compare_empty(got: dict, want: dict) -> str | None:
    if got.get("value_error") == want["value_error"]:
        return None
    if not want["value_error"]:
        return f"sample on an empty buffer raised {got.get('raised')}"
    if got.get("raised") is None:
        return "sample on an empty buffer returned a batch; it must raise ValueError"
    return f"sample on an empty buffer raised {got.get('raised')}; expected a ValueError"
