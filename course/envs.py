"""Task families: several related tasks behind one environment interface.

Lesson 04 (multi-task learning) and Lesson 05 (transfer) need families of tasks that share most of
their structure and differ in one controlled way. This module holds two:

- **CartPole family**: gymnasium's CartPole-v1 with per-task physics (pole length, pole mass, cart
  mass, gravity, force) and an optional *mirrored* task whose two actions swap meaning. At default
  parameters it reproduces CartPole-v1 step for step.
- **Grid-world family**: one layout, several goal cells; the tasks share dynamics and differ in
  reward, and each task's exact `TabularMDP` is available so a learned Q can be compared with Q*.

Each family comes as a single gymnasium env (registered under the ``course/`` namespace on
``import course.envs``) and as a batched vector env that steps many tasks and many seeds in one
call. The batched forms seed sub-env ``i`` with ``seed + i`` (as gymnasium's ``SyncVectorEnv``
does) and keep one random stream per sub-env, so sub-env ``i`` reproduces a single env reset with
``seed + i`` step for step, across episode ends.

Autoreset (batched forms). The default is gymnasium's *next-step* autoreset, the mode of its own
``CartPoleVectorEnv``: the step that ends an episode returns the final observation with
``terminated`` or ``truncated`` set; the *next* call to ``step`` ignores that sub-env's action and
returns the first observation of a new episode with reward 0 and both flags False. That step is
not a transition: drop it before it reaches a replay buffer (the returned ``terminated |
truncated`` of the previous step tells you which rows to drop). With
``autoreset_mode=AutoresetMode.SAME_STEP`` the ending step itself returns the new episode's first
observation and puts the final one in ``info["final_obs"]`` (a float array with one row per
sub-env, valid where ``info["_final_obs"]`` is True), so every step is a transition.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.classic_control import utils as classic_utils
from gymnasium.envs.classic_control.cartpole import CartPoleEnv, CartPoleVectorEnv
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode

from course.mdp import GridMDP, gridworld

__all__ = [
    "CARTPOLE_TASKS",
    "GRID_LAYOUT",
    "RANDOMISABLE",
    "CartPoleRandomisedVectorEnv",
    "CartPoleTaskDistribution",
    "GRID_OBS_MODES",
    "CartPoleFamilyEnv",
    "CartPoleFamilyVectorEnv",
    "CartPoleTask",
    "GridFamilyEnv",
    "GridFamilyVectorEnv",
    "GridTask",
    "grid_tasks",
    "make_cartpole_vec",
    "make_grid_vec",
    "make_randomised_cartpole_vec",
]


def _parse_autoreset_mode(autoreset_mode: AutoresetMode | str) -> AutoresetMode:
    mode = AutoresetMode(autoreset_mode)
    if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
        raise ValueError(
            f"autoreset_mode {mode} is not supported; use AutoresetMode.NEXT_STEP or SAME_STEP"
        )
    return mode


def _vector_actions(action: np.ndarray | torch.Tensor | Sequence[int], num_envs: int) -> np.ndarray:
    """One action per sub-env as a numpy array; a tensor may live on any device."""
    if isinstance(action, torch.Tensor):
        action = action.detach().cpu().numpy()
    action = np.asarray(action)
    if action.shape != (num_envs,):
        raise ValueError(
            f"action has shape {action.shape}; pass one action per sub-env, shape ({num_envs},)"
        )
    return action


def _seed_streams(seed: int | Sequence[int] | None, num_envs: int) -> list[np.random.Generator]:
    """One generator per sub-env, seeded as ``gymnasium.Env.reset(seed=...)`` would seed it."""
    if seed is None:
        seeds: list[int | None] = [None] * num_envs
    elif isinstance(seed, (int, np.integer)):
        seeds = [int(seed) + i for i in range(num_envs)]
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != num_envs:
            raise ValueError(
                f"got {len(seeds)} seeds for {num_envs} sub-envs; pass one int or one seed per "
                "sub-env"
            )
    return [seeding.np_random(s)[0] for s in seeds]


class _UniformStreams:
    """Per-sub-env uniform draws, vectorised over the sub-envs that need one.

    Sub-env ``i`` consumes its generator exactly as a single env's ``np_random.uniform(low, high,
    size=(dim,))`` would, one draw after another, so batched and single envs agree across
    episode ends. Draws are made a block at a time so a draw for many sub-envs costs one gather,
    not a Python loop over them.
    """

    def __init__(self, generators: list[np.random.Generator], dim: int, block: int) -> None:
        self.generators = generators
        self.dim = dim
        self.block_size = block
        self.block = np.stack([g.random((block, dim)) for g in generators])
        self.cursor = np.zeros(len(generators), dtype=np.int64)

    def uniform(self, idx: np.ndarray, low: float, high: float) -> np.ndarray:
        """Draws ``[len(idx), dim]`` uniform values in ``[low, high)`` for sub-envs ``idx``."""
        for i in idx[self.cursor[idx] >= self.block_size]:
            self.block[i] = self.generators[i].random((self.block_size, self.dim))
            self.cursor[i] = 0
        u = self.block[idx, self.cursor[idx]]
        self.cursor[idx] += 1
        # Generator.uniform computes low + (high - low) * u in double precision: same bits.
        return low + (high - low) * u


def _reseeded_streams(
    env: gym.vector.VectorEnv, seed: int | Sequence[int] | None, dim: int, block: int
) -> _UniformStreams:
    """Fresh streams of ``dim`` uniforms per draw for ``env.reset(seed=seed)``; an int seed
    also seeds ``env.np_random``, as gymnasium's vector envs do."""
    if isinstance(seed, (int, np.integer)):
        env._np_random, env._np_random_seed = seeding.np_random(int(seed))
    return _UniformStreams(_seed_streams(seed, env.num_envs), dim, block=block)


# ============================================================================================
# CartPole family
# ============================================================================================


@dataclass(frozen=True)
class CartPoleTask:
    """Physics of one CartPole task; the defaults are gymnasium's CartPole-v1.

    Attributes:
        length: Half the pole's length, in metres (gymnasium's convention).
        masspole: Mass of the pole, in kg.
        masscart: Mass of the cart, in kg.
        gravity: Gravitational acceleration, in m/s^2.
        force_mag: Magnitude of the force each action applies to the cart, in N.
        mirrored: If True, action 0 pushes right and action 1 pushes left: the same physics with
            the meaning of the actions swapped, a task whose optimal policy conflicts with the
            default one.
    """

    length: float = 0.5
    masspole: float = 0.1
    masscart: float = 1.0
    gravity: float = 9.8
    force_mag: float = 10.0
    mirrored: bool = False

    def __post_init__(self) -> None:
        for name in ("length", "masspole", "masscart", "gravity", "force_mag"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"CartPoleTask.{name} is {value}; it must be a positive number")

    @property
    def name(self) -> str:
        """A short readable name: ``"default"`` or the fields that differ from the defaults."""
        changed = [
            f.name if f.name == "mirrored" else f"{f.name}={getattr(self, f.name):g}"
            for f in fields(self)
            if getattr(self, f.name) != f.default
        ]
        return ",".join(changed) if changed else "default"


