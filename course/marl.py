"""Many agents, one network: parameter sharing and a shared team value.

Taught in Lesson 07. Several agents work on one job and are rewarded as a team. The lesson asks
what they should share: nothing (independent learners, one network per agent), one network for
all (parameter sharing), one network told which agent it is answering for (the agent's id as an
input, Lesson 04's task input with agents as tasks), and a team value that is the sum of the
agents' values (VDN, Sunehag et al. 2018).

The module reads top to bottom:

1. the world: `LandmarkTask`, its PettingZoo env `LandmarkEnv`, its batched form
   `BatchedLandmarkEnv`, and its exact MDPs (`agent_mdp`, `joint_mdp`) with the exact score of
   the agents' greedy policies (`team_score`);
2. the two graded pieces, `with_agent_id` and `vdn_td_target`;
3. the learners (`MARLConfig`, `train_marl`, `train_arms`) and the summaries the lesson prints
   (`format_scaling`, `compare_arms`: verdicts from the interval of a paired difference).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo import ParallelEnv

from course.dqn import dqn_loss, epsilon_greedy, linear_schedule, soft_update, td_target
from course.evaluation import Comparison, compare, curve_band, mean_ci
from course.mdp import TabularMDP
from course.replay import PopulationReplay

__all__ = [
    "ACTION_NAMES",
    "ARMS",
    "LESSON_CONFIG",
    "LESSON_TASK",
    "AgentNetworks",
    "MARLConfig",
    "MARLResult",
    "arm_config",
    "compare_arms",
    "compare_scaling",
    "compare_to_end",
    "format_scaling",
    "scaled_config",
    "scaling_bands",
    "score_bands",
    "train_arms",
    "train_marl",
    "BatchedLandmarkEnv",
    "LandmarkEnv",
    "LandmarkStep",
    "LandmarkTask",
    "agent_mdp",
    "joint_action_index",
    "joint_actions",
    "joint_mdp",
    "optimal_team_return",
    "team_return",
    "team_score",
    "vdn_td_target",
    "with_agent_id",
]

#: Actions of every agent: 0 stay, 1 up, 2 right, 3 down, 4 left.
ACTION_NAMES = ("stay", "up", "right", "down", "left")
_MOVES = ((0, 0), (-1, 0), (0, 1), (1, 0), (0, -1))


# =============================================================================================
# The world
# =============================================================================================


@functools.cache
def _landmark_cells(size: int) -> tuple[int, ...]:
    """Border cells, corners first, then ever further from the cells already taken."""
    border = [
        r * size + c
        for r in range(size)
        for c in range(size)
        if r in (0, size - 1) or c in (0, size - 1)
    ]
    corners = [0, size * size - 1, size - 1, size * (size - 1)]
    order = list(corners)
    rest = [cell for cell in border if cell not in corners]
    while rest:
        # the cell whose nearest chosen landmark is furthest away (Manhattan), lowest index on ties
        def gap(cell: int) -> int:
            return min(abs(cell // size - o // size) + abs(cell % size - o % size) for o in order)

        best = max(rest, key=lambda cell: (gap(cell), -cell))
        order.append(best)
        rest.remove(best)
    return tuple(order)


@dataclasses.dataclass(frozen=True)
class LandmarkTask:
    """The settings of a landmark world (see `LandmarkEnv` for what they mean).

    Taught in Lesson 07.

    Attributes:
        n_agents: Number of agents ``N``, at most ``4 * (size - 1)`` (one border cell each).
        size: The grid is ``size x size`` cells.
        observe_landmark: Whether an agent sees which cell is its landmark ("same job": every
            agent runs the same rule, go to the landmark you see) or not ("different jobs": the
            landmark is implied by who the agent is).
        gamma: Discount factor of the team return.
        max_steps: Episode length before truncation.
    """

    n_agents: int = 2
    size: int = 4
    observe_landmark: bool = True
    gamma: float = 0.9
    max_steps: int = 12

    def __post_init__(self) -> None:
        if int(self.size) < 2:
            raise ValueError(f"size is {self.size}; the grid needs at least 2 x 2 cells")
        most = 4 * (self.size - 1)
        if not 1 <= int(self.n_agents) <= most:
            raise ValueError(
                f"n_agents is {self.n_agents}; a {self.size} x {self.size} grid has room for "
                f"1 to {most} agents (one border cell each)"
            )
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma is {self.gamma}; use 0 <= gamma < 1")
        if int(self.max_steps) < 1:
            raise ValueError(f"max_steps is {self.max_steps}; episodes need at least one step")

    @property
    def n_cells(self) -> int:
        """Number of cells ``S = size * size``."""
        return self.size * self.size

    @property
    def n_actions(self) -> int:
        return len(ACTION_NAMES)

    @property
    def obs_dim(self) -> int:
        """``D``: the cell's one-hot, an arrived flag, and the landmark's one-hot if observed."""
        return self.n_cells + 1 + (self.n_cells if self.observe_landmark else 0)

    @property
    def landmarks(self) -> tuple[int, ...]:
        """Agent ``i``'s landmark cell (``row * size + col``), spread over the border."""
        return tuple(_landmark_cells(self.size)[: self.n_agents])

    @property
    def name(self) -> str:
        job = "same job" if self.observe_landmark else "different jobs"
        return f"{self.n_agents} agents, {job}"

    def next_cells(self) -> np.ndarray:
        """``[S, A]`` int64: the cell each action leads to (a move off the grid stays put)."""
        out = np.empty((self.n_cells, self.n_actions), dtype=np.int64)
        for cell in range(self.n_cells):
            r, c = divmod(cell, self.size)
            for a, (dr, dc) in enumerate(_MOVES):
                nr, nc = r + dr, c + dc
                inside = 0 <= nr < self.size and 0 <= nc < self.size
                out[cell, a] = nr * self.size + nc if inside else cell
        return out

    def observation_table(self) -> np.ndarray:
        """``[N, S, 2, D]`` float32: agent ``i``'s observation in a cell, not arrived / arrived."""
        n, s = self.n_agents, self.n_cells
        table = np.zeros((n, s, 2, self.obs_dim), dtype=np.float32)
        table[:, np.arange(s), :, np.arange(s)] = 1.0
        table[:, :, 1, s] = 1.0
        if self.observe_landmark:
            for i, cell in enumerate(self.landmarks):
                table[i, :, :, s + 1 + cell] = 1.0
        return table

    def observations(self) -> torch.Tensor:
        """``[N, S, D]`` float32: what each agent sees in each cell before it arrives.

        The greedy policy of a learned Q on these rows is what `team_score` scores.
        """
        return torch.from_numpy(self.observation_table()[:, :, 0].copy())


