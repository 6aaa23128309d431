"""Deep Q-learning: the pieces Lesson 03 teaches, and the reference agent later lessons use.

Taught in Lesson 03. The pure functions (``linear_schedule``, ``epsilon_greedy``, ``td_target``,
``double_td_target``, ``dqn_loss``, ``soft_update``, ``real_transitions``) are what the student
writes; :func:`train_dqn` assembles them into a fast trainer for a *population* of independent
agents (several seeds trained together, one process, batched tensors).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.vector import AutoresetMode, VectorEnv
from torch import nn
from tqdm.auto import tqdm

from course.evaluation import evaluate_policy
from course.replay import Batch, PopulationReplay

__all__ = [
    "DQNConfig",
    "DQNResult",
    "PopulationQNetwork",
    "QNetwork",
    "cartpole_vec",
    "evaluate",
    "train_dqn",
    "double_td_target",
    "dqn_loss",
    "dqn_update",
    "epsilon_greedy",
    "linear_schedule",
    "real_transitions",
    "soft_update",
    "td_target",
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


class QNetwork(nn.Module):
    """A multilayer perceptron mapping observations to one value per action.

    Args:
        obs_dim: Size ``D`` of a (flat) observation.
        n_actions: Number of actions ``A``.
        hidden: Widths of the hidden layers (ReLU after each).

    Attributes:
        trunk: The hidden layers, ``[B, D] -> [B, hidden[-1]]`` (features).
        head: The final linear layer, features ``-> [B, A]``.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden: Sequence[int] = (256,)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.obs_dim, self.n_actions, self.hidden = obs_dim, n_actions, tuple(hidden)
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Action values ``[B, A]`` of observations ``[B, D]``."""
        return self.head(self.trunk(obs))


class PopulationQNetwork(nn.Module):
    """``N`` independent :class:`QNetwork` s with stacked weights, evaluated in one batched call.

    Layer ``l`` of agent ``a`` computes ``x @ weights[l][a].T + biases[l][a]`` with
    ``torch.baddbmm``, so a forward pass over all agents costs a few tensor operations. Agent
    ``a`` only ever reads its own slice: its outputs and gradients do not depend on the others.

    Args:
        n_agents: Number of agents ``N``.
        obs_dim: Observation size ``D``.
        n_actions: Number of actions ``A``.
        hidden: Hidden widths, as in :class:`QNetwork`.
        generators: One generator per agent for the initialisation (PyTorch's ``nn.Linear``
            rule, uniform in ``+-1/sqrt(fan_in)``); ``None`` uses fresh unseeded generators.

    Attributes:
        weights: ``weights[l]`` is ``[N, out_l, in_l]`` (``nn.Linear.weight``'s layout, which
            is also the fast one for ``bmm`` with a narrow output layer).
        biases: ``biases[l]`` is ``[N, 1, out_l]``.
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        n_actions: int,
        hidden: Sequence[int] = (256,),
        generators: Sequence[torch.Generator] | None = None,
    ) -> None:
        super().__init__()
        self.n_agents, self.obs_dim, self.n_actions = n_agents, obs_dim, n_actions
        self.hidden = tuple(hidden)
        dims = [obs_dim, *self.hidden, n_actions]
        if generators is None:
            generators = [torch.Generator() for _ in range(n_agents)]
        weights, biases = [], []
        for fan_in, fan_out in zip(dims[:-1], dims[1:], strict=True):
            bound = fan_in**-0.5
            w = torch.empty(n_agents, fan_out, fan_in)
            b = torch.empty(n_agents, 1, fan_out)
            for a, gen in enumerate(generators):
                w[a] = (torch.rand(fan_out, fan_in, generator=gen) * 2 - 1).mul_(bound)
                b[a, 0] = (torch.rand(fan_out, generator=gen) * 2 - 1).mul_(bound)
            weights.append(nn.Parameter(w))
            biases.append(nn.Parameter(b))
        self.weights = nn.ParameterList(weights)
        self.biases = nn.ParameterList(biases)
        # QNetwork's parameter names, in layer order
        linear_names = [f"trunk.{2 * i}" for i in range(len(self.hidden))] + ["head"]
        self.layer_names = linear_names

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Action values ``[N, B, A]`` of observations ``[N, B, D]`` (row ``a`` for agent ``a``)."""
        params = [t for pair in zip(self.weights, self.biases, strict=True) for t in pair]
        if torch.is_grad_enabled() and any(t.requires_grad for t in (obs, *params)):
            return _PopulationMLP.apply(obs, *params)
        return _layer_outputs(obs, params)[-1]

    def named_agent_parameters(self) -> dict[str, torch.Tensor]:
        """The stacked parameters under :class:`QNetwork` names, in its layout, as views.

        Returns:
            ``{"trunk.0.weight": [N, out, in], "trunk.0.bias": [N, out], ...}``; gradients flow
            through these views (useful for penalties such as L2-SP).
        """
        params = {}
        for name, w, b in zip(self.layer_names, self.weights, self.biases, strict=True):
            params[f"{name}.weight"] = w
            params[f"{name}.bias"] = b.squeeze(1)
        return params

    def agent_state_dict(self, agent: int) -> dict[str, torch.Tensor]:
        """A state dict of agent ``agent`` that a :class:`QNetwork` of the same sizes loads."""
        return {k: v[agent].detach().clone() for k, v in self.named_agent_parameters().items()}

    @torch.no_grad()
    def load_agent_state_dict(self, agent: int, state: dict[str, torch.Tensor]) -> None:
        """Copy a :class:`QNetwork` state dict into agent ``agent``.

        Raises:
            ValueError: If the state dict's names or shapes do not match this network.
        """
        own = self.named_agent_parameters()
        if set(state) != set(own):
            raise ValueError(
                f"state dict has keys {sorted(state)}, expected {sorted(own)}; build the "
                f"network with hidden={self.hidden}"
            )
        for key, target in own.items():
            value = torch.as_tensor(state[key])
            if value.shape != target.shape[1:]:
                raise ValueError(
                    f"{key} has shape {tuple(value.shape)}, expected {tuple(target.shape[1:])}; "
                    "the network sizes differ"
                )
            target[agent].copy_(value)

    def agent(self, agent: int) -> QNetwork:
        """Agent ``agent`` as a plain :class:`QNetwork` (a copy, on this network's device)."""
        net = QNetwork(self.obs_dim, self.n_actions, self.hidden)
        net.load_state_dict(self.agent_state_dict(agent))
        return net.to(self.weights[0].device)


def _layer_outputs(obs: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``[obs, h_1, ..., h_L, q]``: the input of every layer of the stacked MLP, then its output.

    ``params`` alternates weights ``[N, out, in]`` and biases ``[N, 1, out]``; ReLU after every
    layer but the last.
    """
    outputs = [obs]
    n_layers = len(params) // 2
    for layer in range(n_layers):
        w, b = params[2 * layer], params[2 * layer + 1]
        x = torch.baddbmm(b, outputs[-1], w.transpose(1, 2))
        outputs.append(x.relu_() if layer < n_layers - 1 else x)
    return outputs


class _PopulationMLP(torch.autograd.Function):
    """The stacked MLP of :class:`PopulationQNetwork` with a hand-written backward pass.

    Autograd's generic backward of ``baddbmm`` and ``relu`` gives the same gradients, but with
    it CPU training took about 1.7 times as long: it computes some products in the orientation
    that the batched matrix multiply is slowest at, and makes more hidden-layer-sized
    temporaries. Training is mostly this backward pass, so it is worth the dozen lines (a test
    checks it against finite differences and against autograd).
    """

    @staticmethod
    def forward(ctx: Any, obs: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        outputs = _layer_outputs(obs, params)
        ctx.save_for_backward(*outputs[:-1], *params[0::2])
        return outputs[-1]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        n_layers = len(saved) // 2
        inputs, weights = saved[:n_layers], saved[n_layers:]
        grads: list[torch.Tensor | None] = [None] * (2 * n_layers)
        g = grad.contiguous()  # gradient of the current layer's output
        for layer in reversed(range(n_layers)):
            x, w = inputs[layer], weights[layer]
            out_dim, in_dim = w.shape[1:]
            if ctx.needs_input_grad[1 + 2 * layer]:
                # a batched product is several times slower when its result has short rows
                # ([N, 256, 4]): compute the transposed product then and transpose back
                if out_dim >= in_dim:
                    grads[2 * layer] = torch.bmm(x.transpose(1, 2), g).transpose(1, 2)
                else:
                    grads[2 * layer] = torch.bmm(g.transpose(1, 2), x)
            if ctx.needs_input_grad[2 + 2 * layer]:
                grads[2 * layer + 1] = g.sum(1, keepdim=True)
            if layer > 0:  # through the layer, then through the ReLU that made x (x > 0)
                g = torch.bmm(g, w)
                torch.ops.aten.threshold_backward.grad_input(g, x, 0.0, grad_input=g)
        grad_obs = torch.bmm(g, weights[0]) if ctx.needs_input_grad[0] else None
        return (grad_obs, *grads)


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """Hyperparameters of :func:`train_dqn` (defaults: CartPole-v1 solved within 50k steps)."""

    total_steps: int = 50_000
    """environment steps per agent (summed over its parallel environments)"""
    num_envs: int = 4
    """parallel environments per agent"""
    hidden: tuple[int, ...] = (256,)
    """widths of the Q-network's hidden layers (one wide layer: cheap and stable on CartPole)"""
    lr: float = 2.3e-3
    """Adam learning rate at the start of training"""
    lr_end: float = 0.0
    """learning rate at the end of the decay (late updates cannot undo a solution)"""
    lr_decay_fraction: float = 0.8
    """fraction of total_steps over which the learning rate decays linearly to lr_end"""
    gamma: float = 0.99
    """discount factor"""
    buffer_size: int = 50_000
    """replay capacity per agent"""
    batch_size: int = 128
    """transitions per gradient update"""
    learning_starts: int = 1_000
    """environment steps (per agent) collected before the first update"""
    updates_per_step: float = 0.5
    """gradient updates per environment step (the replay ratio)"""
    target_update_interval: int = 64
    """gradient updates between target-network updates, at the start of training"""
    target_update_interval_end: int | None = None
    """if set, the interval grows linearly to this by the end (fast propagation, then stability)"""
    tau: float = 1.0
    """target-network update weight (1: hard copy)"""
    double_dqn: bool = True
    """use the Double DQN target (online net picks, target net evaluates)"""
    eps_start: float = 1.0
    """exploration rate at the start"""
    eps_end: float = 0.04
    """exploration rate after the decay"""
    exploration_fraction: float = 0.16
    """fraction of total_steps over which epsilon decays linearly"""
    max_grad_norm: float = 10.0
    """gradient-norm clip per agent (inf: no clipping)"""
    eval_every: int = 2_500
    """environment steps between greedy evaluations"""
    eval_episodes: int = 10
    """episodes per greedy evaluation (run in parallel)"""


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
        head = state["head.weight"]
        hidden = tuple(state[f"trunk.{2 * i}.weight"].shape[0] for i in range(len(state) // 2 - 1))
        obs_dim = state["trunk.0.weight"].shape[1] if hidden else head.shape[1]
        net = QNetwork(obs_dim, head.shape[0], hidden)
        net.load_state_dict(state)
        return net


def cartpole_vec(num_envs: int) -> VectorEnv:
    """Gymnasium's own vectorised CartPole-v1 (next-step autoreset), the default environment."""
    return gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="vector_entry_point")


def _derive_seed(seed: int, *keys: int) -> int:
    """An independent 32-bit seed for one purpose (``keys``) of one agent (``seed``)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


_INIT, _ACT, _REPLAY, _ENV, _EVAL = range(5)


def _spaces(env: VectorEnv) -> tuple[int, int]:
    obs_space, action_space = env.single_observation_space, env.single_action_space
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"DQN needs a Discrete action space, got {action_space}")
    if not isinstance(obs_space, gym.spaces.Box):
        raise ValueError(f"train_dqn needs a Box observation space, got {obs_space}")
    mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if mode != AutoresetMode.NEXT_STEP:
        raise ValueError(f"train_dqn expects next-step autoreset, got {mode}; use the default")
    return int(np.prod(obs_space.shape)), int(action_space.n)


def _step_all(
    envs: Sequence[VectorEnv], actions: np.ndarray, obs_dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Step agent ``a``'s env with ``actions[a]``; stack the results ``[N, E, ...]``."""
    results = [env.step(a) for env, a in zip(envs, actions, strict=True)]
    next_obs = np.stack([r[0] for r in results]).reshape(len(envs), -1, obs_dim)
    rewards = np.stack([r[1] for r in results])
    terminated = np.stack([r[2] for r in results])
    truncated = np.stack([r[3] for r in results])
    return next_obs, rewards, terminated, truncated


@torch.no_grad()
def _evaluate_population(
    q_net: PopulationQNetwork,
    envs: Sequence[VectorEnv],
    seeds: Sequence[int],
    obs_dim: int,
    device: torch.device,
) -> torch.Tensor:
    """Greedy returns ``[N, M]``: one episode per sub-env, agent ``a`` on ``envs[a]``."""
    obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)])
    obs = obs.reshape(len(envs), -1, obs_dim)
    returns = np.zeros(obs.shape[:2])
    done = np.zeros(obs.shape[:2], dtype=bool)
    while not done.all():
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
        actions = q_net(obs_t).argmax(-1).cpu().numpy()
        next_obs, rewards, terminated, truncated = _step_all(envs, actions, obs_dim)
        returns += np.where(done, 0.0, rewards)
        done |= terminated | truncated
        obs = next_obs
    return torch.from_numpy(returns).float()


