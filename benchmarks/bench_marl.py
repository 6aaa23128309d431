"""Lesson 07's comparisons with more agents, more seeds and longer budgets, and the env's speed.

Run: ``python benchmarks/bench_marl.py [--seeds 20] [--agents 2 4 8 12] [--size 4]
[--budgets 1 4] [--arms ...]``

Prints, over ``--seeds`` seeds (95% t intervals, verdicts from `course.evaluation.compare`):

- the final exact team score (`course.marl.team_score`, 1 = optimal) of every arm of
  `course.marl.ARMS` on the "same job" world of ``--size`` x ``--size`` cells, for each team
  size of ``--agents`` and each budget of ``--budgets`` (a multiple of Lesson 07's 300 steps
  of 8 copies, with the exploration decay and replay scaled alike), with paired verdicts of
  each sharing arm against independent learners at the largest team;
- the same for "shared" against "shared + id" on the "different jobs" world at 4 agents;
- the transitions per second of `course.marl.BatchedLandmarkEnv` (random actions) next to
  stepping the PettingZoo env one copy at a time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from course import marl


def scaling(args: argparse.Namespace, seeds: range) -> None:
    for multiple in args.budgets:
        config = marl.scaled_config(multiple)
        results = {}
        start = time.perf_counter()
        for n in args.agents:
            task = marl.LandmarkTask(n_agents=n, size=args.size, max_steps=args.max_steps)
            results[n] = marl.train_arms(task, args.arms, seeds, **config)
        print(
            f"\nsame job, {args.size} x {args.size} grid, budget x{multiple} "
            f"({config['steps'] * config['num_envs']} joint transitions per run), "
            f"{len(seeds)} seeds, {time.perf_counter() - start:.0f} s"
        )
        print(marl.format_scaling(results))
        largest = results[max(args.agents)]
        for arm in args.arms:
            if arm != "independent" and "independent" in args.arms:
                print(
                    f"  {max(args.agents)} agents:", marl.compare_arms(largest, arm, "independent")
                )


def different_jobs(args: argparse.Namespace, seeds: range) -> None:
    for multiple in args.budgets:
        task = marl.LandmarkTask(
            n_agents=4, size=args.size, observe_landmark=False, max_steps=args.max_steps
        )
        results = marl.train_arms(
            task, ["shared", "shared + id"], seeds, **marl.scaled_config(multiple)
        )
        print(f"\ndifferent jobs, 4 agents, budget x{multiple}:")
        print(marl.format_scaling({4: results}))
        print(" ", marl.compare_arms(results, "shared + id", "shared"))


def env_speed(size: int) -> None:
    print("\nrandom-action transitions per second (agent steps):")
    task = marl.LandmarkTask(n_agents=8, size=size)
    rng = np.random.default_rng(0)
    env = marl.LandmarkEnv(task)
    env.reset(seed=0)
    start, n = time.perf_counter(), 0
    while n < 20_000:
        if not env.agents:
            env.reset()
        env.step({a: int(rng.integers(5)) for a in env.agents})
        n += task.n_agents
    print(f"  LandmarkEnv (PettingZoo, one copy): {n / (time.perf_counter() - start):,.0f}")
    for copies in (1, 16, 256):
        batched = marl.BatchedLandmarkEnv(task, copies)
        batched.reset(list(range(copies)))
        actions = rng.integers(0, 5, size=(200, copies, task.n_agents))
        start = time.perf_counter()
        for a in actions:
            batched.step(a)
        rate = actions.size / (time.perf_counter() - start)
        print(f"  BatchedLandmarkEnv, {copies:>3} copies: {rate:,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--agents", type=int, nargs="+", default=[2, 4, 8, 12])
    parser.add_argument("--size", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--arms", nargs="+", default=list(marl.ARMS), choices=list(marl.ARMS))
    parser.add_argument("--skip-training", action="store_true", help="only time the envs")
    args = parser.parse_args()
    seeds = range(args.seeds)
    env_speed(args.size)
    if not args.skip_training:
        different_jobs(args, seeds)
        scaling(args, seeds)


if __name__ == "__main__":
    main()
