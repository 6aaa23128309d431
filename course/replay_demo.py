"""Why replay matters, measured: the experiment behind Lesson 02.

A small Q-network learns the optimal action values of a grid-world task (Lesson 01's Q*, from
`course.mdp.value_iteration`) by semi-gradient Q-learning, from one stream of transitions of a
uniformly random walk. Two learners see exactly the same stream, make the same number of updates
with the same batch size and start from the same weights; they differ only in which transitions
each update uses:

- **online**: the ``batch_size`` most recent transitions, consecutive steps of one walk, so a
  minibatch covers a few neighbouring cells and successive minibatches overlap;
- **replay**: ``batch_size`` transitions drawn uniformly from a `course.replay.ReplayBuffer`
  holding everything seen so far, so a minibatch spreads over the whole grid.

Both are run for several seeds at once: every seed gets its own walk, its own initial weights
(shared by its two learners) and its own sampling generator, and the networks of all learners
are stacked into one `course.population.PopulationQNetwork` (the network every trainer of the
course uses) so that an update of all of them is a few tensor operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from course.envs import GridFamilyEnv
from course.evaluation import ConfidenceInterval, greedy_optimal_fraction, mean_ci
from course.mdp import value_iteration
from course.population import PopulationQNetwork, Purpose, derive_seed, seeded_generators
from course.replay import Batch, ReplayBuffer

__all__ = [
    "ReplayDemoConfig",
    "ReplayDemoResult",
    "distinct_states",
    "greedy_optimal_fraction",
    "q_error",
    "random_walk",
    "run_replay_demo",
]

ARMS: tuple[str, str] = ("online", "replay")


@dataclass(frozen=True)
class ReplayDemoConfig:
    """Settings of the online-versus-replay experiment."""

    goal: tuple[int, int] = (6, 6)
    """Goal cell of the task, on `course.envs.GRID_LAYOUT`."""
    obs_mode: str = "coords"
    """Observation of a cell: ``"coords"`` (row, col scaled to [0, 1]) makes neighbouring cells
    look alike to the network, so an update on one cell moves its neighbours' values too."""
    gamma: float = 0.9
    """Discount factor of the task."""
    n_updates: int = 1500
    """Gradient updates per learner (the walk has ``n_updates + batch_size - 1`` steps)."""
    batch_size: int = 32
    """Transitions per update, for both learners."""
    capacity: int = 10_000
    """Capacity of each replay buffer."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the Q-network (ReLU after each)."""
    lr: float = 1e-3
    """Adam learning rate."""
    eval_every: int = 50
    """Updates between two measurements of the error to Q*."""


@dataclass(frozen=True)
class ReplayDemoResult:
    """What `run_replay_demo` measured.

    Attributes:
        steps: Number of updates done at each measurement, ``[E]``.
        error: ``{"online": [n_seeds, E], "replay": [n_seeds, E]}``, the root-mean-square
            difference between the learned Q and Q* over the non-terminal states.
        greedy_optimal: Same layout: the fraction of non-terminal states whose greedy action
            (under the learned Q) is optimal (under Q*).
        distinct_states: ``{"online": float, "replay": float}``, the mean number of distinct
            states among the ``batch_size`` transitions of a minibatch.
        q_values: ``{"online": [n_seeds, S, A], "replay": [n_seeds, S, A]}``, the learned Q
            of every state at the end.
        q_star: The exact ``Q*``, ``[S, A]``.
        seeds: The seeds, one per row.
    """

    steps: np.ndarray
    error: dict[str, np.ndarray]
    greedy_optimal: dict[str, np.ndarray]
    distinct_states: dict[str, float]
    q_values: dict[str, np.ndarray]
    q_star: np.ndarray
    seeds: tuple[int, ...]

    def final(self, last: int = 5) -> dict[str, dict[str, ConfidenceInterval]]:
        """Where each learner ends: the mean over seeds, with a 95% Student-t interval.

        Each seed's value is its average over the ``last`` measurements, which smooths the
        swings of a single measurement.

        Args:
            last: Number of final measurements averaged per seed.

        Returns:
            ``{arm: {"error": ci, "greedy_optimal": ci}}`` for arms ``"online"`` and
            ``"replay"``.
        """
        if not 1 <= last <= len(self.steps):
            raise ValueError(f"last is {last}; use 1 to {len(self.steps)} measurements")
        return {
            arm: {
                "error": mean_ci(self.error[arm][:, -last:].mean(1)),
                "greedy_optimal": mean_ci(self.greedy_optimal[arm][:, -last:].mean(1)),
            }
            for arm in ARMS
        }


