"""Benchmark: transfer by fine-tuning on the CartPole family (the figures Lesson 05 quotes).

Pretrains one source agent on default CartPole (:data:`course.transfer.SOURCE_CONFIG`), saves it
as a checkpoint, pretrains a multi-task source (Lesson 04's multi-head agent on default and
mirrored CartPole, :data:`course.transfer.MULTITASK_SOURCE_CONFIG`, the same total source steps),
then runs :func:`course.transfer.compare_strategies` on the lesson's targets
(pole length 1.0: near; 2.0: far; cart mass 3.0: a control the source solves zero-shot) with every
strategy (``"multitask"``: full fine-tuning from the multi-task agent's trunk and default-task
head) over several seeds, and prints every transfer metric with its 95% bootstrap interval
(resampling seeds), against the plain scratch arm and against the scratch arm that explores like
the fine-tuned ones.

Usage::

    .venv/bin/python benchmarks/bench_transfer.py              # 5 seeds, the lesson's budgets
    .venv/bin/python benchmarks/bench_transfer.py --seeds 10 --threshold 475
    .venv/bin/python benchmarks/bench_transfer.py --source path/to/checkpoint.pt

Timings depend on the machine and on what else runs on it; the script prints its wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from course.envs import CARTPOLE_TASKS
from course.transfer import (
    ARMS,
    FINETUNE_CONFIG,
    LESSON_TARGETS,
    MULTITASK_SOURCE_CONFIG,
    SCRATCH_CONFIG,
    SOURCE_CONFIG,
    compare_strategies,
    format_comparison,
    load_checkpoint,
    multitask_source_state,
    pretrain_multitask_source,
    pretrain_source,
    save_checkpoint,
    zero_shot_returns,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per arm (>= 5 for the lesson)")
    parser.add_argument("--source-seed", type=int, default=0, help="seed of the source agent")
    parser.add_argument(
        "--source", type=Path, help="a checkpoint to start from (skips pretraining)"
    )
    parser.add_argument("--threshold", type=float, default=195.0, help="return that counts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    if args.source is None:
        result = pretrain_source(SOURCE_CONFIG, seed=args.source_seed, device="cpu")
        path = Path(tempfile.mkdtemp()) / "source.pt"
        save_checkpoint(path, result.states[0], SOURCE_CONFIG, {"seed": args.source_seed})
        print(f"pretrained the source in {result.wall_time:.1f} s")
    else:
        path = args.source
    checkpoint = load_checkpoint(path, expected_config=FINETUNE_CONFIG)
    multitask_net = pretrain_multitask_source(MULTITASK_SOURCE_CONFIG, seed=args.source_seed)
    multitask_state = multitask_source_state(multitask_net, head=0)  # the default task's head
    tasks = {"source (default)": CARTPOLE_TASKS["default"], **LESSON_TARGETS}
    single = zero_shot_returns(checkpoint.state_dict, tasks)
    multi = zero_shot_returns(multitask_state, tasks)
    print("zero-shot return of the source policies (20 episodes): single-task, multi-task")
    for name in tasks:
        print(f"  {name:<20} {single[name]:6.1f} {multi[name]:6.1f}")

    comparison = compare_strategies(
        checkpoint.state_dict,
        LESSON_TARGETS,
        seeds=range(args.seeds),
        config=FINETUNE_CONFIG,
        scratch_config=SCRATCH_CONFIG,
        strategies=ARMS,
        source_steps=checkpoint.config.total_steps,
        multitask_state=multitask_state,
        device="cpu",
    )
    print(f"\nfine-tuning comparison in {comparison.wall_time:.1f} s")
    print(
        f"budget {FINETUNE_CONFIG.total_steps} target steps per run, evaluation every "
        f"{FINETUNE_CONFIG.eval_every} steps ({FINETUNE_CONFIG.eval_episodes} episodes)\n"
    )
    for baseline in ("scratch", "scratch_same_eps"):
        print(format_comparison(comparison, args.threshold, baseline=baseline))
        print()
    print("final mean return per arm (mean over seeds, 95% band of the last evaluation):")
    for target in comparison.curves:
        cells = []
        for strategy in comparison.curves[target]:
            mean, low, high = comparison.band(target, strategy)
            cells.append(f"{strategy} {mean[-1]:.0f} [{low[-1]:.0f}, {high[-1]:.0f}]")
        print(f"  {target:<20} " + "; ".join(cells))
    print(f"\ntotal wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
