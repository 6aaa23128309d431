"""Learning Q from single transitions: tabular temporal-difference control.

Taught in Lesson 02, the bridge from Lesson 01's exact solutions to learning from experience.
An agent without the model ``P`` sees one transition ``(s, a, r, s_next, terminated)`` at a time
and nudges one entry of its table ``Q[S, A]`` toward a *target* built from the reward and its
own current estimate of what follows (the TD target: it "bootstraps" from ``Q``):

- **Q-learning** (off-policy) bootstraps from the best action at ``s_next``,
  ``r + gamma * max_a' Q[s_next, a']``: it learns ``Q*`` whatever the behaviour policy, as long
  as every pair keeps being tried.
- **SARSA** (on-policy) bootstraps from the action ``a_next`` the agent actually takes next,
  ``r + gamma * Q[s_next, a_next]``: it learns the values of the policy it follows, exploration
  included.

Neither bootstraps past a *terminated* transition (the episode is over; a truncated one still
bootstraps: the state has a future, the clock merely ran out).

The module reads top to bottom like the lesson: the two graded updates, the behaviour policy,
a training loop over a gymnasium vector env (one table per sub-env, so seeds run side by side),
and the exact evaluation of learned policies on the environment's own model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from course.mdp import TabularMDP

__all__ = [
    "METHODS",
    "TabularRun",
    "cliff_map",
    "epsilon_greedy_policy",
    "epsilon_soft_optimum",
    "expected_return",
    "greedy_path",
    "greedy_return",
    "moving_average",
    "q_learning_update",
    "sarsa_update",
    "step_size",
    "td_control",
]

METHODS: tuple[str, ...] = ("q_learning", "sarsa")


# ---------------------------------------------------------------------------------------------
# The two graded updates
# ---------------------------------------------------------------------------------------------


def q_learning_update(
    Q: torch.Tensor,
    s: int,
    a: int,
    r: float,
    s_next: int,
    terminated: bool,
    alpha: float,
    gamma: float,
) -> torch.Tensor:
    """One Q-learning update of the table, in place.

    Taught in Lesson 02 (exercise ``td.q_learning_update``)::

        Q[s, a] += alpha * (r + gamma * max_a' Q[s_next, a'] * (not terminated) - Q[s, a])

    Only entry ``(s, a)`` changes. The target is computed from the table before the update, so
    a self-loop (``s_next == s``) reads the old ``Q[s, a]``.

    Args:
        Q: Action values, ``[S, A]``, floating; updated in place.
        s: State of the transition.
        a: Action taken in ``s``.
        r: Reward received.
        s_next: State reached.
        terminated: Whether the episode ended in ``s_next`` (nothing is bootstrapped then).
        alpha: Step size, in ``(0, 1]``.
        gamma: Discount factor.

    Returns:
        ``Q`` itself, updated.

    Example:
        >>> Q = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
        >>> q_learning_update(Q, 0, 0, r=1.0, s_next=1, terminated=False, alpha=0.5, gamma=0.5)
        tensor([[1.5000, 1.0000],
                [2.0000, 4.0000]])
    """
    future = 0.0 if terminated else float(Q[s_next].max())
    target = float(r) + gamma * future
    Q[s, a] += alpha * (target - Q[s, a])
    return Q


def sarsa_update(
    Q: torch.Tensor,
    s: int,
    a: int,
    r: float,
    s_next: int,
    a_next: int,
    terminated: bool,
    alpha: float,
    gamma: float,
) -> torch.Tensor:
    """One SARSA update of the table, in place.

    Taught in Lesson 02 (exercise ``td.sarsa_update``)::

        Q[s, a] += alpha * (r + gamma * Q[s_next, a_next] * (not terminated) - Q[s, a])

    The same as `q_learning_update` with the value of the action actually taken next in place
    of the max (on-policy). Only entry ``(s, a)`` changes.

    Args:
        Q: Action values, ``[S, A]``, floating; updated in place.
        s: State of the transition.
        a: Action taken in ``s``.
        r: Reward received.
        s_next: State reached.
        a_next: Action the agent takes in ``s_next`` (ignored when ``terminated``).
        terminated: Whether the episode ended in ``s_next``.
        alpha: Step size, in ``(0, 1]``.
        gamma: Discount factor.

    Returns:
        ``Q`` itself, updated.

    Example:
        >>> Q = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
        >>> sarsa_update(Q, 0, 0, 1.0, 1, 0, terminated=False, alpha=0.5, gamma=0.5)
        tensor([[1., 1.],
                [2., 4.]])
    """
    future = 0.0 if terminated else float(Q[s_next, a_next])
    target = float(r) + gamma * future
    Q[s, a] += alpha * (target - Q[s, a])
    return Q


# ---------------------------------------------------------------------------------------------
# Behaviour and step sizes
# ---------------------------------------------------------------------------------------------


def epsilon_greedy_policy(Q: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The epsilon-greedy policy of a table, as probabilities.

    Taught in Lesson 02. With probability ``epsilon`` a uniformly random action, otherwise the
    greedy one (ties to the lowest index, as `course.mdp.greedy_policy`), so the greedy action
    has probability ``1 - epsilon + epsilon / A``.

    Args:
        Q: Action values, ``[..., S, A]``.
        epsilon: Exploration rate, in ``[0, 1]``.

    Returns:
        ``pi`` of shape ``[..., S, A]``, float64, rows sum to 1.
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon is {epsilon}; it must be a probability in [0, 1]")
    n_actions = Q.shape[-1]
    greedy = torch.nn.functional.one_hot(Q.argmax(-1), n_actions).to(torch.float64)
    return (1.0 - epsilon) * greedy + epsilon / n_actions


def step_size(alpha: float, visits: np.ndarray, decay: float) -> np.ndarray:
    """Step sizes ``alpha / visits ** decay`` of pairs updated ``visits`` times (this one too).

    Taught in Lesson 02. ``decay = 0`` is a constant step size: fast, but the estimate keeps
    jittering by about ``alpha`` times the noise of the targets. A decay in ``(0.5, 1]`` makes
    the steps small enough to average the noise out, and still large enough in total to reach
    any value (Robbins-Monro: ``sum alpha_n = inf``, ``sum alpha_n^2 < inf``).

    Args:
        alpha: Step size of a pair's first update.
        visits: How many times each pair has been updated, this update included (>= 1).
        decay: Exponent of the decay.

    Returns:
        The step sizes, same shape as ``visits``.

    Example:
        >>> step_size(0.5, np.array([1, 4]), decay=0.5).tolist()
        [0.5, 0.25]
    """
    return alpha / np.asarray(visits, dtype=np.float64) ** decay


# ---------------------------------------------------------------------------------------------
# Training: one table per sub-env of a gymnasium vector env
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TabularRun:
    """What `td_control` measured, one row per sub-env (seed).

    Attributes:
        Q: The final tables, ``[N, S, A]`` float64.
        steps: Environment steps done at each measurement, ``[E]``.
        max_error: ``max_{s, a} |Q - Q*|`` over non-terminal states at each measurement,
            ``[N, E]`` (empty when no ``q_star`` was given).
        episode_returns: Per sub-env, the undiscounted return of each episode it finished, in
            order.
        seeds: The seed of each sub-env.
    """

    Q: torch.Tensor
    steps: np.ndarray
    max_error: np.ndarray
    episode_returns: tuple[np.ndarray, ...]
    seeds: tuple[int, ...]

    def first_episodes(self, n: int | None = None) -> np.ndarray:
        """Returns of the first ``n`` episodes of every sub-env, ``[N, n]``.

        Args:
            n: Number of episodes; by default the most that every sub-env finished.

        Raises:
            ValueError: If a sub-env finished fewer than ``n`` episodes.
        """
        fewest = min(len(r) for r in self.episode_returns)
        n = fewest if n is None else n
        if n > fewest:
            raise ValueError(
                f"a sub-env finished only {fewest} episodes, fewer than the {n} asked for; "
                "run more steps or ask for fewer episodes"
            )
        return np.stack([r[:n] for r in self.episode_returns])


def _states(obs: Any, to_state: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    if to_state is not None:
        return np.asarray(to_state(np.asarray(obs)), dtype=np.int64)
    return np.asarray(obs, dtype=np.int64)


def _checked_setup(
    envs: gym.vector.VectorEnv, method: str, n_states: int | None, seed: int | Sequence[int]
) -> tuple[int, int, tuple[int, ...]]:
    """``(S, A, seeds)`` of a `td_control` run, or a ValueError that says what to fix."""
    if method not in METHODS:
        raise ValueError(f"method is {method!r}; use one of {METHODS}")
    if envs.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
        raise ValueError(
            "td_control needs a vector env with same-step autoreset; make it with "
            "vector_kwargs={'autoreset_mode': AutoresetMode.SAME_STEP}"
        )
    N = envs.num_envs
    n_actions = int(envs.single_action_space.n)
    if n_states is None and not isinstance(envs.single_observation_space, gym.spaces.Discrete):
        raise ValueError(
            "the observations are not state indices; pass n_states (and to_state, which maps "
            "observations to indices)"
        )
    S = int(n_states if n_states is not None else envs.single_observation_space.n)
    seeds = tuple(int(seed) + i for i in range(N)) if np.isscalar(seed) else tuple(map(int, seed))
    if len(seeds) != N:
        raise ValueError(
            f"got {len(seeds)} seeds for {N} sub-envs; pass one int or one per sub-env"
        )
    return S, n_actions, seeds


class _Tables:
    """One table, one visit count per pair and one random stream per sub-env.

    numpy rather than torch: inside the loop, indexing small arrays costs a microsecond.
    """

    def __init__(self, seeds: Sequence[int], n_states: int, n_actions: int, epsilon: float):
        N = len(seeds)
        self.streams = [np.random.default_rng(s) for s in seeds]
        self.Q = np.zeros((N, n_states, n_actions), dtype=np.float64)
        self.visits = np.zeros((N, n_states, n_actions), dtype=np.int64)
        self.rows = np.arange(N)
        self.n_actions = n_actions
        self.epsilon = epsilon

    def draw(self, which: np.ndarray | None = None) -> np.ndarray:
        """Each stream draws as a one-env loop would: a uniform, then an action if exploring;
        -1 where the sub-env acts greedily (or, outside ``which``, does not draw)."""
        random_action = np.full(len(self.rows), -1)
        for i in self.rows if which is None else np.flatnonzero(which):
            if self.streams[i].random() < self.epsilon:
                random_action[i] = self.streams[i].integers(self.n_actions)
        return random_action

    def act(self, states: np.ndarray, random_action: np.ndarray) -> np.ndarray:
        """The drawn action where there is one, else the greedy one (ties to the lowest)."""
        return np.where(random_action >= 0, random_action, self.Q[self.rows, states].argmax(-1))

    def update(
        self, s: np.ndarray, a: np.ndarray, target: np.ndarray, alpha: float, alpha_decay: float
    ) -> None:
        """Moves each sub-env's ``Q[s, a]`` toward its target, with its decayed step size."""
        rows = self.rows
        self.visits[rows, s, a] += 1
        lr = step_size(alpha, self.visits[rows, s, a], alpha_decay)
        self.Q[rows, s, a] += lr * (target - self.Q[rows, s, a])


