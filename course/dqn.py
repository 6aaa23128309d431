"""Deep Q-learning: the pieces Lesson 03 teaches, and the reference agent later lessons use.

Taught in Lesson 03. The pure functions (``linear_schedule``, ``epsilon_greedy``, ``td_target``,
``double_td_target``, ``dqn_loss``, ``soft_update``, ``real_transitions``) are what the student
writes. The course's one trainer, :func:`course.population.train_population`, calls
``linear_schedule``, ``td_target``, ``double_td_target``, ``soft_update`` and
``real_transitions``; it applies ``epsilon_greedy``'s rule to random numbers drawn in blocks and
``dqn_loss``'s Huber loss per agent and task. :func:`train_dqn` is its single-task entry point:
a *population* of independent agents (several seeds trained together, one process, batched
tensors).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.vector import VectorEnv
from torch import nn

from course.evaluation import evaluate_policy
from course.population import (
    AgentEnvs,
    Agents,
    PopulationEnv,
    PopulationQNetwork,
    TrainerConfig,
    default_device,
    greedy_returns,
    linear_init,
    network_sizes,
    train_population,
)
from course.replay import Batch, ReplayBuffer

__all__ = [
    "DQNConfig",
    "DQNResult",
    "NoisyRewards",
    "PopulationQNetwork",
    "QNetwork",
    "cartpole_vec",
    "evaluate",
    "train_dqn",
    "train_dqn_agents",
    "double_td_target",
    "dqn_loss",
    "dqn_update",
    "episode_curve",
    "epsilon_greedy",
    "first_reached",
    "value_bias",
    "OVERESTIMATION_CONFIG",
    "Overestimation",
    "measure_overestimation",
    "noise_free_grid_vec",
    "cartpole_record",
    "load_record",
    "CARTPOLE_RECORD",
    "linear_schedule",
    "real_transitions",
    "soft_update",
    "td_target",
    "train_loop",
]


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """Interpolate linearly from ``start`` to ``end`` over ``duration`` steps, then stay at ``end``.

    Taught in Lesson 03 (the exploration rate, the learning rate).

    Args:
        start: Value at step 0.
        end: Value from step ``duration`` on.
        duration: Number of steps of the ramp; ``<= 0`` means ``end`` from the start.
        step: Current step (negative steps count as 0).

    Returns:
        The scheduled value.

    Example:
        >>> linear_schedule(1.0, 0.0, 10, 5), linear_schedule(1.0, 0.0, 10, 50)
        (0.5, 0.0)
    """
    if duration <= 0:
        return float(end)
    frac = min(max(step, 0) / duration, 1.0)
    return float(start + frac * (end - start))


def epsilon_greedy(
    q_values: torch.Tensor,
    epsilon: float | torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the greedy action, or with probability ``epsilon`` a uniformly random one.

    Taught in Lesson 03. A random action may coincide with the greedy one, so the greedy action
    is chosen with probability ``1 - epsilon + epsilon / A``. Ties go to the lowest index.

    Args:
        q_values: Action values ``[B, A]`` (any leading dimensions ``[..., A]`` work).
        epsilon: Exploration probability in ``[0, 1]``, a float or a tensor broadcastable to
            ``[B]``.
        generator: Source of randomness. Draws, in order: ``B`` uniforms (explore or not),
            then ``B`` random actions.

    Returns:
        Actions ``[B]``, int64.
    """
    shape, n_actions = q_values.shape[:-1], q_values.shape[-1]
    device = generator.device if generator is not None else q_values.device
    explore = torch.rand(shape, generator=generator, device=device).to(q_values.device)
    random_actions = torch.randint(n_actions, shape, generator=generator, device=device)
    greedy = q_values.argmax(dim=-1)
    return torch.where(explore < epsilon, random_actions.to(q_values.device), greedy)


