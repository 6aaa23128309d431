"""One multi-task DQN agent against K single-task agents, and the batched family's throughput.

Run: ``python benchmarks/bench_multitask.py [--seeds 5] [--steps 6000] [--cartpole]``

Prints, over ``--seeds`` seeds with 95% bootstrap intervals:

- on the grid family (four corner goals, `course.multitask.LESSON_CONFIG` with ``--steps`` steps
  per task): the total environment steps until every task scores >= ``--threshold`` (exact
  normalised return of the greedy policy), for one multi-task agent with heads and for four
  single-task agents together, and the final per-task scores of heads, a head-less shared
  network and the single-task agents;
- with ``--cartpole``: default CartPole against its mirrored twin (actions swapped), heads
  against one shared head without task information (mean greedy return per task);
- the transitions per second of the batched CartPole family next to gymnasium's own vectorised
  CartPole (``benchmarks/bench_envs.py``'s measurement), for 1, 16 and 256 sub-envs.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from bench_envs import SIZES, transitions_per_second  # same folder: run as a script

from course import multitask as mt
from course.envs import CARTPOLE_TASKS, grid_tasks, make_cartpole_vec

CARTPOLE_CONFIG = mt.MultiTaskConfig(
    steps_per_task=20_000,
    envs_per_task=4,
    hidden=(128,),
    lr=1e-3,
    gamma=0.99,
    buffer_size=40_000,
    batch_size=128,
    learning_starts=1_000,
    updates_per_step=0.25,
    target_update_interval=250,
    exploration_fraction=0.2,
    eval_every=2_000,
    eval_episodes=5,
)


def grid_comparison(seeds: range, steps: int, threshold: float) -> None:
    tasks = grid_tasks(start="uniform")
    config = dataclasses.replace(mt.LESSON_CONFIG, steps_per_task=steps)
    start = time.perf_counter()
    arms = {
        arch: mt.train_multitask_dqn(
            [tasks] * len(seeds), seeds, dataclasses.replace(config, architecture=arch)
        )
        for arch in ("heads", "task_input", "shared")
    }
    singles_config = dataclasses.replace(config, steps_per_task=3 * steps)
    singles = mt.train_multitask_dqn(
        [[task] for _ in seeds for task in tasks],
        [s for s in seeds for _ in tasks],
        singles_config,
    )
    print(
        f"grid family, {len(seeds)} seeds, {steps} steps per task (single-task agents: "
        f"{3 * steps}), in {time.perf_counter() - start:.0f} s"
    )
    print(
        mt.format_threshold_comparison(
            mt.compare_with_singles(arms["heads"], singles, threshold), threshold
        )
    )
    print("final score per task (1 = optimal):")
    print(mt.format_final_scores(arms))


def cartpole_comparison(seeds: range) -> None:
    tasks = [CARTPOLE_TASKS["default"], CARTPOLE_TASKS["mirrored"]]
    start = time.perf_counter()
    arms = {
        arch: mt.train_multitask_dqn(
            [tasks] * len(seeds), seeds, dataclasses.replace(CARTPOLE_CONFIG, architecture=arch)
        )
        for arch in ("heads", "shared")
    }
    print(
        f"\nCartPole default vs mirrored, {len(seeds)} seeds, "
        f"{CARTPOLE_CONFIG.steps_per_task} steps per task, in {time.perf_counter() - start:.0f} s"
    )
    print("final greedy return per task (mean of the last 3 evaluations):")
    last3 = {
        name: dataclasses.replace(r, scores=r.scores[:, -3:].mean(1, keepdim=True))
        for name, r in arms.items()
    }
    print(mt.format_final_scores(last3))


def throughput(seconds: float, repeats: int) -> None:
    import gymnasium as gym

    tasks = list(CARTPOLE_TASKS.values())

    def family(n: int) -> gym.vector.VectorEnv:
        return make_cartpole_vec([tasks[i % len(tasks)] for i in range(n)], 1)

    def gymnasium_vec(n: int) -> gym.vector.VectorEnv:
        return gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")

    print("\ntransitions per second, random actions (best of repeats)")
    print(f"{'sub-envs':>9} | {'CartPole family':>16} | {'gymnasium vector':>16} | ratio")
    for n in SIZES:
        ours = transitions_per_second(family, n, seconds, repeats)
        theirs = transitions_per_second(gymnasium_vec, n, seconds, repeats)
        print(f"{n:>9} | {ours:>16,.0f} | {theirs:>16,.0f} | {ours / theirs:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6_000, help="grid steps per task")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--cartpole", action="store_true", help="also run the CartPole pair")
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = range(args.seeds)
    grid_comparison(seeds, args.steps, args.threshold)
    if args.cartpole:
        cartpole_comparison(seeds)
    throughput(args.seconds, args.repeats)


if __name__ == "__main__":
    main()