def td_control(
    envs: gym.vector.VectorEnv,
    method: str,
    n_steps: int,
    *,
    alpha: float,
    gamma: float,
    epsilon: float,
    seed: int | Sequence[int],
    alpha_decay: float = 0.0,
    n_states: int | None = None,
    to_state: Callable[[np.ndarray], np.ndarray] | None = None,
    q_star: torch.Tensor | None = None,
    terminal: torch.Tensor | None = None,
    eval_every: int = 100,
) -> TabularRun:
    """Tabular Q-learning or SARSA with epsilon-greedy behaviour, one table per sub-env.

    Taught in Lesson 02: the loop a student writes for one env, run here on the ``N`` sub-envs
    of a vector env at once, so that ``N`` seeds cost one env call per step. Sub-env ``i`` has
    its own table, its own visit counts and its own random stream
    ``numpy.random.default_rng(seed + i)`` (or the given seeds); its run is the same whatever
    the other sub-envs do. Before each step, every sub-env draws ``u = rng.random()`` and
    explores if ``u < epsilon``, with the action ``rng.integers(A)``; otherwise it acts greedily
    (ties to the lowest index). A one-env loop that draws the same way, on an env reset with
    the same seed, reproduces sub-env ``i`` exactly. Each sub-env then updates the pair it just
    tried with
    `q_learning_update` or `sarsa_update` (written here for all sub-envs at once) and step size
    ``step_size(alpha, visits, alpha_decay)``. Episodes end on termination or truncation; only
    termination stops the bootstrap.

    Args:
        envs: A gymnasium vector env with discrete actions and same-step autoreset (the ending
            step returns the next episode's first observation and puts the final one in
            ``info["final_obs"]``), e.g. ``gym.make_vec(..., vector_kwargs={"autoreset_mode":
            AutoresetMode.SAME_STEP})``.
        method: ``"q_learning"`` or ``"sarsa"``.
        n_steps: Steps per sub-env.
        alpha: Step size (of a pair's first update when ``alpha_decay > 0``).
        gamma: Discount factor of the updates.
        epsilon: Exploration rate of the behaviour policy.
        seed: Seeds the first reset of the sub-envs and the random streams of the agents.
        alpha_decay: Exponent of the step-size decay (0: constant).
        n_states: Number of states; by default ``envs.single_observation_space.n``.
        to_state: Maps a batch of observations to state indices (e.g. a grid env's
            ``obs_to_state``); by default the observations are the indices.
        q_star: The exact ``Q*``, ``[S, A]``, to measure the error against.
        terminal: Boolean ``[S]``: states left out of the error (their values are 0 by
            definition and never updated).
        eval_every: Steps between two measurements of the error.

    Returns:
        The final tables and what was measured (`TabularRun`).
    """
    S, n_actions, seeds = _checked_setup(envs, method, n_states, seed)
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon is {epsilon}; it must be a probability in [0, 1]")
    N = envs.num_envs
    tables = _Tables(seeds, S, n_actions, epsilon)
    Q, rows, draw, act = tables.Q, tables.rows, tables.draw, tables.act
    q_star_np = None if q_star is None else torch.as_tensor(q_star).double().numpy()
    keep = np.ones(S, dtype=bool) if terminal is None else ~np.asarray(terminal, dtype=bool)

    obs, _ = envs.reset(seed=list(seeds))
    s = _states(obs, to_state)
    a = act(s, draw())
    running = np.zeros(N)
    returns: list[list[float]] = [[] for _ in range(N)]
    steps, errors = [], []
    for t in range(n_steps):
        obs, reward, terminated, truncated, info = envs.step(a)
        terminated = np.asarray(terminated, dtype=bool)
        done = terminated | np.asarray(truncated, dtype=bool)
        s_after = _states(obs, to_state)
        s_next = s_after.copy()
        if done.any():
            s_next[done] = _states(np.asarray(info["final_obs"])[done], to_state)
        if method == "q_learning":
            future = Q[rows, s_next].max(-1)
        else:
            # the action taken next, chosen before the update (at the final state of an
            # episode that ended it is never executed, and after termination never read)
            a_next = act(s_next, draw())
            future = Q[rows, s_next, a_next]
        tables.update(s, a, reward + gamma * future * ~terminated, alpha, alpha_decay)

        running += reward
        for i in np.flatnonzero(done):
            returns[i].append(float(running[i]))
            running[i] = 0.0
        s = s_after
        if method == "q_learning":
            a = act(s, draw())
        else:  # a new episode's first action is drawn after the update, as a one-env loop does
            a = np.where(done, act(s, draw(done)), a_next) if done.any() else a_next
        if q_star_np is not None and (t + 1) % eval_every == 0:
            steps.append(t + 1)
            errors.append(np.abs(Q - q_star_np)[:, keep].reshape(N, -1).max(-1))

    return TabularRun(
        Q=torch.from_numpy(Q),
        steps=np.asarray(steps, dtype=np.int64),
        max_error=np.stack(errors, 1) if errors else np.zeros((N, 0)),
        episode_returns=tuple(np.asarray(r) for r in returns),
        seeds=seeds,
    )