CARTPOLE_TASKS: dict[str, CartPoleTask] = {
    "default": CartPoleTask(),
    "long_pole": CartPoleTask(length=1.0),
    "very_long_pole": CartPoleTask(length=2.0),
    "heavy_pole": CartPoleTask(masspole=1.0),
    "heavy_cart": CartPoleTask(masscart=3.0),
    "low_gravity": CartPoleTask(gravity=5.0),
    "strong_force": CartPoleTask(force_mag=20.0),
    "mirrored": CartPoleTask(mirrored=True),
}
"""Named CartPole tasks. A policy trained on ``"default"`` already balances ``heavy_pole``,
``heavy_cart``, ``low_gravity`` and ``strong_force`` zero-shot; ``long_pole``, ``very_long_pole``
and ``mirrored`` are genuinely different tasks."""


class _DerivedCartPoleMasses:
    """``total_mass`` and ``polemass_length`` computed from the current physics, never stale.

    Gymnasium's CartPole computes both once in ``__init__``, so changing ``masspole`` or
    ``length`` afterwards silently keeps the old values. Here they are read-only properties
    (gymnasium's ``__init__`` may still assign the value they already have).
    """

    masspole: Any
    masscart: Any
    length: Any

    @property
    def total_mass(self) -> Any:
        """Cart mass plus pole mass."""
        return self.masspole + self.masscart

    @total_mass.setter
    def total_mass(self, value: Any) -> None:
        if not np.allclose(value, self.total_mass):
            raise AttributeError("total_mass is derived; set masspole or masscart instead")

    @property
    def polemass_length(self) -> Any:
        """Pole mass times half the pole length."""
        return self.masspole * self.length

    @polemass_length.setter
    def polemass_length(self, value: Any) -> None:
        if not np.allclose(value, self.polemass_length):
            raise AttributeError("polemass_length is derived; set masspole or length instead")


