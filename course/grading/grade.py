"""Grade a whole class's notebooks: the engine behind ``course grade``.

For every notebook found, the grader

1. reads it as untrusted bytes (never opening the student's file for writing) and recognises its
   lesson, from the metadata ``course release`` writes into every lesson or, when that was lost,
   from the exercises the code defines and checks;
2. runs it in a child process (``sandbox.py``): its own session and process group, a scratch
   folder holding a copy of the notebook, limits on wall time per cell and per submission, on
   memory, CPU time, file size and process count, a scrubbed environment, no network where the
   OS allows it, and a dedicated unprivileged user when the grader runs as root. The child runs
   the cells, then calls each exercise's ``collect`` on the student's object and reports plain
   data;
3. judges that data here, with ``Exercise.grade``, against references computed in this process,
   which never imports or calls student code. Nothing the child prints or claims as a verdict is
   read; a child that dies, times out or writes garbage costs only the exercises it did not
   report.

Results go to a CSV gradebook (written atomically), one Markdown feedback file per submission,
and a cache next to the gradebook, keyed by the notebook's content, the seed and the course's
source, so an interrupted run resumes without regrading what is done.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import csv
import hashlib
import importlib
import io
import json
import os
import pwd
import queue
import re
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import course
from course.grading import sandbox
from course.grading.core import (
    FAIL,
    MISSING,
    CheckResult,
    Exercise,
    Outcome,
    lesson_exercises,
)
from course.release import LESSON_FORMAT_VERSION

# Lesson formats this grader understands (``course release`` writes the version it produced).
SUPPORTED_VERSIONS = (LESSON_FORMAT_VERSION,)
MAX_NOTEBOOK_BYTES = 256 * 2**20
SANDBOX = Path(sandbox.__file__).resolve()
FIRST_UID = 60500  # dedicated users for submissions, when the grader runs as root

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


# --- finding and reading notebooks -----------------------------------------------------------


def find_notebooks(paths: Iterable[Path | str]) -> list[Path]:
    """Every notebook named or found (recursively) under the given paths, sorted, no duplicates.

    A file named explicitly is graded whatever its extension (so a bad upload gets a row);
    inside folders only ``*.ipynb`` files count, checkpoints excluded.

    Raises:
        GradeError: a path does not exist.
    """
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file():
            found.add(p)
        elif p.is_dir():
            found |= {
                q for q in p.rglob("*.ipynb") if q.is_file() and ".ipynb_checkpoints" not in q.parts
            }
        else:
            raise GradeError(f"{p} does not exist: give notebooks or folders of notebooks")
    return sorted(found)


def student_of(path: Path) -> str:
    """A submission's student: the name of the folder holding it (``<student>/03_dqn.ipynb``)."""
    return path.resolve().parent.name or "unknown"


def read_notebook(data: bytes) -> tuple[dict | None, str | None, str]:
    """Parse untrusted notebook bytes.

    Returns:
        (the notebook's JSON, None, "") or (None, a submission status, why) when it is unusable.
    """
    if not data.strip():
        return None, EMPTY, "The file is empty: save the notebook in Jupyter and submit it again."
    if len(data) > MAX_NOTEBOOK_BYTES:
        return (
            None,
            TOO_LARGE,
            (
                f"The file is {len(data) / 2**20:.0f} MiB; clear the outputs (Edit > Clear All "
                "Outputs), save and submit again."
            ),
        )
    try:
        nb = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return (
            None,
            NOT_JSON,
            (
                "The file is not a Jupyter notebook (it is not JSON): submit the .ipynb file "
                "saved by Jupyter, not an export or a copy of its text."
            ),
        )
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list) or not isinstance(nb.get("nbformat", 4), int):
        return (
            None,
            NOT_NOTEBOOK,
            (
                "The file is JSON but not a Jupyter notebook (no list of cells): submit the .ipynb "
                "file saved by Jupyter."
            ),
        )
    if nb.get("nbformat", 4) < 4:
        return (
            None,
            NOT_NOTEBOOK,
            (
                f"The notebook has the old format {nb.get('nbformat')}; open and save it in a "
                "current Jupyter, then submit it again."
            ),
        )
    return nb, None, ""


def lessons() -> list[str]:
    """Every lesson that has registered exercises, in order."""
    from course.grading.core import EXERCISES

    return sorted({ex.lesson for ex in EXERCISES.values()})