# ---------------------------------------------------------------------------------------------
# Judging learned policies exactly, on the environment's own model
# ---------------------------------------------------------------------------------------------


def expected_return(mdp: TabularMDP, pi: torch.Tensor) -> float:
    """The exact expected return of a policy from the MDP's initial distribution.

    Taught in Lesson 02. Lesson 01's ``policy_evaluation`` restricted to the states the policy
    can reach from the start, so that what it does in states it never visits (a table entry
    never updated, say) does not matter.

    Args:
        mdp: The MDP (e.g. ``course.mdp.from_gymnasium(gym.make("CliffWalking-v1"))``).
        pi: Policy, ``[S, A]``, rows sum to 1.

    Returns:
        ``sum_s initial[s] * V^pi(s)``.

    Raises:
        ValueError: If, with ``gamma = 1``, the policy reaches a state from which it never ends
            the episode (its return is then not finite).
    """
    pi = torch.as_tensor(pi, dtype=torch.float64)
    if pi.shape != (mdp.n_states, mdp.n_actions):
        raise ValueError(
            f"pi has shape {tuple(pi.shape)}; it must have shape [S, A] = "
            f"({mdp.n_states}, {mdp.n_actions})"
        )
    P = torch.einsum("sa,sat->st", pi, mdp.P.double())
    r = (pi * mdp.R.double()).sum(-1)
    reach = mdp.initial > 0
    while True:
        grown = reach | ((P[reach] > 0).any(0))
        if torch.equal(grown, reach):
            break
        reach = grown
    live = (reach & ~mdp.terminal).nonzero().flatten()
    ends = mdp.terminal.clone()
    while True:  # states from which an episode ends with positive probability
        grown = ends | (P[:, ends] > 0).any(-1)
        if torch.equal(grown, ends):
            break
        ends = grown
    if mdp.gamma == 1.0 and not bool(ends[live].all()):
        s = int(live[~ends[live]][0])
        raise ValueError(
            f"with gamma = 1 the policy reaches state {s} and never ends the episode from "
            "there, so its return is not finite; train longer or evaluate an exploring policy"
        )
    V = torch.zeros(mdp.n_states, dtype=torch.float64)
    if len(live) > 0:
        A = torch.eye(len(live), dtype=torch.float64) - mdp.gamma * P[live][:, live]
        V[live] = torch.linalg.solve(A, r[live])
    return float((mdp.initial.double() * V).sum())


