"""The one off-policy trainer of the course: a population of independent DQN agents at once.

Used by Lessons 03-05 through their thin entry points (:func:`course.dqn.train_dqn`,
:func:`course.multitask.train_multitask_dqn`, :func:`course.transfer.compare_strategies`).
Agent ``a`` of a population has its own seed, tasks, initial weights, penalty and random
streams; the agents are only *computed* together (stacked weights, one batched forward and
backward pass for all), so an agent's results do not depend on who it was trained with.

The module reads top to bottom:

1. seeds and devices: :func:`derive_seed` with named purposes (:class:`Purpose`),
   :func:`default_device`;
2. the stacked network: :func:`linear_init` (the one initialisation rule),
   :class:`PopulationQNetwork` (the fast hand-written backward), :func:`network_sizes` (the one
   state-dict parser), :func:`clip_grad_norm_per_agent_`;
3. the environments of a population: :class:`AgentEnvs` (a vector env per agent, from a
   factory; gymnasium's CartPoles stepped together) and :class:`FamilyEnvs` (one task-family
   env for every agent and task);
4. the loop: :class:`Agents` (what differs per agent: data and hooks), :class:`TrainerConfig`
   (hyperparameters), :func:`train_population`.

Speed comes from doing each step's work in few tensor operations, never from changing it: the
stacked CartPoles, the plain single-task update without autograd and the cached weight views
give the floats the straightforward code gives (tests compare them bit for bit), because the
course's stored results must not move when the trainer gets faster.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from typing import Any, NamedTuple, Protocol

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.vector import AutoresetMode, VectorEnv
from torch import nn
from tqdm.auto import tqdm

from course.replay import Batch, PopulationReplay

__all__ = [
    "AgentEnvs",
    "Agents",
    "FamilyEnvs",
    "FusedAdam",
    "NetworkSizes",
    "PopulationEnv",
    "PopulationQNetwork",
    "PopulationRun",
    "Purpose",
    "TrainerConfig",
    "clip_grad_norm_per_agent_",
    "default_device",
    "derive_seed",
    "greedy_returns",
    "linear_init",
    "network_sizes",
    "seeded_generators",
    "train_population",
]


# ============================================================================================
# 1. Seeds and devices
# ============================================================================================


class Purpose(IntEnum):
    """What a derived seed is for; each purpose of each agent gets its own random stream."""

    INIT = 0
    """initial weights"""
    ACT = 1
    """exploration (epsilon-greedy draws)"""
    REPLAY = 2
    """replay sampling"""
    ENV = 3
    """resets of the training environments"""
    EVAL = 4
    """resets of the evaluation environments"""
    FRESH = 5
    """fresh parts of a fine-tuning start (a new head, scratch weights)"""
    CONFLICT = 6
    """PCGrad's task orders and the batches on which gradient conflict is measured"""
    NOISE = 7
    """the second batch of the same-task gradient similarity (the noise baseline of conflict)"""


def derive_seed(seed: int, purpose: Purpose, *keys: int) -> int:
    """An independent 32-bit seed for one purpose of the agent with seed ``seed``.

    Args:
        seed: The agent's seed (non-negative).
        purpose: What the random stream is for.
        keys: Further non-negative integers (e.g. the index of an evaluation).

    Returns:
        A seed in ``[0, 2**32)``; different purposes or keys give unrelated streams.

    Example:
        >>> derive_seed(0, Purpose.INIT) != derive_seed(0, Purpose.ACT)
        True
    """
    return int(np.random.SeedSequence([int(seed), int(purpose), *keys]).generate_state(1)[0])


def seeded_generators(seeds: Sequence[int], purpose: Purpose) -> list[torch.Generator]:
    """One CPU generator per agent, seeded with :func:`derive_seed` for ``purpose``."""
    return [torch.Generator().manual_seed(derive_seed(s, purpose)) for s in seeds]


