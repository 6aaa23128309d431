"""Benchmark: transfer by fine-tuning on the grid family (the figures Lesson 05 prints).

Pretrains five single-task source networks (:data:`course.transfer.SOURCE_CONFIG`) and five
multi-task ones (Lesson 04's multi-head agent, :data:`course.transfer.MULTITASK_SOURCE_CONFIG`,
the same source steps), then runs :func:`course.transfer.compare_strategies` on the lesson's
near and far targets with every arm from the single-task sources and full fine-tuning from the
multi-task ones, 20 seeds each (seed ``i`` from source ``i % 5``), 3,000 target steps. It writes
the configuration, every per-seed figure and the verdicts to ``benchmarks/results/transfer.json``
(:func:`course.transfer.run_benchmark`), which the lesson prints; a test checks that the stored
configuration is the current one. Rerun it after changing any configuration of the experiment.

Usage::

    .venv/bin/python benchmarks/bench_transfer.py               # writes the results file
    .venv/bin/python benchmarks/bench_transfer.py --seeds 10 --out /tmp/transfer.json

Timings depend on the machine and on what else runs on it; the script prints its CPU time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from course.transfer import (
    BENCHMARK_RESULTS,
    benchmark_config,
    format_benchmark,
    run_benchmark,
    save_benchmark,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds per arm")
    parser.add_argument("--sources", type=int, default=5, help="source networks per kind")
    parser.add_argument("--steps", type=int, default=3_000, help="target-task steps")
    parser.add_argument("--out", type=Path, default=BENCHMARK_RESULTS, help="results file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.process_time()
    data = run_benchmark(benchmark_config(args.seeds, args.sources, args.steps), device="cpu")
    save_benchmark(data, args.out)
    print(format_benchmark(data))
    print(f"\nwrote {args.out} ({time.process_time() - start:.0f} s of CPU)")


if __name__ == "__main__":
    main()
