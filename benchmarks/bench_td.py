"""Tabular TD control (Lesson 02): the figures the lesson quotes, at larger budgets, and timings.

Run: ``python benchmarks/bench_td.py [--seeds 10] [--grid-steps 10000] [--cliff-steps 5000]``

Prints, over ``--seeds`` seeds with 95% Student-t intervals, and the CPU seconds of each run:

- on Lesson 01's grid world (played through ``course/GridFamily-v0`` with exploring starts):
  Q-learning's largest error to the exact Q* after ``--grid-steps`` steps, for the lesson's
  decaying step size (``1 / n^0.7``) and for constant step sizes, with paired verdicts;
- on CliffWalking-v1: SARSA against Q-learning (epsilon 0.1, alpha 0.5) after each budget of
  ``--cliff-steps``: the return per episode while learning, the exact value of the learned
  epsilon-greedy policy, how many greedy walks reach the goal, against the exact values of the
  edge path and of the best exploring (safe) path;
- the steps per second of a one-env Python loop with the graded update (the student's loop)
  and of `course.td.td_control` over ``--seeds`` sub-envs.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

import course.envs  # noqa: F401  (registers course/GridFamily-v0)
from course import td
from course.envs import GridFamilyVectorEnv, GridTask
from course.evaluation import compare, mean_ci
from course.mdp import from_gymnasium, value_iteration

GRID = dict(
    layout=("S...#", ".#...", "...XG"),
    goal=(2, 4),
    slip=0.1,
    step_reward=-1.0,
    goal_reward=0.0,
    pit_reward=-10.0,
    gamma=0.95,
    start="uniform",
)
EPSILON = 0.1


def show(ci, fmt: str = ".3f") -> str:
    return f"{ci.estimate:{fmt}} [{ci.low:{fmt}}, {ci.high:{fmt}}]"


def grid_errors(seeds: int, steps: int, alpha: float, decay: float) -> tuple[np.ndarray, float]:
    """Final largest errors ``[seeds]`` of Q-learning on the grid, and the CPU seconds."""
    grid = GridTask(**GRID).mdp()
    envs = GridFamilyVectorEnv(
        [GridTask(**GRID)], envs_per_task=seeds, autoreset_mode=AutoresetMode.SAME_STEP
    )
    start = time.process_time()
    run = td.td_control(
        envs,
        "q_learning",
        steps,
        alpha=alpha,
        alpha_decay=decay,
        gamma=0.95,
        epsilon=0.5,
        seed=0,
        n_states=grid.n_states,
        to_state=lambda obs: obs.argmax(-1),
        q_star=value_iteration(grid)[1],
        terminal=grid.terminal,
        eval_every=steps,
    )
    return run.max_error[:, -1], time.process_time() - start


def bench_grid(seeds: int, steps: int) -> None:
    print(f"Lesson 01's grid world, Q-learning, epsilon 0.5, {steps:,} steps, {seeds} seeds:")
    arms = {"alpha = 1 / n^0.7": (1.0, 0.7), "alpha = 0.1": (0.1, 0.0), "alpha = 0.5": (0.5, 0.0)}
    errors = {}
    for name, (alpha, decay) in arms.items():
        errors[name], seconds = grid_errors(seeds, steps, alpha, decay)
        print(f"  {name:>18}: max |Q - Q*| {show(mean_ci(errors[name]))} ({seconds:.1f} s CPU)")
    lesson = "alpha = 1 / n^0.7"
    for name in arms:
        if name != lesson:
            print(
                "  ",
                compare(errors[lesson], errors[name], names=(lesson, name), higher_is_better=False),
            )


def bench_cliff(seeds: int, budgets: list[int]) -> None:
    cliff = from_gymnasium(gym.make("CliffWalking-v1"), gamma=1.0)
    edge, safe = value_iteration(cliff)[1], td.epsilon_soft_optimum(cliff, EPSILON)
    for name, Q in (("edge", edge), ("safe", safe)):
        value = td.expected_return(cliff, td.epsilon_greedy_policy(Q, EPSILON))
        print(
            f"CliffWalking, exact: {name} path {td.greedy_return(cliff, Q):.0f} greedy, "
            f"{value:.1f} exploring"
        )
    for steps in budgets:
        print(f"CliffWalking, epsilon {EPSILON}, alpha 0.5, {steps:,} steps, {seeds} seeds:")
        late, behaviour = {}, {}
        for method in td.METHODS:
            envs = gym.make_vec(
                "CliffWalking-v1",
                num_envs=seeds,
                vectorization_mode="sync",
                vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            )
            start = time.process_time()
            run = td.td_control(envs, method, steps, alpha=0.5, gamma=1.0, epsilon=EPSILON, seed=0)
            seconds = time.process_time() - start
            late[method] = run.first_episodes()[:, -50:].mean(1)
            behaviour[method] = np.array(
                [td.expected_return(cliff, td.epsilon_greedy_policy(Q, EPSILON)) for Q in run.Q]
            )
            reached = sum(td.greedy_return(cliff, Q) > -100 for Q in run.Q)
            print(
                f"  {method:>10}: last 50 episodes {show(mean_ci(late[method]), '.1f')}, exact "
                f"exploring value {show(mean_ci(behaviour[method]), '.1f')}, greedy walk reaches "
                f"the goal in {reached}/{seeds} ({seconds:.1f} s CPU)"
            )
        names = ("SARSA", "Q-learning")
        print("   online:", compare(late["sarsa"], late["q_learning"], names=names))
        print("   exact: ", compare(behaviour["sarsa"], behaviour["q_learning"], names=names))


def bench_speed(seeds: int, steps: int = 5_000) -> None:
    grid = GridTask(**GRID).mdp()
    env = gym.make("course/GridFamily-v0", **GRID)
    rng = np.random.default_rng(0)
    Q = torch.zeros(grid.n_states, 4, dtype=torch.float64)
    obs, _ = env.reset(seed=0)
    s = int(obs.argmax())
    start = time.process_time()
    for _ in range(steps):
        a = int(rng.integers(4)) if rng.random() < 0.5 else int(Q[s].argmax())
        obs, r, terminated, truncated, _ = env.step(a)
        s_next = int(obs.argmax())
        td.q_learning_update(Q, s, a, r, s_next, terminated, 0.1, 0.95)
        s = int(env.reset()[0].argmax()) if terminated or truncated else s_next
    one = steps / (time.process_time() - start)
    _, seconds = grid_errors(seeds, steps, 1.0, 0.7)
    print(
        f"one-env Python loop: {one:,.0f} steps/s; td_control with {seeds} sub-envs: "
        f"{seeds * steps / seconds:,.0f} steps/s (CPU time)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--grid-steps", type=int, default=10_000)
    parser.add_argument("--cliff-steps", type=int, nargs="+", default=[5_000, 10_000])
    args = parser.parse_args()
    start = time.perf_counter()
    bench_speed(args.seeds)
    bench_grid(args.seeds, args.grid_steps)
    bench_cliff(args.seeds, args.cliff_steps)
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
