"""The sandbox, grader side: what this machine allows, how a run is confined and killed.

``probe_sandbox`` starts a confined child without student code and looks at what it got. The
child side (``sandbox.py``) confines itself from the configuration built here (``config``),
in the environment built here (``environment``); ``kill_all`` ends a run and everything it
started.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import re
import signal
import site
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import course
from course.grading import sandbox
from course.grading.records import Limits, SandboxInfo

SANDBOX = Path(sandbox.__file__).resolve()
FIRST_UID = 60500  # dedicated users for submissions, when the grader runs as root
CANARY = "canary.txt"
# Read-only for submissions, besides Python and the course. Only named files of /etc and /dev:
# as user id 0 a submission could otherwise read root's files (/etc/shadow) or a raw disk.
SYSTEM_READ = (
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/bin",
    "/sbin",
    "/proc",
    "/sys",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/fonts",
    "/etc/matplotlibrc",
)


_CGROUP_COUNTER = iter(range(10**9))


def make_pids_cgroup(max_processes: int) -> Path | None:
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


def free_uids(n: int) -> list[int]:
    """``n`` user ids with no account, no running process and no lease, for submissions."""
    busy = {_process_uid(pid) for pid in _pids()}
    uids: list[int] = []
    uid = FIRST_UID
    while len(uids) < n and uid < FIRST_UID + 1000:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if uid not in busy and (uid in _LEASES or not _leased_elsewhere(uid)):
                uids.append(uid)
        uid += 1
    return uids


# Dedicated users leased by this process (``lease_uid``): each lease is an abstract Unix socket
# bound under the user's name, held while this process lives, seen by every process of the
# machine (of its network namespace) and released by the kernel when this process ends.
_LEASES: dict[int, socket.socket] = {}


def _lease_name(uid: int) -> str:
    return f"\0course-grade-uid-{uid}"


def _leased_elsewhere(uid: int) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(_lease_name(uid))
        except OSError:
            return True
    return False


def lease_uid() -> int | None:
    """A dedicated user id for this process alone, held until it ends (None if none is free).

    Grading processes that run side by side on one machine (the workers of a Ray node) lease
    their users, so that two runs never share one: ending a run kills every process of its user.
    """
    for uid in free_uids(1000):
        if uid in _LEASES:
            continue
        lease = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lease.bind(_lease_name(uid))
        except OSError:  # leased by another process since
            lease.close()
            continue
        _LEASES[uid] = lease
        return uid
    return None


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


def can_use_dedicated_users() -> bool:
    """Whether an unprivileged user could run Python and the course (grader as root)."""
    import torch

    needed = [course.__file__, os.__file__, torch.__file__, sys.executable]
    return (
        hasattr(os, "geteuid")
        and os.geteuid() == 0
        and all(_others_can_read(Path(p).resolve()) for p in needed)
    )


def probe_sandbox(limits: Limits, uids: Sequence[int] | None = None) -> SandboxInfo:
    """Start a confined child without student code and look at what it got.

    Args:
        limits: the limits of the runs to come.
        uids: the dedicated user to try the probe as (default: a free one, where the grader
            runs as root); ``[]`` tries none.
    """
    if uids is None:
        uids = free_uids(1) if can_use_dedicated_users() else []
    for uid in [*uids[:1], None]:
        got = _probe(limits, uid)
        if got is not None:
            held, isolated, in_cgroup = got
            if in_cgroup:
                process_limit = "cgroup"
            elif uid is None and os.geteuid() == 0:
                process_limit = "none"
            else:
                process_limit = "rlimit"
            return SandboxInfo(
                network_isolated=isolated,
                dedicated_users=uid is not None,
                process_limit=process_limit,
                files_confined=held.get("files") is True,
                pid_namespace=held.get("pid_namespace") is True,
                signals_scoped=held.get("scoped") is True,
                landlock_abi=held.get("landlock") if isinstance(held.get("landlock"), int) else 0,
            )
    return SandboxInfo(False, False, "none" if os.geteuid() == 0 else "rlimit")


def _probe(limits: Limits, uid: int | None) -> tuple[dict, bool, bool] | None:
    """(what the child says holds, network isolated, inside its cgroup) for a probe child (it
    runs no student code, so what it says is trusted), or None when it failed."""
    with contextlib.ExitStack() as stack:
        scratch = private_folder(stack, "course-probe-", uid)
        group = make_pids_cgroup(limits.max_processes)
        report_path = scratch.parent / "report.jsonl"
        fd = open_report(report_path)
        config = sandbox_config(limits, scratch, scratch / "none.ipynb", "", 0, fd, uid, [], group)
        config["probe"] = True
        proc = start_sandbox(config, fd, scratch, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
        got = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            start = _start_line(report_path.read_bytes())
            if start is not None:
                with contextlib.suppress(OSError):
                    isolated = _namespace(proc.pid, "net") != _namespace("self", "net")
                    # The child is process 1 of a PID namespace made by the process we started.
                    pid_ns = _namespace(proc.pid, "pid_for_children") != _namespace("self", "pid")
                    start["pid_namespace"] = start.get("pid_namespace") is True and pid_ns
                    in_cgroup = group is not None and proc.pid in _cgroup_pids(group)
                    got = (start, isolated, in_cgroup)
                if uid is not None and _process_uid(proc.pid) != uid:
                    got = None
                break
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            proc.stdin.close()
        kill_all(proc, uid, group)
        return got


def _start_line(data: bytes) -> dict | None:
    for line in data.split(b"\n"):
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict) and item.get("type") == "start":
                return item
    return None


def _namespace(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def private_folder(stack: contextlib.ExitStack, prefix: str, uid: int | None) -> Path:
    """A fresh private folder holding the run's scratch folder (returned), its report and a
    canary file that the sandbox must be unable to read or write."""
    private = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
    scratch = private / "scratch"
    scratch.mkdir()
    (private / CANARY).write_text("not for submissions\n")
    if uid is not None:
        os.chmod(private, 0o711)
        os.chmod(private / CANARY, 0o644)
        os.chown(scratch, uid, uid)
    return scratch


@functools.lru_cache(1)
def read_paths() -> tuple[str, ...]:
    """What a submission may read: the system's programs and libraries, a few files of /etc,
    Python, its packages (those ``.pth`` files add included) and the course. Nothing else."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots.add(str(Path(course.__file__).resolve().parent))
    for site_dir in site.getsitepackages():
        roots.add(site_dir)
        for pth in Path(site_dir).glob("*.pth"):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                for line in pth.read_text().splitlines():
                    line = line.strip()
                    if line and not line.startswith(("#", "import ")):
                        roots.add(str(Path(site_dir, line).resolve()))
    roots |= set(SYSTEM_READ)
    return tuple(sorted(str(Path(r).resolve()) for r in roots if Path(r).exists()))


