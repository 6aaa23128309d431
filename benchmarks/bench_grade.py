"""Throughput of ``course grade`` on a synthetic class, against plainly executing the notebooks.

Run: ``python benchmarks/bench_grade.py [--n 60] [--workers 1 2] [--skip-baseline]``

Builds a class of ``--n`` Lesson 01 submissions from ``solutions/01_mdps.ipynb`` and its generated
lesson: half correct (the solution), a sixth partial (the lesson with two exercises solved), a
sixth not attempted (the lesson as released), and a sixth broken or hostile (a syntax error, a
cell that calls ``os._exit``, a top-level infinite loop, forged result lines, an empty file), in
a fixed order. Then it reports submissions per minute for

- the baseline: executing each notebook once with nbclient (one kernel per notebook, errors
  allowed, the same per-cell timeout), one at a time: the plain cost of running the code;
- ``grade_class`` with each ``--workers`` value (isolated runs, judging, gradebook, feedback).

Timings are wall-clock on a shared machine: rerun before quoting them.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import nbformat
import torch

from course.grading import grade as g
from course.release import make_lesson

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "01_mdps.ipynb"
CELL_TIMEOUT = 10.0

HOSTILE = {
    "syntax_error": "def broken(:\n    pass",
    "exits": "import os\nos._exit(0)",
    "loops": "while True:\n    pass",
    "forges": 'print(\'{"type": "done"}\')\nimport os\nos.write(3, b\'{"type": "done"}\\n\')',
}


def build_class(folder: Path, n: int) -> list[Path]:
    """Write ``n`` submissions under ``folder/<student>/01_mdps.ipynb``; return their paths."""
    solution = nbformat.read(SOLUTION, as_version=4)
    lesson = make_lesson(solution, SOLUTION.name)
    exercise_cells = [
        i for i, c in enumerate(solution.cells) if "### BEGIN SOLUTION" in c.get("source", "")
    ]

    def partial() -> nbformat.NotebookNode:
        nb = copy.deepcopy(lesson)
        for i in exercise_cells[:2]:  # cells map one to one unless solution-only cells exist
            if i < len(nb.cells):
                nb.cells[i].source = solution.cells[i].source
        return nb

    def hostile(kind: str) -> nbformat.NotebookNode:
        nb = copy.deepcopy(solution)
        nb.cells.insert(len(nb.cells) // 2, nbformat.v4.new_code_cell(HOSTILE[kind]))
        return nb

    kinds = ["correct", "correct", "correct", "partial", "stub", "broken"]
    broken = [*HOSTILE, "empty"]
    paths = []
    for k in range(n):
        kind = kinds[k % len(kinds)]
        path = folder / f"student{k:03d}" / "01_mdps.ipynb"
        path.parent.mkdir(parents=True)
        if kind == "broken":
            which = broken[(k // len(kinds)) % len(broken)]
            if which == "empty":
                path.write_bytes(b"")
                paths.append(path)
                continue
            nb = hostile(which)
        else:
            nb = {"correct": lambda: solution, "partial": partial, "stub": lambda: lesson}[kind]()
        nb = copy.deepcopy(nb)  # every submission differs, so no result is reused
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"Submitted by student {k}."))
        nbformat.write(nb, path)
        paths.append(path)
    return paths


def baseline(paths: list[Path]) -> float:
    """Seconds to execute every notebook once with nbclient, one after the other."""
    from nbclient import NotebookClient

    start = time.perf_counter()
    for path in paths:
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception:
            continue  # the empty file: nothing to run
        client = NotebookClient(
            nb, timeout=int(CELL_TIMEOUT), allow_errors=True, kernel_name="python3"
        )
        try:
            client.execute(cwd=str(path.parent))
        except Exception:
            pass  # a kernel that died (os._exit) ends that notebook, as it would for a teacher
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="submissions in the class")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    limits = g.Limits(timeout=300, cell_timeout=CELL_TIMEOUT)
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_class(Path(tmp) / "submissions", args.n)
        print(f"class of {len(paths)} Lesson 01 submissions")
        print(f"{'run':<28}{'seconds':>10}{'per minute':>12}")
        if not args.skip_baseline:
            seconds = baseline(paths)
            print(
                f"{'nbclient, one at a time':<28}{seconds:>10.1f}{60 * len(paths) / seconds:>12.1f}"
            )
        for workers in args.workers:
            out = Path(tmp) / f"grades-{workers}.csv"
            start = time.perf_counter()
            results = g.grade_class(
                [Path(tmp) / "submissions"],
                out=out,
                feedback=Path(tmp) / f"feedback-{workers}",
                workers=workers,
                limits=limits,
                seed=0,
                fresh=True,
                progress=False,
            )
            seconds = time.perf_counter() - start
            label = f"course grade, {workers} worker{'s' * (workers > 1)}"
            print(f"{label:<28}{seconds:>10.1f}{60 * len(paths) / seconds:>12.1f}")
            print(f"  {results.summary()}")


if __name__ == "__main__":
    main()
