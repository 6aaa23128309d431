"""Throughput of the batched task families against gymnasium's own vectorisation.

Run: ``python benchmarks/bench_envs.py [--seconds 0.5] [--repeats 3]``

Prints transitions per second (sub-env steps per second) with random actions, for 1, 16 and 256
sub-envs, and the ratio of the two columns:

- the batched CartPole family (tasks drawn round-robin from ``CARTPOLE_TASKS``) next to
  ``gym.make_vec("CartPole-v1", vectorization_mode="vector_entry_point")``;
- the batched grid family (the four default goals, slip 0.1) next to gymnasium's
  ``SyncVectorEnv`` of the single grid env (``vectorization_mode="sync"``).

Each figure is the best of ``--repeats`` timed runs of about ``--seconds`` each.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np

from course.envs import CARTPOLE_TASKS, grid_tasks, make_cartpole_vec, make_grid_vec

SIZES = (1, 16, 256)


def transitions_per_second(
    make: Callable[[int], gym.vector.VectorEnv], num_envs: int, seconds: float, repeats: int
) -> float:
    """Best-of-``repeats`` sub-env steps per second of a vector env under random actions."""
    env = make(num_envs)
    env.reset(seed=0)
    n_actions = int(env.single_action_space.n)
    actions = np.random.default_rng(0).integers(n_actions, size=(1024, num_envs))
    # Calibrate the number of calls so one timed run lasts about `seconds`.
    n_calls = 64
    while True:
        start = time.perf_counter()
        for t in range(n_calls):
            env.step(actions[t % 1024])
        elapsed = time.perf_counter() - start
        if elapsed > seconds / 4:
            break
        n_calls *= 4
    n_calls = max(1, int(n_calls * seconds / elapsed))
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for t in range(n_calls):
            env.step(actions[t % 1024])
        best = max(best, n_calls * num_envs / (time.perf_counter() - start))
    env.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure")
    args = parser.parse_args()

    tasks = list(CARTPOLE_TASKS.values())

    def family(n: int) -> gym.vector.VectorEnv:
        return make_cartpole_vec([tasks[i % len(tasks)] for i in range(n)])

    def reference(n: int) -> gym.vector.VectorEnv:
        return gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")

    grid = grid_tasks(slip=0.1)

    def grid_family(n: int) -> gym.vector.VectorEnv:
        return make_grid_vec([grid[i % len(grid)] for i in range(n)])

    def grid_sync(n: int) -> gym.vector.VectorEnv:
        return gym.make_vec("course/GridFamily-v0", num_envs=n, vectorization_mode="sync", slip=0.1)

    rows = [
        ("CartPole", "gymnasium CartPole-v1", reference, family),
        ("Grid", "gymnasium sync vector", grid_sync, grid_family),
    ]
    print(f"Random actions, transitions/s (best of {args.repeats})")
    print(f"{'family':>8} {'num_envs':>8} {'gymnasium':>22} {'course batched':>15} {'ratio':>6}")
    for name, ref_name, make_ref, make_ours in rows:
        for n in SIZES:
            ref = transitions_per_second(make_ref, n, args.seconds, args.repeats)
            ours = transitions_per_second(make_ours, n, args.seconds, args.repeats)
            print(f"{name:>8} {n:>8} {ref:>22,.0f} {ours:>15,.0f} {ours / ref:>6.2f}")
        print(f"{'':>8} (gymnasium column: {ref_name})")


if __name__ == "__main__":
    main()