def td_target(
    rewards: torch.Tensor,
    next_q: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """One-step Q-learning target ``r + gamma * max_a next_q``, with no bootstrap past the end.

    Taught in Lesson 03. Only a *terminated* transition drops the bootstrap term: a truncated
    one (time limit) still bootstraps, because the state it reached has a future the time limit
    merely hid from us.

    Args:
        rewards: ``[B]``.
        next_q: Target-network values of the next observations, ``[B, A]``.
        terminated: ``[B]`` bool, true where the next observation is terminal.
        gamma: Discount factor.

    Returns:
        Targets ``[B]`` (leading dimensions ``[...]`` are kept).

    Example:
        >>> td_target(torch.tensor([1.0, 1.0]), torch.tensor([[2.0, 3.0], [2.0, 3.0]]),
        ...           torch.tensor([False, True]), gamma=0.5)
        tensor([2.5000, 1.0000])
    """
    bootstrap = next_q.max(dim=-1).values
    # where, not multiplication: a terminal row's next_q may be garbage (even inf or nan)
    return rewards + gamma * torch.where(terminated, torch.zeros_like(bootstrap), bootstrap)


def double_td_target(
    rewards: torch.Tensor,
    next_q_online: torch.Tensor,
    next_q_target: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """Double DQN target: the online network picks the next action, the target network values it.

    Taught in Lesson 03 (van Hasselt et al., 2016). Decoupling selection from evaluation
    reduces the overestimation bias of ``max``.

    Args:
        rewards: ``[B]``.
        next_q_online: Online-network values of the next observations, ``[B, A]``.
        next_q_target: Target-network values of the next observations, ``[B, A]``.
        terminated: ``[B]`` bool.
        gamma: Discount factor.

    Returns:
        Targets ``[B]``.
    """
    next_actions = next_q_online.argmax(dim=-1, keepdim=True)
    bootstrap = next_q_target.gather(-1, next_actions).squeeze(-1)
    return rewards + gamma * torch.where(terminated, torch.zeros_like(bootstrap), bootstrap)


def dqn_loss(q_values: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean Huber loss (delta 1) between the values of the taken actions and the targets.

    Taught in Lesson 03. The targets are treated as constants: no gradient flows into them,
    even if they were computed with a network that requires gradients.

    Args:
        q_values: Online-network values ``[B, A]``.
        actions: Actions taken ``[B]``, int64.
        targets: TD targets ``[B]``.

    Returns:
        Scalar loss.
    """
    taken = q_values.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return F.smooth_l1_loss(taken, targets.detach())


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging ``target <- tau * online + (1 - tau) * target``, in place, without grad.

    Taught in Lesson 03. ``tau = 1`` copies the online weights exactly (a hard update).

    Args:
        target: Network updated in place.
        online: Network read from; must have the same parameter shapes as ``target``.
        tau: Interpolation weight in ``[0, 1]``.

    Raises:
        ValueError: If the two networks' parameters do not match.
    """
    target_params, online_params = list(target.parameters()), list(online.parameters())
    if len(target_params) != len(online_params) or any(
        t.shape != o.shape for t, o in zip(target_params, online_params, strict=True)
    ):
        raise ValueError("target and online networks have different parameters; use two copies")
    for t, o in zip(target_params, online_params, strict=True):
        if tau == 1.0:
            t.copy_(o)  # exact, even where (1 - tau) * t would not vanish (inf, nan)
        else:
            t.mul_(1.0 - tau).add_(o, alpha=tau)


def real_transitions(prev_done: torch.Tensor) -> torch.Tensor:
    """Which rows of a vector-env step are real transitions, under next-step autoreset.

    Taught in Lesson 03. Gymnasium 1.x vector envs reset a finished sub-env on the *next*
    call to ``step``: that call ignores the action and returns the reset observation with
    reward 0 and ``terminated = truncated = False``. Its row ``(obs, action, reward, next_obs)``
    is not a transition of the environment (``obs`` is the last observation of the old episode,
    ``next_obs`` the first of the new one) and must never enter the replay.

    Args:
        prev_done: ``[E]`` bool, ``terminated | truncated`` returned by the *previous* step
            (all false after ``reset``).

    Returns:
        ``[E]`` bool, true for rows that are real transitions.

    Example:
        >>> done = torch.tensor([False, True])  # env 1 ended on the previous step
        >>> real_transitions(done)
        tensor([ True, False])
    """
    return ~prev_done


def dqn_update(
    q_net: nn.Module,
    target_net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    gamma: float,
    double: bool = False,
    max_grad_norm: float | None = None,
) -> float:
    """One gradient step of DQN on a replay batch; returns the loss before the step.

    Taught in Lesson 03, where the student writes it from the pieces above:

    1. targets from ``target_net`` without gradient (:func:`td_target`; with ``double``,
       :func:`double_td_target`: ``q_net`` picks the next action, ``target_net`` evaluates it),
       with no bootstrap past ``terminated``;
    2. the mean Huber loss on the taken actions (:func:`dqn_loss`);
    3. gradients zeroed *before* ``backward`` (PyTorch adds new gradients to old ones), the
       global gradient norm clipped to ``max_grad_norm`` between ``backward`` and ``step``
       (clipping after the step would change nothing), then one ``optimizer.step()``.

    Args:
        q_net: Online network, ``[B, D] -> [B, A]``; updated in place by ``optimizer``.
        target_net: Target network of the same shape; only read.
        optimizer: Optimizer over ``q_net``'s parameters.
        batch: Transitions sampled from the replay (:class:`course.replay.Batch`).
        gamma: Discount factor.
        double: Use the Double DQN target.
        max_grad_norm: Clip the global gradient norm to this (None: no clipping).

    Returns:
        The loss of this batch before the step, as a Python float.
    """
    with torch.no_grad():
        next_q_target = target_net(batch.next_obs)
        if double:
            next_q_online = q_net(batch.next_obs)
            targets = double_td_target(
                batch.rewards, next_q_online, next_q_target, batch.terminated, gamma
            )
        else:
            targets = td_target(batch.rewards, next_q_target, batch.terminated, gamma)
    loss = dqn_loss(q_net(batch.obs), batch.actions, targets)
    optimizer.zero_grad()
    loss.backward()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(q_net.parameters(), max_grad_norm)
    optimizer.step()
    return float(loss.detach())


def train_loop(
    envs: VectorEnv,
    q_net: nn.Module,
    target_net: nn.Module,
    optimizer: torch.optim.Optimizer,
    buffer: ReplayBuffer,
    total_steps: int,
    *,
    gamma: float,
    epsilon_schedule: Callable[[int], float],
    learning_starts: int,
    train_every: int,
    target_sync_every: int,
    batch_size: int,
    generator: torch.Generator,
    seed: int = 0,
) -> list[tuple[int, float]]:
    """DQN's training loop on a vector env with next-step autoreset, for one agent.

    Taught in Lesson 03, where the student writes it from the pieces above. With ``E =
    envs.num_envs`` copies, it makes ``total_steps // E`` vector steps; before vector step ``t``
    the agent has taken ``step = t * E`` environment steps (summed over the copies), and:

    1. acts epsilon-greedily on ``q_net`` (:func:`epsilon_greedy`, ``epsilon =
       epsilon_schedule(step)``, randomness from ``generator``) and steps ``envs``;
    2. stores only the real transitions (:func:`real_transitions` of the previous step's
       ``terminated | truncated``) in ``buffer``, with ``terminated`` (not ``truncated``) as the
       end flag;
    3. if ``step >= learning_starts`` and ``t % train_every == 0``: one :func:`dqn_update`
       (plain DQN target, no clipping) on ``buffer.sample(batch_size, generator=generator)``;
    4. after every ``target_sync_every``-th update, a hard copy of ``q_net`` into
       ``target_net`` (:func:`soft_update` with ``tau = 1``).

    :func:`course.population.train_population` is this loop batched over seeds (with
    ``updates_per_step = 1 / (E * train_every)``, a constant learning rate, no clipping).

    Args:
        envs: Vector env (next-step autoreset), observations ``[E, D]``, Discrete actions.
        q_net: Online network ``[B, D] -> [B, A]``, trained in place.
        target_net: Target network of the same shape, synced in place.
        optimizer: Optimizer over ``q_net``'s parameters.
        buffer: Replay buffer the transitions go to.
        total_steps: Environment steps, summed over the copies.
        gamma: Discount factor.
        epsilon_schedule: ``epsilon_schedule(step) -> epsilon``, ``step`` in environment steps.
        learning_starts: Environment steps before the first update.
        train_every: Vector steps between updates.
        target_sync_every: Updates between hard copies into ``target_net``.
        batch_size: Transitions per update.
        generator: The one source of randomness of acting and sampling.
        seed: Seed of ``envs.reset``.

    Returns:
        One ``(step, return)`` pair per finished training episode, in the order they ended:
        ``step`` is the number of environment steps taken when it ended.
    """
    n_envs = envs.num_envs
    obs, _ = envs.reset(seed=seed)
    prev_done = torch.zeros(n_envs, dtype=torch.bool)
    running = torch.zeros(n_envs, dtype=torch.float64)
    episodes: list[tuple[int, float]] = []
    n_updates = 0
    for t in range(total_steps // n_envs):
        step = t * n_envs
        with torch.no_grad():
            q_values = q_net(torch.as_tensor(obs, dtype=torch.float32))
        actions = epsilon_greedy(q_values, epsilon_schedule(step), generator)
        next_obs, rewards, terminated, truncated, _ = envs.step(actions.numpy())
        real = real_transitions(prev_done).numpy()
        buffer.add(
            obs[real], actions.numpy()[real], rewards[real], next_obs[real], terminated[real]
        )
        done = torch.as_tensor(terminated | truncated)
        running += torch.as_tensor(rewards, dtype=torch.float64) * torch.as_tensor(real)
        for i in done.nonzero().flatten().tolist():
            episodes.append((step + n_envs, float(running[i])))
            running[i] = 0.0
        prev_done, obs = done, next_obs
        if step >= learning_starts and t % train_every == 0:
            dqn_update(q_net, target_net, optimizer, buffer.sample(batch_size, generator), gamma)
            n_updates += 1
            if n_updates % target_sync_every == 0:
                soft_update(target_net, q_net, tau=1.0)
    return episodes


class QNetwork(nn.Module):
    """A multilayer perceptron mapping observations to one value per action.

    Args:
        obs_dim: Size ``D`` of a (flat) observation.
        n_actions: Number of actions ``A``.
        hidden: Widths of the hidden layers (ReLU after each).
        generator: Source of the initial weights (:func:`course.population.linear_init`,
            layer by layer, the weight then the bias); None uses PyTorch's global generator.
            The same generator state gives the same weights as agent 0 of
            :class:`course.population.PopulationQNetwork` built from it.

    Attributes:
        trunk: The hidden layers, ``[B, D] -> [B, hidden[-1]]`` (features).
        head: The final linear layer, features ``-> [B, A]``.

    Example:
        >>> net = QNetwork(4, 2, hidden=(8,), generator=torch.Generator().manual_seed(0))
        >>> net(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden: Sequence[int] = (256,),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.obs_dim, self.n_actions, self.hidden = obs_dim, n_actions, tuple(hidden)
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_actions)
        if generator is not None:
            with torch.no_grad():
                for layer in [*self.trunk[::2], self.head]:
                    weight, bias = linear_init(layer.in_features, layer.out_features, generator)
                    layer.weight.copy_(weight)
                    layer.bias.copy_(bias)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Action values ``[B, A]`` of observations ``[B, D]``."""
        return self.head(self.trunk(obs))


@dataclasses.dataclass(frozen=True)
class DQNConfig(TrainerConfig):
    """Hyperparameters of :func:`train_dqn` (defaults: CartPole-v1 solved within 50k steps).

    The fields of :class:`course.population.TrainerConfig` (network, optimizer, replay,
    targets, exploration), with the single-task budget.
    """

    total_steps: int = 50_000
    """environment steps per agent (summed over its parallel environments)"""
    num_envs: int = 4
    """parallel environments per agent"""
    eval_every: int = 2_500
    """environment steps between greedy evaluations"""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("total_steps", "num_envs", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}; it must be at least 1")
        if self.num_envs > self.buffer_size:
            raise ValueError(
                f"num_envs={self.num_envs} exceeds buffer_size={self.buffer_size}; "
                "use a larger buffer"
            )


@dataclasses.dataclass
class DQNResult:
    """What :func:`train_dqn` returns: learning curves and final weights of ``N`` agents.

    Attributes:
        config: The configuration used.
        seeds: One seed per agent, ``N`` of them.
        steps: Environment steps (per agent) at each evaluation, int64 ``[T]``.
        eval_returns: Greedy evaluation returns ``[N, T, eval_episodes]``.
        losses: Mean TD loss over the updates since the previous evaluation ``[N, T]`` (nan
            before learning starts).
        q_means: Mean Q-value of the taken actions over the same updates ``[N, T]``.
        episode_steps: Per agent, the step at which each training episode ended ``[K_a]``.
        episode_returns: Per agent, the return of each training episode ``[K_a]`` (with
            exploration, so below the greedy evaluation).
        states: Per agent, the final :class:`QNetwork` state dict.
        wall_time: Seconds spent in :func:`train_dqn`.
        eval_time: The part of ``wall_time`` spent in the greedy evaluations.
    """

    config: DQNConfig
    seeds: tuple[int, ...]
    steps: torch.Tensor
    eval_returns: torch.Tensor
    losses: torch.Tensor
    q_means: torch.Tensor
    episode_steps: list[torch.Tensor]
    episode_returns: list[torch.Tensor]
    states: list[dict[str, torch.Tensor]]
    wall_time: float
    eval_time: float = 0.0

    @property
    def eval_mean(self) -> torch.Tensor:
        """Mean greedy return at each evaluation ``[N, T]``."""
        return self.eval_returns.mean(dim=-1)

    def network(self, agent: int = 0) -> QNetwork:
        """The final network of agent ``agent`` as a :class:`QNetwork` (on the CPU)."""
        state = self.states[agent]
        sizes = network_sizes(state)
        net = QNetwork(sizes.obs_dim, sizes.n_actions, sizes.hidden)
        net.load_state_dict(state)
        return net


def cartpole_vec(num_envs: int) -> VectorEnv:
    """Gymnasium's own vectorised CartPole-v1 (next-step autoreset), the default environment."""
    return gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="vector_entry_point")


def train_dqn(
    config: DQNConfig = DQNConfig(),
    seeds: Sequence[int] = (0,),
    make_env: Callable[[int], VectorEnv] = cartpole_vec,
    init_state: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    regularizer: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    freeze: Sequence[str] = (),
) -> DQNResult:
    """Train one independent DQN agent per seed, all at once (the reference agent).

    The single-task entry point of :func:`course.population.train_population` (read its
    docstring for the loop): every agent has one task, its own vector env from ``make_env``, and
    a :class:`QNetwork`. Agent ``a``'s results depend only on ``seeds[a]`` and the config:
    training ``seeds=[1, 2]`` gives agent 2 the same curves and weights as ``seeds=[2]`` alone
    (on the same device and thread count).

    Args:
        config: Hyperparameters.
        seeds: One non-negative seed per agent.
        make_env: ``make_env(num_envs)`` builds a gymnasium vector env with next-step
            autoreset, a Box observation space and a Discrete action space, e.g. one that
            redraws the CartPole physics at each reset (domain randomisation); called once per
            agent for training (``config.num_envs``), then once per agent for evaluation
            (``config.eval_episodes``). Default: CartPole-v1. To give agents different tasks,
            use :func:`course.population.train_population` with their envs.
        init_state: Initial :class:`QNetwork` weights (a state dict for every agent, or one
            per agent), e.g. a pretrained network to fine-tune; the target network starts equal.
        device: Torch device (:func:`course.population.default_device`).
        progress: Show a tqdm progress bar (works in notebooks).
        callback: Called after each evaluation as ``callback(step, stats)`` with ``stats``
            holding ``eval_return``, ``loss`` and ``q_mean`` (tensors ``[N]``), ``epsilon`` and
            ``lr``.
        regularizer: Optional extra loss: receives
            :meth:`course.population.PopulationQNetwork.named_agent_parameters` and returns one
            penalty per agent ``[N]`` (e.g. L2-SP toward pretrained weights).
        freeze: Prefixes of :class:`QNetwork` parameter names to keep fixed (e.g.
            ``("trunk",)`` to train only the head).

    Returns:
        A :class:`DQNResult` with learning curves and final weights.
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds or min(seeds) < 0:
        raise ValueError(f"seeds {seeds}: give at least one seed, all non-negative")
    envs = AgentEnvs([make_env(config.num_envs) for _ in seeds])
    eval_envs = AgentEnvs([make_env(config.eval_episodes) for _ in seeds])
    if isinstance(init_state, Mapping):
        init_state = [init_state] * len(seeds)
    try:
        run = train_dqn_agents(
            seeds,
            envs,
            eval_envs,
            config,
            init_state,
            regularizer,
            freeze,
            device,
            progress,
            callback,
        )
    finally:
        envs.close()
        eval_envs.close()
    return run


def train_dqn_agents(
    seeds: Sequence[int],
    envs: PopulationEnv,
    eval_envs: PopulationEnv,
    config: DQNConfig,
    init_states: Sequence[Mapping[str, torch.Tensor]] | None = None,
    regularizer: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    freeze: Sequence[str] = (),
    device: torch.device | str | None = None,
    progress: bool = False,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
) -> DQNResult:
    """:func:`train_dqn` on given environments (agent ``a`` steps ``envs`` row ``a``).

    Args:
        seeds: One seed per agent.
        envs: The training environments (``config.num_envs`` sub-envs per agent).
        eval_envs: The evaluation environments (``config.eval_episodes`` per agent, one
            greedy episode each per evaluation).
        config, init_states, regularizer, freeze, device, progress, callback: As in
            :func:`train_dqn` (``init_states``: one state dict per agent).
    """
    device = default_device(device)

    def score(q_fn: Any, index: int) -> torch.Tensor:
        return greedy_returns(q_fn, eval_envs, seeds, index, device)

    agents = Agents(
        seeds=tuple(seeds),
        envs=envs,
        n_tasks=1,
        score=score,
        init_states=init_states,
        frozen=tuple(freeze),
        penalty=None
        if regularizer is None
        else (lambda q_net: regularizer(q_net.named_agent_parameters())),
    )

    def report(step: int, stats: dict[str, Any]) -> None:
        assert callback is not None
        keys = ("loss", "q_mean", "epsilon", "lr")
        callback(step, {"eval_return": stats["score"], **{k: stats[k] for k in keys}})

    run = train_population(
        agents,
        config,
        config.total_steps,
        config.eval_every,
        device,
        progress,
        None if callback is None else report,
    )
    return DQNResult(
        config=config,
        seeds=agents.seeds,
        steps=run.steps,
        eval_returns=run.scores,
        losses=run.stats["loss"],
        q_means=run.stats["q_mean"],
        episode_steps=run.episode_steps,
        episode_returns=run.episode_returns,
        states=[
            {k: v.cpu() for k, v in run.network.agent_state_dict(a).items()}
            for a in range(len(agents.seeds))
        ],
        wall_time=run.wall_time,
        eval_time=run.eval_time,
    )


def evaluate(
    q_net: nn.Module,
    make_env: Callable[[int], VectorEnv] = cartpole_vec,
    n_episodes: int = 20,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Greedy returns of a Q-network over ``n_episodes`` episodes run in parallel.

    Args:
        q_net: Maps observations ``[B, D]`` to action values ``[B, A]``.
        make_env: ``make_env(num_envs)`` builds a vector env (default CartPole-v1).
        n_episodes: Number of episodes (one per sub-env).
        seed: Seed of the env's reset: the same seed gives the same start states.
        device: Device of ``q_net`` (default: that of its first parameter).

    Returns:
        Returns ``[n_episodes]``, float64.
    """
    if device is None:
        device = next(q_net.parameters()).device
    env = make_env(n_episodes)
    try:
        return evaluate_policy(lambda obs: q_net(obs).argmax(dim=-1), env, n_episodes, seed, device)
    finally:
        env.close()


class NoisyRewards(gym.vector.VectorWrapper):
    """Adds Gaussian noise of mean 0 to every reward of a vector env (Q* does not change).

    Taught in Lesson 03: noisy rewards make the ``max`` of the DQN target overestimate, the bias
    Double DQN reduces. The noise generator is seeded by ``reset(seed=...)`` (and by ``seed``
    before the first seeded reset), so a seeded run is reproducible.

    Args:
        env: The vector env to wrap.
        std: Standard deviation of the noise.
        seed: Seed of the noise before the first seeded reset.
    """

    def __init__(self, env: VectorEnv, std: float, seed: int = 0) -> None:
        super().__init__(env)
        if not std >= 0:
            raise ValueError(f"std={std!r}; the noise's standard deviation must be >= 0")
        self.std = float(std)
        self._rng = np.random.default_rng(seed)

    def reset(self, *, seed: Any = None, options: Any = None) -> tuple[Any, dict]:
        if seed is not None:
            first = seed if isinstance(seed, int) else int(np.asarray(seed).reshape(-1)[0])
            self._rng = np.random.default_rng([first, 0x5EED])
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict]:
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        noise = self._rng.normal(0.0, self.std, np.shape(rewards))
        return obs, np.asarray(rewards) + noise, terminated, truncated, info


# The overestimation experiment of Lesson 03: a one-hot grid world (exact Q* known) with noisy
# rewards, DQN against Double DQN at the same settings and seeds.
OVERESTIMATION_CONFIG = DQNConfig(
    total_steps=5_000,
    num_envs=8,
    hidden=(64, 64),
    lr=1e-3,
    lr_decay_fraction=1.0,
    gamma=0.9,
    batch_size=64,
    buffer_size=5_000,
    learning_starts=500,
    updates_per_step=0.25,
    target_update_interval=100,
    eps_end=0.01,
    exploration_fraction=0.2,
    eval_every=5_000,
    eval_episodes=1,
)
OVERESTIMATION_GOAL = (0, 6)


def noise_free_grid_vec(num_envs: int) -> VectorEnv:
    """The overestimation task without the noise: goal (0, 6), episodes from a random cell."""
    import course.envs  # noqa: F401  (registers course/GridFamily-v0)

    return gym.make_vec(
        "course/GridFamily-v0",
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        goal=OVERESTIMATION_GOAL,
        start="uniform",
    )


@dataclasses.dataclass
class Overestimation:
    """What :func:`measure_overestimation` measured.

    Attributes:
        runs: ``{"DQN": result, "Double DQN": result}``, same seeds and settings.
        q_values: Per variant, every seed's learned ``Q`` of every state ``[S, A]``.
        bias: Per variant, every seed's :func:`value_bias` against ``Q*``.
        q_star: The exact ``Q*`` ``[S, A]``.
        mdp: The task's exact MDP (``mdp.terminal`` marks the goal).
    """

    runs: dict[str, DQNResult]
    q_values: dict[str, list[torch.Tensor]]
    bias: dict[str, list[float]]
    q_star: torch.Tensor
    mdp: Any


def measure_overestimation(
    seeds: Sequence[int],
    config: DQNConfig = OVERESTIMATION_CONFIG,
    noise_std: float = 1.0,
    progress: bool = False,
) -> Overestimation:
    """DQN and Double DQN on the grid task with rewards made noisy; their bias against Q*.

    Taught in Lesson 03 (``benchmarks/bench_overestimation.py`` runs it with more seeds). The
    noise has mean 0, so Q* is unchanged; every target carries noise for the max to pick up.

    Args:
        seeds: One agent per seed in each variant; both variants share them.
        config: Settings of both variants (``double_dqn`` is set per variant).
        noise_std: Standard deviation of the reward noise.
        progress: Show progress bars.

    Returns:
        The runs, the learned values, and each seed's bias (see :class:`Overestimation`).
    """
    from course.mdp import value_iteration

    def make_noisy_grid(num_envs: int) -> VectorEnv:
        return NoisyRewards(noise_free_grid_vec(num_envs), std=noise_std)

    runs = {
        name: train_dqn(
            dataclasses.replace(config, double_dqn=double),
            seeds=seeds,
            make_env=make_noisy_grid,
            progress=progress,
        )
        for name, double in [("DQN", False), ("Double DQN", True)]
    }
    grid = noise_free_grid_vec(1)
    mdp = grid.mdp()
    _, q_star = value_iteration(mdp)
    observations = torch.as_tensor(grid.observations())  # one row per state, in state order
    grid.close()
    with torch.no_grad():
        q_values = {
            name: [run.network(agent)(observations) for agent in range(len(run.seeds))]
            for name, run in runs.items()
        }
    bias = {name: [value_bias(q, q_star, mdp.terminal) for q in q_values[name]] for name in runs}
    return Overestimation(runs, q_values, bias, q_star, mdp)


def episode_curve(
    episode_steps: Sequence[int] | torch.Tensor,
    episode_returns: Sequence[float] | torch.Tensor,
    edges: Sequence[int],
) -> torch.Tensor:
    """Mean return of the training episodes that ended in each window of steps.

    Taught in Lesson 03 (the learning curve of a training loop that reports its episodes).

    Args:
        episode_steps: Step at which each episode ended ``[K]``.
        episode_returns: Return of each episode ``[K]``.
        edges: Window boundaries ``[T + 1]``, increasing; window ``i`` holds the episodes with
            ``edges[i] < step <= edges[i + 1]``.

    Returns:
        ``[T]`` float64, nan for a window in which no episode ended.

    Example:
        >>> episode_curve([10, 20, 35], [1.0, 3.0, 5.0], [0, 20, 40])
        tensor([2., 5.], dtype=torch.float64)
    """
    steps = torch.as_tensor(episode_steps, dtype=torch.float64).reshape(-1)
    returns = torch.as_tensor(episode_returns, dtype=torch.float64).reshape(-1)
    if steps.shape != returns.shape:
        raise ValueError(
            f"{steps.numel()} episode steps but {returns.numel()} returns; give one of each"
        )
    edges_t = torch.as_tensor(edges, dtype=torch.float64)
    if edges_t.numel() < 2 or bool((edges_t.diff() <= 0).any()):
        raise ValueError("edges must hold at least two increasing window boundaries")
    window = torch.bucketize(steps, edges_t, right=False) - 1  # edges[i] < step <= edges[i+1]
    out = torch.full((edges_t.numel() - 1,), float("nan"), dtype=torch.float64)
    for i in range(out.numel()):
        chosen = returns[window == i]
        if chosen.numel():
            out[i] = chosen.mean()
    return out


#: The stored CartPole-v1 run of the default configuration (written by benchmarks/bench_dqn.py).
CARTPOLE_RECORD = Path(__file__).resolve().parent.parent / "benchmarks/results/dqn_cartpole.json"


def cartpole_record(seeds: Sequence[int], config: DQNConfig = DQNConfig()) -> dict[str, Any]:
    """Train :func:`train_dqn` on CartPole-v1 and return its greedy curves as JSON-ready data.

    Taught in Lesson 03, which plots the stored record of the default configuration (a run too
    long for the lesson's budget); a test regenerates one of its seeds and compares. Each seed
    is trained alone, so that any one of them can be regenerated bit for bit.

    Args:
        seeds: Seeds of the agents.
        config: Hyperparameters (default: the library's, tuned to solve CartPole-v1).

    Returns:
        ``{"config", "seeds", "steps" [T], "eval_mean" [N][T], "threshold"}``; ``eval_mean`` is
        the mean greedy return of ``config.eval_episodes`` episodes at each evaluation.
    """
    # each seed alone: a population of one reproduces bit for bit, whereas the batched
    # products of a larger population may round differently from those of a smaller one
    runs = [train_dqn(config, seeds=[seed]) for seed in seeds]
    return {
        "description": "train_dqn on CartPole-v1: greedy evaluation mean per seed",
        "config": json.loads(json.dumps(dataclasses.asdict(config))),
        "seeds": [int(s) for s in seeds],
        "steps": runs[0].steps.tolist(),
        "eval_mean": [run.eval_mean[0].tolist() for run in runs],
        "threshold": 475.0,
    }


def load_record(path: str | Path = CARTPOLE_RECORD) -> dict[str, Any]:
    """Read a record written from :func:`cartpole_record` (tensors for ``steps``, ``eval_mean``).

    Raises:
        FileNotFoundError: If the file is missing (``benchmarks/bench_dqn.py --write-record``
            writes it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; write it with `python benchmarks/bench_dqn.py --write-record`"
        )
    record = json.loads(path.read_text())
    record["steps"] = torch.tensor(record["steps"])
    record["eval_mean"] = torch.tensor(record["eval_mean"], dtype=torch.float64)
    return record


def value_bias(q: torch.Tensor, q_star: torch.Tensor, terminal: torch.Tensor) -> float:
    """Mean of ``max_a Q(s, a) - V*(s)`` over the non-terminal states: > 0 is overestimation.

    Taught in Lesson 03 (what Double DQN is meant to reduce).

    Args:
        q: Learned action values ``[S, A]``.
        q_star: Exact optimal action values ``[S, A]``.
        terminal: ``[S]`` bool; terminal states are left out (nothing is learned there).

    Returns:
        The mean bias of the learned state values.

    Example:
        >>> q, q_star = torch.tensor([[1.5, 0.0], [9.0, 0.0]]), torch.tensor([[1.0, 0.5], [0, 0]])
        >>> value_bias(q, q_star, terminal=torch.tensor([False, True]))
        0.5
    """
    q = torch.as_tensor(q).detach().cpu().double()
    q_star = torch.as_tensor(q_star).detach().cpu().double()
    if q.shape != q_star.shape:
        raise ValueError(f"q has shape {tuple(q.shape)} but q_star {tuple(q_star.shape)}")
    keep = ~torch.as_tensor(terminal).cpu().bool()
    return float((q.max(-1).values - q_star.max(-1).values)[keep].mean())


def first_reached(steps: torch.Tensor, curves: torch.Tensor, threshold: float) -> list[int | None]:
    """Per curve, the first step whose value is at least ``threshold`` (None: never).

    Taught in Lesson 03 (when each seed of the stored CartPole run first scored 475).

    Args:
        steps: Steps of the measurements ``[T]``.
        curves: One curve per run ``[N, T]``.
        threshold: The level to reach.

    Returns:
        ``N`` steps (or None).

    Example:
        >>> first_reached(torch.tensor([0, 10, 20]), torch.tensor([[1.0, 5.0, 9.0], [0, 0, 1]]), 5)
        [10, None]
    """
    steps, curves = torch.as_tensor(steps), torch.as_tensor(curves)
    out: list[int | None] = []
    for curve in curves:
        hit = (curve >= threshold).nonzero().flatten()
        out.append(int(steps[hit[0]]) if hit.numel() else None)
    return out