class CartPoleFamilyEnv(_DerivedCartPoleMasses, CartPoleEnv):
    """CartPole-v1 with the physics of a `CartPoleTask` (Lessons 04 and 05).

    ## Description

    Gymnasium's cart-pole (Barto, Sutton and Anderson 1983): a pole is hinged on a cart that
    moves along a frictionless track, and the agent pushes the cart left or right to keep the
    pole upright. Each task of the family changes the physics (pole length, pole mass, cart mass,
    gravity, force) or swaps the meaning of the two actions (``mirrored``). With the default task
    the environment is CartPole-v1: the same seed and the same actions give identical
    observations, rewards and episode ends.

    ## Action Space

    ``Discrete(2)``: 0 pushes the cart left, 1 pushes it right (the other way round when the task
    is ``mirrored``), with force ``task.force_mag``.

    ## Observation Space

    ``Box(4,)`` float32: cart position, cart velocity, pole angle (rad), pole angular velocity,
    with the bounds of CartPole-v1.

    ## Rewards

    +1 for every step, including the terminating one.

    ## Starting State

    Every observation uniform in ``(-0.05, 0.05)``; ``reset(options={"low": ..., "high": ...})``
    changes the bounds for that reset.

    ## Episode End

    1. Termination: the pole angle leaves ``(-12°, 12°)``.
    2. Termination: the cart position leaves ``(-2.4, 2.4)``.
    3. Truncation: 500 steps, from the ``TimeLimit`` that ``gym.make("course/CartPoleFamily-v0")``
       adds (the env itself never truncates).

    ## Arguments

    - ``task``: the `CartPoleTask`; None means the default task.
    - ``render_mode``: ``"human"``, ``"rgb_array"`` or None, as in CartPole-v1 (needs pygame).

    ```python
    >>> import gymnasium as gym
    >>> import course.envs
    >>> env = gym.make("course/CartPoleFamily-v0", task=course.envs.CARTPOLE_TASKS["long_pole"])
    >>> env.unwrapped.task.name
    'length=1'
    >>> env.unwrapped.polemass_length
    0.1

    ```

    The physics lives in the attributes ``length``, ``masspole``, ``masscart``, ``gravity`` and
    ``force_mag`` of ``env.unwrapped`` (setting them on a wrapper does nothing), and
    ``total_mass`` and ``polemass_length`` always follow them. Change task with `set_task`.
    """

    def __init__(self, task: CartPoleTask | None = None, render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode)
        self.mirrored = False
        self.set_task(CartPoleTask() if task is None else task)

    @property
    def task(self) -> CartPoleTask:
        """The task the current physics describes."""
        return CartPoleTask(
            length=self.length,
            masspole=self.masspole,
            masscart=self.masscart,
            gravity=self.gravity,
            force_mag=self.force_mag,
            mirrored=self.mirrored,
        )

    def set_task(self, task: CartPoleTask) -> None:
        """Switches the physics to ``task``; takes effect from the next step.

        Args:
            task: The new task.
        """
        if not isinstance(task, CartPoleTask):
            raise TypeError(f"task must be a CartPoleTask, got {type(task).__name__}")
        self.length = task.length
        self.masspole = task.masspole
        self.masscart = task.masscart
        self.gravity = task.gravity
        self.force_mag = task.force_mag
        self.mirrored = task.mirrored

    def step(self, action: int | np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Steps the physics; a mirrored task swaps the two actions first."""
        if self.mirrored and self.action_space.contains(action):
            action = 1 - action
        return super().step(action)


class CartPoleFamilyVectorEnv(_DerivedCartPoleMasses, CartPoleVectorEnv):
    """Many CartPole tasks and seeds stepped in one numpy call (Lessons 04 and 05).

    ## Description

    The batched form of `CartPoleFamilyEnv`, built on gymnasium's ``CartPoleVectorEnv``: the
    physics parameters are arrays with one entry per sub-env, so one vectorised step advances
    every task of the family at once. Sub-envs are grouped by task: sub-env ``i`` runs task
    ``task_ids[i]``, and ``tasks[task_ids[i]]`` is its `CartPoleTask`.

    ## Action Space

    ``MultiDiscrete([2] * num_envs)``: one action per sub-env, with the meaning of
    `CartPoleFamilyEnv` (swapped in mirrored sub-envs). A numpy array, list or tensor (on any
    device) of integers.

    ## Observation Space

    ``Box((num_envs, 4))`` float32, rows as in `CartPoleFamilyEnv`.

    ## Rewards

    +1 per step for every sub-env, float32; 0 on the step that autoresets a sub-env (next-step
    mode).

    ## Starting State

    As `CartPoleFamilyEnv`. ``reset(seed=s)`` seeds sub-env ``i`` with ``s + i`` (or takes a
    list of one seed per sub-env), and sub-env ``i`` then draws its reset states from its own
    stream, exactly as ``CartPoleFamilyEnv.reset(seed=s + i)`` followed by plain ``reset()``
    calls would. Bounds passed through ``options`` stay in force for the autoresets that follow,
    as in gymnasium's ``CartPoleVectorEnv``.

    ## Episode End

    Termination as in `CartPoleFamilyEnv`; truncation after ``max_episode_steps`` steps (500, as
    CartPole-v1). Both flags are set when the last allowed step also terminates, as with
    gymnasium's ``TimeLimit``. Ended sub-envs autoreset, see the module docstring: next-step mode
    by default (the step after an end is not a transition), same-step mode on request.

    ## Arguments

    - ``tasks``: the K tasks of the family.
    - ``envs_per_task``: sub-envs per task (independent seeds); ``num_envs = K * envs_per_task``.
    - ``max_episode_steps``: truncation limit, 500 by default.
    - ``autoreset_mode``: ``AutoresetMode.NEXT_STEP`` (default) or ``AutoresetMode.SAME_STEP``.
    - ``render_mode``: ``"rgb_array"`` or None (needs pygame).
    """

    def __init__(
        self,
        tasks: Sequence[CartPoleTask],
        envs_per_task: int = 1,
        max_episode_steps: int = 500,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
    ) -> None:
        tasks = tuple(tasks)
        if not tasks or not all(isinstance(t, CartPoleTask) for t in tasks):
            raise ValueError("tasks must be a non-empty sequence of CartPoleTask")
        if envs_per_task < 1:
            raise ValueError(f"envs_per_task is {envs_per_task}; it must be at least 1")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps is {max_episode_steps}; it must be at least 1")
        super().__init__(
            num_envs=len(tasks) * envs_per_task,
            max_episode_steps=max_episode_steps,
            render_mode=render_mode,
        )
        self.autoreset_mode = _parse_autoreset_mode(autoreset_mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.tasks = tasks
        self.envs_per_task = envs_per_task
        self.task_ids = np.repeat(np.arange(len(tasks), dtype=np.int64), envs_per_task)
        per_env = [tasks[k] for k in self.task_ids]
        self.length = np.array([t.length for t in per_env], dtype=np.float64)
        self.masspole = np.array([t.masspole for t in per_env], dtype=np.float64)
        self.masscart = np.array([t.masscart for t in per_env], dtype=np.float64)
        self.gravity = np.array([t.gravity for t in per_env], dtype=np.float64)
        self.force_mag = np.array([t.force_mag for t in per_env], dtype=np.float64)
        self.mirrored = np.array([t.mirrored for t in per_env], dtype=np.bool_)
        self._streams: _UniformStreams | None = None
        self._renderers: dict[int, CartPoleFamilyEnv] = {}

    def reset(
        self,
        *,
        seed: int | Sequence[int] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Resets every sub-env.

        Args:
            seed: None (continue each sub-env's stream; fresh entropy the first time), an int
                ``s`` (sub-env ``i`` gets ``s + i``) or one seed per sub-env.
            options: Optional ``{"low": float, "high": float}`` bounds of the reset states.

        Returns:
            ``(obs[num_envs, 4] float32, {})``.
        """
        if seed is not None or self._streams is None:
            # One draw per episode: a block covers 32 episodes.
            self._streams = _reseeded_streams(self, seed, 4, block=32)
        self.low, self.high = classic_utils.maybe_parse_reset_bounds(options, -0.05, 0.05)
        all_envs = np.arange(self.num_envs)
        self.state = self._streams.uniform(all_envs, self.low, self.high).T.copy()
        self.steps = np.zeros(self.num_envs, dtype=np.int32)
        self.prev_done = np.zeros(self.num_envs, dtype=np.bool_)
        return self.state.T.astype(np.float32), {}

    def step(
        self, action: np.ndarray | torch.Tensor | Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Steps every sub-env once.

        Args:
            action: ``[num_envs]`` integers in {0, 1}.

        Returns:
            ``(obs[num_envs, 4] float32, reward[num_envs] float32, terminated[num_envs] bool,
            truncated[num_envs] bool, info)``; ``info`` holds ``final_obs`` and ``_final_obs``
            in same-step mode when a sub-env ended, and is empty otherwise.
        """
        if self.state is None or self._streams is None:
            raise RuntimeError("call reset() before step()")
        action = _vector_actions(action, self.num_envs)
        push_right = action == 1
        if not np.all(push_right | (action == 0)):
            raise ValueError(f"actions must be 0 or 1, got {np.unique(action)}")
        push_right ^= self.mirrored

        # Gymnasium's equations, unchanged, with one parameter value per sub-env.
        x, x_dot, theta, theta_dot = self.state
        total_mass = self.total_mass
        polemass_length = self.polemass_length
        force = np.where(push_right, self.force_mag, -self.force_mag)
        costheta = np.cos(theta)
        sintheta = np.sin(theta)
        temp = (force + polemass_length * np.square(theta_dot) * sintheta) / total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / total_mass)
        )
        xacc = temp - polemass_length * thetaacc * costheta / total_mass
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        self.state = np.stack((x, x_dot, theta, theta_dot))

        terminated = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold_radians)
            | (theta > self.theta_threshold_radians)
        )
        self.steps += 1
        truncated = self.steps >= self.max_episode_steps
        reward = np.ones(self.num_envs, dtype=np.float32)
        info: dict[str, Any] = {}

        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            reset = np.flatnonzero(self.prev_done)
            if reset.size:
                self.state[:, reset] = self._streams.uniform(reset, self.low, self.high).T
                self.steps[reset] = 0
                reward[reset] = 0.0
                terminated[reset] = False
                truncated[reset] = False
            self.prev_done = terminated | truncated
            return self.state.T.astype(np.float32), reward, terminated, truncated, info

        done = terminated | truncated
        obs = self.state.T.astype(np.float32)
        if done.any():
            reset = np.flatnonzero(done)
            info["final_obs"] = obs.copy()
            info["_final_obs"] = done
            self.state[:, reset] = self._streams.uniform(reset, self.low, self.high).T
            self.steps[reset] = 0
            obs[reset] = self.state[:, reset].T
        return obs, reward, terminated, truncated, info

    def render(self) -> list[np.ndarray] | None:
        """One RGB frame per sub-env (``render_mode="rgb_array"``, needs pygame)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        if self.state is None:
            raise RuntimeError("call reset() before render()")
        frames = []
        for i, k in enumerate(self.task_ids):
            if k not in self._renderers:
                self._renderers[k] = CartPoleFamilyEnv(self.tasks[k], render_mode="rgb_array")
            renderer = self._renderers[k]
            renderer.state = self.state[:, i]
            frames.append(renderer.render())
        return frames

    def close(self, **kwargs: Any) -> None:
        """Closes the renderers."""
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()


def make_cartpole_vec(
    tasks: Sequence[CartPoleTask],
    envs_per_task: int = 1,
    *,
    max_episode_steps: int = 500,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    render_mode: str | None = None,
) -> CartPoleFamilyVectorEnv:
    """Builds the batched CartPole family: ``envs_per_task`` sub-envs for each task.

    Args:
        tasks: The K tasks.
        envs_per_task: Independent sub-envs per task; ``num_envs = K * envs_per_task``.
        max_episode_steps: Truncation limit (500 as CartPole-v1).
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` (gymnasium's default for CartPole) or
            ``AutoresetMode.SAME_STEP``; see the module docstring.
        render_mode: ``"rgb_array"`` or None.

    Returns:
        The vector env; ``env.task_ids[num_envs]`` (int64) gives each sub-env's task index.

    Example:
        >>> envs = make_cartpole_vec([CARTPOLE_TASKS["default"], CARTPOLE_TASKS["mirrored"]], 3)
        >>> envs.task_ids
        array([0, 0, 0, 1, 1, 1])
        >>> obs, info = envs.reset(seed=0)
        >>> obs.shape
        (6, 4)
    """
    return CartPoleFamilyVectorEnv(
        tasks,
        envs_per_task=envs_per_task,
        max_episode_steps=max_episode_steps,
        autoreset_mode=autoreset_mode,
        render_mode=render_mode,
    )


def _cartpole_vector_entry_point(
    num_envs: int = 1,
    max_episode_steps: int = 500,
    render_mode: str | None = None,
    task: CartPoleTask | None = None,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
) -> CartPoleFamilyVectorEnv:
    """``gym.make_vec("course/CartPoleFamily-v0", num_envs, task=...)``: one task, many seeds."""
    return CartPoleFamilyVectorEnv(
        [CartPoleTask() if task is None else task],
        envs_per_task=num_envs,
        max_episode_steps=max_episode_steps,
        autoreset_mode=autoreset_mode,
        render_mode=render_mode,
    )


# --- domain randomisation (Lesson 06) ----------------------------------------------------------

RANDOMISABLE: tuple[str, ...] = ("length", "masspole", "masscart", "gravity", "force_mag")
"""The physics parameters a :class:`CartPoleTaskDistribution` can draw."""


@dataclass(frozen=True)
class CartPoleTaskDistribution:
    """A distribution over CartPole tasks: some physics parameters uniform in ranges (Lesson 06).

    Attributes:
        ranges: ``(parameter, low, high)`` triples, each parameter one of :data:`RANDOMISABLE`,
            drawn uniformly in ``[low, high)`` (or log-uniformly, see ``log_uniform``).
        base: The task that supplies every parameter not in ``ranges``.
        log_uniform: Draw ``log(parameter)`` uniformly instead: as many tasks between 0.25
            and 0.5 as between 1 and 2.
    """

    ranges: tuple[tuple[str, float, float], ...] = (("length", 0.25, 1.0),)
    base: CartPoleTask = CartPoleTask()
    log_uniform: bool = False

    def __post_init__(self) -> None:
        if not self.ranges:
            raise ValueError("ranges is empty; give at least one (parameter, low, high)")
        names = [r[0] for r in self.ranges]
        for name, low, high in self.ranges:
            if name not in RANDOMISABLE:
                raise ValueError(f"cannot randomise {name!r}; use one of {RANDOMISABLE}")
            if not (0 < low <= high and math.isfinite(high)):
                raise ValueError(
                    f"range of {name} is ({low}, {high}); it needs 0 < low <= high < inf"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"ranges names a parameter twice: {names}")

    def task_from_unit(self, u: Sequence[float]) -> CartPoleTask:
        """The task at unit coordinates ``u`` (one number in ``[0, 1)`` per range)."""
        values = self.values_from_unit(np.asarray(u, dtype=np.float64)[None])
        return dataclasses.replace(self.base, **{k: float(v[0]) for k, v in values.items()})

    def values_from_unit(self, u: np.ndarray) -> dict[str, np.ndarray]:
        """``u[n, len(ranges)]`` in ``[0, 1)`` to ``{parameter: values[n]}``."""
        out = {}
        for j, (name, low, high) in enumerate(self.ranges):
            if self.log_uniform:
                out[name] = np.exp(np.log(low) + (np.log(high) - np.log(low)) * u[:, j])
            else:
                out[name] = low + (high - low) * u[:, j]
        return out


class CartPoleRandomisedVectorEnv(CartPoleFamilyVectorEnv):
    """Batched CartPole that draws a fresh task for each sub-env at every episode start.

    ## Description

    Domain randomisation (Tobin et al. 2017; Lesson 06): a `CartPoleFamilyVectorEnv` whose
    physics is not fixed per sub-env but drawn from a `CartPoleTaskDistribution` whenever a
    sub-env starts an episode (at ``reset`` and at every autoreset), so an agent trained on it
    never sees the same task twice. Within an episode the physics is constant.

    ## Action Space, Observation Space, Rewards, Starting State, Episode End

    As `CartPoleFamilyVectorEnv`. The start states use the same per-sub-env streams, so with a
    distribution of a single point (``low == high``) this env reproduces
    `CartPoleFamilyVectorEnv` on that task step for step.

    ## Arguments

    - ``distribution``: the `CartPoleTaskDistribution`.
    - ``num_envs``: sub-envs.
    - ``max_episode_steps``, ``autoreset_mode``: as `CartPoleFamilyVectorEnv`.

    The physics of every sub-env's current episode is in the arrays ``length``, ``masspole``,
    ... (one entry per sub-env); `current_tasks` lists it as `CartPoleTask` objects. The task
    draws come from their own per-sub-env streams, seeded from ``reset(seed=...)`` like the
    start states but independent of them. Rendering draws every sub-env with the base task's
    pole.
    """

    def __init__(
        self,
        distribution: CartPoleTaskDistribution,
        num_envs: int = 1,
        max_episode_steps: int = 500,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    ) -> None:
        if not isinstance(distribution, CartPoleTaskDistribution):
            raise TypeError(
                "distribution must be a CartPoleTaskDistribution, got "
                f"{type(distribution).__name__}"
            )
        super().__init__(
            [distribution.base],
            envs_per_task=num_envs,
            max_episode_steps=max_episode_steps,
            autoreset_mode=autoreset_mode,
        )
        self.distribution = distribution
        self._task_streams: _UniformStreams | None = None

    def current_tasks(self) -> list[CartPoleTask]:
        """The task of every sub-env's current episode."""
        return [
            CartPoleTask(
                length=float(self.length[i]),
                masspole=float(self.masspole[i]),
                masscart=float(self.masscart[i]),
                gravity=float(self.gravity[i]),
                force_mag=float(self.force_mag[i]),
                mirrored=bool(self.mirrored[i]),
            )
            for i in range(self.num_envs)
        ]

    def _draw_tasks(self, idx: np.ndarray) -> None:
        assert self._task_streams is not None
        u = self._task_streams.uniform(idx, 0.0, 1.0)
        for name, values in self.distribution.values_from_unit(u).items():
            getattr(self, name)[idx] = values

    def reset(
        self,
        *,
        seed: int | Sequence[int] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Resets every sub-env and draws a task for each (arguments as the family env)."""
        if seed is not None or self._task_streams is None:
            streams = _seed_streams(seed, self.num_envs)
            # independent of the start-state streams: derived seeds, not the same ones
            generators = [np.random.default_rng(g.integers(2**63)) for g in streams]
            self._task_streams = _UniformStreams(generators, len(self.distribution.ranges), 32)
        obs, info = super().reset(seed=seed, options=options)
        self._draw_tasks(np.arange(self.num_envs))
        return obs, info

    def step(
        self, action: np.ndarray | torch.Tensor | Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Steps every sub-env; a sub-env that starts a new episode gets a new task."""
        if self.autoreset_mode == AutoresetMode.NEXT_STEP and self.state is not None:
            starting = np.flatnonzero(self.prev_done)  # these sub-envs reset in this step
            if starting.size:
                self._draw_tasks(starting)
        obs, reward, terminated, truncated, info = super().step(action)
        if self.autoreset_mode == AutoresetMode.SAME_STEP:
            ended = np.flatnonzero(terminated | truncated)
            if ended.size:
                self._draw_tasks(ended)
        return obs, reward, terminated, truncated, info


def make_randomised_cartpole_vec(
    distribution: CartPoleTaskDistribution,
    num_envs: int = 1,
    *,
    max_episode_steps: int = 500,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
) -> CartPoleRandomisedVectorEnv:
    """Builds a `CartPoleRandomisedVectorEnv` (a ``make_env`` for ``train_dqn`` via a lambda).

    Example:
        >>> dist = CartPoleTaskDistribution((("length", 0.25, 1.0),))
        >>> envs = make_randomised_cartpole_vec(dist, 4)
        >>> obs, info = envs.reset(seed=0)
        >>> bool(((envs.length >= 0.25) & (envs.length < 1.0)).all())
        True
    """
    return CartPoleRandomisedVectorEnv(
        distribution,
        num_envs=num_envs,
        max_episode_steps=max_episode_steps,
        autoreset_mode=autoreset_mode,
    )


# ============================================================================================
# Grid-world family
# ============================================================================================

GRID_LAYOUT: tuple[str, ...] = (
    "G.....G",
    ".......",
    "..#.#..",
    "...S...",
    "..#.#..",
    ".......",
    "G.....G",
)
"""The default family layout: four goal cells in the corners, so neighbouring tasks agree on
half the moves and opposite corners disagree on all of them."""

GRID_OBS_MODES: tuple[str, ...] = ("onehot", "coords")


@dataclass(frozen=True)
class GridTask:
    """One task of a grid-world family: reach ``goal`` in ``layout`` (Lesson 04).

    The tasks of a family share the layout, the slip and the moves; they differ in which cell
    ends the episode with ``goal_reward``. The exact MDP of the task is `mdp`, built by
    `course.mdp.gridworld` (Lesson 01).

    Attributes:
        layout: Rows of the map: ``#`` wall, ``.`` floor, ``S`` start, ``X`` pit. ``G`` cells
            mark the family's goal cells (see `grid_tasks`); for this task they are floor,
            except ``goal``.
        goal: ``(row, col)`` of this task's goal: any cell that is not a wall, the start or a
            pit.
        slip: Probability that a move goes to one of the two sideways directions instead.
        step_reward: Reward of every move.
        goal_reward: Extra reward of the move that enters the goal.
        pit_reward: Extra reward of a move that enters a pit.
        gamma: Discount factor of the task's MDP.
        start: ``"S"`` to start every episode on the ``S`` cell, ``"uniform"`` to start on a
            uniformly random non-terminal cell (every cell is then visited, which helps a
            network learn Q everywhere).
    """

    layout: tuple[str, ...]
    goal: tuple[int, int]
    slip: float = 0.0
    step_reward: float = 0.0
    goal_reward: float = 1.0
    pit_reward: float = -1.0
    gamma: float = 0.9
    start: str = "S"

    def __post_init__(self) -> None:
        if isinstance(self.layout, str):
            raise TypeError("layout must be a sequence of strings, one per row, not one string")
        object.__setattr__(self, "layout", tuple(self.layout))
        object.__setattr__(self, "goal", (int(self.goal[0]), int(self.goal[1])))
        row, col = self.goal
        height, width = len(self.layout), len(self.layout[0]) if self.layout else 0
        if not (0 <= row < height and 0 <= col < width):
            raise ValueError(
                f"goal {self.goal} lies outside the {height}x{width} layout; pick a cell inside it"
            )
        if self.layout[row][col] in "#SX":
            raise ValueError(
                f"goal {self.goal} is a {self.layout[row][col]!r} cell; a goal must be floor "
                "('.' or 'G')"
            )
        if self.start not in ("S", "uniform"):
            raise ValueError(f"start is {self.start!r}; use 'S' or 'uniform'")

    @property
    def name(self) -> str:
        """A short readable name, e.g. ``"goal=(0,6)"``."""
        return f"goal=({self.goal[0]},{self.goal[1]})"

    @property
    def task_layout(self) -> tuple[str, ...]:
        """The layout with this task's goal as the only ``G``."""
        row, col = self.goal
        rows = [r.replace("G", ".") for r in self.layout]
        rows[row] = rows[row][:col] + "G" + rows[row][col + 1 :]
        return tuple(rows)

    def mdp(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> GridMDP:
        """The exact MDP of the task: the same dynamics, rewards and gamma as its envs.

        Args:
            dtype: Floating dtype of the tensors.
            device: Device of the tensors.

        Returns:
            A `course.mdp.GridMDP`; state ``s`` is the cell ``cells[s]``, and its observation
            is row ``s`` of the env's `observations()`.
        """
        mdp = gridworld(
            list(self.task_layout),
            slip=self.slip,
            step_reward=self.step_reward,
            goal_reward=self.goal_reward,
            pit_reward=self.pit_reward,
            gamma=self.gamma,
            dtype=dtype,
            device=device,
        )
        if self.start == "uniform":
            free = (~mdp.terminal).to(dtype)
            mdp = dataclasses.replace(mdp, initial=free / free.sum())
        return mdp


def grid_tasks(layout: Sequence[str] = GRID_LAYOUT, **kwargs: Any) -> tuple[GridTask, ...]:
    """The family of a layout: one `GridTask` per ``G`` cell, in reading order.

    Args:
        layout: Rows of the map, with one ``G`` per task.
        **kwargs: Other `GridTask` fields, shared by every task (``slip``, ``gamma``, ...).

    Returns:
        The tasks, ``tasks[k].goal`` being the k-th ``G`` cell.

    Example:
        >>> [task.name for task in grid_tasks()]
        ['goal=(0,0)', 'goal=(0,6)', 'goal=(6,0)', 'goal=(6,6)']
    """
    goals = [(i, j) for i, row in enumerate(layout) for j, ch in enumerate(row) if ch == "G"]
    if not goals:
        raise ValueError("layout has no 'G' cell; mark each task's goal with a 'G'")
    return tuple(GridTask(tuple(layout), goal, **kwargs) for goal in goals)


@dataclass(frozen=True)
class _GridTables:
    """A task's MDP as sampling tables: outcome ``j`` of ``(s, a)`` is state ``next_state[s, a,
    j]`` with reward ``reward[s, a, j]``, chosen as the number of ``cum_prob[s, a]`` entries at or
    below a uniform draw (padding entries hold ``cum_prob = 1`` and are never chosen)."""

    next_state: np.ndarray  # [S, A, J] int64
    cum_prob: np.ndarray  # [S, A, J] float64
    reward: np.ndarray  # [S, A, J] float64
    terminal: np.ndarray  # [S] bool
    initial_cum: np.ndarray  # [S] float64, last entry exactly 1


_GRID_MAX_OUTCOMES = 3  # the intended move and its two sideways slips


def _grid_tables(task: GridTask, mdp: GridMDP) -> _GridTables:
    P = mdp.P.numpy()
    n_states, n_actions, _ = P.shape
    layout = task.task_layout
    bonus = {"G": task.goal_reward, "X": task.pit_reward}
    entry_reward = np.array(
        [task.step_reward + bonus.get(layout[r][c], 0.0) for r, c in mdp.cells], dtype=np.float64
    )
    terminal = mdp.terminal.numpy().copy()
    next_state = np.zeros((n_states, n_actions, _GRID_MAX_OUTCOMES), dtype=np.int64)
    cum_prob = np.ones((n_states, n_actions, _GRID_MAX_OUTCOMES), dtype=np.float64)
    reward = np.zeros((n_states, n_actions, _GRID_MAX_OUTCOMES), dtype=np.float64)
    for s in range(n_states):
        for a in range(n_actions):
            support = np.flatnonzero(P[s, a])
            cum = np.cumsum(P[s, a, support])
            n = len(support)
            next_state[s, a, :n] = support
            next_state[s, a, n:] = support[-1]
            cum_prob[s, a, :n] = cum / cum[-1]
            reward[s, a, :n] = 0.0 if terminal[s] else entry_reward[support]
    initial_cum = np.cumsum(mdp.initial.numpy())
    return _GridTables(next_state, cum_prob, reward, terminal, initial_cum / initial_cum[-1])


def _grid_observation_table(task: GridTask, mdp: GridMDP, obs_mode: str) -> np.ndarray:
    """Observation of every state, ``[S, D]`` float32, in the MDP's state order."""
    cells = np.array(mdp.cells, dtype=np.float64)
    if obs_mode == "onehot":
        return np.eye(len(cells), dtype=np.float32)
    if obs_mode == "coords":
        height, width = len(task.layout), len(task.layout[0])
        scale = np.array([max(height - 1, 1), max(width - 1, 1)], dtype=np.float64)
        return (cells / scale).astype(np.float32)
    raise ValueError(f"obs_mode is {obs_mode!r}; use one of {GRID_OBS_MODES}")


class _GridObservations:
    """Observation <-> state index conversions shared by the single and batched grid envs."""

    _obs_table: np.ndarray

    def observations(self) -> np.ndarray:
        """The observation of every state, in the MDP's state order.

        Returns:
            ``[S, D]`` float32: feed it to a Q-network to get ``[S, A]`` values comparable
            with ``value_iteration(env.mdp())`` state by state.
        """
        return self._obs_table.copy()

    def state_to_obs(self, states: int | np.ndarray) -> np.ndarray:
        """Observations of state indices: ``[D]`` for an int, ``[N, D]`` for ``[N]``."""
        return self._obs_table[states].copy()

    def obs_to_state(self, obs: np.ndarray) -> int | np.ndarray:
        """State indices of observations: an int for ``[D]``, int64 ``[N]`` for ``[N, D]``."""
        obs = np.asarray(obs, dtype=np.float32)
        distance = np.abs(obs[..., None, :] - self._obs_table).sum(-1)
        states = distance.argmin(-1)
        return int(states) if states.ndim == 0 else states.astype(np.int64)


class GridFamilyEnv(_GridObservations, gym.Env[np.ndarray, int]):
    """A grid world whose task is one goal cell of a shared layout (Lesson 04).

    ## Description

    The agent walks on the grid of a `GridTask` until it enters the goal (or a pit). Every task
    of a family shares the layout and the moves and differs only in its goal, so a network that
    learned where the walls are can reuse it for every goal. The env is the `TabularMDP` of
    `mdp()` exactly: the same states, transition probabilities, rewards and terminal states.

    ## Action Space

    ``Discrete(4)``, in the order of `course.mdp.gridworld`: 0 up, 1 right, 2 down, 3 left. With
    ``slip > 0`` a move goes to each sideways direction with probability ``slip / 2``; a move
    into a wall or off the grid stays in place.

    ## Observation Space

    ``Box(0, 1, (D,))`` float32, chosen by ``obs_mode``:

    - ``"onehot"`` (default): one-hot of the state index, ``D = S``. A small MLP fits every
      task's Q* on it almost exactly, since each cell has its own input weight; the sharing
      between cells and tasks happens in the hidden layers.
    - ``"coords"``: ``(row / (height - 1), col / (width - 1))``, ``D = 2``. Neighbouring cells
      get similar inputs, so a network generalises to cells it rarely visits, but it must learn
      where the walls cut the value surface, which takes more capacity and steps.

    Measured: a 64-64 ReLU MLP with one output block per task, regressed by Adam (lr 3e-3) on
    the Q* of the four default tasks, reaches a largest error of 0.003-0.006 after 1,000 steps
    on ``"onehot"`` (greedy-optimal in every cell), against 0.06-0.07 on ``"coords"``
    (greedy-optimal in 93-94% of the cells; 96% after 3,000 steps).

    `observations()` gives the observation of every state in state order; `obs_to_state` and
    `state_to_obs` convert between the two, so a learned Q can be compared cell by cell with Q*.

    ## Rewards

    ``step_reward`` per move, plus ``goal_reward`` for the move that enters the goal and
    ``pit_reward`` for one that enters a pit (defaults 0, 1, -1).

    ## Starting State

    The ``S`` cell, or a uniformly random non-terminal cell with ``start="uniform"``.

    ## Episode End

    1. Termination: the agent enters the goal or a pit.
    2. Truncation: 100 steps, from the ``TimeLimit`` that ``gym.make("course/GridFamily-v0")``
       adds (the env itself never truncates).

    ## Arguments

    - ``layout``, ``goal``, ``slip``, ``step_reward``, ``goal_reward``, ``pit_reward``,
      ``gamma``, ``start``: the `GridTask` (``goal=None`` takes the first ``G`` of the layout).
    - ``obs_mode``: ``"onehot"`` or ``"coords"``.
    - ``render_mode``: ``"ansi"`` (the grid as text, ``@`` for the agent) or None.

    ```python
    >>> import gymnasium as gym
    >>> import course.envs
    >>> env = gym.make("course/GridFamily-v0", goal=(6, 6))
    >>> obs, info = env.reset(seed=0)
    >>> env.unwrapped.obs_to_state(obs) == env.unwrapped.mdp().state(3, 3)
    True

    ```
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        layout: Sequence[str] = GRID_LAYOUT,
        goal: tuple[int, int] | None = None,
        slip: float = 0.0,
        step_reward: float = 0.0,
        goal_reward: float = 1.0,
        pit_reward: float = -1.0,
        gamma: float = 0.9,
        start: str = "S",
        obs_mode: str = "onehot",
        render_mode: str | None = None,
    ) -> None:
        if goal is None:
            goal = grid_tasks(layout)[0].goal
        self.task = GridTask(
            tuple(layout), goal, slip, step_reward, goal_reward, pit_reward, gamma, start
        )
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode is {render_mode!r}; use None or 'ansi'")
        self.render_mode = render_mode
        self.obs_mode = obs_mode
        mdp = self.task.mdp()
        self._obs_table = _grid_observation_table(self.task, mdp, obs_mode)
        self._tables = _grid_tables(self.task, mdp)
        self._cells = mdp.cells
        self.action_space = gym.spaces.Discrete(4)
        self.observation_space = gym.spaces.Box(
            0.0, 1.0, shape=(self._obs_table.shape[1],), dtype=np.float32
        )
        self.state: int | None = None

    @classmethod
    def from_task(
        cls, task: GridTask, obs_mode: str = "onehot", render_mode: str | None = None
    ) -> GridFamilyEnv:
        """Builds the env of a `GridTask`."""
        fields_ = {f.name: getattr(task, f.name) for f in fields(task)}
        return cls(**fields_, obs_mode=obs_mode, render_mode=render_mode)

    def mdp(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> GridMDP:
        """The exact `course.mdp.GridMDP` of this env's task (see `GridTask.mdp`)."""
        return self.task.mdp(dtype=dtype, device=device)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Starts an episode; one uniform draw picks the start cell.

        Returns:
            ``(obs[D] float32, {})``.
        """
        super().reset(seed=seed)
        u = self.np_random.random()
        self.state = int(np.count_nonzero(self._tables.initial_cum <= u))
        return self._obs_table[self.state].copy(), {}

    def step(self, action: int | np.integer) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Moves once; one uniform draw picks the outcome (also without slip)."""
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action is {action!r}; use 0 (up), 1 (right), 2 (down) or 3 (left)")
        u = self.np_random.random()
        tables, s, a = self._tables, self.state, int(action)
        j = int(np.count_nonzero(tables.cum_prob[s, a] <= u))
        self.state = int(tables.next_state[s, a, j])
        terminated = bool(tables.terminal[self.state])
        reward = float(tables.reward[s, a, j])
        return self._obs_table[self.state].copy(), reward, terminated, False, {}

    def render(self) -> str | None:
        """The grid as text (``render_mode="ansi"``): ``@`` marks the agent."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi'")
            return None
        rows = [list(row) for row in self.task.task_layout]
        if self.state is not None:
            row, col = self._cells[self.state]
            rows[row][col] = "@"
        return "\n".join("".join(row) for row in rows) + "\n"


class GridFamilyVectorEnv(_GridObservations, gym.vector.VectorEnv):
    """Many grid tasks and seeds stepped in one numpy call (Lesson 04).

    ## Description

    The batched form of `GridFamilyEnv`: the tasks' MDPs are stacked into tables ``[K, S, A,
    3]`` and every sub-env moves by one gather. Sub-env ``i`` runs task ``task_ids[i]``. Every
    task must share the layout (so the states and observations agree); slip, rewards, gamma and
    start may differ.

    ## Action Space

    ``MultiDiscrete([4] * num_envs)``, with the meaning of `GridFamilyEnv`: a numpy array, list
    or tensor (on any device) of integers.

    ## Observation Space

    ``Box(0, 1, (num_envs, D))`` float32, rows as in `GridFamilyEnv` with the same ``obs_mode``.

    ## Rewards

    As `GridFamilyEnv`, float32; 0 on the step that autoresets a sub-env (next-step mode).

    ## Starting State

    As `GridFamilyEnv`. ``reset(seed=s)`` seeds sub-env ``i`` with ``s + i`` (or takes one seed
    per sub-env); each sub-env then consumes its own stream exactly as ``GridFamilyEnv`` does
    (one uniform draw per reset and per step), so it reproduces a single env reset with
    ``seed + i`` step for step, across episode ends.

    ## Episode End

    Termination as in `GridFamilyEnv`; truncation after ``max_episode_steps`` (100). Ended
    sub-envs autoreset as described in the module docstring: next-step mode by default,
    same-step mode on request.

    ## Arguments

    - ``tasks``: the K tasks, all on the same layout.
    - ``envs_per_task``: sub-envs per task; ``num_envs = K * envs_per_task``.
    - ``max_episode_steps``: truncation limit.
    - ``autoreset_mode``: ``AutoresetMode.NEXT_STEP`` (default) or ``AutoresetMode.SAME_STEP``.
    - ``obs_mode``: ``"onehot"`` or ``"coords"``.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        tasks: Sequence[GridTask],
        envs_per_task: int = 1,
        max_episode_steps: int = 100,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        obs_mode: str = "onehot",
    ) -> None:
        tasks = tuple(tasks)
        if not tasks or not all(isinstance(t, GridTask) for t in tasks):
            raise ValueError("tasks must be a non-empty sequence of GridTask")
        if any(t.layout != tasks[0].layout for t in tasks):
            raise ValueError("every task of a batched grid family must have the same layout")
        if envs_per_task < 1:
            raise ValueError(f"envs_per_task is {envs_per_task}; it must be at least 1")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps is {max_episode_steps}; it must be at least 1")
        self.autoreset_mode = _parse_autoreset_mode(autoreset_mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.tasks = tasks
        self.envs_per_task = envs_per_task
        self.num_envs = len(tasks) * envs_per_task
        self.max_episode_steps = max_episode_steps
        self.obs_mode = obs_mode
        self.render_mode = None
        self.task_ids = np.repeat(np.arange(len(tasks), dtype=np.int64), envs_per_task)

        # Each distinct task is built once: a population repeats the same few tasks per agent.
        mdps = {t: t.mdp() for t in dict.fromkeys(tasks)}
        built = {t: _grid_tables(t, m) for t, m in mdps.items()}
        tables = [built[t] for t in tasks]
        self._next_state = np.stack([t.next_state for t in tables])
        self._cum_prob = np.stack([t.cum_prob for t in tables])
        self._reward = np.stack([t.reward for t in tables])
        self._terminal = np.stack([t.terminal for t in tables])
        self._initial_cum = np.stack([t.initial_cum for t in tables])
        self._obs_table = _grid_observation_table(tasks[0], mdps[tasks[0]], obs_mode)

        self.single_action_space = gym.spaces.Discrete(4)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = gym.spaces.Box(
            0.0, 1.0, shape=(self._obs_table.shape[1],), dtype=np.float32
        )
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, self.num_envs
        )
        self.state: np.ndarray | None = None
        self.steps = np.zeros(self.num_envs, dtype=np.int64)
        self.prev_done = np.zeros(self.num_envs, dtype=np.bool_)
        self._streams: _UniformStreams | None = None

    def mdp(
        self,
        task: int = 0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> GridMDP:
        """The exact `course.mdp.GridMDP` of task index ``task`` (see `GridTask.mdp`)."""
        return self.tasks[task].mdp(dtype=dtype, device=device)

    def _draw(self, idx: np.ndarray) -> np.ndarray:
        assert self._streams is not None
        return self._streams.uniform(idx, 0.0, 1.0)[:, 0]

    def _start_states(self, idx: np.ndarray, u: np.ndarray) -> np.ndarray:
        return (self._initial_cum[self.task_ids[idx]] <= u[:, None]).sum(1)

    def reset(
        self,
        *,
        seed: int | Sequence[int] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Resets every sub-env.

        Args:
            seed: None (continue each sub-env's stream; fresh entropy the first time), an int
                ``s`` (sub-env ``i`` gets ``s + i``) or one seed per sub-env.
            options: Unused.

        Returns:
            ``(obs[num_envs, D] float32, {})``.
        """
        if seed is not None or self._streams is None:
            # One draw per step: a block covers 256 steps.
            self._streams = _reseeded_streams(self, seed, 1, block=256)
        all_envs = np.arange(self.num_envs)
        self.state = self._start_states(all_envs, self._draw(all_envs))
        self.steps = np.zeros(self.num_envs, dtype=np.int64)
        self.prev_done = np.zeros(self.num_envs, dtype=np.bool_)
        return self._obs_table[self.state], {}

    def step(
        self, action: np.ndarray | torch.Tensor | Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Moves every sub-env once.

        Args:
            action: ``[num_envs]`` integers in {0, 1, 2, 3}.

        Returns:
            ``(obs[num_envs, D] float32, reward[num_envs] float32, terminated[num_envs] bool,
            truncated[num_envs] bool, info)``; ``info`` holds ``final_obs`` and ``_final_obs``
            in same-step mode when a sub-env ended, and is empty otherwise.
        """
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        action = _vector_actions(action, self.num_envs)
        if not np.all((action >= 0) & (action < 4)) or action.dtype.kind not in "iu":
            raise ValueError(f"actions must be integers in 0..3, got {np.unique(action)}")

        all_envs = np.arange(self.num_envs)
        u = self._draw(all_envs)
        k, s = self.task_ids, self.state
        j = (self._cum_prob[k, s, action] <= u[:, None]).sum(1)
        next_state = self._next_state[k, s, action, j]
        reward = self._reward[k, s, action, j].astype(np.float32)
        terminated = self._terminal[k, next_state]
        self.steps += 1
        truncated = self.steps >= self.max_episode_steps
        info: dict[str, Any] = {}

        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            reset = np.flatnonzero(self.prev_done)
            if reset.size:
                next_state[reset] = self._start_states(reset, u[reset])
                self.steps[reset] = 0
                reward[reset] = 0.0
                terminated[reset] = False
                truncated[reset] = False
            self.state = next_state
            self.prev_done = terminated | truncated
            return self._obs_table[next_state], reward, terminated, truncated, info

        done = terminated | truncated
        if done.any():
            reset = np.flatnonzero(done)
            info["final_obs"] = self._obs_table[next_state]
            info["_final_obs"] = done
            next_state[reset] = self._start_states(reset, self._draw(reset))
            self.steps[reset] = 0
        self.state = next_state
        return self._obs_table[next_state], reward, terminated, truncated, info


def make_grid_vec(
    tasks: Sequence[GridTask],
    envs_per_task: int = 1,
    *,
    max_episode_steps: int = 100,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    obs_mode: str = "onehot",
) -> GridFamilyVectorEnv:
    """Builds the batched grid family: ``envs_per_task`` sub-envs for each task.

    Args:
        tasks: The K tasks, all on one layout (e.g. ``grid_tasks()``).
        envs_per_task: Independent sub-envs per task; ``num_envs = K * envs_per_task``.
        max_episode_steps: Truncation limit.
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` or ``AutoresetMode.SAME_STEP``; see the
            module docstring.
        obs_mode: ``"onehot"`` or ``"coords"`` (see `GridFamilyEnv`).

    Returns:
        The vector env; ``env.task_ids[num_envs]`` (int64) gives each sub-env's task index.

    Example:
        >>> envs = make_grid_vec(grid_tasks(), envs_per_task=2)
        >>> envs.task_ids
        array([0, 0, 1, 1, 2, 2, 3, 3])
        >>> obs, info = envs.reset(seed=0)
        >>> obs.shape, envs.observations().shape
        ((8, 45), (45, 45))
    """
    return GridFamilyVectorEnv(
        tasks,
        envs_per_task=envs_per_task,
        max_episode_steps=max_episode_steps,
        autoreset_mode=autoreset_mode,
        obs_mode=obs_mode,
    )


def _grid_vector_entry_point(
    num_envs: int = 1,
    max_episode_steps: int = 100,
    render_mode: str | None = None,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    obs_mode: str = "onehot",
    layout: Sequence[str] = GRID_LAYOUT,
    goal: tuple[int, int] | None = None,
    **task_kwargs: Any,
) -> GridFamilyVectorEnv:
    """``gym.make_vec("course/GridFamily-v0", num_envs, goal=...)``: one task, many seeds."""
    if render_mode is not None:
        raise ValueError("the batched grid family does not render; pass render_mode=None")
    goal = grid_tasks(layout)[0].goal if goal is None else goal
    return GridFamilyVectorEnv(
        [GridTask(tuple(layout), goal, **task_kwargs)],
        envs_per_task=num_envs,
        max_episode_steps=max_episode_steps,
        autoreset_mode=autoreset_mode,
        obs_mode=obs_mode,
    )


# ============================================================================================
# Registration
# ============================================================================================


def _register(env_id: str, **kwargs: Any) -> None:
    # Importing twice (or reloading the module) must not trigger gymnasium's override warning.
    if env_id not in gym.registry:
        gym.register(id=env_id, **kwargs)


_register(
    "course/CartPoleFamily-v0",
    entry_point="course.envs:CartPoleFamilyEnv",
    vector_entry_point="course.envs:_cartpole_vector_entry_point",
    max_episode_steps=500,
    reward_threshold=475.0,
)
_register(
    "course/GridFamily-v0",
    entry_point="course.envs:GridFamilyEnv",
    vector_entry_point="course.envs:_grid_vector_entry_point",
    max_episode_steps=100,
)