def _draw_starts(rng: np.random.Generator, task: LandmarkTask) -> np.ndarray:
    """One uniform cell per agent among those that are not its own landmark."""
    u = rng.integers(0, task.n_cells - 1, size=task.n_agents)
    return np.where(u >= np.asarray(task.landmarks), u + 1, u).astype(np.int64)


class LandmarkEnv(ParallelEnv):
    """A cooperative grid world: each agent must reach its own landmark (Lesson 07).

    ## Description

    ``N`` agents walk on a ``size x size`` grid. Agent ``i`` owns landmark ``i``, a border cell
    (`LandmarkTask.landmarks`); when it steps onto it, the team scores 1 and the agent stays
    there ("arrived") until the episode ends. Agents do not block each other (several may share
    a cell), so the team's optimum is exactly the sum of each agent's own optimum: `joint_mdp`
    builds the joint MDP of a small team to show it, `agent_mdp` is one agent's part. The env
    follows PettingZoo's parallel API (every agent acts at every step) and passes
    ``pettingzoo.test.parallel_api_test``; `BatchedLandmarkEnv` steps many copies at once.

    ## Action Space

    ``Discrete(5)`` per agent: 0 stay, 1 up, 2 right, 3 down, 4 left. A move off the grid stays
    put; an agent that has arrived ignores its actions.

    ## Observation Space

    ``Box(0, 1, (D,))`` float32 per agent: the one-hot of its cell (``S = size**2`` entries),
    a flag that is 1 once it has arrived, and, with ``observe_landmark``, the one-hot of its own
    landmark (``D = 2 S + 1``; else ``D = S + 1``). Without ``observe_landmark`` two agents in
    the same cell see the same observation yet must go to different places: a network shared by
    all agents cannot tell them apart unless it is told who is asking (`with_agent_id`).

    ## Rewards

    One team reward, the same for every agent: the number of agents that arrive at this step.
    An agent cannot tell from the reward whether the point was its own.

    ## Starting State

    Each agent on a uniformly random cell that is not its own landmark, independently.

    ## Episode End

    1. Termination: every agent has arrived.
    2. Truncation: ``max_steps`` steps.

    Either way every agent's termination (or truncation) flag is set and ``agents`` empties.

    ## Arguments

    - ``task``: a `LandmarkTask` (or its fields as keywords: ``n_agents``, ``size``,
      ``observe_landmark``, ``gamma``, ``max_steps``).
    - ``render_mode``: ``"ansi"`` (the grid as text: digits for agents, letters for their
      landmarks) or None.

    ```python
    >>> env = LandmarkEnv(n_agents=2)
    >>> obs, infos = env.reset(seed=0)
    >>> sorted(obs), obs["agent_0"].shape
    (['agent_0', 'agent_1'], (33,))

    ```
    """

    metadata = {"render_modes": ["ansi"], "name": "landmarks_v0", "is_parallelizable": True}

    def __init__(
        self, task: LandmarkTask | None = None, render_mode: str | None = None, **fields: Any
    ) -> None:
        if task is not None and fields:
            raise ValueError("pass either a LandmarkTask or its fields as keywords, not both")
        self.task = task if task is not None else LandmarkTask(**fields)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode is {render_mode!r}; use None or 'ansi'")
        self.render_mode = render_mode
        self.possible_agents = [f"agent_{i}" for i in range(self.task.n_agents)]
        self.agents: list[str] = []
        self._next_cells = self.task.next_cells()
        self._obs_table = self.task.observation_table()
        self._landmarks = np.asarray(self.task.landmarks)
        self._obs_space = spaces.Box(0.0, 1.0, shape=(self.task.obs_dim,), dtype=np.float32)
        self._action_space = spaces.Discrete(self.task.n_actions)
        self._rng, _ = seeding.np_random(None)
        self.cells = np.zeros(self.task.n_agents, dtype=np.int64)
        self.arrived = np.zeros(self.task.n_agents, dtype=bool)
        self.t = 0

    def observation_space(self, agent: str) -> spaces.Box:
        return self._obs_space

    def action_space(self, agent: str) -> spaces.Discrete:
        return self._action_space

    def _observations(self) -> dict[str, np.ndarray]:
        rows = self._obs_table[np.arange(self.task.n_agents), self.cells, self.arrived.astype(int)]
        return {name: rows[i].copy() for i, name in enumerate(self.possible_agents)}

    def reset(
        self, seed: int | None = None, options: dict | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        """Starts an episode; one draw of ``N`` integers places the agents.

        Returns:
            ``(observations, infos)``, dicts keyed by agent name.
        """
        if seed is not None:
            self._rng, _ = seeding.np_random(seed)
        self.agents = list(self.possible_agents)
        self.cells = _draw_starts(self._rng, self.task)
        self.arrived = np.zeros(self.task.n_agents, dtype=bool)
        self.t = 0
        return self._observations(), {name: {} for name in self.agents}

    def step(self, actions: dict[str, int]) -> tuple[dict, dict, dict, dict, dict]:
        """Moves every agent at once.

        Args:
            actions: One action per live agent, keyed by name.

        Returns:
            ``(observations, rewards, terminations, truncations, infos)``, dicts keyed by the
            agents that acted.
        """
        if not self.agents:
            raise RuntimeError("the episode is over (or never started); call reset() first")
        missing = [name for name in self.agents if name not in actions]
        if missing:
            raise ValueError(f"no action for {missing}; give every live agent an action")
        a = np.array([int(actions[name]) for name in self.possible_agents])
        if ((a < 0) | (a >= self.task.n_actions)).any():
            raise ValueError(
                f"actions are {a.tolist()}; each must be 0 to {self.task.n_actions - 1}"
            )
        moved = self._next_cells[self.cells, a]
        self.cells = np.where(self.arrived, self.cells, moved)
        now = ~self.arrived & (self.cells == self._landmarks)
        self.arrived = self.arrived | now
        self.t += 1
        reward = float(now.sum())
        terminated = bool(self.arrived.all())
        truncated = not terminated and self.t >= self.task.max_steps
        names = self.agents
        obs = self._observations()
        out = (
            obs,
            {name: reward for name in names},
            {name: terminated for name in names},
            {name: truncated for name in names},
            {name: {} for name in names},
        )
        if terminated or truncated:
            self.agents = []
        return out

    def render(self) -> str | None:
        """The grid as text: agent ``i`` as the digit ``i % 10``, its landmark as a letter."""
        if self.render_mode != "ansi":
            return None
        grid = [["." for _ in range(self.task.size)] for _ in range(self.task.size)]
        for i, cell in enumerate(self.task.landmarks):
            grid[cell // self.task.size][cell % self.task.size] = chr(ord("A") + i % 26)
        for i, cell in enumerate(self.cells):
            grid[cell // self.task.size][cell % self.task.size] = str(i % 10)
        return "\n".join("".join(row) for row in grid)

    def close(self) -> None:
        pass


class LandmarkStep(NamedTuple):
    """What `BatchedLandmarkEnv.step` returns (leading dimension ``E``, one row per copy).

    Attributes:
        next_obs: ``[E, N, D]`` float32: the observations the step reached (the true last
            observation where an episode ended: a transition to store).
        reward: ``[E]`` float32 team reward.
        terminated: ``[E]`` bool.
        truncated: ``[E]`` bool.
        obs: ``[E, N, D]`` float32: the observations to act on next (a new episode's first
            observation where one ended, else ``next_obs``).
    """

    next_obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    obs: np.ndarray


class BatchedLandmarkEnv:
    """``E`` copies of `LandmarkEnv`, stepped with a few array operations (Lesson 07).

    Copy ``e`` behaves exactly as a `LandmarkEnv` reset with the seed ``seeds[e]`` and then
    reset without a seed at the end of each episode (`reset` happens automatically here, in
    the same step: see `LandmarkStep`).

    Args:
        task: The world.
        num_envs: Number of copies ``E``.
    """

    def __init__(self, task: LandmarkTask, num_envs: int) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs is {num_envs}; use at least one copy")
        self.task, self.num_envs = task, int(num_envs)
        self._next_cells = task.next_cells()
        self._obs_table = task.observation_table()
        self._landmarks = np.asarray(task.landmarks)
        self._agent_index = np.arange(task.n_agents)
        self._rngs: list[np.random.Generator] = []
        self.cells = np.zeros((self.num_envs, task.n_agents), dtype=np.int64)
        self.arrived = np.zeros((self.num_envs, task.n_agents), dtype=bool)
        self.t = np.zeros(self.num_envs, dtype=np.int64)

    def _observations(self) -> np.ndarray:
        return self._obs_table[self._agent_index, self.cells, self.arrived.astype(np.int64)]

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Starts every copy, copy ``e`` from ``seeds[e]``.

        Returns:
            ``obs[E, N, D]`` float32.
        """
        if len(seeds) != self.num_envs:
            raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} copies; give one each")
        self._rngs = [seeding.np_random(int(seed))[0] for seed in seeds]
        for e, rng in enumerate(self._rngs):
            self.cells[e] = _draw_starts(rng, self.task)
        self.arrived[:] = False
        self.t[:] = 0
        return self._observations()

    def step(self, actions: np.ndarray | torch.Tensor) -> LandmarkStep:
        """Moves every agent of every copy; copies whose episode ended start a new one.

        Args:
            actions: ``[E, N]`` integers in ``[0, 5)``.
        """
        if not self._rngs:
            raise RuntimeError("call reset(seeds) before step()")
        a = np.asarray(actions.cpu() if isinstance(actions, torch.Tensor) else actions)
        if a.shape != self.cells.shape:
            raise ValueError(f"actions have shape {a.shape}; expected {self.cells.shape} (E, N)")
        moved = self._next_cells[self.cells, a]
        self.cells = np.where(self.arrived, self.cells, moved)
        now = ~self.arrived & (self.cells == self._landmarks)
        self.arrived |= now
        self.t += 1
        reward = now.sum(1).astype(np.float32)
        terminated = self.arrived.all(1)
        truncated = ~terminated & (self.t >= self.task.max_steps)
        next_obs = self._observations()
        done = np.flatnonzero(terminated | truncated)
        for e in done:
            self.cells[e] = _draw_starts(self._rngs[e], self.task)
        self.arrived[done] = False
        self.t[done] = 0
        obs = self._observations() if len(done) else next_obs
        return LandmarkStep(next_obs, reward, terminated, truncated, obs)


# --- the exact MDPs ---------------------------------------------------------------------------


def agent_mdp(task: LandmarkTask, agent: int) -> TabularMDP:
    """Agent ``agent``'s own part of the team as a `TabularMDP` (Lesson 07's ground truth).

    States ``0..S-1`` are the cells before arriving, state ``S`` is "arrived" (terminal). The
    reward is the agent's own contribution to the team reward: 1 for the move that arrives.
    Because agents never interact and the team reward is the sum of these contributions, the
    team's value of any decentralised policy is the sum of the agents' values here
    (`joint_mdp` checks it on a small team).

    Args:
        task: The world.
        agent: Index ``i`` in ``[0, N)``.

    Returns:
        An MDP with ``S + 1`` states and 5 actions; ``initial`` is the start distribution.
    """
    if not 0 <= agent < task.n_agents:
        raise ValueError(f"agent is {agent}; use an index from 0 to {task.n_agents - 1}")
    s, landmark = task.n_cells, task.landmarks[agent]
    next_cells = torch.from_numpy(task.next_cells())
    arrives = next_cells == landmark
    next_state = torch.where(arrives, torch.tensor(s), next_cells)
    next_state = torch.cat([next_state, torch.full((1, task.n_actions), s)])
    P = torch.nn.functional.one_hot(next_state, s + 1).to(torch.float64)
    R = torch.cat([arrives.to(torch.float64), torch.zeros(1, task.n_actions, dtype=torch.float64)])
    terminal = torch.zeros(s + 1, dtype=torch.bool)
    terminal[s] = True
    initial = torch.full((s + 1,), 1.0 / (s - 1), dtype=torch.float64)
    initial[[landmark, s]] = 0.0
    return TabularMDP(P, R, task.gamma, terminal=terminal, initial=initial)


def joint_mdp(task: LandmarkTask, max_states: int = 5000) -> TabularMDP:
    """The whole team as one `TabularMDP`: joint states and joint actions (Lesson 07).

    Joint state ``sum_i s_i (S+1)^i`` and joint action ``sum_i a_i 5^i`` (`joint_action_index`),
    with agent ``i``'s state ``s_i`` as in `agent_mdp`; the reward is the team reward, and the
    only terminal state is "every agent arrived". Its size grows as ``(S+1)^N``: it exists to
    check, on a small team, that the team's optimum is the sum of the agents' own optima.

    Args:
        task: The world.
        max_states: Refuse teams with more joint states than this.

    Returns:
        The joint MDP, whose ``initial`` is the product of the agents' start distributions.
    """
    parts = [agent_mdp(task, i) for i in range(task.n_agents)]
    n_states = (task.n_cells + 1) ** task.n_agents
    if n_states > max_states:
        raise ValueError(
            f"the joint MDP of {task.n_agents} agents on {task.size} x {task.size} cells has "
            f"{n_states} states, over max_states={max_states}; use fewer agents or a smaller grid"
        )
    P, R = parts[0].P, parts[0].R
    initial, terminal = parts[0].initial, parts[0].terminal
    for part in parts[1:]:  # agent i's index is the slower-moving one: prepend it
        s1, a1, s2, a2 = part.n_states, part.n_actions, P.shape[0], P.shape[1]
        P = torch.einsum("xay,sbt->xsabyt", part.P, P).reshape(s1 * s2, a1 * a2, s1 * s2)
        R = (part.R[:, None, :, None] + R[None, :, None, :]).reshape(s1 * s2, a1 * a2)
        initial = (part.initial[:, None] * initial[None, :]).reshape(-1)
        terminal = (part.terminal[:, None] & terminal[None, :]).reshape(-1)
    return TabularMDP(P, R, task.gamma, terminal=terminal, initial=initial)


def joint_action_index(actions: torch.Tensor, n_actions: int) -> torch.Tensor:
    """The joint action ``sum_i actions[..., i] * n_actions**i`` (as `joint_mdp` numbers them).

    Args:
        actions: ``[..., N]`` int64.
        n_actions: Actions per agent ``A``.

    Returns:
        ``[...]`` int64.
    """
    powers = n_actions ** torch.arange(actions.shape[-1], device=actions.device)
    return (actions.long() * powers).sum(-1)


def joint_actions(index: torch.Tensor, n_agents: int, n_actions: int) -> torch.Tensor:
    """The inverse of `joint_action_index`: ``[...]`` int64 to ``[..., N]`` int64."""
    powers = n_actions ** torch.arange(n_agents, device=index.device)
    return index.long().unsqueeze(-1) // powers % n_actions


@functools.lru_cache(maxsize=64)  # scoring runs every few steps of training; never mutated
def _policy_tables(task: LandmarkTask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``next_state[N, S, A]``, ``reward[N, S, A]`` and ``initial[N, S]`` of every agent's MDP."""
    mdps = [agent_mdp(task, i) for i in range(task.n_agents)]
    s = task.n_cells
    next_state = torch.stack([m.P[:s].argmax(-1) for m in mdps])
    reward = torch.stack([m.R[:s] for m in mdps])
    initial = torch.stack([m.initial[:s] for m in mdps])
    return next_state, reward, initial


def team_return(task: LandmarkTask, actions: torch.Tensor) -> torch.Tensor:
    """The exact expected team return of decentralised greedy policies, over ``max_steps``.

    Taught in Lesson 07. Agent ``i`` plays ``actions[..., i, cell]`` in each cell until it
    arrives; the expected discounted return over an episode of ``task.max_steps`` steps, from
    the random start, is computed exactly (``max_steps`` Bellman backups, Lesson 01), so the
    score of a learned policy has no evaluation noise.

    Args:
        task: The world.
        actions: ``[..., N, S]`` int64, one action per agent and cell.

    Returns:
        ``[...]`` float64 expected discounted team returns.
    """
    n, s = task.n_agents, task.n_cells
    if actions.shape[-2:] != (n, s):
        raise ValueError(
            f"actions have shape {tuple(actions.shape)}; expected [..., {n}, {s}] (agents, cells)"
        )
    next_state, reward, initial = _policy_tables(task)
    batch = actions.shape[:-2]
    a = actions.long().unsqueeze(-1)
    nxt = next_state.expand(*batch, n, s, task.n_actions).gather(-1, a).squeeze(-1)
    rew = reward.expand(*batch, n, s, task.n_actions).gather(-1, a).squeeze(-1)
    values = torch.zeros(*batch, n, s + 1, dtype=torch.float64)  # state S: arrived, value 0
    for _ in range(task.max_steps):
        values[..., :s] = rew + task.gamma * values.gather(-1, nxt)
    return (values[..., :s] * initial).sum((-1, -2))


def optimal_team_return(task: LandmarkTask) -> float:
    """The team's optimal expected return over ``max_steps`` (the sum of the agents' optima)."""
    next_state, reward, initial = _policy_tables(task)
    values = torch.zeros(task.n_agents, task.n_cells + 1, dtype=torch.float64)
    index = next_state.flatten(1)
    for _ in range(task.max_steps):
        future = values.gather(-1, index).view_as(reward)
        values[:, : task.n_cells] = (reward + task.gamma * future).max(-1).values
    return float((values[:, : task.n_cells] * initial).sum())


def team_score(task: LandmarkTask, actions: torch.Tensor) -> torch.Tensor:
    """`team_return` divided by `optimal_team_return`: 1 is optimal, 0 never arrives.

    Args:
        task: The world.
        actions: ``[..., N, S]`` int64 greedy actions.

    Returns:
        ``[...]`` float64 scores in ``[0, 1]``.
    """
    return team_return(task, actions) / optimal_team_return(task)


# =============================================================================================
# The graded pieces
# =============================================================================================


def with_agent_id(obs: torch.Tensor, agent: torch.Tensor, n_agents: int) -> torch.Tensor:
    """The observation with the agent's one-hot id appended.

    Taught in Lesson 07 (exercise ``marl.with_agent_id``). One network shared by every agent
    answers each row for the agent named in that row, as Lesson 04's task input answered for a
    task: the agents are the tasks.

    Args:
        obs: ``[B, D]`` floating observations.
        agent: ``[B]`` int64 agent indices in ``[0, n_agents)``.
        n_agents: Number of agents ``N`` (the one-hot's length, whatever ids the batch holds).

    Returns:
        ``[B, D + N]`` in ``obs``'s dtype: ``obs`` then the one-hot of ``agent``.

    Example:
        >>> with_agent_id(torch.zeros(2, 1), torch.tensor([1, 0]), 3)
        tensor([[0., 0., 1., 0.],
                [0., 1., 0., 0.]])
    """
    one_hot = torch.nn.functional.one_hot(agent.long(), n_agents).to(obs.dtype)
    return torch.cat([obs, one_hot], dim=-1)


def vdn_td_target(
    team_reward: torch.Tensor, next_q: torch.Tensor, terminated: torch.Tensor, gamma: float
) -> torch.Tensor:
    """VDN's TD target: the team reward plus the discounted sum of every agent's best value.

    Taught in Lesson 07 (exercise ``marl.vdn_td_target``; Sunehag et al. 2018). The team's Q is
    the sum of the agents' Qs, ``Q_team(o, a) = sum_i Q_i(o_i, a_i)``, so its greedy joint
    action is every agent's own greedy action and its best next value is the **sum of the
    maxes**: ``team_reward + gamma * sum_i max_a next_q[:, i, a]``, with no bootstrap past a
    terminated step (a truncated one still bootstraps).

    Args:
        team_reward: ``[B]``.
        next_q: ``[B, N, A]`` target-network values of every agent's next observation.
        terminated: ``[B]`` bool.
        gamma: Discount factor.

    Returns:
        ``[B]`` targets.

    Example:
        >>> next_q = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # max of the sum would be 2
        >>> vdn_td_target(torch.tensor([1.0]), next_q, torch.tensor([False]), gamma=0.5)
        tensor([2.5000])
    """
    bootstrap = next_q.max(dim=-1).values.sum(dim=-1)
    return team_reward + gamma * torch.where(terminated, torch.zeros_like(bootstrap), bootstrap)


# =============================================================================================
# The learners
# =============================================================================================

#: How each arm of the lesson shares: ``(sharing, team_value)`` for `MARLConfig`.
ARMS: dict[str, tuple[str, bool]] = {
    "independent": ("independent", False),
    "shared": ("shared", False),
    "shared + id": ("shared_id", False),
    "VDN": ("shared_id", True),
}


@dataclasses.dataclass(frozen=True)
class MARLConfig:
    """Settings of the learners; every arm of a comparison uses the same ones but the first two.

    Taught in Lesson 07. Budgets, exploration, optimiser and network width are shared by the
    arms, so only what is shared (and how the team's value is learned) differs.
    """

    sharing: str = "independent"
    """``"independent"`` (one network per agent), ``"shared"`` (one network for all agents) or
    ``"shared_id"`` (one network, the agent's one-hot id appended to its observation)."""
    team_value: bool = False
    """False: every agent learns its own Q from the team reward (independent Q-learning).
    True: VDN, one TD loss on the team's Q, the sum of the agents' Qs (`vdn_td_target`)."""
    steps: int = 600
    """Environment steps of every copy (the budget)."""
    num_envs: int = 4
    """Copies of the world each run steps at once: ``steps * num_envs`` joint transitions."""
    hidden: int = 64
    """Width of the one hidden layer of every network."""
    lr: float = 3e-3
    """Adam's learning rate."""
    batch_size: int = 32
    """Joint transitions per update (each holds one row per agent)."""
    buffer_size: int = 2400
    """Joint transitions each run's replay keeps."""
    learning_starts: int = 50
    """Steps before the first update."""
    train_every: int = 1
    """Steps between updates."""
    eps_start: float = 1.0
    """Exploration rate at the first step."""
    eps_end: float = 0.05
    """Exploration rate after the decay."""
    eps_steps: int = 300
    """Steps over which the exploration rate decays linearly."""
    target_interval: int = 25
    """Updates between copies of the online network into the target network."""
    eval_interval: int = 50
    """Steps between exact evaluations of the greedy policies (`team_score`)."""

    def __post_init__(self) -> None:
        if self.sharing not in ("independent", "shared", "shared_id"):
            raise ValueError(
                f"sharing is {self.sharing!r}; use 'independent', 'shared' or 'shared_id'"
            )
        for name in (
            "steps",
            "num_envs",
            "hidden",
            "batch_size",
            "buffer_size",
            "train_every",
            "target_interval",
            "eval_interval",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}; it must be at least 1")


def arm_config(arm: str, **fields: Any) -> MARLConfig:
    """The `MARLConfig` of a named arm of `ARMS`, with any other fields given."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; use one of {list(ARMS)}")
    sharing, team_value = ARMS[arm]
    return MARLConfig(sharing=sharing, team_value=team_value, **fields)


class AgentNetworks(torch.nn.Module):
    """``K`` independent one-hidden-layer Q-networks evaluated in one batched product.

    Network ``k`` answers ``x[k]``; the networks share nothing but the tensors that stack them,
    so a loss that sums per-network terms trains each as if it were alone.

    Args:
        n_networks: ``K``.
        in_dim: Input size.
        n_actions: Output size.
        hidden: Hidden width.
        generator: Seeds the initialisation (``nn.Linear``'s uniform ``+-1/sqrt(fan_in)``).
    """

    def __init__(
        self,
        n_networks: int,
        in_dim: int,
        n_actions: int,
        hidden: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()

        def uniform(fan_in: int, *shape: int) -> torch.nn.Parameter:
            u = torch.rand(n_networks, *shape, generator=generator)
            return torch.nn.Parameter((2 * u - 1) / fan_in**0.5)

        self.w1, self.b1 = uniform(in_dim, in_dim, hidden), uniform(in_dim, 1, hidden)
        self.w2, self.b2 = uniform(hidden, hidden, n_actions), uniform(hidden, 1, n_actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[K, B, in_dim]`` to ``[K, B, n_actions]``."""
        features = torch.baddbmm(self.b1, x, self.w1).relu()
        return torch.baddbmm(self.b2, features, self.w2)


@dataclasses.dataclass
class MARLResult:
    """What `train_marl` returns: exact scores of every run along training.

    Attributes:
        task: The world.
        config: The settings.
        seeds: One per run.
        steps: ``[T]`` joint transitions each run had collected at each evaluation.
        scores: ``[R, T]`` `team_score` of each run's greedy policies (1 = optimal).
        wall_time: Seconds of training.
    """

    task: LandmarkTask
    config: MARLConfig
    seeds: tuple[int, ...]
    steps: np.ndarray
    scores: np.ndarray
    wall_time: float

    @property
    def final(self) -> np.ndarray:
        """``[R]`` score of each run at the end of its budget."""
        return self.scores[:, -1]


def _population_seed(seeds: Sequence[int]) -> int:
    return int(np.random.SeedSequence([int(s) for s in seeds]).generate_state(1)[0])


def _q_values(
    net: AgentNetworks, obs: torch.Tensor, config: MARLConfig, n_agents: int
) -> torch.Tensor:
    """Every agent's Q-values: ``obs[R, K, N, D]`` to ``[R, K, N, A]``, routed by sharing."""
    r, k, n, d = obs.shape
    x = obs
    if config.sharing == "shared_id":
        agent = torch.arange(n).repeat(r * k)
        x = with_agent_id(obs.reshape(-1, d), agent, n_agents).view(r, k, n, -1)
    if config.sharing == "independent":  # network (run, agent) answers its agent's rows
        out = net(x.transpose(1, 2).reshape(r * n, k, -1))
        return out.view(r, n, k, -1).transpose(1, 2)
    return net(x.reshape(r, k * n, -1)).view(r, k, n, -1)  # one network per run


def train_marl(task: LandmarkTask, config: MARLConfig, seeds: Sequence[int]) -> MARLResult:
    """Train one team per seed on the landmark world, all seeds at once (Lesson 07).

    Each run steps ``config.num_envs`` copies of the world (copy ``e`` of the run of seed ``s``
    starts from the env seed ``1000 * s + e``), stores joint transitions (every agent's
    observation, the joint action, the team reward) in its own replay, and after every step
    does one update on a batch of them: per agent `course.dqn.td_target` and
    `course.dqn.dqn_loss` (independent Q-learning on the team reward), or the team's TD loss
    with `vdn_td_target` (VDN). Actions are `course.dqn.epsilon_greedy` with a
    `course.dqn.linear_schedule`; the target network is a hard copy (`course.dqn.soft_update`
    with ``tau = 1``) every ``target_interval`` updates.

    The runs share one random stream (seeded by the list of seeds), so a run's numbers depend
    on the whole list; the same call always gives the same numbers.

    Args:
        task: The world.
        config: The settings (`arm_config` builds those of a named arm).
        seeds: One run per seed.

    Returns:
        A `MARLResult` with the exact score of every run every ``eval_interval`` steps.
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    start = time.perf_counter()
    r, n, e, a, d = len(seeds), task.n_agents, config.num_envs, task.n_actions, task.obs_dim
    generator = torch.Generator().manual_seed(_population_seed(seeds))
    n_nets = r * (n if config.sharing == "independent" else 1)
    in_dim = d + (n if config.sharing == "shared_id" else 0)
    q_net = AgentNetworks(n_nets, in_dim, a, config.hidden, generator)
    target_net = AgentNetworks(n_nets, in_dim, a, config.hidden)
    soft_update(target_net, q_net, 1.0)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=config.lr, fused=True)
    replay = PopulationReplay(r, config.buffer_size, (n, d))
    env = BatchedLandmarkEnv(task, r * e)
    obs = torch.from_numpy(env.reset([1000 * s + i for s in seeds for i in range(e)]))
    valid = torch.ones(r, e, dtype=torch.bool)
    eval_obs = task.observations().transpose(0, 1).expand(r, -1, -1, -1)  # [R, S, N, D]
    steps, scores, n_updates = [], [], 0

    for step in range(config.steps):
        epsilon = linear_schedule(config.eps_start, config.eps_end, config.eps_steps, step)
        with torch.no_grad():
            q = _q_values(q_net, obs.view(r, e, n, d), config, n)
        actions = epsilon_greedy(q.reshape(-1, a), epsilon, generator).view(r, e, n)
        out = env.step(actions.view(r * e, n).numpy())
        replay.add(
            obs.view(r, e, n, d),
            joint_action_index(actions, a),
            torch.from_numpy(out.reward).view(r, e),
            torch.from_numpy(out.next_obs).view(r, e, n, d),
            torch.from_numpy(out.terminated).view(r, e),
            valid,
        )
        obs = torch.from_numpy(out.obs)
        if step >= config.learning_starts and step % config.train_every == 0:
            batch = replay.sample(torch.rand(r, config.batch_size, generator=generator))
            taken = joint_actions(batch.actions, n, a)  # [R, B, N]
            q = _q_values(q_net, batch.obs, config, n)
            with torch.no_grad():
                next_q = _q_values(target_net, batch.next_obs, config, n)
            if config.team_value:
                team_q = q.gather(-1, taken.unsqueeze(-1)).squeeze(-1).sum(-1)  # [R, B]
                targets = vdn_td_target(batch.rewards, next_q, batch.terminated, task.gamma)
                loss = torch.nn.functional.smooth_l1_loss(team_q, targets)
            else:
                shape = taken.shape
                targets = td_target(
                    batch.rewards.unsqueeze(-1).expand(shape),
                    next_q,
                    batch.terminated.unsqueeze(-1).expand(shape),
                    task.gamma,
                )
                loss = dqn_loss(q.reshape(-1, a), taken.reshape(-1), targets.reshape(-1))
            optimizer.zero_grad()
            (loss * r).backward()  # the sum of the runs' mean losses: each run trains alone
            optimizer.step()
            n_updates += 1
            if n_updates % config.target_interval == 0:
                soft_update(target_net, q_net, 1.0)
        if (step + 1) % config.eval_interval == 0 or step + 1 == config.steps:
            with torch.no_grad():
                greedy = _q_values(q_net, eval_obs, config, n).argmax(-1).transpose(1, 2)
            steps.append((step + 1) * e)
            scores.append(team_score(task, greedy).numpy())
    return MARLResult(
        task,
        config,
        seeds,
        np.asarray(steps),
        np.stack(scores, axis=1),
        time.perf_counter() - start,
    )


#: The lesson's world: a 3 x 3 grid (room for 8 agents), 8 steps per episode.
LESSON_TASK = {"size": 3, "max_steps": 8}

#: The lesson's budget, shared by every arm: 300 steps of 8 copies (2,400 joint transitions
#: per run), one update of 32 joint transitions every other step.
LESSON_CONFIG = {
    "steps": 300,
    "num_envs": 8,
    "train_every": 2,
    "batch_size": 32,
    "hidden": 32,
    "eps_steps": 150,
    "buffer_size": 2400,
    "eval_interval": 30,
}


def train_arms(
    task: LandmarkTask, arms: Sequence[str], seeds: Sequence[int], **fields: Any
) -> dict[str, MARLResult]:
    """Train every named arm of `ARMS` on ``task`` with the same seeds and settings.

    Taught in Lesson 07. The arms differ only in `MARLConfig.sharing` and
    `MARLConfig.team_value`; ``fields`` (the budget, exploration, network) are the same for all.
    """
    return {arm: train_marl(task, arm_config(arm, **fields), seeds) for arm in arms}


def score_bands(results: dict[str, MARLResult]) -> dict[str, tuple[np.ndarray, ...]]:
    """Each arm's learning curve: the pointwise t band of its runs' scores over seeds."""
    return {name: curve_band(result.scores) for name, result in results.items()}


def scaling_bands(
    results: dict[int, dict[str, MARLResult]],
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each arm's final score against the team size: ``(estimate, low, high)``, one per size.

    Args:
        results: ``results[n_agents][arm]``, every size with the same arms.
    """
    sizes = list(results)
    arms = list(results[sizes[0]])
    bands = {}
    for arm in arms:
        cis = [mean_ci(results[n][arm].final) for n in sizes]
        estimate, low, high = (np.array(values) for values in zip(*cis))
        bands[arm] = (estimate, low, high)
    return bands


def compare_arms(results: dict[str, MARLResult], a: str, b: str) -> Comparison:
    """Compare two arms' final scores seed by seed (they share seeds, so differences pair).

    Taught in Lesson 07: ``print`` the result for the interval and its verdict.
    """
    if results[a].seeds != results[b].seeds:
        raise ValueError(f"{a!r} and {b!r} were trained on different seeds; pair only shared seeds")
    return compare(results[a].final, results[b].final, names=(a, b), paired=True)


def format_scaling(results: dict[int, dict[str, MARLResult]]) -> str:
    """A table of final scores, one row per arm, one column per team size (mean [95% CI])."""
    sizes = list(results)
    arms = list(results[sizes[0]])
    width = max(len(arm) for arm in arms)
    head = f"{'arm':<{width}} | " + " | ".join(f"{f'{n} agents':^18}" for n in sizes)
    lines = [head, "-" * len(head)]
    for arm in arms:
        cells = []
        for n in sizes:
            ci = mean_ci(results[n][arm].final)
            cells.append(f"{ci.estimate:.2f} [{ci.low:.2f}, {ci.high:.2f}]".center(18))
        lines.append(f"{arm:<{width}} | " + " | ".join(cells))
    return "\n".join(lines)


def compare_scaling(
    results: dict[int, dict[str, MARLResult]], arm: str, small: int, large: int
) -> Comparison:
    """One arm's final scores at two team sizes, compared (different worlds: unpaired).

    Taught in Lesson 07: whether learning a bigger team costs more than the budget gives.
    """
    return compare(
        results[small][arm].final,
        results[large][arm].final,
        names=(f"{arm}, {small} agents", f"{arm}, {large} agents"),
        paired=False,
    )


def scaled_config(multiple: int) -> dict[str, int]:
    """`LESSON_CONFIG` with ``multiple`` times the steps, and the exploration decay and replay
    scaled alike (the evaluations stay as frequent, so the lesson's budget is one of them)."""
    if int(multiple) < 1:
        raise ValueError(f"multiple is {multiple}; use a whole number of lesson budgets, >= 1")
    config = dict(LESSON_CONFIG)
    for key in ("steps", "eps_steps", "buffer_size"):
        config[key] = config[key] * int(multiple)
    return config


def compare_to_end(result: MARLResult, name: str, step: int) -> Comparison:
    """A result's scores at an earlier evaluation against its final scores, seed by seed.

    Taught in Lesson 07: whether the runs kept what they had learned by ``step``.

    Args:
        result: The runs.
        name: What to call them in the verdict.
        step: One of ``result.steps``.
    """
    steps = result.steps.tolist()
    if step not in steps:
        raise ValueError(f"no evaluation at step {step}; the evaluations are at {steps}")
    return compare(
        result.scores[:, steps.index(step)],
        result.final,
        names=(f"{name} at {step}", f"{name} at {steps[-1]}"),
        paired=True,
    )
