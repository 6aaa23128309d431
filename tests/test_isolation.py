"""Tests of the sandbox's confinement (``isolation.py``, ``sandbox.confine``) and of the cache's
signatures: what holds is measured on this machine, and grading refuses when it is weaker than
the teacher guide promises."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from course.grading import grade as g
from course.grading import isolation
from course.grading.gradebook import ResultCache
from course.grading.run import run_notebook, why_stopped


def landlock_abi() -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return max(int(libc.syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), 1)), 0)


needs_landlock = pytest.mark.skipif(
    landlock_abi() < 1, reason="this kernel has no Landlock (Linux 5.13+, enabled at boot)"
)

CONFINED = """
import json, os, signal, subprocess, sys, time
sys.path.insert(0, os.path.dirname(sys.argv[2]))
import sandbox
config = json.loads(sys.argv[1])
held = sandbox.confine(config)
seen = {"held": held, "pid": os.getpid()}
def attempt(name, action):
    try:
        action()
        seen[name] = "allowed"
    except OSError as exc:
        seen[name] = type(exc).__name__
attempt("read outside", lambda: open(config["canary"]).read())
attempt("write outside", lambda: open(config["canary"] + ".new", "w").close())
attempt("write scratch", lambda: open(os.path.join(config["scratch"], "x"), "w").close())
attempt("read stdlib", lambda: open(os.__file__).read())
attempt("signal grader", lambda: os.kill(int(sys.argv[3]), 0))
child = subprocess.Popen(["sleep", "300"], start_new_session=True)
seen["child"] = child.pid
os.write(int(config["result_fd"]), (json.dumps(seen) + "\\n").encode())
os._exit(0)
"""


def run_confined(tmp_path: Path) -> dict:
    """Confine a child as a run would be (without the notebook), let it try things, report."""
    with contextlib.ExitStack() as stack:
        scratch = isolation.private_folder(stack, "course-test-", None)
        report = scratch.parent / "report.jsonl"
        fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        config = isolation.sandbox_config(
            g.Limits(), scratch, scratch / "n.ipynb", "", 0, fd, None, []
        )
        try:
            proc = subprocess.run(
                [sys.executable, "-s", "-c", CONFINED, json.dumps(config)]
                + [str(isolation.SANDBOX), str(os.getpid())],
                pass_fds=(fd,),
                env=isolation.environment(scratch),
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            os.close(fd)
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(report.read_text())
        seen["canary intact"] = (scratch.parent / isolation.CANARY).exists() and not (
            scratch.parent / (isolation.CANARY + ".new")
        ).exists()
        return seen


@needs_landlock
def test_confined_child_reads_and_writes_only_what_it_may(tmp_path: Path) -> None:
    seen = run_confined(tmp_path)
    assert seen["held"]["files"] is True and seen["held"]["landlock"] >= 1
    assert seen["read outside"] == "PermissionError"
    assert seen["write outside"] == "PermissionError" and seen["canary intact"]
    assert seen["write scratch"] == "allowed" and seen["read stdlib"] == "allowed"


def test_confined_child_cannot_signal_out_and_leaves_nothing_behind(tmp_path: Path) -> None:
    seen = run_confined(tmp_path)
    if not seen["held"]["pid_namespace"]:
        pytest.skip("unprivileged user namespaces are disabled here: no PID namespace")
    assert seen["pid"] == 1  # process 1 of its own PID namespace
    assert seen["signal grader"] == "ProcessLookupError"  # the grader does not exist in there
    # The child's `sleep` (in the namespace) died with it: no `sleep 300` of ours is left.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _sleepers():
        time.sleep(0.05)
    assert _sleepers() == []


def _sleepers() -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00300\x00":
                if "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
                    found.append(int(pid))
    return found


@needs_landlock
def test_probe_finds_what_the_guide_promises_on_this_kernel() -> None:
    info = g.probe_sandbox(g.Limits())
    assert info.files_confined and info.landlock_abi == landlock_abi()
    assert info.weaknesses() == [] or not info.pid_namespace
    assert ("files confined by Landlock ABI" in info.describe()) is True
    assert "files" in info.required()


WEAK = g.SandboxInfo(network_isolated=False, dedicated_users=False, process_limit="rlimit")


def empty_class(folder: Path) -> Path:
    for student in ("ann", "ben"):
        (folder / "subs" / student).mkdir(parents=True)
        (folder / "subs" / student / "01_mdps.ipynb").write_text("")  # never run: fast
    return folder / "subs"


def test_weaker_confinement_is_refused_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(g, "probe_sandbox", lambda limits: WEAK)
    subs = empty_class(tmp_path)
    out = tmp_path / "grades" / "grades.csv"
    with pytest.raises(g.GradeError, match="--allow-weak-isolation") as error:
        g.grade_class([subs], out=out, feedback=None, progress=False)
    assert "files are not confined" in str(error.value)
    assert "no PID namespace" in str(error.value) and "network is not cut off" in str(error.value)
    assert not out.parent.exists()  # refused before writing anything
    results = g.grade_class(
        [subs], out=out, feedback=None, progress=False, allow_weak_isolation=True
    )
    assert len(results.submissions) == 2 and "files NOT confined" in results.summary()
    # Without the network cut off on purpose, the network is not required.
    assert "network" not in " ".join(WEAK.weaknesses(isolate_network=False))


def test_cli_refuses_weak_confinement_and_names_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from course.cli import main

    monkeypatch.setattr(g, "probe_sandbox", lambda limits: WEAK)
    subs = empty_class(tmp_path)
    out = str(tmp_path / "g.csv")
    assert main(["grade", str(subs), "--out", out, "--quiet"]) == 2
    assert "--allow-weak-isolation" in capsys.readouterr().err
    assert main(["grade", str(subs), "--out", out, "--quiet", "--allow-weak-isolation"]) == 0


def test_a_run_weaker_than_required_runs_no_student_code(tmp_path: Path) -> None:
    data = json.dumps({"cells": [], "nbformat": 4, "metadata": {}}).encode()
    confinement = g.Confinement(require=("files", "a confinement no machine has"))
    attempt = run_notebook(data, "n.ipynb", "01_mdps", 0, g.Limits(timeout=60), confinement)
    assert attempt.report.refused == ["a confinement no machine has"]
    assert not attempt.report.done and attempt.report.phase is None
    assert "could not confine" in why_stopped(attempt, g.Limits())[1]


# --- the results cache ------------------------------------------------------------------------


def test_cache_trusts_only_lines_it_signed(tmp_path: Path) -> None:
    path = tmp_path / "grades.cache.jsonl"
    cache = ResultCache(path)
    cache.append({"seed": 5})
    cache.put("a", {"total": 1})
    cache.put("b", {"total": 2})
    key = path.with_suffix(".key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    signed = json.loads(lines[1])
    signed["item"] = signed["item"].replace('"total": 1', '"total": 99')  # a forged score
    lines[1] = json.dumps(signed)
    lines.append(json.dumps({"key": "c", "result": {"total": 5}}))  # the old, unsigned format
    lines.append(json.dumps({"item": json.dumps({"key": "d", "result": {}}), "mac": "0" * 64}))
    path.write_text("\n".join(lines) + "\n")
    again = ResultCache(path)
    assert again.seed == 5 and again.entries == {"b": {"total": 2}} and again.rejected == 3
    key.unlink()  # without its key, nothing in the cache is trusted
    assert ResultCache(path).entries == {}


def test_a_changed_cache_entry_is_regraded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subs = empty_class(tmp_path)
    out = tmp_path / "grades" / "grades.csv"
    first = g.grade_class([subs], out=out, feedback=None, seed=1, progress=False)
    cache = out.with_suffix(".cache.jsonl")
    lines = cache.read_text().splitlines()
    forged = json.loads(lines[-1])
    forged["item"] = forged["item"].replace('"total": 0', '"total": 5')
    cache.write_text("\n".join([*lines[:-1], json.dumps(forged)]) + "\n")
    again = g.grade_class([subs], out=out, feedback=None, progress=False)
    assert again.reused == 1  # the changed entry was not trusted
    assert [r.to_json() for r in again.submissions] == [r.to_json() for r in first.submissions]


def test_outputs_where_submissions_may_read_are_refused(tmp_path: Path) -> None:
    import course

    inside = Path(course.__file__).parent / "grades" / "grades.csv"
    with pytest.raises(g.GradeError, match="which submissions may read"):
        g.grade_class([empty_class(tmp_path)], out=inside, feedback=None, progress=False)
    assert not inside.parent.exists()
