"""The ``course`` command: ``course release`` and friends."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from course import release as release_module


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
