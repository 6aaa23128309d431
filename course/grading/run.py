"""Running one submission in the sandbox, and parsing what it reports as untrusted data."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from course.grading.core import (
    lesson_exercises,
)
from course.grading.isolation import (
    kill_all,
    make_pids_cgroup,
    open_report,
    private_folder,
    sandbox_config,
    start_sandbox,
)
from course.grading.records import EX_CRASHED, EX_TIMED_OUT, Confinement, Limits


@dataclass
class Report:
    """What a child reported, parsed as untrusted data."""

    done: bool = False
    network: str = "unknown"
    phase: tuple[str, Any] | None = None  # ("cell", index) or ("exercise", id) last started
    cell_errors: dict[int, dict] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # what the sandbox could not put in place


@dataclass
class Attempt:
    report: Report
    timed_out: bool
    returncode: int
    stderr: str
    skip: list[int]
    seconds: float


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not plain data")


def parse_report(data: bytes, exercise_ids: Sequence[str]) -> Report:
    """Read a child's report: one JSON object per line; anything malformed is ignored.

    Only lines before the last ``done`` count (a stray process cannot add to a finished
    report), and a later result for an exercise replaces an earlier one (the real result comes
    after anything the notebook's cells could have written).
    """
    items = []
    for line in data.split(b"\n"):
        try:
            item = json.loads(line, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            continue
        if isinstance(item, dict):
            items.append(item)
    done_at = [i for i, item in enumerate(items) if item.get("type") == "done"]
    report = Report(done=bool(done_at))
    ids = set(exercise_ids)
    for item in items[: done_at[-1]] if done_at else items:
        kind = item.get("type")
        cell = item.get("cell")
        if kind == "refused" and isinstance(item.get("missing"), list):
            report.refused = [str(m)[:40] for m in item["missing"][:5]]
        elif kind == "start":
            report.network = str(item.get("network"))[:20]
        elif kind == "cell" and isinstance(cell, int):
            report.phase = ("cell", cell)
        elif kind == "skipped" and isinstance(cell, int):
            report.skipped.append(cell)
        elif kind == "cell_error" and isinstance(cell, int):
            report.cell_errors[cell] = {
                "cell": cell,
                "error": str(item.get("error", ""))[:100],
                "message": str(item.get("message", ""))[:300],
                "where": str(item.get("where", ""))[:300],
            }
        elif kind == "exercise" and item.get("id") in ids:
            report.phase = ("exercise", item["id"])
        elif kind == "result" and item.get("id") in ids:
            report.results[item["id"]] = item
    return report


def run_notebook(
    data: bytes,
    name: str,
    lesson: str,
    seed: int,
    limits: Limits,
    confinement: Confinement | None = None,
    skip: Sequence[int] = (),
) -> Attempt:
    """Run one notebook's bytes once in a confined child and parse its report."""
    start = time.monotonic()
    confinement = confinement or Confinement()
    uid = confinement.uid
    with contextlib.ExitStack() as stack:
        scratch = private_folder(stack, "course-grade-", uid)
        private = scratch.parent
        notebook = scratch / (re.sub(r"[^\w.-]", "_", name) or "submission.ipynb")
        notebook.write_bytes(data)
        if uid is not None:
            os.chown(notebook, uid, uid)
        report_path, stderr_path = private / "report.jsonl", private / "stderr.txt"
        fd = open_report(report_path)
        group = make_pids_cgroup(limits.max_processes) if confinement.cgroup else None
        config = sandbox_config(
            limits, scratch, notebook, lesson, seed, fd, uid, list(skip), group, confinement.require
        )
        with open(stderr_path, "wb") as stderr:
            proc = start_sandbox(config, fd, scratch, stdin=subprocess.DEVNULL, stderr=stderr)
        timed_out = False
        try:
            proc.wait(timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            kill_all(proc, uid, group)
        cap = limits.max_file_mb * 2**20
        with open(report_path, "rb") as file:
            raw = file.read(cap)
        with open(stderr_path, "rb") as file:
            file.seek(max(0, stderr_path.stat().st_size - 2000))
            tail = file.read().decode("utf-8", "replace")
        ids = [ex.id for ex in lesson_exercises(lesson)]
    return Attempt(
        report=parse_report(raw, ids),
        timed_out=timed_out,
        returncode=proc.returncode,
        stderr=tail,
        skip=list(skip),
        seconds=time.monotonic() - start,
    )


def why_stopped(attempt: Attempt, limits: Limits) -> tuple[str, str]:
    """(exercise status, sentence) for a run that ended without finishing."""
    if attempt.report.refused:
        return EX_CRASHED, (
            "the sandbox could not confine the run as far as this machine allows (no "
            f"{', '.join(attempt.report.refused)}), so the notebook was not run"
        )
    if attempt.timed_out:
        return EX_TIMED_OUT, f"the notebook ran past the {limits.timeout:g} s time limit"
    rc = attempt.returncode
    if rc == -signal.SIGXCPU:
        return EX_TIMED_OUT, f"the notebook used more than {limits.timeout:g} s of CPU time"
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else -rc
        return EX_CRASHED, f"the process running the notebook was killed by signal {name}"
    if rc == 0:
        return EX_CRASHED, "the notebook ended the process early (os._exit or similar)"
    return EX_CRASHED, f"the process running the notebook ended with exit code {rc}"


def run_submission(
    data: bytes,
    name: str,
    lesson: str,
    seed: int,
    limits: Limits,
    confinement: Confinement | None = None,
) -> tuple[Attempt, list[str]]:
    """Run a notebook; if one of its cells ends the run, run it again without that cell."""
    skip: list[int] = []
    notes: list[str] = []
    while True:
        attempt = run_notebook(data, name, lesson, seed, limits, confinement, skip)
        phase = attempt.report.phase
        if attempt.report.done or phase is None or phase[0] != "cell" or len(skip) >= 1:
            return attempt, notes
        _, why = why_stopped(attempt, limits)
        notes.append(
            f"Code cell {phase[1]} stopped the whole run ({why}); the notebook was run again "
            "without that cell."
        )
        skip.append(phase[1])