def recognise(nb: dict, path: Path) -> tuple[str, str | None, str]:
    """The lesson of a notebook.

    The metadata ``course release`` writes (``{"course": {"lesson", "version"}}``) decides;
    without it, the exercises the code checks (``check("mdp.q_from_v", ...)``) and defines; last,
    the file's name.

    Returns:
        (lesson, None, how it was recognised) or (lesson or "", a submission status, why).
    """
    meta = nb.get("metadata", {})
    meta = meta.get("course") if isinstance(meta, dict) else None
    known = lessons()
    if isinstance(meta, dict) and "lesson" in meta:
        lesson, version = str(meta["lesson"])[:100], meta.get("version")
        if version not in SUPPORTED_VERSIONS:
            return (
                lesson,
                UNKNOWN_VERSION,
                (
                    f"The notebook says it is version {version!r} of lesson {lesson}; this grader "
                    f"reads versions {', '.join(map(str, SUPPORTED_VERSIONS))}: update the course "
                    "package (or submit the lesson as distributed)."
                ),
            )
        if lesson not in known:
            return (
                lesson,
                UNKNOWN_LESSON,
                (
                    f"The notebook says it is lesson {lesson!r}, which has no graded exercises "
                    f"here (graded lessons: {', '.join(known)})."
                ),
            )
        return lesson, None, "metadata"
    code = "\n".join(source for _, source in sandbox.code_cells(nb))
    scores = {}
    for lesson in known:
        score = 0
        for ex in lesson_exercises(lesson):
            score += 2 * bool(re.search(rf"""check\(\s*["']{re.escape(ex.id)}["']""", code))
            score += bool(re.search(rf"^\s*(def|class)\s+{re.escape(ex.name)}\b", code, re.M))
        if score:
            scores[lesson] = score
    best = sorted(scores, key=lambda k: (-scores[k], k))
    if best and (len(best) == 1 or scores[best[0]] > scores[best[1]]):
        return best[0], None, "exercises"
    if path.stem in known:
        return path.stem, None, "file name"
    return (
        "",
        UNKNOWN_LESSON,
        (
            "No exercise of a graded lesson was found in this notebook, and its metadata does not "
            f"name a lesson (graded lessons: {', '.join(known)}): submit the lesson notebook."
        ),
    )


# --- the sandbox ----------------------------------------------------------------------------


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


_CGROUP_COUNTER = iter(range(10**9))


