"""Experience replay: a ring buffer of transitions over preallocated tensors.

Taught in Lesson 02. The vocabulary is torchrl's:

- the **storage** is a set of tensors allocated once, with a leading dimension of ``capacity``
  (one slot per transition);
- the **writer cursor** is the slot the next transition goes to; it advances by one per
  transition and wraps around, so transition number ``i`` (counting from 0, over the buffer's
  whole life) lives in slot ``i % capacity`` and, once the buffer is full, overwrites the oldest
  transition;
- the **sampler** draws slots uniformly with replacement among the stored transitions.

:class:`ReplayBuffer` is the single-agent buffer the lesson builds. :class:`PopulationReplay`
is the same ring, with one leading *agent* dimension, used by the course's trainer
(:func:`course.population.train_population`) to keep one independent buffer per agent in a
single set of tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Batch", "PopulationReplay", "ReplayBuffer"]

ArrayLike = torch.Tensor | np.ndarray | float | int | bool | Sequence[float]


class Batch(NamedTuple):
    """A batch of transitions, each field with leading dimension ``B`` (the batch size).

    Attributes:
        obs: Observations before the action, float32 ``[B, *obs_shape]``.
        actions: Actions taken, int64 ``[B]``.
        rewards: Rewards received, float32 ``[B]``.
        next_obs: Observations after the action, float32 ``[B, *obs_shape]``.
        terminated: Whether ``next_obs`` is a terminal state (no bootstrapping past it), bool
            ``[B]``. A time-limit truncation is *not* a termination.
        tasks: Task id of each transition, int64 ``[B]``.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    tasks: torch.Tensor


def _normalize_shape(obs_shape: int | Sequence[int]) -> tuple[int, ...]:
    shape = (int(obs_shape),) if isinstance(obs_shape, (int, np.integer)) else tuple(obs_shape)
    if any(int(d) <= 0 for d in shape):
        raise ValueError(f"obs_shape {shape} has a non-positive dimension; use positive sizes")
    return tuple(int(d) for d in shape)


