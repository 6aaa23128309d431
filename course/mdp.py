"""Finite Markov decision processes as tensors, solved exactly.

Taught in Lesson 01. A finite MDP is five arrays:

- ``P[s, a, t]``: the probability that action ``a`` in state ``s`` leads to state ``t``;
  each row ``P[s, a]`` sums to 1.
- ``R[s, a]``: the expected reward of taking ``a`` in ``s`` (the reward of the transition).
- ``gamma``: the discount, ``0 <= gamma < 1``, or ``gamma = 1`` when episodes end.
- ``terminal[s]``: states where the episode ends. They are absorbing with zero reward
  (``P[s, a, s] = 1``, ``R[s, a] = 0``), so every value there is 0 and a backup never
  bootstraps from them.
- ``initial[s]``: where episodes start.

A policy is a tensor ``pi[s, a]`` of action probabilities (rows sum to 1); a deterministic
policy is one-hot. Values are ``V[s]`` and ``Q[s, a]``.

Dtype: ``TabularMDP`` keeps the floating dtype it is given (float32 or float64); anything
else (lists, integers) becomes float64. The solvers ``policy_evaluation`` and
``value_iteration`` compute in float64 whatever the MDP's dtype, so that a tolerance of
``1e-8`` is reachable, and return the MDP's dtype. The one-step operators (``bellman_backup``,
``q_from_v``) compute in the MDP's dtype.

The module reads top to bottom like the lesson: the ``TabularMDP`` container, two ways to
build one (``gridworld`` and ``from_gymnasium``), the five graded exercises
(``bellman_backup``, ``policy_evaluation``, ``q_from_v``, ``greedy_policy``,
``value_iteration``), where a policy's episodes end (``absorption_probabilities``,
``outcome_probabilities``), and random MDPs and policies for testing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "ACTION_DELTAS",
    "ACTION_NAMES",
    "TERMINAL_KINDS",
    "GridMDP",
    "TabularMDP",
    "absorption_probabilities",
    "bellman_backup",
    "from_gymnasium",
    "greedy_policy",
    "gridworld",
    "outcome_probabilities",
    "policy_evaluation",
    "q_from_v",
    "random_mdp",
    "random_policy",
    "uniform_policy",
    "value_iteration",
]

#: Tolerance for "sums to 1" checks; loose enough for float32, tight enough to catch mistakes.
SUM_ATOL = 1e-5


# ---------------------------------------------------------------------------------------------
# The container
# ---------------------------------------------------------------------------------------------


def _as_float_tensor(x: Any, name: str, device: torch.device | str | None) -> torch.Tensor:
    """Converts an array-like to a floating tensor, keeping float32/float64 when given."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{name} must be a numeric array (tensor, numpy array or nested list)"
            ) from err
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if device is not None:
        t = t.to(device)
    return t


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def _check_transitions(P: torch.Tensor) -> None:
    """Raises a ValueError unless ``P`` is ``[S, A, S]`` with rows that are distributions."""
    if P.ndim != 3:
        raise ValueError(
            f"P has shape {tuple(P.shape)}; it must have shape [S, A, S] "
            "(states, actions, next states)"
        )
    S, A, S2 = P.shape
    if S != S2:
        raise ValueError(
            f"P has shape {tuple(P.shape)}; its first and last dimensions must both be "
            "the number of states, as in [S, A, S]"
        )
    if S == 0 or A == 0:
        raise ValueError(
            f"P has shape {tuple(P.shape)}; an MDP needs at least one state and one action"
        )
    if not torch.isfinite(P).all():
        idx = _first_index(~torch.isfinite(P))
        raise ValueError(f"P{list(idx)} is {P[idx].item()}; probabilities must be finite numbers")
    if (P < 0).any():
        idx = _first_index(P < 0)
        raise ValueError(
            f"P{list(idx)} is {_fmt(P[idx].item())}; probabilities must be non-negative"
        )
    sums = P.sum(-1)
    bad = (sums - 1).abs() > SUM_ATOL
    if bad.any():
        s, a = _first_index(bad)
        raise ValueError(
            f"P[{s}, {a}] sums to {_fmt(sums[s, a].item())}; each row of P must sum to 1 "
            "(P[s, a, :] is a distribution over next states)"
        )


def _check_rewards(R: torch.Tensor, P: torch.Tensor) -> None:
    """Raises a ValueError unless ``R`` is a finite ``[S, A]`` that matches ``P``."""
    S, A, _ = P.shape
    if R.shape != (S, A):
        raise ValueError(
            f"R has shape {tuple(R.shape)}; it must have shape [S, A] = ({S}, {A}) "
            f"to match P of shape {tuple(P.shape)}"
        )
    if not torch.isfinite(R).all():
        idx = _first_index(~torch.isfinite(R))
        raise ValueError(f"R{list(idx)} is {R[idx].item()}; rewards must be finite numbers")


