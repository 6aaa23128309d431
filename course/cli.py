"""The ``course`` command: ``course release`` and friends."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from course import release as release_module

# Everything ``course grade`` writes goes into one folder (ignored by git), never loose in the
# folder it runs from.
DEFAULT_OUT = "grades/grades.csv"
DEFAULT_FEEDBACK = "grades/feedback"


def _release(args: argparse.Namespace) -> int:
    try:
        results = release_module.release(args.solutions, args.lessons, check_only=args.check)
    except (release_module.ReleaseError, OSError, ValueError) as exc:
        print(f"course release: {exc}", file=sys.stderr)
        return 2
    stale = [r for r in results if not r.up_to_date]
    for r in results:
        if args.check:
            state = "up to date" if r.up_to_date else "OUT OF DATE"
        else:
            state = "unchanged" if r.up_to_date else "written"
        print(f"{r.lesson}: {state}")
    if args.check and stale:
        print("Run `course release` to regenerate the lessons from solutions/.", file=sys.stderr)
        return 1
    return 0


def _grade(args: argparse.Namespace) -> int:
    from course.grading import grade as grade_module  # imports torch: only when grading

    if args.ray and Path(args.ray).exists():  # `--ray PATH...`: the address took a notebook
        print(
            f"course grade: --ray took {args.ray!r} as the cluster's address: put --ray after "
            "the notebooks, or write --ray=HOST:PORT",
            file=sys.stderr,
        )
        return 2

    limits = grade_module.Limits(
        timeout=args.timeout,
        cell_timeout=min(args.cell_timeout, args.timeout),
        memory_mb=args.memory,
        isolate_network=not args.allow_network,
    )
    try:
        results = grade_module.grade_class(
            args.paths,
            out=args.out,
            feedback=None if args.feedback == "" else args.feedback,
            workers=args.workers,
            limits=limits,
            seed=args.seed,
            lesson=args.lesson,
            fresh=args.fresh,
            progress=not args.quiet,
            allow_weak_isolation=args.allow_weak_isolation,
            ray=False if args.ray is None else (args.ray or True),
        )
    except (grade_module.GradeError, OSError) as exc:
        print(f"course grade: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(grade_module.results_json(results))
    print(results.summary(), file=sys.stderr)
    print(f"Gradebook: {args.out}; feedback: {args.feedback}/", file=sys.stderr)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from course import doctor  # imports torch: only when asked

    return doctor.run(args.path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="course", description="Transfer and multi-task RL course: tools for teachers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rel = sub.add_parser("release", help="generate lessons/ from solutions/")
    rel.add_argument("--solutions", default="solutions", help="folder of solution notebooks")
    rel.add_argument("--lessons", default="lessons", help="folder to write lessons into")
    rel.add_argument(
        "--check",
        action="store_true",
        help="only report lessons that are out of date (exit 1 if any)",
    )
    rel.set_defaults(run=_release)
    gra = sub.add_parser(
        "grade",
        help="grade students' notebooks, each run isolated",
        description="Grade students' lesson notebooks. Each notebook runs in an isolated, "
        "limited process; scores are computed by the grader from plain data. A submission's "
        "student is the name of the folder holding it (submissions/<student>/01_mdps.ipynb).",
    )
    gra.add_argument("paths", nargs="+", metavar="PATH", help="notebooks or folders of them")
    gra.add_argument("--out", default=DEFAULT_OUT, help=f"CSV gradebook (default {DEFAULT_OUT})")
    gra.add_argument(
        "--feedback",
        default=DEFAULT_FEEDBACK,
        help=f"folder for Markdown feedback (default {DEFAULT_FEEDBACK})",
    )
    gra.add_argument("--json", action="store_true", help="also print the results as JSON")
    gra.add_argument("--workers", type=int, default=1, help="notebooks graded at once")
    gra.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per notebook (default 600)"
    )
    gra.add_argument(
        "--cell-timeout", type=float, default=120.0, help="seconds per cell (default 120)"
    )
    gra.add_argument(
        "--memory", type=int, default=4096, help="MiB of address space per process (default 4096)"
    )
    gra.add_argument("--seed", type=int, default=None, help="seed of the cases (default: reuse)")
    gra.add_argument("--lesson", default=None, help="grade only this lesson, e.g. 01_mdps")
    gra.add_argument("--fresh", action="store_true", help="ignore results of earlier runs")
    gra.add_argument("--allow-network", action="store_true", help="do not cut the network off")
    gra.add_argument(
        "--allow-weak-isolation",
        action="store_true",
        help="grade even where this machine confines submissions less than the teacher guide "
        "promises (files, signals and processes, network); the summary says what is missing",
    )
    gra.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run the submissions on a Ray cluster: its head's HOST:PORT, or nothing for "
        "ray.init()'s default (RAY_ADDRESS, else a Ray started here); the gradebook, feedback "
        "and cache are those of a local run with the same seed (needs "
        "`pip install 'rl-transfer-course[cluster]'`)",
    )
    gra.add_argument("--quiet", action="store_true", help="no progress bar")
    gra.set_defaults(run=_grade)
    doc = sub.add_parser(
        "doctor",
        help="check Python, torch, widgets and lessons; say what to fix",
        description="Check what the lessons need (Python, torch build and device, gymnasium, "
        "widgets, lessons up to date) and say how to fix what is off. Exit 1 if anything is.",
    )
    doc.add_argument("--path", default=".", help="the course folder (default: here)")
    doc.set_defaults(run=_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