def _make_pids_cgroup(max_processes: int) -> Path | None:
    """A fresh pids cgroup (v1 or v2) capped at ``max_processes`` tasks, when this process may
    make one (root, pids controller mounted); None otherwise."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    try:
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    paths = {}
    for line in own:
        _, controllers, where = line.split(":", 2)
        paths[controllers] = where.lstrip("/")
    candidates = []
    if "pids" in paths:
        candidates.append(Path("/sys/fs/cgroup/pids") / paths["pids"])
    if "" in paths:
        candidates.append(Path("/sys/fs/cgroup") / paths[""])
    name = f"course-grade-{os.getpid()}-{next(_CGROUP_COUNTER)}"
    for parent in candidates:
        group = parent / name
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            (group / "pids.max").write_text(str(max_processes))
            return group
        except OSError:
            _remove_cgroup(group)
    return None


def _cgroup_pids(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _remove_cgroup(group: Path) -> None:
    _sweep(lambda: _cgroup_pids(group))
    for _ in range(100):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def _sweep(find: Callable[[], list[int]]) -> None:
    """Kill every process ``find`` lists until none is left (stopped ones cannot fork)."""
    for round_ in range(400):
        left = find()
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP if round_ % 2 == 0 else signal.SIGKILL)
        time.sleep(0.005)


def _others_can_read(path: Path) -> bool:
    """Whether a user without privileges can reach ``path`` (every folder above it traversable)."""
    for p in [path, *path.parents]:
        try:
            mode = p.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IROTH or (stat.S_ISDIR(mode) and not mode & stat.S_IXOTH):
            return False
    return True


def _free_uids(n: int) -> list[int]:
    """``n`` user ids with no account and no running process, for submissions."""
    busy = {_process_uid(pid) for pid in _pids()}
    uids: list[int] = []
    uid = FIRST_UID
    while len(uids) < n and uid < FIRST_UID + 1000:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if uid not in busy:
                uids.append(uid)
        uid += 1
    return uids


def _pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def _process_uid(pid: int, live_only: bool = False) -> int | None:
    """The real user id of a process (None when gone, or a zombie with ``live_only``)."""
    try:
        with open(f"/proc/{pid}/status") as file:
            text = file.read()
    except OSError:
        return None
    if live_only and re.search(r"^State:\s+Z", text, re.M):
        return None
    match = re.search(r"^Uid:\s+(\d+)", text, re.M)
    return int(match.group(1)) if match else None


def _can_use_dedicated_users() -> bool:
    """Whether an unprivileged user could run Python and the course (grader as root)."""
    import torch

    needed = [course.__file__, os.__file__, torch.__file__, sys.executable]
    return (
        hasattr(os, "geteuid")
        and os.geteuid() == 0
        and all(_others_can_read(Path(p).resolve()) for p in needed)
    )


def probe_sandbox(limits: Limits) -> SandboxInfo:
    """Start a confined child without student code and look at what it got."""
    uids = _free_uids(1) if _can_use_dedicated_users() else []
    for uid in [*uids[:1], None]:
        got = _probe(limits, uid)
        if got is not None:
            isolated, in_cgroup = got
            if in_cgroup:
                process_limit = "cgroup"
            elif uid is None and os.geteuid() == 0:
                process_limit = "none"
            else:
                process_limit = "rlimit"
            return SandboxInfo(isolated, uid is not None, process_limit)
    return SandboxInfo(False, False, "none" if os.geteuid() == 0 else "rlimit")


def _probe(limits: Limits, uid: int | None) -> tuple[bool, bool] | None:
    """(network isolated, inside its cgroup) for a probe child, or None when it failed."""
    with contextlib.ExitStack() as stack:
        private = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="course-probe-")))
        scratch = private / "scratch"
        scratch.mkdir()
        if uid is not None:
            os.chown(scratch, uid, uid)
            os.chmod(private, 0o711)
        group = _make_pids_cgroup(limits.max_processes)
        report_path = private / "report.jsonl"
        fd = os.open(report_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        config = _config(limits, scratch, scratch / "none.ipynb", "", 0, fd, uid, [], group)
        config["probe"] = True
        try:
            proc = subprocess.Popen(
                _command(config),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(fd,),
                cwd=scratch,
                env=_environment(scratch),
                start_new_session=True,
            )
        finally:
            os.close(fd)
        got = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if b'"start"' in report_path.read_bytes():
                with contextlib.suppress(OSError):
                    isolated = os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink(
                        "/proc/self/ns/net"
                    )
                    in_cgroup = group is not None and proc.pid in _cgroup_pids(group)
                    got = (isolated, in_cgroup)
                if uid is not None and _process_uid(proc.pid) != uid:
                    got = None
                break
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            proc.stdin.close()
        _kill_all(proc, uid, group)
        return got


def _config(
    limits: Limits,
    scratch: Path,
    notebook: Path,
    lesson: str,
    seed: int,
    fd: int,
    uid: int | None,
    skip: list[int],
    group: Path | None = None,
) -> dict:
    return {
        "cgroup": str(group) if group is not None else None,
        "scratch": str(scratch),
        "notebook": str(notebook),
        "lesson": lesson,
        "seed": seed,
        "result_fd": fd,
        "uid": uid,
        "skip_cells": skip,
        "timeout": limits.timeout,
        "cell_timeout": limits.cell_timeout,
        "memory_bytes": limits.memory_mb * 2**20,
        "cpu_seconds": int(limits.timeout) + 5,
        "file_bytes": limits.max_file_mb * 2**20,
        "max_processes": limits.max_processes if uid is not None else _nproc_limit(limits),
        "isolate_network": limits.isolate_network,
    }


def _nproc_limit(limits: Limits) -> int:
    # Without a dedicated user the limit counts every process of the grader's user: leave room.
    mine = os.getuid()
    current = sum(1 for pid in _pids() if _process_uid(pid) == mine)
    return current * 4 + limits.max_processes


def _command(config: dict) -> list[str]:
    return [sys.executable, "-s", str(SANDBOX), json.dumps(config)]


def _environment(scratch: Path) -> dict[str, str]:
    """The whole environment of a submission: nothing of the grader's (no tokens, no paths)."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str(scratch),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONSAFEPATH": "1",
        "TQDM_DISABLE": "1",
    }


