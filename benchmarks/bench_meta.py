"""Benchmark: Lesson 06's experiments at longer budgets, with more seeds, printing its verdicts.

Two parts, which can run in separate processes:

- ``sine``: Reptile against the network pretrained on the mixture of tasks and against scratch,
  few-shot on held-out sine tasks (:func:`course.meta.train_sine_meta`), the adaptation learning
  rate chosen per method on the validation tasks, the verdicts on the test tasks;
- ``cartpole``: the default, multi-task and domain-randomised agents at matched budgets
  (:func:`course.meta.train_generalists`), the arm chosen on the validation tasks compared with
  the others on the test tasks; then a Reptile initialisation (:func:`course.meta.reptile_dqn`)
  fine-tuned on the longest test pole against the single-source, randomised and fresh starts.

The defaults are the lesson's settings scaled up (the lesson: 150 Reptile steps, 10 sine seeds;
10 CartPole seeds of 8,000 steps, 8 validation and 8 test tasks; 2 Reptile iterations; 1,000
fine-tuning steps). The CartPole part keeps the lesson's budget per agent and doubles the seeds
and the validation and test tasks, so that its verdicts check the lesson's; both parts run
seeds from 100 on (``--first-seed``), not the lesson's 0 to 9 (``--lesson`` runs those).

Usage::

    .venv/bin/python benchmarks/bench_meta.py                      # both parts, long budgets
    .venv/bin/python benchmarks/bench_meta.py --part sine --outer-steps 1000 --sine-seeds 20
    .venv/bin/python benchmarks/bench_meta.py --part cartpole --seeds 20 --steps 16000  # longer
    .venv/bin/python benchmarks/bench_meta.py --lesson             # the lesson's own budgets

Timings depend on the machine and on what else runs on it; each part prints its wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from course.meta import (
    FINETUNE_CONFIG,
    GENERALISATION_CONFIG,
    LENGTH_FAMILY,
    REPTILE_INNER_CONFIG,
    SINE_META_CONFIG,
    adapt_sine,
    adaptation_lr_sweep,
    cartpole_split,
    choose_lr,
    finetune_comparisons,
    finetune_from,
    fresh_state,
    reptile_dqn,
    sine_comparisons,
    sine_split,
    train_generalists,
    train_sine_meta,
)

LRS = (0.005, 0.01, 0.02, 0.04)


def run_sine(outer_steps: int, seeds: range) -> None:
    start = time.perf_counter()
    split = sine_split(n_train=100, n_validation=20, n_test=20, seed=0)
    config = dataclasses.replace(SINE_META_CONFIG, outer_steps=outer_steps)
    result = train_sine_meta(split, seeds=seeds, config=config, evaluate_on="validation")
    chosen = choose_lr(adaptation_lr_sweep(result, split.validation, LRS, steps=5), LRS)
    test = {
        m: adapt_sine(
            result.inits[m], split.test, dataclasses.replace(config, inner_lr=chosen[m]), 10**6
        )
        for m in result.inits
    }
    print(
        f"== sine: {outer_steps} Reptile steps, {len(seeds)} seeds ({seeds.start} on); "
        f"lr chosen on validation {chosen}"
    )
    for m, mse in test.items():
        curve = mse.mean(dim=1).mean(dim=0)
        print(
            f"   {m:<11} test MSE after 0/1/5/16 steps: "
            + " / ".join(f"{curve[k]:.2f}" for k in (0, 1, 5, 16))
        )
    for comparison in sine_comparisons(test, steps=5):
        print("  ", comparison)
    print(f"   ({time.perf_counter() - start:.0f} s)")


def run_cartpole(
    seeds: range,
    steps: int,
    n_validation: int,
    n_test: int,
    iterations: int,
    tasks: int,
    finetune_steps: int,
    device: str,
) -> None:
    start = time.perf_counter()
    split = cartpole_split(LENGTH_FAMILY, 4, n_validation, n_test, seed=0)
    config = dataclasses.replace(
        GENERALISATION_CONFIG, total_steps=steps, buffer_size=steps, eval_every=steps
    )
    result = train_generalists(split, LENGTH_FAMILY, seeds, config, device=device)
    print(
        f"== CartPole generalisation: 3 arms x {len(seeds)} seeds ({seeds.start} on) x {steps} "
        f"steps; "
        f"{n_validation} validation, {n_test} test tasks"
    )
    print("   mean over the tasks of each part")
    print(result.table("mean"))
    print("   worst task of each part")
    print(result.table("worst"))
    for arm, lengths in result.breaks(fraction=0.5).items():
        print(f"   {arm:<11} breaks at", " ".join(f"{x:.2g}" for x in lengths) or "no grid length")
    for comparison in result.gap_comparisons("default"):
        print("   gap:", comparison)
    for measure in ("worst", "mean"):
        chosen, comparisons = result.chosen_comparisons(measure)
        print(f"   by the {measure} test task; chosen on the validation tasks: {chosen}")
        for comparison in comparisons:
            print("     ", comparison)
    chosen = result.select("validation", "worst")
    print("   beyond:", " ".join(f"{t.length:.2g}" for t in result.beyond))
    for comparison in result.versus(chosen, "beyond", "mean"):
        print("     ", comparison)
    lengths = " ".join(f"{t.length:4.2g}" for t in result.grid)
    print(f"   grid lengths {lengths}")
    for arm in result.arms:
        row = " ".join(f"{v:4.0f}" for v in result.returns["grid"][arm].mean(dim=0).tolist())
        print(f"   {arm:<12} {row}")
    print(f"   ({time.perf_counter() - start:.0f} s)")

    start = time.perf_counter()
    meta_dqn = reptile_dqn(
        LENGTH_FAMILY, iterations, tasks, REPTILE_INNER_CONFIG, seed=0, device=device
    )
    target = split.test[-1]
    starts = {
        "reptile": meta_dqn.state,
        "default": result.states["default"][0],
        "randomised": result.states["randomised"][0],
        "scratch": fresh_state(config.hidden, seed=1),
    }
    finetune = dataclasses.replace(
        FINETUNE_CONFIG, total_steps=finetune_steps, buffer_size=finetune_steps
    )
    _, curves = finetune_from(starts, target, seeds, finetune, device=device)
    print(
        f"== Reptile in RL: {meta_dqn.env_steps} meta-training steps ({iterations} x {tasks} "
        f"tasks); fine-tuning {finetune_steps} steps on pole {target.length:.2f}, "
        f"{len(seeds)} seeds"
    )
    for name, c in curves.items():
        print(
            f"   {name:<11} mean return over fine-tuning {c.mean():6.1f}, at the end "
            f"{c[:, -1].mean():6.1f}"
        )
    for comparison in finetune_comparisons(curves, reference="reptile"):
        print("  ", comparison)
    print(f"   ({time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("sine", "cartpole", "all"), default="all")
    parser.add_argument("--lesson", action="store_true", help="the lesson's own budgets")
    parser.add_argument("--outer-steps", type=int, default=1000, help="Reptile steps (sine)")
    parser.add_argument("--sine-seeds", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=20, help="CartPole seeds per arm")
    parser.add_argument("--steps", type=int, default=8_000, help="CartPole steps per agent")
    parser.add_argument("--validation-tasks", type=int, default=16, help="CartPole")
    parser.add_argument("--test-tasks", type=int, default=16, help="CartPole")
    parser.add_argument("--iterations", type=int, default=6, help="Reptile iterations (RL)")
    parser.add_argument("--tasks", type=int, default=4, help="tasks per Reptile iteration (RL)")
    parser.add_argument("--finetune-steps", type=int, default=2_000)
    parser.add_argument("--first-seed", type=int, default=100, help="seeds run from here on")
    parser.add_argument("--device", default="cpu", help="torch device (cpu: reproducible)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.lesson:
        args.outer_steps, args.sine_seeds, args.seeds, args.steps = 150, 10, 10, 8_000
        args.validation_tasks, args.test_tasks, args.first_seed = 8, 8, 0
        args.iterations, args.tasks, args.finetune_steps = 2, 2, 1_000
    if args.part in ("sine", "all"):
        run_sine(args.outer_steps, range(args.first_seed, args.first_seed + args.sine_seeds))
    if args.part in ("cartpole", "all"):
        run_cartpole(
            range(args.first_seed, args.first_seed + args.seeds),
            args.steps,
            args.validation_tasks,
            args.test_tasks,
            args.iterations,
            args.tasks,
            args.finetune_steps,
            args.device,
        )


if __name__ == "__main__":
    main()