def random_walk(env: GridFamilyEnv, n_steps: int, seed: int) -> Batch:
    """Consecutive transitions of a uniformly random policy, resetting when an episode ends.

    Args:
        env: A grid env (it never truncates; an episode ends at the goal).
        n_steps: Number of transitions ``T``.
        seed: Seeds the env's first reset and the actions.

    Returns:
        A `course.replay.Batch` of the ``T`` transitions in the order they happened (``tasks``
        all 0).
    """
    actions = torch.randint(4, (n_steps,), generator=torch.Generator().manual_seed(seed))
    obs, _ = env.reset(seed=seed)
    observations, next_observations = [], []
    rewards = np.zeros(n_steps, dtype=np.float32)
    terminated = np.zeros(n_steps, dtype=np.bool_)
    for t, action in enumerate(actions.tolist()):
        next_obs, reward, term, _, _ = env.step(action)
        observations.append(obs)
        next_observations.append(next_obs)
        rewards[t], terminated[t] = reward, term
        obs = env.reset()[0] if term else next_obs
    return Batch(
        obs=torch.as_tensor(np.stack(observations)),
        actions=actions,
        rewards=torch.as_tensor(rewards),
        next_obs=torch.as_tensor(np.stack(next_observations)),
        terminated=torch.as_tensor(terminated),
        tasks=torch.zeros(n_steps, dtype=torch.int64),
    )