def epsilon_soft_optimum(
    mdp: TabularMDP, epsilon: float, tol: float = 1e-9, max_iterations: int = 100_000
) -> torch.Tensor:
    """The action values of the best policy among those that explore with rate ``epsilon``.

    Taught in Lesson 02: what SARSA with a fixed ``epsilon`` is after. Value iteration (Lesson
    01) with the max replaced by the value of acting epsilon-greedily on ``Q``::

        Q[s, a] = R[s, a] + gamma * sum_t P[s, a, t] * ((1 - epsilon) * max_a' Q[t, a']
                                                        + epsilon * mean_a' Q[t, a'])

    (0 at terminal ``t``). Its epsilon-greedy policy is the best epsilon-greedy policy; with
    ``epsilon = 0`` it is ``Q*``.

    Args:
        mdp: The MDP.
        epsilon: Exploration rate, in ``[0, 1]``.
        tol: Stop when no value changes by more than this in a sweep.
        max_iterations: Safety limit on the number of sweeps.

    Returns:
        ``Q`` of shape ``[S, A]``, float64.

    Raises:
        RuntimeError: If the sweeps do not settle within ``max_iterations``.
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon is {epsilon}; it must be a probability in [0, 1]")
    P, R = mdp.P.double(), mdp.R.double()
    Q = torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64)
    for _ in range(max_iterations):
        V = (1.0 - epsilon) * Q.max(-1).values + epsilon * Q.mean(-1)
        V = torch.where(mdp.terminal, torch.zeros_like(V), V)
        new = R + mdp.gamma * torch.einsum("sat,t->sa", P, V)
        if (new - Q).abs().max() <= tol:
            return new
        Q = new
    raise RuntimeError(
        f"the sweeps did not settle in {max_iterations} iterations; with gamma = 1 some "
        "policy may never end the episode: use gamma < 1 or epsilon > 0"
    )


def greedy_path(mdp: TabularMDP, Q: torch.Tensor, max_steps: int = 1000) -> list[int]:
    """The states a deterministic MDP visits under the greedy policy of ``Q``, from the start.

    Taught in Lesson 02. Greedy ties go to the lowest action index; each step goes to the most
    likely next state (the only one in a deterministic MDP).

    Args:
        mdp: The MDP; its initial distribution must be a single state.
        Q: Action values, ``[S, A]``.
        max_steps: Length at which a path that never ends is cut.

    Returns:
        The visited states, the start first, a terminal state last when the episode ends.
    """
    start = int(mdp.initial.argmax())
    path = [start]
    for _ in range(max_steps):
        s = path[-1]
        if bool(mdp.terminal[s]):
            break
        a = int(torch.as_tensor(Q)[s].argmax())
        path.append(int(mdp.P[s, a].argmax()))
    return path


def greedy_return(mdp: TabularMDP, Q: torch.Tensor, max_steps: int = 100) -> float:
    """The return of one greedy episode in a deterministic MDP, cut after ``max_steps`` moves.

    Taught in Lesson 02. Where the greedy policy reaches a terminal state this is its exact
    value (undiscounted: CliffWalking's convention); where it walks in circles, the cut plays
    the part of gymnasium's time limit and the return counts ``max_steps`` moves.

    Args:
        mdp: A deterministic MDP with a single start state.
        Q: Action values, ``[S, A]``; ties go to the lowest action index.
        max_steps: Time limit of the episode.

    Returns:
        The sum of the rewards along the path.

    Raises:
        ValueError: If a move on the path has more than one possible outcome.
    """
    path = greedy_path(mdp, Q, max_steps)
    total = 0.0
    for s, s_next in zip(path[:-1], path[1:]):
        a = int(torch.as_tensor(Q)[s].argmax())
        if float(mdp.P[s, a, s_next]) < 1.0:
            raise ValueError(
                f"the move from state {s} by action {a} is random; greedy_return needs a "
                "deterministic MDP (use expected_return otherwise)"
            )
        total += float(mdp.R[s, a])
    return total


def cliff_map(path: Sequence[int], shape: tuple[int, int] = (4, 12)) -> str:
    """A path drawn on CliffWalking's grid, as text.

    Taught in Lesson 02. ``S`` start, ``G`` goal, ``C`` cliff, ``o`` a cell of the path,
    ``.`` the rest; states are numbered row by row, as in gymnasium.

    Args:
        path: States, e.g. from `greedy_path`.
        shape: Rows and columns of the grid.

    Returns:
        One line per row.
    """
    rows, cols = shape
    grid = [["."] * cols for _ in range(rows)]
    for c in range(1, cols - 1):
        grid[rows - 1][c] = "C"
    for s in path:
        r, c = divmod(int(s), cols)
        grid[r][c] = "o"
    grid[rows - 1][0], grid[rows - 1][cols - 1] = "S", "G"
    return "\n".join(" ".join(row) for row in grid)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Means over a sliding window along the last axis, to read noisy per-episode returns.

    Taught in Lesson 02.

    Args:
        values: ``[..., K]``.
        window: Width of the window, ``1 <= window <= K``.

    Returns:
        ``[..., K - window + 1]``: entry ``j`` is the mean of ``values[..., j : j + window]``.

    Example:
        >>> moving_average(np.array([1.0, 2.0, 3.0, 6.0]), 2).tolist()
        [1.5, 2.5, 4.5]
    """
    values = np.asarray(values, dtype=np.float64)
    if not 1 <= window <= values.shape[-1]:
        raise ValueError(f"window is {window}; use 1 to {values.shape[-1]} (the length)")
    total = np.cumsum(np.concatenate([np.zeros((*values.shape[:-1], 1)), values], -1), -1)
    return (total[..., window:] - total[..., :-window]) / window