def _checked_terminal(terminal: Any, P: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """The boolean ``[S]`` mask of terminal states (none by default), each one absorbing with
    zero reward."""
    S = P.shape[0]
    if terminal is None:
        terminal = torch.zeros(S, dtype=torch.bool, device=P.device)
    else:
        terminal = torch.as_tensor(
            np.asarray(terminal) if not isinstance(terminal, torch.Tensor) else terminal
        )
        terminal = terminal.to(P.device)
        if terminal.shape != (S,):
            raise ValueError(
                f"terminal has shape {tuple(terminal.shape)}; it must be a boolean mask "
                f"with one entry per state, shape ({S},)"
            )
        if terminal.dtype != torch.bool:
            if not ((terminal == 0) | (terminal == 1)).all():
                raise ValueError(
                    "terminal must be a boolean mask (True for terminal states), "
                    f"got values {terminal.unique().tolist()}"
                )
            terminal = terminal.to(torch.bool)
    if terminal.all():
        raise ValueError("every state is terminal; at least one state must be non-terminal")
    for s in terminal.nonzero().flatten().tolist():
        stay = P[s, :, s]
        if ((stay - 1).abs() > SUM_ATOL).any():
            a = int(((stay - 1).abs() > SUM_ATOL).nonzero()[0])
            raise ValueError(
                f"terminal state {s} is not absorbing: P[{s}, {a}, {s}] is "
                f"{_fmt(stay[a].item())}; a terminal state must have P[s, a, s] = 1 for "
                "every action"
            )
        if (R[s] != 0).any():
            a = int((R[s] != 0).nonzero()[0])
            raise ValueError(
                f"R[{s}, {a}] is {_fmt(R[s, a].item())} at terminal state {s}; terminal "
                "states must have zero reward (put it on the transition into the state)"
            )
    return terminal


def _checked_gamma(gamma: Any, terminal: torch.Tensor) -> float:
    """``gamma`` as a float in ``[0, 1]``; 1 only when some state is terminal."""
    if isinstance(gamma, torch.Tensor):
        gamma = gamma.item()
    try:
        gamma = float(gamma)
    except (TypeError, ValueError) as err:
        raise ValueError(f"gamma is {gamma!r}; it must be a number in [0, 1]") from err
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(
            f"gamma is {_fmt(gamma)}; it must satisfy 0 <= gamma < 1 "
            "(gamma = 1 is allowed only with terminal states)"
        )
    if gamma == 1.0 and not terminal.any():
        raise ValueError(
            "gamma is 1 but no state is terminal, so returns can be infinite; "
            "use gamma < 1 or mark terminal states"
        )
    return gamma


def _checked_initial(initial: Any, terminal: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """The initial distribution in ``P``'s dtype (by default uniform over non-terminal states)."""
    S, dtype = P.shape[0], P.dtype
    if initial is None:
        return (~terminal).to(dtype) / (~terminal).sum()
    initial = _as_float_tensor(initial, "initial", P.device).to(dtype)
    if initial.shape != (S,):
        raise ValueError(
            f"initial has shape {tuple(initial.shape)}; it must be a distribution "
            f"over states, shape ({S},)"
        )
    if not torch.isfinite(initial).all() or (initial < 0).any():
        s = _first_index(~torch.isfinite(initial) | (initial < 0))[0]
        raise ValueError(
            f"initial[{s}] is {_fmt(initial[s].item())}; initial probabilities must be non-negative"
        )
    if abs(initial.sum().item() - 1) > SUM_ATOL:
        raise ValueError(f"initial sums to {_fmt(initial.sum().item())}; it must sum to 1")
    return initial


@dataclass(frozen=True, eq=False, repr=False)
class TabularMDP:
    """A finite MDP with tensors ``P[S, A, S]`` and ``R[S, A]``, validated on construction.

    Taught in Lesson 01. Array-likes (lists, numpy arrays, tensors) are accepted and stored as
    floating tensors on ``P``'s device: a float32 or float64 ``P`` keeps its dtype (``R`` and
    ``initial`` are cast to the promoted dtype of ``P`` and ``R``), anything else becomes
    float64. The object is frozen; build a new one to change it (``dataclasses.replace``).

    Terminal states must already be absorbing with zero reward: for every action,
    ``P[s, a, s] = 1`` and ``R[s, a] = 0``. A violation is an error rather than silently
    rewritten, because a reward stored on a terminal state is almost always meant for the
    transition *into* it (put it in ``R`` of the states that lead there).

    Attributes:
        P: Transition probabilities, shape ``[S, A, S]``; ``P[s, a, t] = Pr(t | s, a)``.
        R: Expected reward of taking ``a`` in ``s``, shape ``[S, A]``.
        gamma: Discount factor, ``0 <= gamma < 1``; ``gamma = 1`` only with terminal states.
        terminal: Boolean mask of terminal states, shape ``[S]``. Defaults to none terminal.
        initial: Initial state distribution, shape ``[S]``. Defaults to uniform over the
            non-terminal states.

    Raises:
        ValueError: If a shape, probability, reward, ``gamma``, ``terminal`` or ``initial`` is
            invalid; the message names the offending entry and how to fix it.

    Example:
        >>> mdp = TabularMDP(P=[[[0.0, 1.0]], [[0.0, 1.0]]], R=[[1.0], [0.0]], gamma=0.9,
        ...                  terminal=[False, True])
        >>> mdp.n_states, mdp.n_actions, mdp.initial.tolist()
        (2, 1, [1.0, 0.0])
    """

    P: torch.Tensor
    R: torch.Tensor
    gamma: float
    terminal: torch.Tensor | None = None
    initial: torch.Tensor | None = None

    def __post_init__(self) -> None:
        device = self.P.device if isinstance(self.P, torch.Tensor) else None
        P = _as_float_tensor(self.P, "P", device)
        R = _as_float_tensor(self.R, "R", P.device)
        dtype = torch.promote_types(P.dtype, R.dtype)
        P, R = P.to(dtype), R.to(dtype)
        _check_transitions(P)
        _check_rewards(R, P)
        terminal = _checked_terminal(self.terminal, P, R)
        gamma = _checked_gamma(self.gamma, terminal)
        initial = _checked_initial(self.initial, terminal, P)
        object.__setattr__(self, "P", P)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "terminal", terminal)
        object.__setattr__(self, "initial", initial)

    @property
    def n_states(self) -> int:
        """Number of states ``S``."""
        return self.P.shape[0]

    @property
    def n_actions(self) -> int:
        """Number of actions ``A``."""
        return self.P.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of ``P``, ``R`` and ``initial``."""
        return self.P.dtype

    @property
    def device(self) -> torch.device:
        """Device of every tensor of the MDP."""
        return self.P.device

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TabularMDP:
        """Returns a copy on ``device`` and/or with floating ``dtype`` (same class)."""
        device = self.device if device is None else torch.device(device)
        dtype = self.dtype if dtype is None else dtype
        return dataclasses.replace(
            self,
            P=self.P.to(device=device, dtype=dtype),
            R=self.R.to(device=device, dtype=dtype),
            terminal=self.terminal.to(device),
            initial=self.initial.to(device=device, dtype=dtype),
        )

    def __repr__(self) -> str:
        n_term = int(self.terminal.sum())
        return (
            f"{type(self).__name__}(n_states={self.n_states}, n_actions={self.n_actions}, "
            f"gamma={self.gamma}, n_terminal={n_term}, dtype={self.dtype}, device={self.device})"
        )


# ---------------------------------------------------------------------------------------------
# Gridworlds
# ---------------------------------------------------------------------------------------------

#: Action order of ``gridworld``: 0 up, 1 right, 2 down, 3 left (clockwise from up).
ACTION_NAMES: tuple[str, ...] = ("up", "right", "down", "left")
#: ``(d_row, d_col)`` of each action; rows grow downwards, as in the layout.
ACTION_DELTAS: tuple[tuple[int, int], ...] = ((-1, 0), (0, 1), (1, 0), (0, -1))

_CELL_KINDS = {
    "S": "start",
    "G": "goal",
    "X": "pit",
    "#": "wall",
    ".": "floor",
}


@dataclass(frozen=True, eq=False, repr=False)
class GridMDP(TabularMDP):
    """A ``TabularMDP`` whose states are cells of a 2-D layout, returned by ``gridworld``.

    Taught in Lesson 01. Walls are not states: state ``s`` is the cell ``cells[s]`` and the
    states are numbered row by row, skipping walls. ``from_gymnasium`` also returns one for
    FrozenLake, whose layout uses gymnasium's letters (``S F H G``).

    Attributes:
        layout: The rows of the map, one string per row.
        cells: ``(row, col)`` of each state, length ``S``.
    """

    layout: tuple[str, ...] = ()
    cells: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "layout", tuple(self.layout))
        object.__setattr__(self, "cells", tuple((int(r), int(c)) for r, c in self.cells))
        if len(self.cells) != self.n_states:
            raise ValueError(
                f"cells has {len(self.cells)} entries but the MDP has {self.n_states} states; "
                "give one (row, col) per state"
            )
        for s, (r, c) in enumerate(self.cells):
            if not (0 <= r < self.height and 0 <= c < self.width):
                raise ValueError(
                    f"cells[{s}] = ({r}, {c}) lies outside the {self.height}x{self.width} layout"
                )

    @property
    def height(self) -> int:
        """Number of rows of the layout."""
        return len(self.layout)

    @property
    def width(self) -> int:
        """Number of columns of the layout."""
        return len(self.layout[0]) if self.layout else 0

    def state(self, row: int, col: int) -> int:
        """Returns the state index of cell ``(row, col)``.

        Raises:
            ValueError: If the cell is a wall or outside the layout.
        """
        try:
            return self.cells.index((row, col))
        except ValueError:
            raise ValueError(
                f"cell ({row}, {col}) is not a state (a wall, or outside the layout)"
            ) from None

    def to_grid(self, values: torch.Tensor) -> torch.Tensor:
        """Places per-state values on the layout, for heatmaps.

        Args:
            values: Shape ``[S]`` or ``[S, ...]`` (e.g. ``V`` or ``Q``).

        Returns:
            Shape ``[height, width, ...]``, floating, NaN on walls.
        """
        values = torch.as_tensor(values)
        if values.shape[0] != self.n_states:
            raise ValueError(
                f"values has {values.shape[0]} rows but the grid has {self.n_states} states"
            )
        if not values.is_floating_point():
            values = values.to(torch.float64)
        grid = torch.full(
            (self.height, self.width, *values.shape[1:]),
            math.nan,
            dtype=values.dtype,
            device=values.device,
        )
        rows = torch.tensor([r for r, _ in self.cells], device=values.device)
        cols = torch.tensor([c for _, c in self.cells], device=values.device)
        grid[rows, cols] = values
        return grid


def _check_layout(layout: Sequence[str]) -> list[str]:
    if isinstance(layout, str) or not all(isinstance(row, str) for row in layout):
        raise TypeError("layout must be a list of strings, one per row, e.g. ['S..', '.#.', '..G']")
    rows = list(layout)
    if not rows or not rows[0]:
        raise ValueError("layout is empty; give at least one non-empty row")
    for i, row in enumerate(rows):
        if len(row) != len(rows[0]):
            raise ValueError(
                f"layout row {i} has length {len(row)} but row 0 has length {len(rows[0])}; "
                "every row must have the same length"
            )
        for j, ch in enumerate(row):
            if ch not in _CELL_KINDS:
                known = ", ".join(f"'{k}' ({v})" for k, v in _CELL_KINDS.items())
                raise ValueError(f"layout[{i}][{j}] is {ch!r}; use only {known}")
    starts = [(i, j) for i, row in enumerate(rows) for j, ch in enumerate(row) if ch == "S"]
    if len(starts) != 1:
        where = f" at {', '.join(map(str, starts))}" if starts else ""
        raise ValueError(f"layout has {len(starts)} 'S' cells{where}; it needs exactly one start")
    if not any("G" in row for row in rows):
        raise ValueError("layout has no 'G' cell; add at least one goal")
    return rows


def gridworld(
    layout: Sequence[str],
    slip: float = 0.0,
    step_reward: float = -1.0,
    goal_reward: float = 0.0,
    pit_reward: float = -10.0,
    gamma: float = 0.95,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> GridMDP:
    """Builds a gridworld MDP from a text map.

    Taught in Lesson 01. Cells: ``S`` start (the only initial state), ``G`` goal (terminal),
    ``X`` pit (terminal), ``#`` wall (not a state), ``.`` floor. Actions, in order: 0 up,
    1 right, 2 down, 3 left (``ACTION_NAMES``). A move goes in the intended direction with
    probability ``1 - slip`` and to each of the two sideways directions with probability
    ``slip / 2``; a move into a wall or off the border stays in place.

    Rewards are on transitions: every move costs ``step_reward`` (staying in place included),
    and entering a goal or a pit adds ``goal_reward`` or ``pit_reward``. With the defaults and
    ``gamma = 1``, ``V(s)`` is minus the expected number of moves to the goal. Goals and pits
    end the episode, so their own values are 0.

    Args:
        layout: Rows of the map, all the same length, exactly one ``S``, at least one ``G``.
        slip: Probability that a move goes sideways, in ``[0, 1]``.
        step_reward: Reward of every move.
        goal_reward: Extra reward of a move that enters a goal.
        pit_reward: Extra reward of a move that enters a pit.
        gamma: Discount factor.
        dtype: Floating dtype of the tensors.
        device: Device of the tensors.

    Returns:
        A ``GridMDP`` with ``cells[s] = (row, col)`` and ``layout``.

    Raises:
        ValueError: If the layout is not rectangular, has an unknown character, not exactly
            one ``S`` or no ``G``, or ``slip`` is outside ``[0, 1]``.

    Example:
        >>> mdp = gridworld(["S.G"], gamma=0.9)
        >>> mdp.n_states, mdp.cells[2], mdp.terminal.tolist()
        (3, (0, 2), [False, False, True])
        >>> mdp.P[0, 1].tolist()  # right from S reaches the middle cell
        [0.0, 1.0, 0.0]
    """
    rows = _check_layout(layout)
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip is {_fmt(slip)}; it must be a probability in [0, 1]")

    cells = [(i, j) for i, row in enumerate(rows) for j, ch in enumerate(row) if ch != "#"]
    index = {cell: s for s, cell in enumerate(cells)}
    H, W = len(rows), len(rows[0])
    S, A = len(cells), len(ACTION_DELTAS)

    P = torch.zeros(S, A, S, dtype=torch.float64)
    R = torch.zeros(S, A, dtype=torch.float64)
    terminal = torch.tensor([rows[i][j] in "GX" for i, j in cells])
    bonus = {"G": goal_reward, "X": pit_reward}

    for s, (i, j) in enumerate(cells):
        if terminal[s]:
            P[s, :, s] = 1.0
            continue
        for a in range(A):
            outcomes = [(a, 1.0 - slip), ((a + 1) % A, slip / 2), ((a - 1) % A, slip / 2)]
            for direction, prob in outcomes:
                if prob == 0.0:
                    continue
                di, dj = ACTION_DELTAS[direction]
                ni, nj = i + di, j + dj
                if not (0 <= ni < H and 0 <= nj < W) or rows[ni][nj] == "#":
                    ni, nj = i, j
                t = index[(ni, nj)]
                P[s, a, t] += prob
                R[s, a] += prob * (step_reward + bonus.get(rows[ni][nj], 0.0))

    initial = torch.zeros(S, dtype=torch.float64)
    initial[next(s for s, (i, j) in enumerate(cells) if rows[i][j] == "S")] = 1.0
    return GridMDP(
        P=P.to(device=device, dtype=dtype),
        R=R.to(device=device, dtype=dtype),
        gamma=gamma,
        terminal=terminal.to(device),
        initial=initial.to(device=device, dtype=dtype),
        layout=tuple(rows),
        cells=tuple(cells),
    )


# ---------------------------------------------------------------------------------------------
# Gymnasium's toy-text environments
# ---------------------------------------------------------------------------------------------


def from_gymnasium(
    env: Any,
    gamma: float = 0.99,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> TabularMDP:
    """Reads the transition table of a gymnasium toy-text environment into a ``TabularMDP``.

    Taught in Lesson 01. Works with any environment whose unwrapped form has
    ``P[s][a] = [(prob, next_state, reward, terminated), ...]`` (FrozenLake-v1,
    CliffWalking-v1, Taxi-v4). ``R[s, a]`` is the expected reward of the transition,
    ``sum(prob * reward)``, so FrozenLake's goal reward sits on the moves *into* the goal.
    A state entered with ``terminated=True`` is terminal: its row is replaced by an absorbing
    self-loop with zero reward, whatever the environment stores there (CliffWalking lets its
    goal state move on, but an episode never continues from it). The initial distribution is
    the environment's ``initial_state_distrib`` when it has one, else uniform over
    non-terminal states. FrozenLake comes back as a ``GridMDP`` (layout from its ``desc``).

    Args:
        env: A gymnasium environment (wrapped or not).
        gamma: Discount factor. ``gamma = 1`` is allowed since these environments terminate.
        dtype: Floating dtype of the tensors.
        device: Device of the tensors.

    Returns:
        The MDP, with states and actions numbered as in the environment.

    Raises:
        TypeError: If the environment has no transition table ``P``.
        ValueError: If a state is entered both with ``terminated=True`` and, from a
            non-terminal state, with ``terminated=False`` (termination must depend only on the
            state entered).
    """
    unwrapped = getattr(env, "unwrapped", env)
    table = getattr(unwrapped, "P", None)
    if not isinstance(table, dict):
        raise TypeError(
            f"{type(unwrapped).__name__} has no transition table P; from_gymnasium needs a "
            "toy-text environment such as FrozenLake-v1, CliffWalking-v1 or Taxi-v4"
        )
    S = int(getattr(getattr(unwrapped, "observation_space", None), "n", len(table)))
    A = int(getattr(getattr(unwrapped, "action_space", None), "n", len(table[0])))

    P = torch.zeros(S, A, S, dtype=torch.float64)
    R = torch.zeros(S, A, dtype=torch.float64)
    terminal = torch.zeros(S, dtype=torch.bool)
    for s in range(S):
        for a in range(A):
            for prob, t, reward, done in table[s][a]:
                P[s, a, int(t)] += prob
                R[s, a] += prob * reward
                if done:
                    terminal[int(t)] = True

    initial = getattr(unwrapped, "initial_state_distrib", None)
    if initial is not None:
        initial = torch.as_tensor(np.asarray(initial, dtype=np.float64))
    # Only states an episode can visit must agree on termination: Taxi, for instance, has
    # unreachable states (passenger already delivered, taxi elsewhere) that step into
    # terminal states without terminating.
    frontier = list(range(S)) if initial is None else initial.nonzero().flatten().tolist()
    seen = set(frontier)
    while frontier:
        s = frontier.pop()
        if terminal[s]:
            continue
        for a in range(A):
            for prob, t, _, done in table[s][a]:
                t = int(t)
                if prob > 0 and terminal[t] and not done:
                    raise ValueError(
                        f"state {t} is entered with terminated=True elsewhere but with "
                        f"terminated=False from P[{s}][{a}]; from_gymnasium needs termination "
                        "to depend only on the state entered"
                    )
                if prob > 0 and t not in seen:
                    seen.add(t)
                    frontier.append(t)
    P[terminal] = 0.0
    P[terminal.nonzero().flatten(), :, terminal.nonzero().flatten()] = 1.0
    R[terminal] = 0.0

    if initial is not None:
        initial = initial.to(device=device, dtype=dtype)
    common = dict(
        P=P.to(device=device, dtype=dtype),
        R=R.to(device=device, dtype=dtype),
        gamma=gamma,
        terminal=terminal.to(device),
        initial=initial,
    )
    desc = getattr(unwrapped, "desc", None)
    if desc is not None and np.asarray(desc).size == S and np.asarray(desc).ndim == 2:
        desc = np.asarray(desc)
        layout = tuple(
            b"".join(row).decode() if desc.dtype.kind == "S" else "".join(row) for row in desc
        )
        cells = tuple((i, j) for i in range(desc.shape[0]) for j in range(desc.shape[1]))
        return GridMDP(**common, layout=layout, cells=cells)
    return TabularMDP(**common)


# ---------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------


def _check_policy(mdp: TabularMDP, pi: torch.Tensor) -> torch.Tensor:
    pi = torch.as_tensor(pi, device=mdp.device)
    if pi.shape != (mdp.n_states, mdp.n_actions):
        raise ValueError(
            f"pi has shape {tuple(pi.shape)}; a policy must have shape [S, A] = "
            f"({mdp.n_states}, {mdp.n_actions}), one distribution over actions per state"
        )
    pi = pi.to(mdp.dtype)
    if (pi < 0).any():
        s, a = _first_index(pi < 0)
        raise ValueError(f"pi[{s}, {a}] is {_fmt(pi[s, a].item())}; probabilities must be >= 0")
    sums = pi.sum(-1)
    bad = (sums - 1).abs() > SUM_ATOL
    if bad.any():
        s = int(bad.nonzero()[0])
        raise ValueError(f"pi[{s}] sums to {_fmt(sums[s].item())}; each row of pi must sum to 1")
    return pi


def uniform_policy(mdp: TabularMDP) -> torch.Tensor:
    """Returns the policy that picks every action with equal probability.

    Taught in Lesson 01.

    Returns:
        ``pi`` of shape ``[S, A]``, every entry ``1 / A``, in the MDP's dtype and device.
    """
    return torch.full(
        (mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions, dtype=mdp.dtype, device=mdp.device
    )


# ---------------------------------------------------------------------------------------------
# The five graded exercises
# ---------------------------------------------------------------------------------------------


def q_from_v(mdp: TabularMDP, V: torch.Tensor) -> torch.Tensor:
    """One-step lookahead: the action values of acting once, then following ``V``.

    Taught in Lesson 01 (exercise ``mdp.q_from_v``)::

        Q[s, a] = R[s, a] + gamma * sum_t P[s, a, t] * V[t]

    with ``V[t]`` read as 0 at terminal states (the episode is over; nothing is bootstrapped
    from there, whatever ``V`` holds), so ``Q`` is 0 at terminal states.

    Args:
        mdp: The MDP.
        V: State values, shape ``[S]``.

    Returns:
        ``Q`` of shape ``[S, A]``, in the MDP's dtype.

    Example:
        >>> mdp = gridworld(["S.G"], gamma=0.5)
        >>> q_from_v(mdp, torch.tensor([-2.0, -1.0, 99.0], dtype=torch.float64))  # 99 unread
        tensor([[-2.0000, -1.5000, -2.0000, -2.0000],
                [-1.5000, -1.0000, -1.5000, -2.0000],
                [ 0.0000,  0.0000,  0.0000,  0.0000]], dtype=torch.float64)
    """
    V = torch.as_tensor(V, device=mdp.device).to(mdp.dtype)
    if V.shape != (mdp.n_states,):
        raise ValueError(f"V has shape {tuple(V.shape)}; it must have shape ({mdp.n_states},)")
    V = torch.where(mdp.terminal, torch.zeros_like(V), V)
    # Terminal rows have R = 0 and P[s, a, s] = 1, so Q is 0 there without a special case.
    return mdp.R + mdp.gamma * torch.einsum("sat,t->sa", mdp.P, V)


def bellman_backup(mdp: TabularMDP, V: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """One application of the Bellman expectation operator of policy ``pi``.

    Taught in Lesson 01 (exercise ``mdp.bellman_backup``)::

        V'[s] = sum_a pi[s, a] * (R[s, a] + gamma * sum_t P[s, a, t] * V[t])

    with ``V[t]`` read as 0 at terminal states, so ``V'`` is 0 at terminal states.

    Args:
        mdp: The MDP.
        V: State values, shape ``[S]``.
        pi: Policy, shape ``[S, A]``, rows sum to 1.

    Returns:
        ``V'`` of shape ``[S]``, in the MDP's dtype.

    Example:
        >>> mdp = gridworld(["S.G"], gamma=0.5)
        >>> V = torch.tensor([-2.0, -1.0, 99.0], dtype=torch.float64)
        >>> bellman_backup(mdp, V, uniform_policy(mdp))  # 99 is never read: state 2 is terminal
        tensor([-1.8750, -1.5000,  0.0000], dtype=torch.float64)
    """
    pi = _check_policy(mdp, pi)
    return (pi * q_from_v(mdp, V)).sum(-1)


def _reaches_terminal(mdp: TabularMDP, P_pi: torch.Tensor) -> torch.Tensor:
    """Mask of states from which a terminal state is reached with positive probability."""
    reach = mdp.terminal.clone()
    edge = P_pi > 0
    while True:
        grown = reach | edge[:, reach].any(-1)
        if torch.equal(grown, reach):
            return reach
        reach = grown


def policy_evaluation(mdp: TabularMDP, pi: torch.Tensor, tol: float = 1e-8) -> torch.Tensor:
    """The value ``V^pi`` of a policy, solved exactly as a linear system.

    Taught in Lesson 01 (exercise ``mdp.policy_evaluation``). ``V^pi`` is the fixed point of
    ``bellman_backup``; on the non-terminal states ``N`` it solves
    ``(I - gamma * P_pi[N, N]) V[N] = r_pi[N]`` with ``P_pi[s, t] = sum_a pi[s, a] P[s, a, t]``
    and ``r_pi[s] = sum_a pi[s, a] R[s, a]``, and it is 0 on terminal states. The solve is done
    in float64.

    With ``gamma = 1`` the system is singular for states from which ``pi`` never terminates.
    Their value is 0 when ``pi`` collects no reward there (the limit of the iteration from
    ``V = 0``), and undefined otherwise, which raises.

    Args:
        mdp: The MDP.
        pi: Policy, shape ``[S, A]``, rows sum to 1.
        tol: Stopping tolerance of an iterative solution; the exact solve does not need it
            (kept so the signature matches the exercise).

    Returns:
        ``V`` of shape ``[S]``, in the MDP's dtype.

    Raises:
        ValueError: If ``gamma = 1`` and ``pi`` collects reward in a loop that never
            terminates.

    Example:
        >>> mdp = gridworld(["S.G"], gamma=1.0)
        >>> right = torch.tensor([[0.0, 1.0, 0.0, 0.0]]).repeat(3, 1)
        >>> policy_evaluation(mdp, right)  # two moves, then one
        tensor([-2., -1.,  0.], dtype=torch.float64)
    """
    del tol
    pi = _check_policy(mdp, pi).double()
    P, R = mdp.P.double(), mdp.R.double()
    P_pi = torch.einsum("sa,sat->st", pi, P)
    r_pi = (pi * R).sum(-1)

    solve_on = ~mdp.terminal
    if mdp.gamma == 1.0:
        solve_on = solve_on & _reaches_terminal(mdp, P_pi)
        stuck = ~mdp.terminal & ~solve_on
        if (r_pi[stuck] != 0).any():
            s = int((stuck & (r_pi != 0)).nonzero()[0])
            raise ValueError(
                f"with gamma = 1 the policy never terminates from state {s} yet collects "
                "reward there, so its value is undefined; use gamma < 1 or a policy that "
                "reaches a terminal state"
            )
    idx = solve_on.nonzero().flatten()
    V = torch.zeros(mdp.n_states, dtype=torch.float64, device=mdp.device)
    if len(idx) > 0:
        A = torch.eye(len(idx), dtype=torch.float64, device=mdp.device)
        A = A - mdp.gamma * P_pi[idx][:, idx]
        V[idx] = torch.linalg.solve(A, r_pi[idx])
    return V.to(mdp.dtype)


def greedy_policy(Q: torch.Tensor, atol: float = 0.0) -> torch.Tensor:
    """The deterministic policy that takes the best action in every state.

    Taught in Lesson 01 (exercise ``mdp.greedy_policy``). Ties go to the lowest action index.
    By default a tie means exactly equal values (what ``torch.argmax`` does); pass ``atol`` to
    treat values within ``atol`` of the best as tied, so that rounding noise cannot pick the
    action (useful to draw policy arrows).

    Args:
        Q: Action values, shape ``[S, A]``.
        atol: Values ``>= max - atol`` count as tied for the best.

    Returns:
        One-hot ``pi`` of shape ``[S, A]``, same floating dtype as ``Q``.

    Example:
        >>> greedy_policy(torch.tensor([[1.0, 3.0, 3.0], [0.0, -1.0, 0.0]]))
        tensor([[0., 1., 0.],
                [1., 0., 0.]])
    """
    Q = torch.as_tensor(Q)
    if Q.ndim != 2:
        raise ValueError(f"Q has shape {tuple(Q.shape)}; it must have shape [S, A]")
    best = Q.max(-1, keepdim=True).values
    # argmax returns the first maximal index, so the lowest tied action wins.
    action = (Q >= best - atol).to(torch.uint8).argmax(-1)
    dtype = Q.dtype if Q.is_floating_point() else torch.get_default_dtype()
    return torch.nn.functional.one_hot(action, Q.shape[-1]).to(dtype)


def _value_iteration_done(deltas: list[float], gamma: float, tol: float) -> bool:
    """Whether the last sweep is within ``tol`` of the fixed point, from the sweep changes."""
    delta = deltas[-1]
    if delta == 0.0 or gamma == 0.0:
        return True
    if gamma < 1.0:
        # Contraction by gamma: max |V - V*| <= delta * gamma / (1 - gamma).
        return delta * gamma / (1.0 - gamma) <= tol
    # gamma = 1 has no contraction bound; estimate the rate from the last sweeps instead.
    if len(deltas) < 11:
        return False
    rate = max(b / a for a, b in zip(deltas[-11:-1], deltas[-10:], strict=True) if a > 0)
    return rate < 1.0 and delta * rate / (1.0 - rate) <= tol


def value_iteration(
    mdp: TabularMDP, tol: float = 1e-8, max_iterations: int = 100_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal values ``V*`` and ``Q*`` by value iteration.

    Taught in Lesson 01 (exercise ``mdp.value_iteration``). Repeats
    ``V <- max_a q_from_v(mdp, V)`` from ``V = 0``, in float64, until ``V`` is within ``tol``
    of ``V*``. With ``gamma < 1`` that is guaranteed by the contraction bound
    ``max |V - V*| <= gamma / (1 - gamma) * max |V_new - V|``; with ``gamma = 1`` the same bound
    is used with ``gamma`` replaced by the convergence rate measured over the last 10 sweeps.
    The returned pair is consistent: ``Q = q_from_v(mdp, V_last)`` and ``V = Q.max(-1)``.

    Args:
        mdp: The MDP.
        tol: Accuracy of the values (sup norm).
        max_iterations: Safety limit on the number of sweeps.

    Returns:
        ``(V, Q)`` of shapes ``[S]`` and ``[S, A]``, in the MDP's dtype, 0 at terminal states.

    Raises:
        RuntimeError: If the values do not converge within ``max_iterations`` sweeps (with
            ``gamma = 1``: some policy collects reward forever without terminating).

    Example:
        >>> V, Q = value_iteration(gridworld(["S.G"], gamma=0.5))
        >>> V
        tensor([-1.5000, -1.0000,  0.0000], dtype=torch.float64)
    """
    mdp64 = mdp.to(dtype=torch.float64)
    V = torch.zeros(mdp.n_states, dtype=torch.float64, device=mdp.device)
    deltas: list[float] = []
    for _ in range(max_iterations):
        V_new = q_from_v(mdp64, V).max(-1).values
        deltas.append((V_new - V).abs().max().item())
        V = V_new
        if _value_iteration_done(deltas, mdp.gamma, tol):
            break
    else:
        raise RuntimeError(
            f"value iteration did not converge in {max_iterations} sweeps (last change "
            f"{_fmt(deltas[-1])}); with gamma = 1 some policy may collect reward forever without "
            "terminating: use gamma < 1"
        )
    Q = q_from_v(mdp64, V)
    return Q.max(-1).values.to(mdp.dtype), Q.to(mdp.dtype)


# ---------------------------------------------------------------------------------------------
# Where episodes end
# ---------------------------------------------------------------------------------------------

#: Name of each kind of terminal cell in ``outcome_probabilities``: ``gridworld`` goals and pits,
#: FrozenLake goals and holes.
TERMINAL_KINDS: dict[str, str] = {"G": "goal", "X": "pit", "H": "hole"}


def absorption_probabilities(mdp: TabularMDP, pi: torch.Tensor) -> torch.Tensor:
    """The probability that an episode following ``pi`` ends in each terminal state.

    Taught in Lesson 01. Under a fixed policy the MDP is a Markov chain with transition matrix
    ``P_pi[s, t] = sum_a pi[s, a] P[s, a, t]`` whose terminal states are absorbing. Split the
    states into non-terminal ``N`` and terminal ``T``; then ``B[N, T]`` solves
    ``(I - P_pi[N, N]) B[N, T] = P_pi[N, T]`` (first step: end in ``t`` now, or move to another
    non-terminal state and end in ``t`` from there), and ``B[t, t] = 1`` at terminal states.
    The discount plays no part: this counts where episodes end, not what they earn. The solve
    is done in float64.

    States from which ``pi`` never reaches a terminal state are left out of the solve (the
    system is singular there) and get probability 0 of every ending, so a row of ``B`` sums to
    the probability that the episode ends at all (less than 1 when it can loop forever).

    Args:
        mdp: The MDP.
        pi: Policy, shape ``[S, A]``, rows sum to 1.

    Returns:
        ``B`` of shape ``[S, S]``, in the MDP's dtype: ``B[s, t]`` is the probability that the
        episode started in ``s`` ends in ``t``; columns of non-terminal states are 0.

    Example:
        >>> mdp = gridworld(["X.SG"], slip=0.5)
        >>> right = torch.tensor([[0.0, 1.0, 0.0, 0.0]]).repeat(4, 1)
        >>> B = absorption_probabilities(mdp, right)  # slips go up or down: stays in place
        >>> B[mdp.state(0, 2)].tolist()
        [0.0, 0.0, 0.0, 1.0]
    """
    pi = _check_policy(mdp, pi).double()
    P_pi = torch.einsum("sa,sat->st", pi, mdp.P.double())
    B = torch.zeros(mdp.n_states, mdp.n_states, dtype=torch.float64, device=mdp.device)
    ends = mdp.terminal.nonzero().flatten()
    B[ends, ends] = 1.0
    idx = (~mdp.terminal & _reaches_terminal(mdp, P_pi)).nonzero().flatten()
    if len(idx) > 0:
        A = torch.eye(len(idx), dtype=torch.float64, device=mdp.device) - P_pi[idx][:, idx]
        B[idx[:, None], ends] = torch.linalg.solve(A, P_pi[idx][:, ends])
    return B.to(mdp.dtype)


def outcome_probabilities(mdp: GridMDP, pi: torch.Tensor) -> dict[str, float]:
    """How episodes that start from ``mdp.initial`` and follow ``pi`` end, by kind of cell.

    Taught in Lesson 01. Sums ``initial @ absorption_probabilities(mdp, pi)`` over the terminal
    cells of each kind: ``"goal"`` (``G``), ``"pit"`` (``X``), ``"hole"`` (FrozenLake's ``H``),
    (``"other"`` for any other letter), and adds ``"never"``, the probability that the episode
    goes on forever. Only the kinds present in the layout appear, besides ``"never"``; the
    values sum to 1.

    Args:
        mdp: A gridworld (from ``gridworld`` or ``from_gymnasium`` on FrozenLake).
        pi: Policy, shape ``[S, A]``, rows sum to 1.

    Returns:
        A dict from kind to probability, e.g. ``{"goal": 0.93, "pit": 0.07, "never": 0.0}``.

    Raises:
        TypeError: If ``mdp`` is not a ``GridMDP`` (a plain ``TabularMDP`` has no cell kinds;
            use ``absorption_probabilities``).

    Example:
        >>> mdp = gridworld(["X.SG"], slip=0.5)
        >>> left = torch.tensor([[0.0, 0.0, 0.0, 1.0]]).repeat(4, 1)
        >>> {kind: round(p, 6) for kind, p in outcome_probabilities(mdp, left).items()}
        {'goal': 0.0, 'pit': 1.0, 'never': 0.0}
    """
    if not isinstance(mdp, GridMDP):
        raise TypeError(
            f"outcome_probabilities needs a GridMDP (from gridworld or FrozenLake), got "
            f"{type(mdp).__name__}; use absorption_probabilities for any TabularMDP"
        )
    ending = mdp.initial.double() @ absorption_probabilities(mdp, pi).double()  # [S]
    outcomes: dict[str, float] = {}
    for s in mdp.terminal.nonzero().flatten().tolist():
        row, col = mdp.cells[s]
        kind = TERMINAL_KINDS.get(mdp.layout[row][col], "other")
        outcomes[kind] = outcomes.get(kind, 0.0) + ending[s].item()
    outcomes = {
        kind: outcomes[kind] for kind in (*TERMINAL_KINDS.values(), "other") if kind in outcomes
    }
    outcomes["never"] = max(0.0, 1.0 - sum(outcomes.values()))
    return outcomes


# ---------------------------------------------------------------------------------------------
# Random MDPs and policies, for tests and exercise checks
# ---------------------------------------------------------------------------------------------


def _random_distribution(n: int, support: int, generator: torch.Generator) -> torch.Tensor:
    """A random distribution over ``n`` outcomes with ``support`` non-zero entries."""
    chosen = torch.randperm(n, generator=generator)[:support]
    weights = -torch.log(torch.rand(support, generator=generator, dtype=torch.float64))
    probs = torch.zeros(n, dtype=torch.float64)
    probs[chosen] = (weights + 1e-3) / (weights + 1e-3).sum()
    return probs


def random_mdp(
    n_states: int,
    n_actions: int,
    gamma: float,
    generator: torch.Generator,
    n_terminal: int = 0,
    deterministic: bool = False,
    max_successors: int | None = None,
    reward_scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> TabularMDP:
    """A random valid MDP, the same for the same generator state.

    Used by Lesson 01's checks and the tests. Terminal states are a random subset (not
    necessarily the last indices). Each non-terminal row ``P[s, a]`` has between 1 and
    ``max_successors`` next states with random probabilities (exactly one when
    ``deterministic``); rewards are ``reward_scale`` times standard normals. Everything is
    drawn on the CPU from ``generator`` and then moved to ``device``.

    With ``gamma = 1`` every policy is made to terminate: deterministic MDPs only move to
    states later in a random order (the terminal states come last), and stochastic ones give
    every non-terminal row at least probability 0.05 of entering a terminal state.

    Args:
        n_states: Number of states ``S`` (at least ``n_terminal + 1``).
        n_actions: Number of actions ``A`` (at least 1).
        gamma: Discount factor, in ``[0, 1]``; 1 needs ``n_terminal >= 1``.
        generator: A CPU ``torch.Generator``, the only source of randomness.
        n_terminal: Number of terminal states.
        deterministic: Whether every transition has a single next state.
        max_successors: Largest number of next states of a row (default ``S``).
        reward_scale: Standard deviation of the rewards.
        dtype: Floating dtype of the tensors.
        device: Device of the tensors.

    Returns:
        The MDP, with a random initial distribution over non-terminal states.

    Example:
        >>> mdp = random_mdp(5, 2, 0.9, torch.Generator().manual_seed(0), n_terminal=1)
        >>> mdp.n_states, int(mdp.terminal.sum())
        (5, 1)
    """
    if n_actions < 1:
        raise ValueError(f"n_actions is {n_actions}; it must be at least 1")
    if not 0 <= n_terminal < n_states:
        raise ValueError(
            f"n_terminal is {n_terminal} with n_states {n_states}; it must satisfy "
            "0 <= n_terminal < n_states"
        )
    if gamma == 1 and n_terminal == 0:
        raise ValueError("gamma = 1 needs n_terminal >= 1 so that every episode ends")
    S, A = n_states, n_actions
    k_max = S if max_successors is None else max(1, min(max_successors, S))

    order = torch.randperm(S, generator=generator)
    terminal = torch.zeros(S, dtype=torch.bool)
    terminal[order[S - n_terminal :]] = True
    rank = torch.empty(S, dtype=torch.long)
    rank[order] = torch.arange(S)
    terminal_states = order[S - n_terminal :]

    P = torch.zeros(S, A, S, dtype=torch.float64)
    for s in range(S):
        if terminal[s]:
            P[s, :, s] = 1.0
            continue
        # With gamma = 1, deterministic moves go forward in `order`, so every path ends.
        later = order[rank[s] + 1 :] if gamma == 1 and deterministic else order
        for a in range(A):
            if deterministic:
                t = later[torch.randint(len(later), (1,), generator=generator)]
                P[s, a, t] = 1.0
                continue
            support = int(torch.randint(1, k_max + 1, (1,), generator=generator))
            row = _random_distribution(S, support, generator)
            if gamma == 1:
                end = terminal_states[torch.randint(n_terminal, (1,), generator=generator)]
                row = 0.95 * row
                row[end] += 0.05
            P[s, a] = row

    R = reward_scale * torch.randn(S, A, generator=generator, dtype=torch.float64)
    R[terminal] = 0.0
    initial = _random_distribution(S - n_terminal, S - n_terminal, generator)
    initial_full = torch.zeros(S, dtype=torch.float64)
    initial_full[~terminal] = initial
    return TabularMDP(
        P=P.to(device=device, dtype=dtype),
        R=R.to(device=device, dtype=dtype),
        gamma=gamma,
        terminal=terminal.to(device),
        initial=initial_full.to(device=device, dtype=dtype),
    )


def random_policy(
    mdp: TabularMDP, generator: torch.Generator, deterministic: bool = False
) -> torch.Tensor:
    """A random policy for ``mdp``, the same for the same generator state.

    Used by Lesson 01's checks and the tests. A stochastic policy gives each state a random
    distribution over a random number of actions (some rows put zero probability on some
    actions); a deterministic one is one-hot.

    Args:
        mdp: The MDP (gives ``S``, ``A``, dtype and device).
        generator: A CPU ``torch.Generator``, the only source of randomness.
        deterministic: Whether the policy is one-hot.

    Returns:
        ``pi`` of shape ``[S, A]``, rows sum to 1, in the MDP's dtype and device.
    """
    S, A = mdp.n_states, mdp.n_actions
    if deterministic:
        action = torch.randint(A, (S,), generator=generator)
        pi = torch.nn.functional.one_hot(action, A).to(torch.float64)
    else:
        support = torch.randint(1, A + 1, (S,), generator=generator)
        pi = torch.stack([_random_distribution(A, int(k), generator) for k in support])
    return pi.to(device=mdp.device, dtype=mdp.dtype)
