"""The records of grading: statuses, limits, results and errors (the bottom layer).

Every other stage of ``course grade`` speaks in these terms; this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from course.grading.core import (
    CheckResult,
)

# Submission statuses: the first three ran the notebook, the rest never started it.
GRADED, TIMED_OUT, CRASHED = "graded", "timed out", "crashed"
EMPTY, NOT_JSON, NOT_NOTEBOOK, TOO_LARGE = "empty file", "not JSON", "not a notebook", "too large"
UNKNOWN_LESSON, UNKNOWN_VERSION, OTHER_LESSON = "unknown lesson", "unknown version", "other lesson"
# Exercise statuses added to core's when the run itself failed.
EX_TIMED_OUT, EX_CRASHED, EX_NOT_RUN = "timed out", "crashed", "not run"


class GradeError(ValueError):
    """The grading command itself cannot start (no notebook found, bad option)."""


@dataclass(frozen=True)
class Limits:
    """Limits on one run of one submission.

    Attributes:
        timeout: wall-clock seconds for the whole notebook and all its exercises.
        cell_timeout: wall-clock seconds for one cell of the notebook.
        memory_mb: address space of each process, in MiB (a virtual size: keep it well above
            what the notebook uses, torch alone maps several hundred MiB).
        max_processes: processes and threads the submission may have at once.
        max_file_mb: largest file the submission may write, in MiB.
        isolate_network: cut the network off when the OS allows it.
    """

    timeout: float = 600.0
    cell_timeout: float = 120.0
    memory_mb: int = 4096
    max_processes: int = 64
    max_file_mb: int = 64
    isolate_network: bool = True


@dataclass
class SubmissionResult:
    """Everything the grader found out about one notebook."""

    notebook: str
    student: str
    lesson: str
    status: str
    results: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cell_errors: list[dict] = field(default_factory=list)
    sha256: str = ""
    seed: int = 0

    @property
    def total(self) -> int:
        return sum(r.score for r in self.results)

    @property
    def max_score(self) -> int:
        return sum(r.max_score for r in self.results)

    def to_json(self) -> dict:
        return {
            "student": self.student,
            "lesson": self.lesson,
            "notebook": self.notebook,
            "status": self.status,
            "total": self.total,
            "max": self.max_score,
            "seed": self.seed,
            "exercises": {
                r.exercise_id: {k: v for k, v in r.to_json().items() if k != "exercise"}
                for r in self.results
            },
            "notes": list(self.notes),
            "cell_errors": list(self.cell_errors),
            "sha256": self.sha256,
        }

    @classmethod
    def from_json(cls, data: dict) -> SubmissionResult:
        return cls(
            notebook=data["notebook"],
            student=data["student"],
            lesson=data["lesson"],
            status=data["status"],
            results=[
                CheckResult(
                    exercise_id=i,
                    status=r["status"],
                    score=int(r["score"]),
                    max_score=int(r["max_score"]),
                    message=r["message"],
                )
                for i, r in data["exercises"].items()
            ],
            notes=list(data.get("notes", [])),
            cell_errors=list(data.get("cell_errors", [])),
            sha256=data.get("sha256", ""),
            seed=int(data.get("seed", 0)),
        )


@dataclass(frozen=True)
class SandboxInfo:
    """What confinement this machine allows, as measured by ``probe_sandbox``.

    Attributes:
        network_isolated: submissions run in a network namespace of their own.
        dedicated_users: submissions run as an unprivileged user of their own (grader as root).
        process_limit: how the process count is capped: "cgroup" (a pids cgroup, which also
            lets the grader end every process of a run), "rlimit" (RLIMIT_NPROC) or "none"
            (root without cgroups or dedicated users: RLIMIT_NPROC does not bind root).
    """

    network_isolated: bool
    dedicated_users: bool
    process_limit: str = "rlimit"

    def describe(self) -> str:
        net = "network cut off" if self.network_isolated else "network NOT cut off"
        users = (
            "each submission runs as a dedicated unprivileged user"
            if self.dedicated_users
            else "submissions run as your own user"
        )
        procs = {
            "cgroup": "process count capped by a cgroup",
            "rlimit": "process count capped by RLIMIT_NPROC",
            "none": "process count NOT capped",
        }[self.process_limit]
        return f"{net}; {users}; {procs}"


@dataclass
class ClassResults:
    """The outcome of grading a class."""

    submissions: list[SubmissionResult]
    seed: int
    sandbox: SandboxInfo
    reused: int = 0

    def counts(self) -> dict[str, int]:
        graded = sum(s.status == GRADED for s in self.submissions)
        timed_out = sum(s.status == TIMED_OUT for s in self.submissions)
        return {
            "graded": graded,
            "failed to run": len(self.submissions) - graded - timed_out,
            "timed out": timed_out,
        }

    def summary(self) -> str:
        c = self.counts()
        return (
            f"{len(self.submissions)} notebooks: {c['graded']} graded, {c['failed to run']} "
            f"failed to run, {c['timed out']} timed out ({self.reused} reused from an earlier "
            f"run); seed {self.seed}; {self.sandbox.describe()}."
        )