def _kill_all(proc: subprocess.Popen, uid: int | None, group: Path | None) -> None:
    """End the child, its process group and every process of its cgroup or dedicated user."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Processes that left the group (setsid) are found by their cgroup or their user.
    if group is not None:
        _remove_cgroup(group)
    if uid is not None:
        _sweep(lambda: [pid for pid in _pids() if _process_uid(pid, live_only=True) == uid])


# --- one run of one notebook -----------------------------------------------------------------


@dataclass
class Report:
    """What a child reported, parsed as untrusted data."""

    done: bool = False
    network: str = "unknown"
    phase: tuple[str, Any] | None = None  # ("cell", index) or ("exercise", id) last started
    cell_errors: dict[int, dict] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)


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
        if kind == "start":
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
    uid: int | None = None,
    skip: Sequence[int] = (),
    cgroup: bool = False,
) -> Attempt:
    """Run one notebook's bytes once in a confined child and parse its report.

    With ``cgroup``, the run gets a pids cgroup of its own (see ``probe_sandbox``).
    """
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        private = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="course-grade-")))
        scratch = private / "scratch"
        scratch.mkdir()
        notebook = scratch / (re.sub(r"[^\w.-]", "_", name) or "submission.ipynb")
        notebook.write_bytes(data)
        if uid is not None:
            os.chmod(private, 0o711)
            os.chown(scratch, uid, uid)
            os.chown(notebook, uid, uid)
        report_path, stderr_path = private / "report.jsonl", private / "stderr.txt"
        fd = os.open(report_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        group = _make_pids_cgroup(limits.max_processes) if cgroup else None
        config = _config(limits, scratch, notebook, lesson, seed, fd, uid, list(skip), group)
        with open(stderr_path, "wb") as stderr:
            try:
                proc = subprocess.Popen(
                    _command(config),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    pass_fds=(fd,),
                    cwd=scratch,
                    env=_environment(scratch),
                    start_new_session=True,
                )
            finally:
                os.close(fd)
        timed_out = False
        try:
            proc.wait(timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_all(proc, uid, group)
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


def _why_stopped(attempt: Attempt, limits: Limits) -> tuple[str, str]:
    """(exercise status, sentence) for a run that ended without finishing."""
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
    uid: int | None = None,
    cgroup: bool = False,
) -> tuple[Attempt, list[str]]:
    """Run a notebook; if one of its cells ends the run, run it again without that cell."""
    skip: list[int] = []
    notes: list[str] = []
    while True:
        attempt = run_notebook(data, name, lesson, seed, limits, uid, skip, cgroup)
        phase = attempt.report.phase
        if attempt.report.done or phase is None or phase[0] != "cell" or len(skip) >= 1:
            return attempt, notes
        _, why = _why_stopped(attempt, limits)
        notes.append(
            f"Code cell {phase[1]} stopped the whole run ({why}); the notebook was run again "
            "without that cell."
        )
        skip.append(phase[1])


# --- judging ---------------------------------------------------------------------------------

_GRADERS: dict[tuple[str, int], Exercise] = {}


def _grader(exercise: Exercise, seed: int) -> Exercise:
    """A copy of ``exercise`` that computes each reference answer once per seed, not once per
    submission (every submission is judged on the same cases)."""
    key = (exercise.id, seed)
    if key not in _GRADERS:
        grader = copy.copy(exercise)
        memo: dict[int, Any] = {}
        probe = type(exercise).probe

        def cached_probe(obj: Any, case: Any) -> Any:
            if obj == grader.reference:
                index = case.data.get("index")
                if index not in memo:
                    memo[index] = probe(grader, obj, case)
                return memo[index]
            return probe(grader, obj, case)

        cases = exercise.build_cases(seed)
        grader.probe = cached_probe  # type: ignore[method-assign]
        grader.build_cases = lambda seed_: cases if seed_ == seed else exercise.build_cases(seed_)
        _GRADERS[key] = grader
    return _GRADERS[key]


def _problem_message(exercise: Exercise, code: str) -> tuple[str, str]:
    if code == "missing":
        return MISSING, f"No `{exercise.name}` is defined in the notebook."
    if code == "reference":
        module = importlib.import_module("course." + exercise.id.split(".", 1)[0])
        return FAIL, exercise.unusable(getattr(module, exercise.name)) or ""
    wrong = 0 if exercise.kind == "function" else (lambda: None)
    return FAIL, exercise.unusable(wrong) or f"`{exercise.name}` cannot be used as an answer."


def judge(lesson: str, seed: int, attempt: Attempt, limits: Limits) -> list[CheckResult]:
    """Judge every exercise of ``lesson`` from a run's report, on this side."""
    results = []
    stopped = not attempt.report.done
    phase = attempt.report.phase
    for exercise in lesson_exercises(lesson):
        max_score = sum(exercise.parts.values())
        entry = attempt.report.results.get(exercise.id)

        def result(status: str, message: str, exercise: Exercise = exercise) -> CheckResult:
            return CheckResult(exercise.id, status, 0, sum(exercise.parts.values()), message)

        if entry is None:
            if stopped:
                status, why = _why_stopped(attempt, limits)
                if phase != ("exercise", exercise.id):
                    status = EX_NOT_RUN
                    why = f"{why} before `{exercise.name}` could be tried"
                else:
                    why = f"{why} while `{exercise.name}` was being tried"
                results.append(result(status, why[0].upper() + why[1:] + "."))
            else:
                results.append(result(EX_CRASHED, "No result came back for this exercise."))
        elif isinstance(entry.get("problem"), str):
            status, message = _problem_message(exercise, entry["problem"])
            results.append(result(status, message))
        elif "timeout" in entry:
            results.append(
                result(
                    EX_TIMED_OUT,
                    f"`{exercise.name}` did not finish its cases in time (each case may take "
                    f"{exercise.time_limit:g} s): look for a loop that never ends.",
                )
            )
        elif isinstance(entry.get("outcomes"), list):
            n_cases = len(_grader(exercise, seed).build_cases(seed))
            outcomes = [
                None if o is None else Outcome.from_json(o) for o in entry["outcomes"][:n_cases]
            ]
            try:
                results.append(_grader(exercise, seed).grade(outcomes, seed))
            except Exception as exc:  # a malformed report must not stop the class
                results.append(
                    CheckResult(
                        exercise.id,
                        FAIL,
                        0,
                        max_score,
                        f"The grader could not judge this answer ({type(exc).__name__}).",
                    )
                )
        else:
            results.append(
                result(
                    EX_CRASHED,
                    f"The process trying `{exercise.name}` ended abruptly (os._exit, a crash in "
                    "native code, or an answer too large to send back).",
                )
            )
    return results