def _as_tensor(value: ArrayLike, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # as_tensor may share memory with the caller's array; every caller copies the result into
    # the storage, so the buffer never aliases it.
    return torch.as_tensor(np.asarray(value) if isinstance(value, Sequence) else value).to(
        device=device, dtype=dtype
    )


def _as_actions(value: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(value) if isinstance(value, Sequence) else value)
    if t.is_floating_point() or t.is_complex():
        if not torch.equal(t, t.round()):
            raise ValueError(f"{name} must be integers, got non-integral values of dtype {t.dtype}")
    return t.to(device=device, dtype=torch.int64)


class ReplayBuffer:
    """A ring buffer of transitions over preallocated tensors (Lesson 02).

    Transition ``i`` (the ``i``-th ever added, from 0) is written to slot ``i % capacity``; once
    the buffer is full the oldest transition is overwritten. :meth:`add` copies its inputs into
    the storage, so changing the caller's arrays afterwards never changes the stored data.

    Args:
        capacity: Maximum number of transitions kept.
        obs_shape: Shape of one observation, e.g. ``(4,)`` or ``4`` for CartPole.
        n_tasks: Number of tasks; every stored transition carries a task id in
            ``[0, n_tasks)``.
        device: Device of the storage tensors (and of sampled batches).

    Attributes:
        storage: The preallocated tensors, a :class:`Batch` whose fields have leading
            dimension ``capacity``; only the first ``len(self)`` slots hold data until the
            buffer is full.
        cursor: The slot the next transition will be written to.
        n_added: Number of transitions added over the buffer's life (``cursor`` is
            ``n_added % capacity``).

    Example:
        >>> buf = ReplayBuffer(capacity=3, obs_shape=(2,))
        >>> for i in range(4):
        ...     buf.add([i, i], i % 2, 1.0, [i + 1, i + 1], False)
        >>> len(buf), buf.cursor, buf.storage.obs[:, 0].tolist()
        (3, 1, [3.0, 1.0, 2.0])
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: int | Sequence[int],
        n_tasks: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        if int(capacity) < 1:
            raise ValueError(f"capacity is {capacity}; a replay buffer needs capacity >= 1")
        if int(n_tasks) < 1:
            raise ValueError(f"n_tasks is {n_tasks}; use n_tasks >= 1")
        self.capacity = int(capacity)
        self.obs_shape = _normalize_shape(obs_shape)
        self.n_tasks = int(n_tasks)
        self.device = torch.device(device)
        cap, dev = self.capacity, self.device
        self.storage = Batch(
            obs=torch.zeros((cap, *self.obs_shape), dtype=torch.float32, device=dev),
            actions=torch.zeros(cap, dtype=torch.int64, device=dev),
            rewards=torch.zeros(cap, dtype=torch.float32, device=dev),
            next_obs=torch.zeros((cap, *self.obs_shape), dtype=torch.float32, device=dev),
            terminated=torch.zeros(cap, dtype=torch.bool, device=dev),
            tasks=torch.zeros(cap, dtype=torch.int64, device=dev),
        )
        self.cursor = 0
        self.n_added = 0
        self._size = 0

    def __len__(self) -> int:
        """Number of transitions currently stored (at most ``capacity``)."""
        return self._size

    def add(
        self,
        obs: ArrayLike,
        action: ArrayLike,
        reward: ArrayLike,
        next_obs: ArrayLike,
        terminated: ArrayLike,
        task: ArrayLike = 0,
    ) -> None:
        """Store one transition, or a batch of ``N`` transitions in order.

        A single transition has ``obs`` and ``next_obs`` of shape ``obs_shape`` and scalars for
        the rest; a batch has ``obs`` and ``next_obs`` of shape ``[N, *obs_shape]`` and the rest
        of shape ``[N]`` (``task`` may stay a scalar, applied to every row). Row ``k`` of a batch
        is stored as if it had been added alone after rows ``0..k-1``; when ``N > capacity``
        only the last ``capacity`` rows survive.

        Args:
            obs: Observation(s) before the action, ``obs_shape`` or ``[N, *obs_shape]``.
            action: Integer action(s), scalar or ``[N]``.
            reward: Reward(s), scalar or ``[N]``.
            next_obs: Observation(s) after the action, same shape as ``obs``.
            terminated: Whether ``next_obs`` is terminal (not merely truncated), scalar or
                ``[N]``.
            task: Task id(s) in ``[0, n_tasks)``, scalar or ``[N]``.

        Raises:
            ValueError: If a shape, an action or a task id does not fit the buffer.
        """
        dev = self.device
        obs_t = _as_tensor(obs, torch.float32, dev)
        next_obs_t = _as_tensor(next_obs, torch.float32, dev)
        nd = len(self.obs_shape)
        if obs_t.shape[obs_t.dim() - nd :] != self.obs_shape or obs_t.dim() not in (nd, nd + 1):
            raise ValueError(
                f"obs has shape {tuple(obs_t.shape)}; expected {self.obs_shape} for one "
                f"transition or {('N', *self.obs_shape)} for a batch of N"
            )
        if next_obs_t.shape != obs_t.shape:
            raise ValueError(
                f"next_obs has shape {tuple(next_obs_t.shape)} but obs has "
                f"{tuple(obs_t.shape)}; they must match"
            )
        single = obs_t.dim() == nd
        if single:
            obs_t, next_obs_t = obs_t.unsqueeze(0), next_obs_t.unsqueeze(0)
        n = obs_t.shape[0]

        def column(value: ArrayLike, name: str, dtype: torch.dtype | None) -> torch.Tensor:
            if dtype is None:
                t = _as_actions(value, name, dev)
            else:
                t = _as_tensor(value, dtype, dev)
            if t.dim() == 0 and (single or name == "task"):
                return t.expand(n)
            if t.shape != (n,):
                want = "a scalar" if single else f"shape ({n},)"
                raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {want}")
            return t

        actions_t = column(action, "action", None)
        rewards_t = column(reward, "reward", torch.float32)
        terminated_t = column(terminated, "terminated", torch.bool)
        tasks_t = column(task, "task", None)
        if n == 0:
            return
        if tasks_t.min() < 0 or tasks_t.max() >= self.n_tasks:
            raise ValueError(
                f"task ids must lie in [0, {self.n_tasks}); got values from "
                f"{int(tasks_t.min())} to {int(tasks_t.max())}"
            )
        if actions_t.min() < 0:
            raise ValueError(f"actions must be non-negative indices; got {int(actions_t.min())}")

        keep = min(n, self.capacity)
        first = self.n_added + n - keep  # global index of the first surviving row
        slots = (first + torch.arange(keep, device=dev)) % self.capacity
        rows = slice(n - keep, n)
        for store, value in zip(
            self.storage,
            (obs_t, actions_t, rewards_t, next_obs_t, terminated_t, tasks_t),
            strict=True,
        ):
            store[slots] = value[rows]
        self.n_added += n
        self.cursor = self.n_added % self.capacity
        self._size = min(self._size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """Draw ``batch_size`` stored transitions uniformly at random, with replacement.

        Args:
            batch_size: Number of transitions ``B`` to draw (>= 1).
            generator: Source of randomness; the same generator state gives the same batch.

        Returns:
            A :class:`Batch` of fresh tensors with leading dimension ``B``, on ``device``.

        Raises:
            ValueError: If the buffer is empty or ``batch_size < 1``.
        """
        if self._size == 0:
            raise ValueError("cannot sample from an empty ReplayBuffer; add transitions first")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size is {batch_size}; use batch_size >= 1")
        gen_device = generator.device if generator is not None else self.device
        idx = torch.randint(
            self._size, (int(batch_size),), generator=generator, device=gen_device
        ).to(self.device)
        return Batch(*(store[idx] for store in self.storage))


class PopulationReplay:
    """One ring buffer per agent, for ``n_agents`` independent agents, in one shared tensor.

    Agent ``a``'s transitions follow the same slot order as :class:`ReplayBuffer` (its ``i``-th
    transition goes to slot ``i % capacity``), and what one agent adds or samples never depends
    on the other agents. Used by :func:`course.population.train_population` to step many
    agents with a few tensor operations.

    Unlike :class:`ReplayBuffer`, a transition is stored as one float32 *row* (observation, next
    observation, action, reward, terminated, task): sampling is then a single gather of whole
    rows instead of one per field, which matters on a CPU, where each field's random reads
    miss the cache separately. Actions and task ids are stored exactly as long as they are
    below 2**24.

    Args:
        n_agents: Number of agents ``N``.
        capacity: Transitions kept per agent.
        obs_shape: Shape of one observation.
        device: Device of the storage.

    Attributes:
        rows: The storage, float32 ``[N * capacity, 2 * obs_size + 4]``; agent ``a``'s slot
            ``i`` is row ``a * capacity + i``.
        cursor: Next slot of each agent, int64 ``[N]``.
        size: Number of stored transitions of each agent, int64 ``[N]``.
    """

    def __init__(
        self,
        n_agents: int,
        capacity: int,
        obs_shape: int | Sequence[int],
        device: torch.device | str = "cpu",
    ) -> None:
        if int(n_agents) < 1 or int(capacity) < 1:
            raise ValueError(
                f"n_agents={n_agents}, capacity={capacity}; both must be >= 1 for a replay"
            )
        self.n_agents, self.capacity = int(n_agents), int(capacity)
        self.obs_shape = _normalize_shape(obs_shape)
        self.device = torch.device(device)
        self._obs_size = int(np.prod(self.obs_shape))
        width = 2 * self._obs_size + 4
        self.rows = torch.zeros(self.n_agents * self.capacity, width, device=self.device)
        self.cursor = torch.zeros(self.n_agents, dtype=torch.int64, device=self.device)
        self.size = torch.zeros(self.n_agents, dtype=torch.int64, device=self.device)
        self._offset = torch.arange(self.n_agents, device=self.device).unsqueeze(1) * capacity
        self._filled = False  # whether every agent has a transition (checked until it has)

    @property
    def storage(self) -> Batch:
        """The stored transitions as a :class:`Batch` with leading dimensions ``[N, capacity]``
        (views of :attr:`rows` for the float fields, copies for the others)."""
        return self._unpack(self.rows.view(self.n_agents, self.capacity, -1))

    def _unpack(self, rows: torch.Tensor) -> Batch:
        f = self._obs_size
        obs, next_obs = rows[..., :f], rows[..., f : 2 * f]
        if len(self.obs_shape) > 1:
            obs, next_obs = (o.unflatten(-1, self.obs_shape) for o in (obs, next_obs))
        return Batch(
            obs=obs,
            actions=rows[..., 2 * f].long(),
            rewards=rows[..., 2 * f + 1],
            next_obs=next_obs,
            terminated=rows[..., 2 * f + 2] != 0,
            tasks=rows[..., 2 * f + 3].long(),
        )

    def add(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        valid: torch.Tensor,
        tasks: torch.Tensor | None = None,
    ) -> None:
        """Append, for every agent, the rows of its batch where ``valid`` is true, in order.

        Args:
            obs: ``[N, E, *obs_shape]`` float32.
            actions: ``[N, E]`` int64.
            rewards: ``[N, E]`` float32.
            next_obs: ``[N, E, *obs_shape]`` float32.
            terminated: ``[N, E]`` bool.
            valid: ``[N, E]`` bool; rows that are real transitions (see
                :func:`course.dqn.real_transitions`).
            tasks: ``[N, E]`` int64 task ids (default 0).

        Raises:
            ValueError: If ``E`` exceeds the capacity (rows would overwrite each other).
        """
        if valid.shape[1] > self.capacity:
            raise ValueError(
                f"{valid.shape[1]} rows per agent exceed the capacity {self.capacity}; "
                "use a larger capacity"
            )
        rank = valid.cumsum(1) - 1  # position of each valid row among its agent's new rows
        slots = (self.cursor.unsqueeze(1) + rank) % self.capacity + self._offset
        columns = [
            obs.flatten(2),
            next_obs.flatten(2),
            actions.unsqueeze(-1),
            rewards.unsqueeze(-1),
            terminated.unsqueeze(-1),
            (torch.zeros_like(actions) if tasks is None else tasks).unsqueeze(-1),
        ]
        packed = torch.cat(columns, dim=-1)  # promoted to a float type, stored as float32
        self.rows[slots[valid]] = packed[valid]
        count = valid.sum(1)
        self.cursor = (self.cursor + count) % self.capacity
        self.size = torch.clamp(self.size + count, max=self.capacity)

    def sample(self, uniform: torch.Tensor) -> Batch:
        """Draw, for each agent, transitions uniformly among its stored ones.

        Randomness comes from the caller, so each agent can draw it from its own generator.

        Args:
            uniform: ``[N, B]`` floats in ``[0, 1)``; row ``a`` picks agent ``a``'s slots.

        Returns:
            A :class:`Batch` with leading dimensions ``[N, B]``.

        Raises:
            ValueError: If some agent has no stored transition.
        """
        if not self._filled:
            self._filled = bool((self.size > 0).all())  # stays true: replays only grow
            if not self._filled:
                raise ValueError(
                    "cannot sample: some agent's replay is empty; add transitions first"
                )
        size = self.size.unsqueeze(1)
        idx = torch.minimum((uniform * size).long(), size - 1) + self._offset
        rows = self.rows.index_select(0, idx.flatten()).view(*idx.shape, -1)
        return self._unpack(rows)
