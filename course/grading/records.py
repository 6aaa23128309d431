"""The records of grading: statuses, limits, results and errors (the bottom layer).

Every other stage of ``course grade`` speaks in these terms; this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from course.grading.core import (
    CheckResult,
    lesson_exercises,
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
        """The result ``to_json`` gave, its exercises in the lesson's order again (the cache
        stores them with sorted keys, and the feedback lists them in order)."""
        order = {ex.id: i for i, ex in enumerate(lesson_exercises(str(data["lesson"])))}
        ids = sorted(data["exercises"], key=lambda i: order.get(i, len(order)))
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
                for i, r in ((i, data["exercises"][i]) for i in ids)
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
        files_confined: Landlock lets a submission read only Python, its packages, the course
            and system libraries, and write only its scratch folder.
        pid_namespace: a submission runs as process 1 of a PID namespace of its own: it can
            signal nothing outside, and whatever it starts dies with it.
        signals_scoped: Landlock also scopes signals and abstract sockets (ABI 6).
        landlock_abi: the kernel's Landlock ABI version (0: none).
    """

    network_isolated: bool
    dedicated_users: bool
    process_limit: str = "rlimit"
    files_confined: bool = False
    pid_namespace: bool = False
    signals_scoped: bool = False
    landlock_abi: int = 0

    def required(self, isolate_network: bool = True) -> tuple[str, ...]:
        """What every run must get again (``sandbox.py`` refuses to run a notebook without)."""
        wanted = {
            "files": self.files_confined,
            "pid_namespace": self.pid_namespace,
            "network": self.network_isolated and isolate_network,
        }
        return tuple(k for k, held in wanted.items() if held)

    def weaknesses(self, isolate_network: bool = True) -> list[str]:
        """What the teacher guide promises and this machine does not give, one phrase each."""
        weak = []
        if not self.files_confined:
            weak.append(
                "files are not confined (Landlock needs Linux 5.13 or later, enabled, and the "
                "`landlock` package)"
            )
        if not self.pid_namespace:
            weak.append("no PID namespace (unprivileged user namespaces are disabled)")
        if isolate_network and not self.network_isolated:
            weak.append("the network is not cut off")
        return weak

    def describe(self) -> str:
        net = "network cut off" if self.network_isolated else "network NOT cut off"
        files = (
            f"files confined by Landlock ABI {self.landlock_abi}"
            if self.files_confined
            else "files NOT confined"
        )
        pids = (
            "own PID namespace (signals stay inside; nothing outlives the run)"
            if self.pid_namespace
            else "NO PID namespace"
        )
        scoped = "; signals and abstract sockets scoped by Landlock" if self.signals_scoped else ""
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
        return f"{net}; {files}; {pids}{scoped}; {users}; {procs}"


@dataclass(frozen=True)
class Confinement:
    """How the grader confines the runs of one worker, from what ``probe_sandbox`` found.

    Attributes:
        uid: the dedicated user to run as (grader as root), or None.
        cgroup: give each run a pids cgroup of its own (grader as root).
        require: what the sandbox must put in place or refuse to run (``SandboxInfo.required``).
    """

    uid: int | None = None
    cgroup: bool = False
    require: tuple[str, ...] = ()


@dataclass
class ClassResults:
    """The outcome of grading a class."""

    submissions: list[SubmissionResult]
    seed: int
    sandbox: SandboxInfo
    reused: int = 0
    nodes: dict[str, SandboxInfo] = field(default_factory=dict)  # Ray node -> its confinement
    graded_on: dict[str, int] = field(default_factory=dict)  # Ray node -> notebooks it ran

    def isolation(self) -> str:
        """What confined the submissions: this machine's sandbox, or each Ray node's."""
        if not self.nodes:
            return self.sandbox.describe()
        n = len(self.nodes)
        described = {name: info.describe() for name, info in self.nodes.items()}
        counts = " + ".join(str(self.graded_on.get(name, 0)) for name in sorted(self.nodes))
        where = (
            f"graded on {n} Ray node{'s' * (n > 1)} ({counts} notebooks), "
            f"{'each ' * (n > 1)}probed first"
        )
        if len(set(described.values())) == 1:
            return f"{where}: {next(iter(described.values()))}"
        return f"{where}: " + " | ".join(f"{k}: {v}" for k, v in sorted(described.items()))

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
            f"run); seed {self.seed}; {self.isolation()}."
        )