def grade_notebook(
    path: Path,
    seed: int,
    limits: Limits,
    uid: int | None = None,
    lesson_filter: str | None = None,
    cgroup: bool = False,
) -> SubmissionResult:
    """Grade one notebook file; never raises on a bad submission.

    Args:
        path: the notebook (read only, never written).
        seed: seeds the cases of every exercise.
        limits: limits on the run.
        uid: a dedicated user to run it as (grader as root), or None.
        lesson_filter: grade only this lesson.
        cgroup: cap and clean up the run's processes with a pids cgroup (grader as root).
    """
    student = student_of(path)
    result = SubmissionResult(notebook=str(path), student=student, lesson="", status="", seed=seed)
    try:
        data = path.read_bytes()
    except OSError as exc:
        result.status, result.notes = NOT_NOTEBOOK, [f"The file cannot be read ({exc.strerror})."]
        return result
    result.sha256 = hashlib.sha256(data).hexdigest()
    nb, problem, why = read_notebook(data)
    if nb is None:
        result.status, result.notes = problem or NOT_NOTEBOOK, [why]
        return result
    lesson, problem, how = recognise(nb, path)
    result.lesson = lesson
    if problem is not None:
        result.status, result.notes = problem, [how]
        return result
    if lesson_filter is not None and lesson != lesson_filter:
        result.status = OTHER_LESSON
        result.notes = [f"This is lesson {lesson}, not {lesson_filter}: it was not graded."]
        return result
    if how != "metadata":
        result.notes.append(f"Lesson {lesson} recognised from the notebook's {how}.")
    attempt, notes = run_submission(data, path.name, lesson, seed, limits, uid, cgroup)
    result.notes += notes
    result.cell_errors = [attempt.report.cell_errors[k] for k in sorted(attempt.report.cell_errors)]
    result.results = judge(lesson, seed, attempt, limits)
    if attempt.report.done:
        result.status = GRADED
    else:
        status, why = _why_stopped(attempt, limits)
        result.status = TIMED_OUT if status == EX_TIMED_OUT else CRASHED
        result.notes.append(why[0].upper() + why[1:] + ".")
    return result


