"""Benchmark: Lesson 03's overestimation experiment on more seeds than the lesson can afford.

DQN and Double DQN on the grid task with noisy rewards (``course.dqn.measure_overestimation``,
the lesson's settings ``OVERESTIMATION_CONFIG``), paired by seed, on seeds the lesson does not
use. It prints each variant's mean bias of ``max_a Q - V*`` with its 95% t interval and the
paired verdict, the lines the lesson prints for its 10 seeds.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_overestimation.py            # seeds 100-129
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_overestimation.py --seeds 200 201 202
"""

from __future__ import annotations

import argparse
import time

import torch

from course.dqn import measure_overestimation
from course.evaluation import compare, mean_ci


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(100, 130)))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.process_time()
    result = measure_overestimation(args.seeds, progress=True)
    for name, values in result.bias.items():
        ci = mean_ci(values)
        print(f"{name:>10}: mean value bias {ci.estimate:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]")
    verdict = compare(
        result.bias["DQN"],
        result.bias["Double DQN"],
        names=("DQN", "Double DQN"),
        higher_is_better=False,
    )
    print(verdict)
    print(f"{len(args.seeds)} seeds per variant in {time.process_time() - start:.1f} s of CPU")


if __name__ == "__main__":
    main()