def train_dqn(
    config: DQNConfig = DQNConfig(),
    seeds: Sequence[int] = (0,),
    make_env: Callable[[int], VectorEnv] = cartpole_vec,
    init_state: dict[str, torch.Tensor] | Sequence[dict[str, torch.Tensor]] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    regularizer: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    freeze: Sequence[str] = (),
) -> DQNResult:
    """Train one independent DQN agent per seed, all at once (the reference agent).

    Each agent has its own networks, optimizer state, replay, environments and random
    generators, all derived from its seed; the agents are only *computed* together (stacked
    weights, one batched forward and backward pass for all). Agent ``a``'s results therefore
    depend only on ``seeds[a]`` and the config: training ``seeds=[1, 2]`` gives agent 2 the same
    curves and weights as ``seeds=[2]`` alone (on the same device and thread count).

    The loop, per vector step of all agents:

    1. epsilon-greedy actions from the online networks (:func:`epsilon_greedy`);
    2. step every agent's vector env; keep only rows that are real transitions under
       next-step autoreset (:func:`real_transitions`) and store them, with ``terminated`` (not
       ``truncated``) as the end flag, so time-limit ends still bootstrap;
    3. gradient updates at ``updates_per_step`` per environment step: (Double) DQN targets,
       Huber loss, per-agent gradient clipping, Adam with a linearly decaying learning rate;
       a target-network update every ``target_update_interval`` updates;
    4. every ``eval_every`` steps, ``eval_episodes`` greedy episodes per agent.

    Args:
        config: Hyperparameters.
        seeds: One non-negative seed per agent.
        make_env: ``make_env(num_envs)`` builds a gymnasium vector env with next-step
            autoreset, a Box observation space and a Discrete action space; called once per
            agent for training (``config.num_envs``), in agent order, then once per agent for
            evaluation (``config.eval_episodes``), in agent order; a factory can therefore give
            each agent its own task. Default: CartPole-v1.
        init_state: Initial :class:`QNetwork` weights (a state dict for every agent, or one
            per agent), e.g. a pretrained network to fine-tune; the target network starts equal.
        device: Torch device; default CUDA when available, else CPU.
        progress: Show a tqdm progress bar (works in notebooks).
        callback: Called after each evaluation as ``callback(step, stats)`` with ``stats``
            holding ``eval_return``, ``loss`` and ``q_mean`` (tensors ``[N]``), ``epsilon`` and
            ``lr``.
        regularizer: Optional extra loss: receives
            :meth:`PopulationQNetwork.named_agent_parameters` and returns one penalty per
            agent ``[N]`` (e.g. L2-SP toward pretrained weights).
        freeze: Prefixes of :class:`QNetwork` parameter names to keep fixed (e.g.
            ``("trunk",)`` to train only the head).

    Returns:
        A :class:`DQNResult` with learning curves and final weights.
    """
    start_time = time.perf_counter()
    cfg = config
    seeds = tuple(int(s) for s in seeds)
    if not seeds or min(seeds) < 0:
        raise ValueError(f"seeds {seeds}: give at least one seed, all non-negative")
    if cfg.num_envs > cfg.buffer_size:
        raise ValueError("num_envs exceeds buffer_size; use a larger buffer")
    device = torch.device(
        device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    n_agents, n_envs = len(seeds), cfg.num_envs

    envs = [make_env(n_envs) for _ in seeds]
    eval_envs = [make_env(cfg.eval_episodes) for _ in seeds]
    obs_dim, n_actions = _spaces(envs[0])
    gen = {
        key: [torch.Generator().manual_seed(_derive_seed(s, key)) for s in seeds]
        for key in (_INIT, _ACT, _REPLAY)
    }

    q_net = PopulationQNetwork(n_agents, obs_dim, n_actions, cfg.hidden, gen[_INIT])
    if init_state is not None:
        states = [init_state] * n_agents if isinstance(init_state, dict) else list(init_state)
        if len(states) != n_agents:
            raise ValueError(f"init_state has {len(states)} state dicts for {n_agents} seeds")
        for a, state in enumerate(states):
            q_net.load_agent_state_dict(a, state)
    q_net = q_net.to(device)
    target_net = copy.deepcopy(q_net).requires_grad_(False)
    frozen = {
        id(p)
        for name, w, b in zip(q_net.layer_names, q_net.weights, q_net.biases, strict=True)
        for p in (w, b)
        if name.startswith(tuple(freeze))
    }
    params = [p.requires_grad_(id(p) not in frozen) for p in q_net.parameters()]
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError(f"freeze={tuple(freeze)} leaves no parameter to train")
    optimizer = torch.optim.Adam(params, lr=cfg.lr, fused=device.type in ("cpu", "cuda"))
    replay = PopulationReplay(n_agents, cfg.buffer_size, (obs_dim,), device)

    def update() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal sample_u, sample_pos
        if sample_pos == sample_u.shape[1]:
            sample_u = torch.stack(
                [torch.rand(_BLOCK, cfg.batch_size, generator=g) for g in gen[_REPLAY]]
            ).to(device)
            sample_pos = 0
        batch = replay.sample(sample_u[:, sample_pos])
        sample_pos += 1
        with torch.no_grad():
            next_q_target = target_net(batch.next_obs)
            if cfg.double_dqn:
                targets = double_td_target(
                    batch.rewards, q_net(batch.next_obs), next_q_target, batch.terminated, cfg.gamma
                )
            else:
                targets = td_target(batch.rewards, next_q_target, batch.terminated, cfg.gamma)
        taken = q_net(batch.obs).gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        # dqn_loss per agent; summing agents' losses keeps each agent's gradient its own
        losses = F.smooth_l1_loss(taken, targets, reduction="none").mean(dim=-1)
        total = losses.sum()
        if regularizer is not None:
            total = total + regularizer(q_net.named_agent_parameters()).sum()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.max_grad_norm < float("inf"):
            grads = [p.grad for p in params]
            norms = torch.stack([g.pow(2).flatten(1).sum(1) for g in grads]).sum(0).sqrt()
            scale = (cfg.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
        optimizer.step()
        return losses.detach(), taken.detach().mean(dim=-1)

    # Random numbers are drawn in blocks, per agent from its own generators, to keep
    # per-step Python overhead low without coupling the agents.
    sample_u = torch.empty(n_agents, 0, cfg.batch_size, device=device)
    sample_pos = 0
    act_pos = _BLOCK
    explore_u = random_actions = torch.empty(0)

    obs_np = np.stack(
        [env.reset(seed=_derive_seed(s, _ENV))[0] for env, s in zip(envs, seeds, strict=True)]
    ).reshape(n_agents, n_envs, obs_dim)
    prev_done = torch.zeros(n_agents, n_envs, dtype=torch.bool)
    running_return = np.zeros((n_agents, n_envs))
    episode_steps: list[list[int]] = [[] for _ in seeds]
    episode_returns: list[list[float]] = [[] for _ in seeds]
    eval_steps: list[int] = []
    eval_returns: list[torch.Tensor] = []
    loss_log: list[torch.Tensor] = []
    q_log: list[torch.Tensor] = []
    loss_sum = torch.zeros(n_agents, device=device)
    q_sum = torch.zeros(n_agents, device=device)
    n_logged = 0
    n_updates = since_target_update = 0
    interval_end = cfg.target_update_interval_end or cfg.target_update_interval

    def target_interval(step: int) -> float:
        return linear_schedule(cfg.target_update_interval, interval_end, cfg.total_steps, step)

    epsilon, lr = cfg.eps_start, cfg.lr
    eps_duration = int(cfg.exploration_fraction * cfg.total_steps)

    eval_time = 0.0

    def evaluate_now(step: int) -> None:
        nonlocal loss_sum, q_sum, n_logged, eval_time
        k = len(eval_steps)
        eval_seeds = [_derive_seed(s, _EVAL, k) for s in seeds]
        eval_start = time.perf_counter()
        returns = _evaluate_population(q_net, eval_envs, eval_seeds, obs_dim, device)
        eval_time += time.perf_counter() - eval_start
        nan = torch.full((n_agents,), float("nan"))
        loss = (loss_sum / n_logged).cpu() if n_logged else nan
        q_mean = (q_sum / n_logged).cpu() if n_logged else nan
        eval_steps.append(step)
        eval_returns.append(returns)
        loss_log.append(loss)
        q_log.append(q_mean)
        loss_sum, q_sum, n_logged = loss_sum.zero_(), q_sum.zero_(), 0
        if callback is not None:
            stats = {"eval_return": returns.mean(-1), "loss": loss, "q_mean": q_mean}
            callback(step, {**stats, "epsilon": epsilon, "lr": lr})
        if bar is not None:
            bar.set_postfix(eval_return=f"{returns.mean():.1f}", refresh=False)

    bar = tqdm(total=cfg.total_steps, disable=not progress, unit="step", leave=False)
    evaluate_now(0)
    step = 0
    next_eval = cfg.eval_every
    while step < cfg.total_steps:
        if act_pos == _BLOCK:
            explore_u = torch.stack([torch.rand(_BLOCK, n_envs, generator=g) for g in gen[_ACT]])
            random_actions = torch.stack(
                [torch.randint(n_actions, (_BLOCK, n_envs), generator=g) for g in gen[_ACT]]
            )
            act_pos = 0
        epsilon = linear_schedule(cfg.eps_start, cfg.eps_end, eps_duration, step)
        obs = torch.as_tensor(obs_np, dtype=torch.float32)
        with torch.no_grad():
            greedy = q_net(obs.to(device)).argmax(dim=-1).cpu()
        explore = explore_u[:, act_pos] < epsilon
        actions = torch.where(explore, random_actions[:, act_pos], greedy)
        act_pos += 1

        next_obs_np, rewards_np, terminated_np, truncated_np = _step_all(
            envs, actions.numpy(), obs_dim
        )
        valid = real_transitions(prev_done)
        replay.add(
            obs.to(device),
            actions.to(device),
            torch.as_tensor(rewards_np, dtype=torch.float32, device=device),
            torch.as_tensor(next_obs_np, dtype=torch.float32, device=device),
            torch.as_tensor(terminated_np, device=device),
            valid.to(device),
        )
        done_np = terminated_np | truncated_np
        valid_np = valid.numpy()
        running_return = np.where(valid_np, running_return + rewards_np, 0.0)
        step += n_envs
        if done_np.any():
            for a, e in zip(*np.nonzero(done_np & valid_np), strict=True):
                episode_steps[a].append(step)
                episode_returns[a].append(float(running_return[a, e]))
        prev_done = torch.from_numpy(done_np)
        obs_np = next_obs_np

        lr = linear_schedule(cfg.lr, cfg.lr_end, int(cfg.lr_decay_fraction * cfg.total_steps), step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        due = int(max(0, step - cfg.learning_starts) * cfg.updates_per_step)
        while n_updates < due:
            loss, q_mean = update()
            loss_sum += loss
            q_sum += q_mean
            n_logged += 1
            n_updates += 1
            since_target_update += 1
            if since_target_update >= target_interval(step):
                soft_update(target_net, q_net, cfg.tau)
                since_target_update = 0

        if step >= next_eval or step >= cfg.total_steps:
            evaluate_now(step)
            next_eval += cfg.eval_every
        bar.update(n_envs)
    bar.close()
    for env in [*envs, *eval_envs]:
        env.close()

    return DQNResult(
        config=cfg,
        seeds=seeds,
        steps=torch.tensor(eval_steps),
        eval_returns=torch.stack(eval_returns, dim=1),
        losses=torch.stack(loss_log, dim=1),
        q_means=torch.stack(q_log, dim=1),
        episode_steps=[torch.tensor(s, dtype=torch.int64) for s in episode_steps],
        episode_returns=[torch.tensor(r, dtype=torch.float32) for r in episode_returns],
        states=[
            {k: v.cpu() for k, v in q_net.agent_state_dict(a).items()} for a in range(n_agents)
        ],
        wall_time=time.perf_counter() - start_time,
        eval_time=eval_time,
    )


_BLOCK = 256  # steps (or updates) of random numbers drawn at once


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