# --- the class -------------------------------------------------------------------------------


def course_fingerprint() -> str:
    """A hash of what decides a grade (the grader, the checks, the graded lessons' reference
    modules): cached results are reused only by the same grader."""
    from course.grading.core import EXERCISES

    root = Path(course.__file__).resolve().parent
    files = {root / "__init__.py", root / "release.py", *root.joinpath("grading").rglob("*.py")}
    files |= {root / f"{ex.id.split('.', 1)[0]}.py" for ex in EXERCISES.values()}
    digest = hashlib.sha256(course.__version__.encode())
    for p in sorted(f for f in files if f.exists()):
        digest.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return digest.hexdigest()[:16]


class ResultCache:
    """Finished results, one JSON line each, appended as they come (so a crash loses nothing).

    The first line of a run records its seed; a later run without ``--seed`` reuses the last
    one, so that resuming grades on the same cases.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}
        self.seed: int | None = None
        if path.exists():
            for line in path.read_bytes().split(b"\n"):
                try:
                    item = json.loads(line)
                except ValueError:
                    continue  # a line cut short by an interruption
                if isinstance(item, dict) and isinstance(item.get("seed"), int) and len(item) == 1:
                    self.seed = item["seed"]
                elif isinstance(item, dict) and isinstance(item.get("key"), str):
                    self.entries[item["key"]] = item.get("result")

    def append(self, item: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(item) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, result: dict) -> None:
        self.entries[key] = result
        self.append({"key": key, "result": result})


def cache_key(sha256: str, seed: int, fingerprint: str, limits: Limits, lesson: str | None) -> str:
    text = json.dumps([sha256, seed, fingerprint, limits.__dict__, lesson], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


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


def grade_class(
    paths: Iterable[Path | str],
    out: Path | str | None = "grades.csv",
    feedback: Path | str | None = "feedback",
    workers: int = 1,
    limits: Limits = Limits(),
    seed: int | None = None,
    lesson: str | None = None,
    fresh: bool = False,
    progress: bool = True,
    on_result: Callable[[SubmissionResult], None] | None = None,
) -> ClassResults:
    """Grade every notebook under ``paths`` and write the gradebook and feedback.

    Args:
        paths: notebooks or folders of them (searched recursively).
        out: the CSV gradebook; the results cache is written beside it
            (``grades.csv`` -> ``grades.cache.jsonl``). None writes neither.
        feedback: folder for one Markdown file per submission (``<student>/<lesson>.md``).
        workers: submissions run at once.
        limits: limits on each submission's run.
        seed: seeds the cases every exercise is tried on; default: the seed of the previous
            run recorded in the cache, else a fresh random one.
        lesson: grade only this lesson (others get an "other lesson" row).
        fresh: ignore cached results (regrade everything).
        progress: show a progress bar on stderr.
        on_result: called with each finished submission (from worker threads).

    Returns:
        The results, sorted by student, lesson and notebook path.

    Raises:
        GradeError: no notebook was found, or an option is invalid.
    """
    notebooks = find_notebooks(paths)
    if not notebooks:
        raise GradeError("no .ipynb notebook found under the given paths")
    if workers < 1:
        raise GradeError(f"--workers is {workers}; it must be at least 1")
    if lesson is not None and lesson not in lessons():
        raise GradeError(f"unknown lesson {lesson!r}; graded lessons: {', '.join(lessons())}")
    cache = ResultCache(Path(out).with_suffix(".cache.jsonl")) if out is not None else None
    if seed is None:
        seed = cache.seed if cache is not None and cache.seed is not None else None
    if seed is None:
        seed = secrets.randbelow(2**31)
    if cache is not None and cache.seed != seed:
        cache.append({"seed": seed})
        cache.seed = seed
    fingerprint = course_fingerprint()
    info = probe_sandbox(limits)
    uids: queue.Queue[int | None] = queue.Queue()
    for uid in _free_uids(workers) if info.dedicated_users else []:
        uids.put(uid)
    while uids.qsize() < workers:
        uids.put(None)

    def one(path: Path) -> tuple[SubmissionResult, bool]:
        key = None
        if cache is not None and not fresh:
            with contextlib.suppress(OSError):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                key = cache_key(digest, seed, fingerprint, limits, lesson)
                cached = cache.get(key)
                if cached is not None:
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        found = SubmissionResult.from_json(cached)
                        found.notebook, found.student = str(path), student_of(path)
                        return found, True
        uid = uids.get()
        try:
            result = grade_notebook(
                path, seed, limits, uid, lesson, cgroup=info.process_limit == "cgroup"
            )
        finally:
            uids.put(uid)
        if cache is not None:
            key = cache_key(result.sha256, seed, fingerprint, limits, lesson)
            cache.put(key, result.to_json())
        return result, False

    from tqdm.auto import tqdm

    results: list[SubmissionResult] = []
    reused = 0
    bar = tqdm(
        total=len(notebooks), desc="grading", unit="notebook", disable=not progress, file=sys.stderr
    )
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for result, was_cached in pool.map(one, notebooks):
            results.append(result)
            reused += was_cached
            bar.update()
            if on_result is not None:
                on_result(result)
    bar.close()
    results.sort(key=lambda r: (r.student, r.lesson, r.notebook))
    if out is not None:
        write_gradebook(results, Path(out))
    if feedback is not None:
        write_feedback(results, Path(feedback))
    return ClassResults(results, seed, info, reused)


# --- writing the results ---------------------------------------------------------------------


def exercise_columns(results: Sequence[SubmissionResult]) -> list[str]:
    """Exercise ids of every lesson present, lesson by lesson, in registry order."""
    present = sorted({r.lesson for r in results if r.lesson in lessons()})
    return [ex.id for lesson in present for ex in lesson_exercises(lesson)]


def gradebook_csv(results: Sequence[SubmissionResult]) -> str:
    columns = exercise_columns(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student", "lesson", *columns, "total", "max", "status", "notebook"])
    for r in results:
        scores = {x.exercise_id: x.score for x in r.results}
        writer.writerow(
            [
                r.student,
                r.lesson,
                *(scores.get(c, "") for c in columns),
                r.total,
                r.max_score,
                r.status,
                r.notebook,
            ]
        )
    return buffer.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_gradebook(results: Sequence[SubmissionResult], path: Path) -> None:
    """Write the CSV gradebook atomically (a reader never sees half a file)."""
    _write_atomic(path, gradebook_csv(results))


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name).strip(".") or "_"


def feedback_markdown(r: SubmissionResult) -> str:
    """The feedback a student reads: what passed, what failed and why."""
    title = f"# {r.lesson or 'Unrecognised notebook'}: feedback for {r.student}"
    lines = [title, "", f"Notebook: `{Path(r.notebook).name}`  "]
    if r.results:
        lines.append(f"Score: **{r.total} / {r.max_score}**  ")
    lines += [f"Status: {r.status} (cases seeded with {r.seed})", ""]
    if r.results:
        lines += ["| Exercise | Result | Score |", "|---|---|---|"]
        lines += [
            f"| `{x.exercise_id}` | {x.status} | {x.score}/{x.max_score} |" for x in r.results
        ]
        lines.append("")
        for x in r.results:
            lines += [f"## `{x.exercise_id}`: {x.status}", "", "```text", x.message, "```", ""]
    if r.cell_errors:
        lines += ["## Cells that raised an error", ""]
        for e in r.cell_errors:
            where = f" at {e['where']}" if e.get("where") else ""
            lines.append(f"- code cell {e['cell']}: `{e['error']}: {e['message']}`{where}")
        lines.append("")
    if r.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in r.notes] + [""]
    return "\n".join(lines)


def write_feedback(results: Sequence[SubmissionResult], folder: Path) -> list[Path]:
    """One Markdown file per submission: ``<folder>/<student>/<notebook stem>.md``."""
    written: list[Path] = []
    used: set[Path] = set()
    for r in results:
        base = folder / _safe(r.student) / _safe(Path(r.notebook).stem)
        target, n = base.with_suffix(".md"), 1
        while target in used:
            n += 1
            target = base.with_name(f"{base.name}-{n}.md")
        used.add(target)
        _write_atomic(target, feedback_markdown(r))
        written.append(target)
    return written


def results_json(results: ClassResults) -> str:
    """The results as JSON, each submission's exercises keyed by exercise id."""
    return json.dumps(
        {
            "seed": results.seed,
            "summary": results.counts(),
            "submissions": [r.to_json() for r in results.submissions],
        },
        indent=2,
    )