def readable_by_submissions(path: Path) -> str | None:
    """The folder of ``read_paths`` that holds ``path``, if any (its contents would be open to
    every submission)."""
    resolved = path.resolve()
    for root in read_paths():
        if resolved.is_relative_to(root):
            return root
    return None


def sandbox_config(
    limits: Limits,
    scratch: Path,
    notebook: Path,
    lesson: str,
    seed: int,
    fd: int,
    uid: int | None,
    skip: list[int],
    group: Path | None = None,
    require: Sequence[str] = (),
) -> dict:
    """The child's whole configuration (``sandbox.py`` reads it from its command line).

    ``require`` names what must hold (``SandboxInfo.required``); a child that cannot confine
    itself that far refuses to run the notebook.
    """
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
        "read_paths": list(read_paths()),
        "write_paths": [str(scratch)],
        "canary": str(scratch.parent / CANARY),
        "require": list(require),
    }


def _nproc_limit(limits: Limits) -> int:
    # Without a dedicated user the limit counts every process of the grader's user: leave room.
    mine = os.getuid()
    current = sum(1 for pid in _pids() if _process_uid(pid) == mine)
    return current * 4 + limits.max_processes


def sandbox_command(config: dict) -> list[str]:
    return [sys.executable, "-s", str(SANDBOX), json.dumps(config)]


def open_report(path: Path) -> int:
    """A write-only, append-only descriptor on a new report file that only the grader reads."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def start_sandbox(
    config: dict, report_fd: int, scratch: Path, *, stdin: int, stderr: Any
) -> subprocess.Popen:
    """Start the sandbox child in ``scratch`` in a session of its own, with the report's
    descriptor and nothing of the grader's environment; the grader's copy of the descriptor is
    closed whatever happens, so the child holds the only one."""
    try:
        return subprocess.Popen(
            sandbox_command(config),
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            pass_fds=(report_fd,),
            cwd=scratch,
            env=environment(scratch),
            start_new_session=True,
        )
    finally:
        os.close(report_fd)


def environment(scratch: Path) -> dict[str, str]:
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


def kill_all(proc: subprocess.Popen, uid: int | None, group: Path | None) -> None:
    """End the child, its process group and every process of its cgroup or dedicated user."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Processes that left the group (setsid) are found by their cgroup or their user.
    if group is not None:
        _remove_cgroup(group)
    if uid is not None:
        _sweep(lambda: [pid for pid in _pids() if _process_uid(pid, live_only=True) == uid])