def q_error(q: torch.Tensor, q_star: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Root-mean-square error of learned action values over the states in ``mask``.

    Args:
        q: Learned values, ``[..., S, A]``.
        q_star: Exact values, ``[S, A]``.
        mask: Which states count, bool ``[S]`` (e.g. the non-terminal ones).

    Returns:
        ``[...]``, one error per leading index.

    Example:
        >>> q_error(torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([True, False]))
        tensor(1.)
    """
    diff = (q - q_star)[..., mask, :]
    return diff.pow(2).mean((-2, -1)).sqrt()


def distinct_states(obs: torch.Tensor) -> torch.Tensor:
    """Number of distinct observations in each minibatch.

    Args:
        obs: ``[..., B, D]``.

    Returns:
        ``[...]`` int64: how many different rows each minibatch holds (1 to ``B``).

    Example:
        >>> distinct_states(torch.tensor([[[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]]))
        tensor([2])
    """
    lead = obs.shape[:-2]
    flat = obs.reshape(-1, *obs.shape[-2:])
    counts = [torch.unique(batch, dim=0).shape[0] for batch in flat]
    return torch.tensor(counts, dtype=torch.int64).reshape(lead)


def _stack_batches(batches: Sequence[Batch]) -> Batch:
    return Batch(*(torch.stack(field) for field in zip(*batches)))


def run_replay_demo(
    config: ReplayDemoConfig | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    device: torch.device | str = "cpu",
) -> ReplayDemoResult:
    """Train an online and a replay Q-learner per seed on the same walk; track their error.

    Update ``k`` (from 0) happens once transition ``k + batch_size - 1`` of the walk has been
    seen. The online learner uses transitions ``k .. k + batch_size - 1``; the replay learner
    adds each transition to its `ReplayBuffer` as it arrives and samples ``batch_size`` of them
    uniformly. Both minimise the mean squared TD error ``(Q(s, a) - r - gamma * (1 - term) *
    max_a' Q(s', a'))^2`` with the target held constant (no gradient through it) and no target
    network (Lesson 03 adds one), by Adam.

    Args:
        config: The experiment's settings (the defaults of `ReplayDemoConfig` when None).
        seeds: One run per seed; the same seeds give the same numbers.
        device: Where the networks and buffers live.

    Returns:
        The measured curves (see `ReplayDemoResult`).
    """
    config = ReplayDemoConfig() if config is None else config
    device = torch.device(device)
    seeds = tuple(int(s) for s in seeds)
    n_seeds, batch_size = len(seeds), config.batch_size
    env = GridFamilyEnv(
        goal=config.goal, start="uniform", obs_mode=config.obs_mode, gamma=config.gamma
    )
    mdp = env.mdp()
    q_star = value_iteration(mdp)[1].to(torch.float32)
    q_star_dev, mask = q_star.to(device), (~mdp.terminal).to(device)
    all_obs = torch.as_tensor(env.observations(), device=device)
    n_steps = config.n_updates + batch_size - 1
    walks = [random_walk(env, n_steps, derive_seed(seed, Purpose.ENV)) for seed in seeds]
    stream = Batch(*(torch.stack(field).to(device) for field in zip(*walks)))  # [n_seeds, T]

    # agents 2i (online) and 2i + 1 (replay) belong to seed i and start from the same weights
    init = seeded_generators([s for s in seeds for _ in ARMS], Purpose.INIT)
    q_net = PopulationQNetwork(
        2 * n_seeds, all_obs.shape[1], int(env.action_space.n), config.hidden, generators=init
    ).to(device)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=config.lr)
    buffers = [ReplayBuffer(config.capacity, all_obs.shape[1:], device=device) for _ in seeds]
    samplers = [
        torch.Generator(device=device).manual_seed(derive_seed(s, Purpose.REPLAY)) for s in seeds
    ]
    online, replay = torch.arange(0, 2 * n_seeds, 2), torch.arange(1, 2 * n_seeds, 2)

    steps, errors, optimal = [], [], []
    n_distinct = torch.zeros(len(ARMS), dtype=torch.float64)
    for t in range(n_steps):
        for i, buf in enumerate(buffers):
            buf.add(*(field[i, t] for field in stream))
        k = t - batch_size + 1
        if k < 0:
            continue
        window = Batch(*(field[:, k : t + 1] for field in stream))
        sampled = _stack_batches([buf.sample(batch_size, g) for buf, g in zip(buffers, samplers)])
        batch = Batch(*(torch.stack([w, s], 1).flatten(0, 1) for w, s in zip(window, sampled)))
        with torch.no_grad():
            next_max = q_net(batch.next_obs).max(-1).values
            target = batch.rewards + config.gamma * (~batch.terminated) * next_max
        q_taken = q_net(batch.obs).gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        loss = (q_taken - target).pow(2).mean(-1).sum()  # a sum over agents keeps them independent
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if k % config.eval_every == 0:
            n_distinct += distinct_states(batch.obs.cpu()).reshape(n_seeds, 2).double().mean(0)
        if (k + 1) % config.eval_every == 0:
            with torch.no_grad():
                q_all = q_net(all_obs.expand(2 * n_seeds, -1, -1))
            steps.append(k + 1)
            errors.append(q_error(q_all, q_star_dev, mask).cpu())
            optimal.append(greedy_optimal_fraction(q_all, q_star_dev, mask).cpu())

    error, greedy = torch.stack(errors, 1), torch.stack(optimal, 1)  # [2 * n_seeds, E]
    n_measured = (config.n_updates - 1) // config.eval_every + 1
    with torch.no_grad():
        q_final = q_net(all_obs.expand(2 * n_seeds, -1, -1)).cpu()
    return ReplayDemoResult(
        steps=np.asarray(steps),
        error={"online": error[online].numpy(), "replay": error[replay].numpy()},
        greedy_optimal={"online": greedy[online].numpy(), "replay": greedy[replay].numpy()},
        distinct_states={arm: float(n_distinct[j] / n_measured) for j, arm in enumerate(ARMS)},
        q_values={"online": q_final[online].numpy(), "replay": q_final[replay].numpy()},
        q_star=q_star.numpy(),
        seeds=seeds,
    )


# ---------------------------------------------------------------------------------------------
# How often each transition is used, and how far an error curve climbs back (Lesson 02)
# ---------------------------------------------------------------------------------------------


def expected_uses(n_updates: int, batch_size: int) -> dict[str, np.ndarray]:
    """How many minibatches each transition of the walk lands in, per learner, on average.

    Taught in Lesson 02. Update ``k`` uses transitions ``k .. k + batch_size - 1`` (online), or
    draws ``batch_size`` of the ``k + batch_size`` stored ones uniformly (replay, with a buffer
    that never overwrites). Both learners use ``n_updates * batch_size`` transitions in total,
    but not the same ones equally often: online uses each transition while it is recent,
    replay keeps drawing the early ones.

    Args:
        n_updates: Number of updates ``K``.
        batch_size: Transitions per update ``B``.

    Returns:
        ``{"online": [T], "replay": [T]}`` with ``T = K + B - 1``: the number of minibatches
        transition ``i`` is in (online), and its expected number of draws (replay).

    Example:
        >>> uses = expected_uses(3, 2)
        >>> uses["online"].tolist(), [round(x, 3) for x in uses["replay"].tolist()]
        ([1.0, 2.0, 2.0, 1.0], [2.167, 2.167, 1.167, 0.5])
    """
    T = n_updates + batch_size - 1
    i = np.arange(T)
    first_update = np.maximum(0, i - batch_size + 1)  # the update at which i is stored
    online = (np.minimum(i, n_updates - 1) - first_update + 1).astype(np.float64)
    per_update = batch_size / (np.arange(n_updates) + batch_size)  # draws of each stored one
    remaining = np.concatenate([np.cumsum(per_update[::-1])[::-1], [0.0]])
    return {"online": online, "replay": remaining[first_update]}


def largest_rise(curves: np.ndarray) -> np.ndarray:
    """How far each error curve climbs back above the best it had reached: forgetting.

    Taught in Lesson 02. ``max_t (curve[t] - min_{t' <= t} curve[t'])`` per run: 0 for a curve
    that never rises, the height of the worst relapse otherwise. Averaging curves over seeds
    hides relapses that happen at different times in different runs; this measures them run by
    run.

    Args:
        curves: ``[runs, E]`` errors (lower is better) at successive measurements.

    Returns:
        ``[runs]``.

    Example:
        >>> largest_rise(np.array([[3.0, 1.0, 2.5, 0.5], [3.0, 2.0, 1.0, 1.0]])).tolist()
        [1.5, 0.0]
    """
    curves = np.asarray(curves, dtype=np.float64)
    if curves.ndim != 2:
        raise ValueError(f"curves has shape {curves.shape}; expected [runs, E]")
    return (curves - np.minimum.accumulate(curves, axis=1)).max(1)
