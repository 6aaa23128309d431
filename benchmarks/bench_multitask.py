"""Lesson 04's experiments with more seeds, with the same paired verdicts, and the batched
family's throughput.

Run: ``python benchmarks/bench_multitask.py [--seeds 20] [--steps 3000] [--cartpole]``

Prints, over ``--seeds`` seeds (95% t intervals; verdicts from the per-seed differences):

- on the grid family (four corner goals, `course.multitask.LESSON_CONFIG` with ``--steps`` steps
  per task): the final per-task scores of heads, task_input and a head-less shared network; one
  multi-task agent with heads against four single-task agents, at matched schedules
  (`course.multitask.single_task_config`) and with the same config: final scores and steps to
  ``--threshold`` per task and in total ("never" counted at the budget);
- the lam sweep of both regularisers (lam = 0.01, 0.1 against 0), the trunk norm under the head
  penalty, the trunk penalty's effect; the gradient conflict against its same-task noise baseline
  over training; PCGrad on heads and on task_input;
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
from course.evaluation import compare

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
    n = len(seeds)
    config = dataclasses.replace(mt.LESSON_CONFIG, steps_per_task=steps, noise_baseline=True)
    start = time.perf_counter()

    def train(**changes: object) -> mt.MultiTaskResult:
        return mt.train_multitask_dqn([tasks] * n, seeds, dataclasses.replace(config, **changes))

    arms = {arch: train(architecture=arch) for arch in ("heads", "task_input", "shared")}
    print(f"grid family, {n} seeds, {steps} steps per task")
    print(mt.format_final_scores(arms))
    print(
        compare(
            mt.final_mean(arms["heads"]),
            mt.final_mean(arms["task_input"]),
            names=("heads", "task_input"),
        )
    )
    print(
        compare(
            mt.final_mean(arms["task_input"]),
            mt.final_mean(arms["shared"]),
            names=("task_input", "shared"),
        )
    )

    single_tasks = [[task] for _ in seeds for task in tasks]
    single_seeds = [s for s in seeds for _ in tasks]
    singles = {
        "matched": mt.single_task_config(config, len(tasks)),
        "same config": config,
    }
    for name, single_config in singles.items():
        result = mt.train_multitask_dqn(single_tasks, single_seeds, single_config)
        comparison = mt.compare_with_singles(arms["heads"], result, threshold)
        print(f"\n--- heads against single-task agents, {name} ---")
        print(mt.format_singles_comparison(comparison, names=("multi-task", f"singles ({name})")))

    lams = (0.01, 0.1)
    agents = [(lam, s) for lam in lams for s in seeds]
    sweeps = {
        name: mt.concat_results(
            [
                mt.train_multitask_dqn(
                    [tasks] * len(agents),
                    [s for _, s in agents],
                    dataclasses.replace(config, regularizer=name),
                    lams=[lam for lam, _ in agents],
                ),
                arms["heads"],
            ]
        )
        for name in ("l2", "mean")
    }
    print("\n" + mt.format_lam_sweep(sweeps, last=2))
    per_seed = {name: mt.lam_per_seed(r, last=2) for name, r in sweeps.items()}
    for verdict in mt.lam_verdicts(per_seed, higher_is_better=True, lams=lams):
        print(" ", verdict)
    print(mt.format_norm_change(sweeps["l2"], 0.1))
    with_trunk = mt.train_multitask_dqn(
        [tasks] * n, seeds, dataclasses.replace(config, penalize_trunk=True), lams=[0.01] * n
    )
    print(
        compare(
            mt.lam_per_seed(with_trunk, last=2)[0.01],
            per_seed["l2"][0.01],
            names=("heads + trunk lam=0.01", "heads only lam=0.01"),
        )
    )

    for arch in ("heads", "task_input"):
        print(f"\n--- {arch}: gradient cosine, two tasks against one task on two batches ---")
        print(mt.format_conflict_over_training(arms[arch]))
        with_pcgrad = train(architecture=arch, use_pcgrad=True)
        print(
            compare(
                mt.final_mean(with_pcgrad),
                mt.final_mean(arms[arch]),
                names=(f"{arch} + pcgrad", arch),
            )
        )
    print(f"\ngrid family in {time.perf_counter() - start:.0f} s")


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
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3_000, help="grid steps per task")
    parser.add_argument("--threshold", type=float, default=0.8)
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