def default_device(device: torch.device | str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ============================================================================================
# 2. The stacked network
# ============================================================================================


def linear_init(
    fan_in: int, fan_out: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.Linear``'s initialisation rule, from an explicit generator.

    Weight and bias are uniform in ``+-1/sqrt(fan_in)``, drawn in that order (the weight row by
    row); every seeded network of the course is built with this rule.

    Args:
        fan_in: Input size.
        fan_out: Output size.
        generator: Source of randomness (None: the global one).

    Returns:
        ``(weight [fan_out, fan_in], bias [fan_out])``, float32.
    """
    bound = fan_in**-0.5
    weight = (torch.rand(fan_out, fan_in, generator=generator) * 2 - 1).mul_(bound)
    bias = (torch.rand(fan_out, generator=generator) * 2 - 1).mul_(bound)
    return weight, bias


class NetworkSizes(NamedTuple):
    """Sizes of a Q-network, read from its state dict by :func:`network_sizes`."""

    obs_dim: int
    n_actions: int
    hidden: tuple[int, ...]
    n_heads: int


def network_sizes(state: Mapping[str, torch.Tensor]) -> NetworkSizes:
    """Sizes of a :class:`course.dqn.QNetwork` or :class:`course.multitask.MultiHeadQNetwork`
    state dict (``trunk.0.weight, ..., head.weight`` or ``heads.0.weight, ...``).

    Raises:
        ValueError: If the state dict is not laid out that way.
    """
    try:
        n_hidden = sum(1 for k in state if k.startswith("trunk.") and k.endswith(".weight"))
        hidden = tuple(int(state[f"trunk.{2 * i}.weight"].shape[0]) for i in range(n_hidden))
        n_heads = sum(1 for k in state if k.startswith("heads.") and k.endswith(".weight"))
        head = state["heads.0.weight" if n_heads else "head.weight"]
        first = state["trunk.0.weight"] if n_hidden else head
        return NetworkSizes(int(first.shape[1]), int(head.shape[0]), hidden, max(n_heads, 1))
    except KeyError as exc:
        raise ValueError(
            f"the state dict lacks {exc}; expected a QNetwork state dict "
            "(trunk.0.weight, ..., head.weight, head.bias) or a MultiHeadQNetwork one (heads.0...)"
        ) from None


class PopulationQNetwork(nn.Module):
    """``N`` independent Q-networks (one or several heads) with stacked weights, one batched call.

    Agent ``a`` is a :class:`course.dqn.QNetwork` (one head) or a
    :class:`course.multitask.MultiHeadQNetwork` (``n_heads`` heads): hidden layers with ReLU,
    then linear heads. Layer ``l`` of agent ``a`` computes ``x @ weights[l][a].T + biases[l][a]``
    with ``torch.baddbmm``, and agent ``a`` only ever reads its own slice: its outputs and
    gradients do not depend on the others. Gradients come from a hand-written backward pass.

    Args:
        n_agents: Number of agents ``N``.
        obs_dim: Observation size ``D``.
        n_actions: Number of actions ``A`` (outputs per head).
        hidden: Hidden widths.
        n_heads: Number of heads ``K``.
        generators: One generator per agent for :func:`linear_init`, layer by layer (trunk,
            then heads in order), agent by agent; None uses fresh unseeded generators.

    Attributes:
        weights: Trunk layers then heads; ``weights[l]`` is ``[N, out_l, in_l]``
            (``nn.Linear.weight``'s layout).
        biases: ``biases[l]`` is ``[N, 1, out_l]``.
        layer_names: The plain networks' layer names (``trunk.0``, ..., ``head`` or
            ``heads.k``), in the same order.
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        n_actions: int,
        hidden: Sequence[int] = (256,),
        n_heads: int = 1,
        generators: Sequence[torch.Generator] | None = None,
    ) -> None:
        super().__init__()
        if n_heads < 1:
            raise ValueError(f"n_heads is {n_heads}; a Q-network needs at least 1 head")
        self.n_agents, self.obs_dim, self.n_actions = n_agents, obs_dim, n_actions
        self.hidden, self.n_heads = tuple(hidden), n_heads
        if generators is None:
            generators = [torch.Generator() for _ in range(n_agents)]
        if len(generators) != n_agents:
            raise ValueError(f"got {len(generators)} generators for {n_agents} agents")
        width = self.hidden[-1] if self.hidden else obs_dim
        dims = [*zip([obs_dim, *self.hidden[:-1]], self.hidden), *[(width, n_actions)] * n_heads]
        weights, biases = [], []
        for fan_in, fan_out in dims:
            pairs = [linear_init(fan_in, fan_out, g) for g in generators]
            weights.append(nn.Parameter(torch.stack([w for w, _ in pairs])))
            biases.append(nn.Parameter(torch.stack([b for _, b in pairs]).unsqueeze(1)))
        self.weights = nn.ParameterList(weights)
        self.biases = nn.ParameterList(biases)
        heads = ["head"] if n_heads == 1 else [f"heads.{k}" for k in range(n_heads)]
        self.layer_names = [f"trunk.{2 * i}" for i in range(len(self.hidden))] + heads
        self._layers: list[tuple[nn.Parameter, nn.Parameter]] | None = None

    def layers(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """``(weight, bias)`` of every layer, trunk then heads (cached: indexing a
        ``ParameterList`` costs microseconds, and training indexes it thousands of times)."""
        if self._layers is None:
            self._layers = list(zip(self.weights, self.biases, strict=True))
        return self._layers

    def _apply(self, fn: Any, recurse: bool = True) -> PopulationQNetwork:
        self._layers = None  # .to() and .double() may replace the parameters
        return super()._apply(fn, recurse)

    def forward(self, obs: torch.Tensor, tasks: torch.Tensor | None = None) -> torch.Tensor:
        """Action values ``[N, B, A]`` of observations ``[N, B, D]``; row ``(a, b)`` from head
        ``tasks[a, b]`` (int64 ``[N, B]``; needed with several heads)."""
        layers = self.layers()
        n_trunk = len(self.hidden)
        params = [t for pair in layers[:n_trunk] for t in pair]
        if self.n_heads == 1:
            params += layers[n_trunk]
        else:  # every head in one product, then each row keeps its own task's values
            params += [torch.cat([w for w, _ in layers[n_trunk:]], 1)]
            params += [torch.cat([b for _, b in layers[n_trunk:]], 2)]
        if torch.is_grad_enabled() and any(t.requires_grad for t in (obs, *params)):
            out = _StackedMLP.apply(obs, *params)
        else:
            out = _layer_outputs(obs, params)[-1]
        if self.n_heads == 1:
            return out
        if tasks is None:
            raise ValueError("this network has several heads; pass the task id of every row")
        every_head = out.view(*out.shape[:-1], self.n_heads, self.n_actions)
        index = tasks.long()[..., None, None].expand(*tasks.shape, 1, self.n_actions)
        return every_head.gather(-2, index).squeeze(-2)

    def trunk_parameters(self) -> list[nn.Parameter]:
        """The hidden layers' parameters (stacked over agents)."""
        return [t for pair in self.layers()[: len(self.hidden)] for t in pair]

    def head_parameters(self, k: int) -> list[nn.Parameter]:
        """Head ``k``'s weight ``[N, A, H]`` and bias ``[N, 1, A]``."""
        if not 0 <= k < self.n_heads:
            raise ValueError(f"head {k} does not exist; the network has {self.n_heads} heads")
        return list(self.layers()[len(self.hidden) + k])

    def named_agent_parameters(self) -> dict[str, torch.Tensor]:
        """The stacked parameters under the plain networks' names, in their layout, as views.

        Returns:
            ``{"trunk.0.weight": [N, out, in], "trunk.0.bias": [N, out], ...}``; gradients flow
            through these views (useful for penalties such as L2-SP).
        """
        params = {}
        for name, (w, b) in zip(self.layer_names, self.layers(), strict=True):
            params[f"{name}.weight"] = w
            params[f"{name}.bias"] = b.squeeze(1)
        return params

    def agent_state_dict(self, agent: int) -> dict[str, torch.Tensor]:
        """A state dict of agent ``agent`` that a plain network of the same sizes loads."""
        return {k: v[agent].detach().clone() for k, v in self.named_agent_parameters().items()}

    @torch.no_grad()
    def load_agent_state_dict(self, agent: int, state: Mapping[str, torch.Tensor]) -> None:
        """Copy a plain network's state dict into agent ``agent``.

        Raises:
            ValueError: If the state dict's names or shapes do not match this network.
        """
        own = self.named_agent_parameters()
        if set(state) != set(own):
            raise ValueError(
                f"state dict has keys {sorted(state)}, expected {sorted(own)}; build the "
                f"network with hidden={self.hidden} and n_heads={self.n_heads}"
            )
        for key, target in own.items():
            value = torch.as_tensor(state[key])
            if value.shape != target.shape[1:]:
                raise ValueError(
                    f"{key} has shape {tuple(value.shape)}, expected {tuple(target.shape[1:])}; "
                    "the network sizes differ"
                )
            target[agent].copy_(value)

    def agent(self, agent: int) -> nn.Module:
        """Agent ``agent`` as a plain network (a copy, on this network's device): a
        :class:`course.dqn.QNetwork` with one head, else a
        :class:`course.multitask.MultiHeadQNetwork`."""
        from course.dqn import QNetwork  # both build on this module
        from course.multitask import MultiHeadQNetwork

        if self.n_heads == 1:
            net: nn.Module = QNetwork(self.obs_dim, self.n_actions, self.hidden)
        else:
            net = MultiHeadQNetwork(self.obs_dim, self.n_actions, self.n_heads, self.hidden)
        net.load_state_dict(self.agent_state_dict(agent))
        return net.to(self.weights[0].device)


def _layer_outputs(obs: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``[obs, h_1, ..., h_L, q]``: the input of every layer of the stacked MLP, then its output.

    ``params`` alternates weights ``[N, out, in]`` and biases ``[N, 1, out]``; ReLU after every
    layer but the last.
    """
    return _mlp_outputs(obs, _transposed(params))


def _transposed(params: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight [N, in, out], bias [N, 1, out])`` of every layer, the weights as views."""
    return [(w.transpose(1, 2), b) for w, b in zip(params[0::2], params[1::2], strict=True)]


def _mlp_outputs(
    obs: torch.Tensor, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> list[torch.Tensor]:
    """:func:`_layer_outputs` from :func:`_transposed` layers (kept by the trainer, which reads
    the same weights thousands of times)."""
    outputs = [obs]
    for layer, (w_t, b) in enumerate(layers):
        x = torch.baddbmm(b, outputs[-1], w_t)
        outputs.append(x.relu_() if layer < len(layers) - 1 else x)
    return outputs


class _StackedMLP(torch.autograd.Function):
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
        return tuple(_mlp_backward(saved[:n_layers], saved[n_layers:], grad, ctx.needs_input_grad))


def _mlp_backward(
    inputs: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    grad: torch.Tensor,
    needs_grad: Sequence[bool],
) -> list[torch.Tensor | None]:
    """The backward pass of :func:`_layer_outputs`: gradients of ``(obs, w_1, b_1, ...)``.

    Args:
        inputs: ``[obs, h_1, ..., h_{L-1}]``, the input of every layer (after its ReLU).
        weights: ``[N, out, in]`` of every layer.
        grad: Gradient of the output ``[N, B, A]``.
        needs_grad: Whether each of ``(obs, w_1, b_1, ...)`` needs its gradient.

    Returns:
        The gradients in that order (None where not needed).
    """
    n_layers = len(weights)
    grads: list[torch.Tensor | None] = [None] * (2 * n_layers)
    g = grad.contiguous()  # gradient of the current layer's output
    for layer in reversed(range(n_layers)):
        x, w = inputs[layer], weights[layer]
        out_dim, in_dim = w.shape[1:]
        if needs_grad[1 + 2 * layer]:
            # a batched product is several times slower when its result has short rows
            # ([N, 256, 4]): compute the transposed product then and transpose back
            if out_dim >= in_dim:
                grads[2 * layer] = torch.bmm(x.transpose(1, 2), g).transpose(1, 2)
            else:
                grads[2 * layer] = torch.bmm(g.transpose(1, 2), x)
        if needs_grad[2 + 2 * layer]:
            grads[2 * layer + 1] = g.sum(1, keepdim=True)
        if layer > 0:  # through the layer, then through the ReLU that made x (x > 0)
            g = torch.bmm(g, w)
            torch.ops.aten.threshold_backward.grad_input(g, x, 0.0, grad_input=g)
    grad_obs = torch.bmm(g, weights[0]) if needs_grad[0] else None
    return [grad_obs, *grads]


@torch.no_grad()
def clip_grad_norm_per_agent_(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale every agent's gradient so that its norm over ``params`` is at most ``max_norm``.

    ``torch.nn.utils.clip_grad_norm_`` on each agent's slice: the norm of agent ``a`` is taken
    over its slices ``p.grad[a]`` only, so clipping never couples the agents.

    Args:
        params: Stacked parameters ``[N, ...]`` whose ``.grad`` is set.
        max_norm: The largest norm kept (``inf``: no clipping).

    Returns:
        ``[N]`` the norms before clipping.
    """
    grads = [p.grad for p in params]
    squares = torch._foreach_pow(grads, 2)
    per_agent = [s.sum(tuple(range(1, s.dim()))) if s.dim() > 1 else s for s in squares]
    norms = torch.stack(per_agent).sum(0).sqrt()
    if max_norm < float("inf"):
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        shaped = {g.dim(): scale.view(-1, *([1] * (g.dim() - 1))) for g in grads}
        torch._foreach_mul_(grads, [shaped[g.dim()] for g in grads])
    return norms


# ============================================================================================
# 3. The environments of a population
# ============================================================================================


class PopulationEnv(Protocol):
    """The environments of ``N`` agents, ``B`` sub-envs each, stepped together.

    Every sub-env uses next-step autoreset. Arrays are numpy, ``[N, B, ...]``.
    """

    n_agents: int
    obs_dim: int
    n_actions: int
    tasks: torch.Tensor
    """``[N, B]`` int64: the task (index into the agent's tasks) of every sub-env"""

    def reset(self, seeds: Sequence[int], purpose: Purpose = Purpose.ENV, *keys: int) -> np.ndarray:
        """Observations ``[N, B, D]``; agent ``a``'s sub-envs seeded with
        ``derive_seed(seeds[a], purpose, *keys, ...)``."""
        ...

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(next_obs, rewards, terminated, truncated)`` after actions ``[N, B]``."""
        ...

    def close(self) -> None: ...


def _check_spaces(env: VectorEnv) -> tuple[int, int]:
    obs_space, action_space = env.single_observation_space, env.single_action_space
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"DQN needs a Discrete action space, got {action_space}")
    if not isinstance(obs_space, gym.spaces.Box):
        raise ValueError(f"the trainer needs a Box observation space, got {obs_space}")
    mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if mode != AutoresetMode.NEXT_STEP:
        raise ValueError(f"the trainer expects next-step autoreset, got {mode}; use the default")
    return int(np.prod(obs_space.shape)), int(action_space.n)


class AgentEnvs:
    """One vector env per agent: ``envs[a]`` is agent ``a``'s (any gymnasium vector env).

    ``reset(seeds)`` resets ``envs[a]`` with ``derive_seed(seeds[a], Purpose.ENV)`` (gymnasium
    seeds its sub-env ``i`` with that plus ``i``). Every row is task 0.

    When every env is gymnasium's plain ``CartPoleVectorEnv`` (``cartpole_vec``), the agents'
    CartPoles are stepped together by :class:`_StackedCartPoles`: one numpy call over all
    ``N * B`` rows instead of ``N`` calls, with each agent's own reset generator, so every
    episode is the one ``envs[a].step`` would give (a test checks it bit for bit). The state
    then lives here: step the envs through this object only.
    """

    def __init__(self, envs: Sequence[VectorEnv]) -> None:
        self.envs = list(envs)
        self.obs_dim, self.n_actions = _check_spaces(self.envs[0])
        self.n_agents = len(self.envs)
        self.tasks = torch.zeros(self.n_agents, self.envs[0].num_envs, dtype=torch.int64)
        self._stacked = _StackedCartPoles(self.envs) if _StackedCartPoles.fits(self.envs) else None

    def reset(self, seeds: Sequence[int], purpose: Purpose = Purpose.ENV, *keys: int) -> np.ndarray:
        obs = [
            env.reset(seed=derive_seed(s, purpose, *keys))[0]
            for env, s in zip(self.envs, seeds, strict=True)
        ]
        if self._stacked is not None:
            self._stacked.reset()
        return np.stack(obs).reshape(self.n_agents, -1, self.obs_dim)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._stacked is not None:
            return self._stacked.step(actions)
        results = [env.step(a) for env, a in zip(self.envs, actions, strict=True)]
        next_obs = np.stack([r[0] for r in results]).reshape(self.n_agents, -1, self.obs_dim)
        rewards, terminated, truncated = (np.stack([r[i] for r in results]) for i in (1, 2, 3))
        return next_obs, rewards, terminated, truncated

    def close(self) -> None:
        for env in self.envs:
            env.close()


class _StackedCartPoles:
    """The CartPoles of ``N`` agents (``B`` each) stepped in one numpy call over ``N * B`` rows.

    The arithmetic of gymnasium's ``CartPoleVectorEnv.step`` (Euler integration, next-step
    autoreset), elementwise on float64 like gymnasium's, so every row gets the same floats;
    agent ``a``'s finished sub-envs restart from ``envs[a].np_random``, drawn as its own env
    would draw them. Stepping the agents one by one cost most of a vector step in Python.
    """

    _PHYSICS = ("gravity", "masspole", "total_mass", "length", "polemass_length", "force_mag")
    _LIMITS = ("tau", "x_threshold", "theta_threshold_radians", "max_episode_steps")

    @classmethod
    def fits(cls, envs: Sequence[VectorEnv]) -> bool:
        """Whether ``envs`` are plain ``CartPoleVectorEnv`` of equal sizes and constants."""
        from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

        if not all(type(env) is CartPoleVectorEnv for env in envs):
            return False
        first = envs[0]
        return all(
            env.kinematics_integrator == "euler"
            and not getattr(env, "_sutton_barto_reward", False)
            and env.num_envs == first.num_envs
            and all(getattr(env, k) == getattr(first, k) for k in cls._PHYSICS + cls._LIMITS)
            for env in envs
        )

    def __init__(self, envs: Sequence[Any]) -> None:
        self.envs = list(envs)
        self.n_agents, self.n_envs = len(self.envs), self.envs[0].num_envs
        self.state = np.zeros((4, self.n_agents * self.n_envs))
        self.steps = np.zeros(self.n_agents * self.n_envs, dtype=np.int32)
        self.prev_done = np.zeros(self.n_agents * self.n_envs, dtype=np.bool_)

    def reset(self) -> None:
        """Take over the state of the envs just reset."""
        self.state = np.concatenate([env.state for env in self.envs], axis=1)
        self.steps[:] = 0
        self.prev_done[:] = False

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``CartPoleVectorEnv.step`` of every agent; arrays ``[N, B, ...]``."""
        env = self.envs[0]
        action = np.asarray(actions).reshape(-1)
        if action.shape != self.steps.shape or not ((action == 0) | (action == 1)).all():
            raise ValueError(f"expected {self.steps.shape[0]} actions, each 0 or 1; got {actions}")
        x, x_dot, theta, theta_dot = self.state
        force = np.sign(action - 0.5) * env.force_mag
        costheta, sintheta = np.cos(theta), np.sin(theta)
        temp = (force + env.polemass_length * np.square(theta_dot) * sintheta) / env.total_mass
        thetaacc = (env.gravity * sintheta - costheta * temp) / (
            env.length * (4.0 / 3.0 - env.masspole * np.square(costheta) / env.total_mass)
        )
        xacc = temp - env.polemass_length * thetaacc * costheta / env.total_mass
        x, x_dot = x + env.tau * x_dot, x_dot + env.tau * xacc
        theta, theta_dot = theta + env.tau * theta_dot, theta_dot + env.tau * thetaacc
        self.state = np.stack((x, x_dot, theta, theta_dot))
        limit = env.theta_threshold_radians
        terminated = (
            (x < -env.x_threshold) | (x > env.x_threshold) | (theta < -limit) | (theta > limit)
        )
        self.steps += 1
        truncated = self.steps >= env.max_episode_steps
        reward = np.ones_like(terminated, dtype=np.float32)
        restart = self.prev_done
        if restart.any():
            for a, rows in enumerate(restart.reshape(self.n_agents, self.n_envs)):
                if rows.any():  # agent a's env draws its restarts alone, in column order
                    part = self.state[:, a * self.n_envs : (a + 1) * self.n_envs]
                    e = self.envs[a]
                    part[:, rows] = e.np_random.uniform(e.low, e.high, size=(4, rows.sum()))
            self.steps[restart] = 0
            reward[restart] = 0.0
            terminated[restart] = False
            truncated[restart] = False
        self.prev_done = terminated | truncated
        shape = (self.n_agents, self.n_envs)
        obs = self.state.T.astype(np.float32).reshape(*shape, 4)
        return obs, reward.reshape(shape), terminated.reshape(shape), truncated.reshape(shape)


class FamilyEnvs:
    """One task-family vector env (:func:`course.envs.make_grid_vec` or
    :func:`course.envs.make_cartpole_vec`) running every task of every agent.

    Sub-env ``i`` belongs to agent ``i // B`` (``B = K * per_task``) and runs its task
    ``(i // per_task) % K``. ``reset(seeds)`` seeds sub-env ``i`` of agent ``a`` with
    ``derive_seed(seeds[a], Purpose.ENV, i) % 2**31``.

    Args:
        env: The family env, built from the agents' task lists concatenated.
        n_agents: ``N``.
        n_tasks: ``K``, tasks per agent.
    """

    def __init__(self, env: Any, n_agents: int, n_tasks: int) -> None:
        self.env, self.n_agents = env, n_agents
        self.obs_dim, self.n_actions = _check_spaces(env)
        self.tasks = torch.from_numpy(env.task_ids % n_tasks).view(n_agents, -1)

    def reset(self, seeds: Sequence[int], purpose: Purpose = Purpose.ENV, *keys: int) -> np.ndarray:
        per_agent = self.tasks.shape[1]
        env_seeds = [
            derive_seed(s, purpose, *keys, i) % 2**31 for s in seeds for i in range(per_agent)
        ]
        obs, _ = self.env.reset(seed=env_seeds)
        return obs.reshape(self.n_agents, per_agent, self.obs_dim)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        next_obs, rewards, terminated, truncated, _ = self.env.step(actions.reshape(-1))
        shape = self.tasks.shape
        return (
            next_obs.reshape(*shape, self.obs_dim),
            rewards.reshape(shape),
            terminated.reshape(shape),
            truncated.reshape(shape),
        )

    def close(self) -> None:
        self.env.close()


@torch.no_grad()
def greedy_returns(
    q_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    envs: PopulationEnv,
    seeds: Sequence[int],
    index: int,
    device: torch.device,
) -> torch.Tensor:
    """Returns ``[N, B]`` of one greedy episode on every sub-env of ``envs``.

    Args:
        q_fn: ``q_fn(obs [N, B, D], tasks [N, B]) -> [N, B, A]``.
        envs: The evaluation environments.
        seeds: The agents' seeds; the resets use ``Purpose.EVAL`` and ``index``.
        index: The evaluation's index (a new set of start states each time).
        device: Where ``q_fn`` computes.
    """
    obs = envs.reset(seeds, Purpose.EVAL, index)
    tasks = envs.tasks.to(device)
    returns = np.zeros(obs.shape[:2])
    done = np.zeros(obs.shape[:2], dtype=bool)
    while not done.all():
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
        actions = q_fn(obs_t, tasks).argmax(-1).cpu().numpy()
        obs, rewards, terminated, truncated = envs.step(actions)
        returns += np.where(done, 0.0, rewards)
        done |= terminated | truncated
    return torch.from_numpy(returns).float()


# ============================================================================================
# 4. The loop
# ============================================================================================


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Hyperparameters shared by every DQN of the course (the single- and multi-task configs
    add their budget and, for the multi-task one, the multi-task choices)."""

    hidden: tuple[int, ...] = (256,)
    """widths of the Q-network's hidden layers"""
    lr: float = 2.3e-3
    """Adam learning rate at the start of training"""
    lr_end_fraction: float = 0.0
    """the learning rate decays linearly to this fraction of its start"""
    lr_decay_fraction: float = 0.8
    """fraction of training over which the learning rate decays"""
    gamma: float = 0.99
    """discount factor"""
    buffer_size: int = 50_000
    """replay capacity per agent (shared by its tasks)"""
    batch_size: int = 128
    """transitions per gradient update (drawn from all the agent's tasks together)"""
    learning_starts: int = 1_000
    """environment steps (per agent, over all its tasks) collected before the first update"""
    updates_per_step: float = 0.5
    """gradient updates per environment step of the agent (the replay ratio)"""
    target_update_interval: int = 64
    """gradient updates between target-network updates"""
    tau: float = 1.0
    """target-network update weight (1: hard copy)"""
    double_dqn: bool = True
    """use the Double DQN target (online net picks, target net evaluates)"""
    eps_start: float = 1.0
    """exploration rate at the start"""
    eps_end: float = 0.04
    """exploration rate after the decay"""
    exploration_fraction: float = 0.16
    """fraction of training over which epsilon decays linearly"""
    max_grad_norm: float = 10.0
    """gradient-norm clip per agent (inf: no clipping)"""
    eval_episodes: int = 10
    """greedy episodes per evaluation (per task)"""

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr >= 0,
            "lr_end_fraction": 0 <= self.lr_end_fraction <= 1,
            "lr_decay_fraction": 0 <= self.lr_decay_fraction <= 1,
            "gamma": 0 <= self.gamma <= 1,
            "buffer_size": self.buffer_size >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_starts": self.learning_starts >= 0,
            "updates_per_step": self.updates_per_step >= 0,
            "target_update_interval": self.target_update_interval >= 1,
            "tau": 0 < self.tau <= 1,
            "eps_start": 0 <= self.eps_start <= 1,
            "eps_end": 0 <= self.eps_end <= 1,
            "exploration_fraction": 0 <= self.exploration_fraction <= 1,
            "max_grad_norm": self.max_grad_norm > 0,
            "eval_episodes": self.eval_episodes >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{n}={getattr(self, n)!r}" for n in bad)
            raise ValueError(f"{values} out of range; see the field docs of {type(self).__name__}")


QFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``q_fn(obs [N, B, D], tasks [N, B]) -> [N, B, A]``: the agents' action values."""


@dataclasses.dataclass
class Agents:
    """The ``N`` agents of one population: what they are and how each is trained.

    Attributes:
        seeds: One non-negative seed per agent; every random stream derives from it.
        envs: Their training environments (``B`` sub-envs per agent).
        n_tasks: ``K``, tasks per agent (task ids in ``envs.tasks``).
        score: ``score(q_fn, index) -> [N, M]`` the evaluation ``index`` (0, 1, ...): greedy
            episodes, or the grid family's exact scores.
        n_heads: Heads of the network (``K`` for one head per task, else 1).
        inputs: ``inputs(obs, tasks) -> net_obs``, what the network reads (e.g. the
            observation with the task's one-hot appended); default the observation. With
            several heads, row ``(a, b)`` is answered by head ``tasks[a, b]``.
        input_dim: Size of ``net_obs`` (default: the observation size).
        init_states: Starting weights, one plain-network state dict per agent (None: fresh from
            ``Purpose.INIT``); the target network starts equal.
        frozen: Layer-name prefixes kept fixed (e.g. ``("trunk",)``).
        penalty: ``penalty(q_net) -> [N]`` added to the loss (L2 on the heads, the mean
            regulariser, L2-SP), already weighted per agent.
        head_lrs: Learning rate of each head (None: ``config.lr``); the trunk uses
            ``config.lr``.
        pcgrad: Combine the tasks' trunk gradients with :func:`course.multitask.pcgrad` instead
            of summing them.
        noise_baseline: Also measure, at each evaluation, the cosine similarity of each task's
            trunk gradients on two independent batches (``PopulationRun.same_task``): what
            two gradients of the *same* task look like, the baseline of the conflict.
    """

    seeds: tuple[int, ...]
    envs: PopulationEnv
    n_tasks: int
    score: Callable[[QFunction, int], torch.Tensor]
    n_heads: int = 1
    inputs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    input_dim: int | None = None
    init_states: Sequence[Mapping[str, torch.Tensor]] | None = None
    frozen: tuple[str, ...] = ()
    penalty: Callable[[PopulationQNetwork], torch.Tensor] | None = None
    head_lrs: tuple[float, ...] | None = None
    pcgrad: bool = False
    noise_baseline: bool = False

    def __post_init__(self) -> None:
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds or min(self.seeds) < 0:
            raise ValueError(f"seeds {self.seeds}: give at least one seed, all non-negative")
        if len(self.seeds) != self.envs.n_agents:
            raise ValueError(f"{len(self.seeds)} seeds for {self.envs.n_agents} agents' envs")
        if self.init_states is not None and len(self.init_states) != len(self.seeds):
            raise ValueError(
                f"init_states has {len(self.init_states)} state dicts for {len(self.seeds)} seeds"
            )
        if self.head_lrs is not None and len(self.head_lrs) != self.n_heads:
            raise ValueError(f"{len(self.head_lrs)} head learning rates for {self.n_heads} heads")


@dataclasses.dataclass
class PopulationRun:
    """What :func:`train_population` measured, for ``N`` agents and ``T`` evaluations.

    Attributes:
        steps: ``[T]`` environment steps per agent (over all its tasks) at each evaluation.
        scores: ``[N, T, M]`` what ``Agents.score`` returned at each evaluation.
        stats: Means over the updates since the previous evaluation, ``[N, T]`` each:
            ``loss`` (TD loss summed over tasks), ``q_mean`` (value of the taken actions),
            ``penalty`` (nan before learning starts); ``epsilon`` and ``lr`` ``[T]``.
        conflict: ``[N, T, K, K]`` gradient cosine similarity of the tasks' trunk gradients on
            one replay batch (nan with one task or before there is data).
        episode_steps: Per agent, the step at which each training episode ended.
        episode_returns: Per agent, the return of each training episode.
        network: The online network at the end.
        wall_time: Seconds spent training.
        eval_time: The part of ``wall_time`` spent evaluating.
        same_task: ``[N, T, K]`` cosine similarity of each task's trunk gradients on the
            conflict batch and on a second, independent batch (``Agents.noise_baseline``; nan
            before there is data); None when not measured.
    """

    steps: torch.Tensor
    scores: torch.Tensor
    stats: dict[str, torch.Tensor]
    conflict: torch.Tensor
    episode_steps: list[torch.Tensor]
    episode_returns: list[torch.Tensor]
    network: PopulationQNetwork
    wall_time: float
    eval_time: float
    same_task: torch.Tensor | None = None


_BLOCK = 256  # steps (or updates) of random numbers drawn at once


class _RandomBlocks:
    """Per-agent random numbers drawn ``_BLOCK`` rows at a time from each agent's generator.

    Drawing in blocks keeps per-step Python overhead low without coupling the agents: agent
    ``a``'s numbers come from its own generator only.
    """

    def __init__(
        self,
        draw: Callable[[torch.Generator], tuple[torch.Tensor, ...]],
        gens: Sequence[torch.Generator],
        device: torch.device,
    ) -> None:
        self.draw, self.gens, self.device = draw, gens, device
        self.blocks: tuple[torch.Tensor, ...] = ()
        self.pos = _BLOCK

    def next(self) -> tuple[torch.Tensor, ...]:
        if self.pos == _BLOCK:
            per_agent = [self.draw(g) for g in self.gens]
            stacked = zip(*per_agent, strict=True)
            self.blocks = tuple(torch.stack(parts).to(self.device) for parts in stacked)
            self.pos = 0
        row = tuple(block[:, self.pos] for block in self.blocks)
        self.pos += 1
        return row


class FusedAdam:
    """Adam with PyTorch's fused kernel: the arithmetic of ``torch.optim.Adam(fused=True)``.

    The same kernel (``torch._fused_adam_``) on the same state, so the same numbers (a test
    checks it against ``torch.optim.Adam``), without ``torch.optim.Optimizer``: its first use
    in a process imports ``torch._dynamo`` (about 3 s of CPU, once per lesson), and its ``step``
    spends more time in Python than in the kernel on the course's small networks.

    Args:
        groups: Parameter groups, dicts with ``params`` and ``lr`` (other keys are kept).
        betas: Adam's ``(beta1, beta2)``.
        eps: Adam's epsilon.

    Attributes:
        param_groups: The groups; set ``group["lr"]`` to change a learning rate.
    """

    def __init__(
        self,
        groups: Sequence[dict[str, Any]],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.param_groups = [dict(g, params=list(g["params"])) for g in groups]
        self.betas, self.eps = betas, eps
        self.state = [
            {
                "exp_avg": [torch.zeros_like(p) for p in ps],
                "exp_avg_sq": [torch.zeros_like(p) for p in ps],
                "step": [torch.zeros((), dtype=torch.float32, device=p.device) for p in ps],
            }
            for ps in (g["params"] for g in self.param_groups)
        ]
        self._all_params = [p for group in self.param_groups for p in group["params"]]
        self._all_state = {k: [t for s in self.state for t in s[k]] for k in self.state[0]}

    def zero_grad(self) -> None:
        """Drop every gradient (``set_to_none``)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step of every parameter (all must have a gradient)."""
        lrs = {float(group["lr"]) for group in self.param_groups}
        if len(lrs) == 1:  # one kernel call for all groups: the same numbers, tensor by tensor
            self._step(self._all_params, self._all_state, lrs.pop())
            return
        for group, state in zip(self.param_groups, self.state, strict=True):
            self._step(group["params"], state, float(group["lr"]))

    def _step(self, params: list[torch.Tensor], state: dict[str, list], lr: float) -> None:
        torch._foreach_add_(state["step"], 1)
        torch._fused_adam_(
            params,
            [p.grad for p in params],
            state["exp_avg"],
            state["exp_avg_sq"],
            [],
            state["step"],
            amsgrad=False,
            lr=lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=0.0,
            eps=self.eps,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )


_STATS = ("loss", "q_mean", "penalty")  # the statistics of every update


class _EpisodeLog:
    """The return and end step of every training episode of every sub-env."""

    def __init__(self, n_agents: int, n_envs: int) -> None:
        self.running = np.zeros((n_agents, n_envs))
        self.steps: list[list[int]] = [[] for _ in range(n_agents)]
        self.returns: list[list[float]] = [[] for _ in range(n_agents)]

    def record(self, step: int, rewards: np.ndarray, done: np.ndarray, valid: np.ndarray) -> None:
        """Add one vector step's rewards ``[N, B]`` (rows that are real transitions)."""
        self.running = np.where(valid, self.running + rewards, 0.0)
        for a, e in zip(*np.nonzero(done & valid), strict=True):
            self.steps[a].append(step)
            self.returns[a].append(float(self.running[a, e]))


class _Trainer:
    """The state of one :func:`train_population` run: networks, optimizer, replay, streams."""

    def __init__(self, agents: Agents, config: TrainerConfig, device: torch.device) -> None:
        from course.dqn import soft_update  # course.dqn builds on this module

        self.agents, self.cfg, self.device = agents, config, device
        self.soft_update = soft_update
        seeds, envs = agents.seeds, agents.envs
        self.n_agents, self.n_tasks = len(seeds), agents.n_tasks
        input_dim = agents.input_dim or envs.obs_dim
        q_net = PopulationQNetwork(
            self.n_agents,
            input_dim,
            envs.n_actions,
            config.hidden,
            agents.n_heads,
            seeded_generators(seeds, Purpose.INIT),
        )
        for a, state in enumerate(agents.init_states or ()):
            q_net.load_agent_state_dict(a, state)
        self.q_net = q_net.to(device)
        self.target_net = copy.deepcopy(self.q_net).requires_grad_(False)
        for name, w, b in zip(q_net.layer_names, q_net.weights, q_net.biases, strict=True):
            frozen = name.startswith(agents.frozen) if agents.frozen else False
            w.requires_grad_(not frozen), b.requires_grad_(not frozen)
        self.params = [p for p in q_net.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"frozen={agents.frozen} leaves no parameter to train")
        head_lrs = agents.head_lrs or (config.lr,) * agents.n_heads
        groups = [(q_net.trunk_parameters(), config.lr)]
        groups += [(q_net.head_parameters(k), lr) for k, lr in enumerate(head_lrs)]
        groups = [
            {"params": kept, "lr": lr, "initial_lr": lr}
            for params, lr in groups
            if (kept := [p for p in params if p.requires_grad])
        ]
        if device.type in ("cpu", "cuda"):
            self.optimizer: Any = FusedAdam(groups)
        else:  # no fused kernel elsewhere
            self.optimizer = torch.optim.Adam(groups, lr=config.lr)
        self.replay = PopulationReplay(self.n_agents, config.buffer_size, (envs.obs_dim,), device)
        self.sample_u = _RandomBlocks(
            lambda g: (torch.rand(_BLOCK, config.batch_size, generator=g),),
            seeded_generators(seeds, Purpose.REPLAY),
            device,
        )
        self.conflict_gens = seeded_generators(seeds, Purpose.CONFLICT)
        self.noise_gens = seeded_generators(seeds, Purpose.NOISE) if agents.noise_baseline else []
        self.same_task: torch.Tensor | None = None  # of the last conflict() call
        self.sums = {k: torch.zeros(self.n_agents, device=device) for k in _STATS}
        self.n_logged = self.n_updates = self.since_target = 0
        self.plain = (
            self.n_tasks == 1
            and agents.n_heads == 1
            and agents.inputs is None
            and agents.penalty is None
            and not agents.pcgrad
        )
        self.q_params = [t for pair in self.q_net.layers() for t in pair]
        # views of the weights, which every update changes in place
        self.q_weights = [p.detach() for p in self.q_params[0::2]]
        self.q_layers = _transposed([p.detach() for p in self.q_params])
        target = [t.detach() for pair in self.target_net.layers() for t in pair]
        self.target_layers = _transposed(target)
        self.row_weight: torch.Tensor | None = None  # d(mean)/d(row), as autograd computes it

    def q_values(self, net: nn.Module, obs: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """``[N, B, A]`` of a network on observations ``[N, B, D]`` of tasks ``[N, B]``."""
        if self.plain and net is self.q_net:  # the network's forward without its checks
            return _mlp_outputs(obs, self.q_layers)[-1]
        inputs = self.agents.inputs
        return net(obs if inputs is None else inputs(obs, tasks), tasks)

    def td_targets(self, batch: Batch) -> torch.Tensor:
        """``[N, B]`` :func:`course.dqn.td_target` (or :func:`course.dqn.double_td_target`)."""
        from course.dqn import double_td_target, td_target

        cfg = self.cfg

        def q_next(net: nn.Module, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
            if self.plain:  # the network's forward without its checks
                return _mlp_outputs(batch.next_obs, layers)[-1]
            return self.q_values(net, batch.next_obs, batch.tasks)

        with torch.no_grad():
            next_target = q_next(self.target_net, self.target_layers)
            if not cfg.double_dqn:
                return td_target(batch.rewards, next_target, batch.terminated, cfg.gamma)
            next_online = q_next(self.q_net, self.q_layers)
        return double_td_target(
            batch.rewards, next_online, next_target, batch.terminated, cfg.gamma
        )

    def task_losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``([N, K] mean Huber TD loss over each task's rows, [N] mean Q of taken actions)``.

        The per-row loss and targets are those of :func:`course.dqn.dqn_loss` with
        :func:`course.dqn.td_target` (or :func:`course.dqn.double_td_target`).
        """
        from course.multitask import per_task_mean

        targets = self.td_targets(batch)
        q = self.q_values(self.q_net, batch.obs, batch.tasks)
        taken = q.gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        rows = F.smooth_l1_loss(taken, targets, reduction="none")
        if self.n_tasks == 1:  # the plain mean of dqn_loss
            return rows.mean(-1, keepdim=True), taken.detach().mean(-1)
        return per_task_mean(rows, batch.tasks, self.n_tasks), taken.detach().mean(-1)

    def plain_gradients(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`task_losses` of one task and its gradients (set as ``.grad``), without autograd.

        The gradient autograd computes, written out: the Huber loss's derivative is the TD
        error clipped to ``[-1, 1]``, times ``1 / B`` (the mean's), scattered onto the taken
        actions and sent through :func:`_mlp_backward`; the same operations on the same
        tensors, so the same floats (a test checks it), without building the graph (autograd's
        bookkeeping was a third of an update's time on the course's small networks).
        Only for the plain case: one task and head, no ``inputs``, penalty or PCGrad. It reads
        the weights through detached views, so no operation here records a graph.
        """
        targets = self.td_targets(batch)
        outputs = _mlp_outputs(batch.obs, self.q_layers)
        index = batch.actions.unsqueeze(-1)
        taken = outputs[-1].gather(-1, index).squeeze(-1)
        rows = F.smooth_l1_loss(taken, targets, reduction="none")
        if self.row_weight is None or self.row_weight.shape != rows.shape:
            self.row_weight = torch.ones((), device=self.device).expand(rows.shape) / rows.shape[1]
        d_taken = (taken - targets).clamp_(-1.0, 1.0).mul_(self.row_weight)
        d_q = torch.zeros_like(outputs[-1]).scatter_add_(-1, index, d_taken.unsqueeze(-1))
        needs = [False, *(p.requires_grad for p in self.q_params)]
        grads = _mlp_backward(outputs[:-1], self.q_weights, d_q, needs)
        for p, g in zip(self.q_params, grads[1:], strict=True):
            if g is not None:
                p.grad = g.contiguous()
        return rows.mean(-1, keepdim=True), taken.mean(-1)

    def trunk_task_grads(self, losses: torch.Tensor) -> list[list[torch.Tensor]]:
        """For every task, the gradient of its loss (summed over agents) w.r.t. the trunk."""
        trunk = [p for p in self.q_net.trunk_parameters() if p.requires_grad]
        per_task = losses.sum(0)
        return [
            list(torch.autograd.grad(per_task[k], trunk, retain_graph=True))
            for k in range(self.n_tasks)
        ]

    def update(self) -> dict[str, torch.Tensor]:
        """One gradient step of every agent; returns ``[N]`` statistics."""
        batch = self.replay.sample(self.sample_u.next()[0])
        if self.plain:
            losses, q_mean = self.plain_gradients(batch)
            penalty = None
        else:
            losses, q_mean, penalty = self.autograd_gradients(batch)
        clip_grad_norm_per_agent_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        return {"loss": losses.detach().sum(-1), "q_mean": q_mean, "penalty": penalty}

    def autograd_gradients(
        self, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`task_losses` (``[N, K]``, ``[N]``), the penalty ``[N]`` (None without one),
        and their gradients (set as ``.grad``), the trunk's summed or combined by PCGrad."""
        from course.multitask import pcgrad

        losses, q_mean = self.task_losses(batch)  # [N, K], [N]
        total = losses.sum()
        penalty = None
        if self.agents.penalty is not None:
            penalty = self.agents.penalty(self.q_net)
            total = total + penalty.sum()
        self.optimizer.zero_grad()
        pcgrad_now = self.agents.pcgrad and self.n_tasks > 1
        trunk_grads = self.trunk_task_grads(losses) if pcgrad_now else []
        total.backward()
        if pcgrad_now:  # replace each agent's summed trunk gradient by its PCGrad combination
            trunk = [p for p in self.q_net.trunk_parameters() if p.requires_grad]
            for a in range(self.n_agents):
                flat = [torch.cat([g[a].flatten() for g in grads]) for grads in trunk_grads]
                combined = pcgrad(flat, self.conflict_gens[a])
                offset = 0
                for p in trunk:
                    n = p[a].numel()
                    p.grad[a] = combined[offset : offset + n].view_as(p[a])
                    offset += n
        return losses, q_mean, None if penalty is None else penalty.detach()

    def conflict(self) -> torch.Tensor:
        """``[N, K, K]`` :func:`course.multitask.gradient_conflict` on one fresh batch."""
        from course.multitask import gradient_conflict

        K = self.n_tasks
        if K < 2 or int(self.replay.size.min()) == 0:
            self.same_task = torch.full((self.n_agents, K), float("nan"))
            return torch.full((self.n_agents, K, K), float("nan"))
        u = torch.stack([torch.rand(self.cfg.batch_size, generator=g) for g in self.conflict_gens])
        flat = self._flat_task_grads(u)
        if self.noise_gens:  # the same tasks on an independent batch: cosine of g_k with g'_k
            n = self.cfg.batch_size
            again = self._flat_task_grads(
                torch.stack([torch.rand(n, generator=g) for g in self.noise_gens])
            )
            self.same_task = torch.stack(
                [
                    torch.stack([gradient_conflict([f, g])[0, 1] for f, g in zip(fa, ga)])
                    for fa, ga in zip(flat, again, strict=True)
                ]
            ).cpu()
        return torch.stack([gradient_conflict(f) for f in flat]).cpu()

    def _flat_task_grads(self, u: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per agent, each task's flat trunk gradient on the replay batch of uniforms ``u``."""
        grads = self.trunk_task_grads(self.task_losses(self.replay.sample(u.to(self.device)))[0])
        return [
            [torch.cat([g[a].flatten() for g in gk]) for gk in grads] for a in range(self.n_agents)
        ]

    def train_until(self, due: int) -> None:
        """Update until ``due`` updates are done, with the target-network updates between."""
        while self.n_updates < due:
            for key, value in self.update().items():
                if value is not None:  # no penalty adds 0
                    self.sums[key] += value
            self.n_logged += 1
            self.n_updates += 1
            self.since_target += 1
            if self.since_target >= self.cfg.target_update_interval:
                self.soft_update(self.target_net, self.q_net, self.cfg.tau)
                self.since_target = 0

    def take_stats(self) -> dict[str, torch.Tensor]:
        """``[N]`` means of the update statistics since the last call (nan if no update)."""
        n = self.n_logged
        nan = torch.full((self.n_agents,), float("nan"))
        stats = {k: (v / n).cpu() if n else nan for k, v in self.sums.items()}
        for value in self.sums.values():
            value.zero_()
        self.n_logged = 0
        return stats

    def set_lr(self, step: int, total_steps: int) -> float:
        """Decay every group's learning rate linearly; returns the trunk's."""
        from course.dqn import linear_schedule

        cfg = self.cfg
        duration = int(cfg.lr_decay_fraction * total_steps)
        for group in self.optimizer.param_groups:
            start = group["initial_lr"]
            group["lr"] = linear_schedule(start, start * cfg.lr_end_fraction, duration, step)
        return float(self.optimizer.param_groups[0]["lr"])


def train_population(
    agents: Agents,
    config: TrainerConfig,
    total_steps: int,
    eval_every: int,
    device: torch.device | str | None = None,
    progress: bool = False,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
) -> PopulationRun:
    """Train every agent of a population with (Double) DQN, all at once; the loop of the course.

    Per vector step of all agents:

    1. epsilon-greedy actions from the online networks (the rule of
       :func:`course.dqn.epsilon_greedy`, with each agent's uniforms and random actions drawn
       from its own ``Purpose.ACT`` generator in blocks of steps);
    2. step every environment; keep only the rows that are real transitions under next-step
       autoreset (:func:`course.dqn.real_transitions`) and store them with their task, with
       ``terminated`` (not ``truncated``) as the end flag, so time-limit ends still bootstrap;
    3. ``updates_per_step`` gradient updates per environment step once ``learning_starts``
       steps are stored: a batch per agent from its own replay, TD targets from the target
       network, the mean Huber loss of each task (:func:`course.dqn.dqn_loss`'s, per task),
       summed over tasks, plus the agent's penalty; the trunk gradient summed over tasks (or
       combined by PCGrad); per-agent gradient clipping; Adam with linearly decaying learning
       rates; a target-network update (:func:`course.dqn.soft_update`) every
       ``target_update_interval`` updates;
    4. every ``eval_every`` steps (and at 0 and at the end), ``agents.score`` and, with
       several tasks, the gradient conflict of the tasks.

    Summing the agents' losses keeps each agent's gradient its own, so agent ``a``'s results
    depend only on its seed, its description and the config (on one device and thread count).

    Args:
        agents: The population.
        config: Hyperparameters.
        total_steps: Environment steps per agent, over all its sub-envs.
        eval_every: Environment steps per agent between evaluations.
        device: Torch device (:func:`default_device`).
        progress: Show a tqdm progress bar.
        callback: Called after each evaluation as ``callback(step, stats)``; ``stats`` holds
            ``score`` (mean of the scores), ``loss``, ``q_mean``, ``penalty`` (``[N]``
            tensors), ``epsilon`` and ``lr``.

    Returns:
        A :class:`PopulationRun`.
    """
    from course.dqn import linear_schedule

    start_time = time.perf_counter()
    cfg, device = config, default_device(device)
    B = agents.envs.tasks.shape[1]
    if B > cfg.buffer_size:
        raise ValueError(f"{B} sub-envs per agent exceed buffer_size; use a larger buffer")
    run = _Trainer(agents, cfg, device)
    collector = _Collector(agents, run)
    bar = tqdm(total=total_steps, disable=not progress, unit="step", leave=False)
    log = _EvalLog(agents, run, callback, bar)
    epsilon, lr = cfg.eps_start, cfg.lr
    eps_duration = int(cfg.exploration_fraction * total_steps)
    log.evaluate(0, epsilon, lr)
    step, next_eval = 0, eval_every
    while step < total_steps:
        epsilon = linear_schedule(cfg.eps_start, cfg.eps_end, eps_duration, step)
        collector.step(epsilon, step + B)
        step += B
        lr = run.set_lr(step, total_steps)
        run.train_until(int(max(0, step - cfg.learning_starts) * cfg.updates_per_step))
        if step >= next_eval or step >= total_steps:
            log.evaluate(step, epsilon, lr)
            next_eval += eval_every
        bar.update(B)
    bar.close()
    return log.result(collector.episodes, time.perf_counter() - start_time)


class _Collector:
    """Steps 1-2 of :func:`train_population`: act, step the environments, store in the replay."""

    def __init__(self, agents: Agents, run: _Trainer) -> None:
        self.envs, self.run = agents.envs, run
        N, B = self.envs.tasks.shape
        self.act_u = _RandomBlocks(
            lambda g: (
                torch.rand(_BLOCK, B, generator=g),
                torch.randint(self.envs.n_actions, (_BLOCK, B), generator=g),
            ),
            seeded_generators(agents.seeds, Purpose.ACT),
            torch.device("cpu"),
        )
        self.tasks = self.envs.tasks.to(run.device)
        self.obs = self.envs.reset(agents.seeds)
        self.prev_done = torch.zeros(N, B, dtype=torch.bool)
        self.episodes = _EpisodeLog(N, B)

    def step(self, epsilon: float, step_after: int) -> None:
        """One vector step of every agent; ``step_after``: the steps taken once it is done."""
        from course.dqn import real_transitions

        run, device = self.run, self.run.device
        explore_u, random_actions = self.act_u.next()
        obs = torch.as_tensor(self.obs, dtype=torch.float32)
        with torch.no_grad():
            greedy = run.q_values(run.q_net, obs.to(device), self.tasks).argmax(dim=-1).cpu()
        actions = torch.where(explore_u < epsilon, random_actions, greedy)
        next_obs, rewards, terminated, truncated = self.envs.step(actions.numpy())
        valid = real_transitions(self.prev_done)
        run.replay.add(
            obs.to(device),
            actions.to(device),
            torch.as_tensor(rewards, dtype=torch.float32, device=device),
            torch.as_tensor(next_obs, dtype=torch.float32, device=device),
            torch.as_tensor(terminated, device=device),
            valid.to(device),
            self.tasks,
        )
        done = terminated | truncated
        self.episodes.record(step_after, rewards, done, valid.numpy())
        self.prev_done, self.obs = torch.from_numpy(done), next_obs


class _EvalLog:
    """Step 4 of :func:`train_population`: the evaluations, the statistics, the result."""

    def __init__(
        self,
        agents: Agents,
        run: _Trainer,
        callback: Callable[[int, dict[str, Any]], None] | None,
        bar: Any,
    ) -> None:
        self.agents, self.run, self.callback, self.bar = agents, run, callback, bar
        keys = ("steps", "scores", "conflict", "same_task", "epsilon", "lr", *run.sums)
        self.log: dict[str, list] = {k: [] for k in keys}
        self.eval_time = 0.0

    def evaluate(self, step: int, epsilon: float, lr: float) -> None:
        """Score every agent at ``step``, and log the statistics since the last evaluation."""
        run, log = self.run, self.log
        eval_start = time.perf_counter()
        with torch.no_grad():
            scores = self.agents.score(
                lambda obs, tasks: run.q_values(run.q_net, obs, tasks), len(log["steps"])
            )
        self.eval_time += time.perf_counter() - eval_start
        log["steps"].append(step)
        log["scores"].append(scores)
        log["conflict"].append(run.conflict())
        if self.agents.noise_baseline:
            log["same_task"].append(run.same_task)
        stats = run.take_stats()
        for key, value in stats.items():
            log[key].append(value)
        log["epsilon"].append(epsilon)
        log["lr"].append(lr)
        if self.callback is not None:
            self.callback(step, {"score": scores.mean(-1), **stats, "epsilon": epsilon, "lr": lr})
        self.bar.set_postfix(score=f"{scores.mean():.2f}", refresh=False)

    def result(self, episodes: _EpisodeLog, wall_time: float) -> PopulationRun:
        """The :class:`PopulationRun` of the evaluations logged."""
        log, run = self.log, self.run
        return PopulationRun(
            steps=torch.tensor(log["steps"]),
            scores=torch.stack(log["scores"], dim=1),
            stats={
                **{k: torch.stack(log[k], dim=1) for k in run.sums},
                "epsilon": torch.tensor(log["epsilon"]),
                "lr": torch.tensor(log["lr"]),
            },
            conflict=torch.stack(log["conflict"], dim=1),
            episode_steps=[torch.tensor(s, dtype=torch.int64) for s in episodes.steps],
            episode_returns=[torch.tensor(r, dtype=torch.float32) for r in episodes.returns],
            network=run.q_net,
            wall_time=wall_time,
            eval_time=self.eval_time,
            same_task=torch.stack(log["same_task"], dim=1) if self.agents.noise_baseline else None,
        )
