"""Submissions that attack the teacher's machine, graded as a teacher would: with ``course grade``.

One class, two honest students and one notebook per attack, is graded twice (the second run
resumes from the cache) by the ``course grade`` command, once as root and once as an
unprivileged user. Every attack is written as ordinary notebook cells and knows the paths a
curious student could find (the submissions, the gradebook, the cache and its key, the
installed package). After grading, every honest score, the teacher's files, the installed
package, a process standing in for the teacher's shell and a server on 127.0.0.1 must be as
they were, and nothing any submission started may still be running.

As root, the test creates the unprivileged user itself (``useradd``) and builds it a virtual
environment from Debian's ``/usr/bin/python3`` with packages from this machine's disk, cached
under /var/tmp by the hash of pyproject.toml; run as a normal user, it grades as that user.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib
from test_grade import CORRECT, FULL, POINTS, SETUP, STUB, exercise_cells, write_notebook

import course

ROOT = Path(__file__).resolve().parents[1]
USER = "course-grade-test"
SECRET = "teacher-secret-7f3a"
OUTLIVE_MARKER = "course-attack-outlives-grading"
SEED = 11

HONEST = {
    "honest_full": [SETUP, *exercise_cells()],
    "honest_partial": [
        SETUP,
        *exercise_cells(
            bellman_backup=STUB.format(name="bellman_backup"),
            greedy_policy=STUB.format(name="greedy_policy"),
        ),
    ],
}
EXPECTED = {
    "honest_full": FULL,
    "honest_partial": FULL - POINTS["bellman_backup"] - POINTS["greedy_policy"],
}

# Each attack answers q_from_v honestly (1 point), so its own row shows it was graded.
ATTACKS = {
    "kills_grader": """import os, signal
for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
    try:
        cmdline = open(f'/proc/{pid}/cmdline', 'rb').read()
    except OSError:
        continue
    if b'course' in cmdline or b'grade' in cmdline or b'pytest' in cmdline:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
for target in (os.getppid(), 1):
    try:
        os.kill(target, signal.SIGKILL)
    except OSError:
        pass
""",
    "kills_everything": """import os, signal
for sig in (signal.SIGKILL, signal.SIGTERM):
    try:
        os.kill(-1, sig)
    except OSError:
        pass
for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
    try:
        os.kill(int(pid), signal.SIGKILL)
    except OSError:
        pass
""",
    "reads_peer": """import glob, json, os
stolen = {}
paths = glob.glob({subs!r} + '/**/*.ipynb', recursive=True)
paths += glob.glob('/tmp/course-grade-*/scratch/*.ipynb')
for path in paths:
    try:
        text = open(path).read()
    except OSError:
        continue
    if 'stolen' in text:  # this notebook itself
        continue
    cells = json.loads(text)['cells']
    for cell in cells:
        if cell['cell_type'] == 'code' and 'check(' not in ''.join(cell['source']):
            try:
                exec(''.join(l for l in ''.join(cell['source']).splitlines(True)
                             if not l.lstrip().startswith(('%', '!'))), globals())
            except Exception:
                pass
for path in ({secret!r}, {key!r}, '/etc/shadow', '/dev/vda', '/dev/sda', '/dev/nvme0n1'):
    try:
        stolen[path] = open(path, 'rb').read(64)
    except OSError:
        pass
for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
    try:
        environ = open(f'/proc/{pid}/environ', 'rb').read()
    except OSError:
        continue
    if b'SECRET_TOKEN' in environ:  # the grader's
        stolen[pid] = environ[:200]
if stolen:  # whatever was read comes back in this student's feedback
    raise RuntimeError('stole: ' + repr(stolen)[:250])
open({secret!r}).read()  # PermissionError, in the feedback
""",
    "rewrites_results": """import os
for path in ({out!r}, {cache!r}, {key!r}, {secret!r}):
    try:
        with open(path, 'w') as f:
            f.write('student,total\\nrewrites_results,999\\n')
    except OSError:
        pass
for path in ({feedback!r} + '/honest_full/01_mdps.md', {cache!r}):
    try:
        os.remove(path)
    except OSError:
        pass
""",
    "outlives_grading": """import os, subprocess, sys
code = '''
import os, sys, time
time.sleep(3)
for path in ({out!r}, {feedback!r} + "/honest_full/01_mdps.md"):
    try:
        open(path, "w").write("rewritten after grading")
    except OSError:
        pass
time.sleep(60)
'''
subprocess.Popen([sys.executable, '-c', code, {marker!r}], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, '-c', code, {marker!r}])
    os._exit(0)
""",
    "edits_package": """import os, site, course
root = os.path.dirname(course.__file__)
targets = [os.path.join(root, 'grading', 'core.py'), os.path.join(root, '__init__.py'),
           torch.__file__]
for path in targets:
    try:
        with open(path, 'a') as f:
            f.write('\\nraise SystemExit("package edited")\\n')
    except OSError:
        pass
for folder in [root, *site.getsitepackages()]:
    try:
        with open(os.path.join(folder, 'sitecustomize.py'), 'w') as f:
            f.write('print("pwned")\\n')
    except OSError:
        pass
""",
    "reaches_server": """import socket
for host in ('127.0.0.1', 'localhost'):
    try:
        with socket.create_connection((host, {port}), timeout=2) as s:
            s.sendall(b'pwned')
    except OSError:
        pass
""",
}


def fill(template: str, values: dict[str, object]) -> str:
    """The attack's code with ``{name!r}`` and ``{name}`` replaced by the teacher's paths."""
    for name, value in values.items():
        template = template.replace(f"{{{name}!r}}", repr(value))
        template = template.replace(f"{{{name}}}", str(value))
    return template


def build_class(root: Path, port: int) -> dict[str, Path]:
    """Write the class under ``root/submissions``; return the teacher's paths."""
    paths = {
        "subs": root / "submissions",
        "out": root / "grades" / "grades.csv",
        "cache": root / "grades" / "grades.cache.jsonl",
        "key": root / "grades" / "grades.cache.key",
        "feedback": root / "grades" / "feedback",
        "secret": root / "teacher" / "secret.txt",
    }
    paths["secret"].parent.mkdir(parents=True)
    paths["secret"].write_text(SECRET)
    names = {k: str(v) for k, v in paths.items()}
    for student, cells in HONEST.items():
        write_notebook(paths["subs"] / student / "01_mdps.ipynb", cells)
    for student, attack in ATTACKS.items():
        code = fill(attack, {**names, "marker": OUTLIVE_MARKER, "port": port})
        cells = [SETUP, CORRECT["q_from_v"], 'check("mdp.q_from_v", q_from_v)', code]
        write_notebook(paths["subs"] / student / "01_mdps.ipynb", cells)
    return paths


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@contextlib.contextmanager
def tcp_server() -> Iterator[tuple[int, list[bytes]]]:
    """A server on 127.0.0.1 that records whatever reaches it."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    received.append(conn.recv(100) or b"(connected)")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        stop.set()
        thread.join()
        server.close()


def leftover_processes() -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if OUTLIVE_MARKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
    return found


def as_user(user: tuple[int, int] | None) -> dict:
    """``subprocess`` arguments that run a command as ``user`` (None: as ourselves)."""
    return {} if user is None else {"user": user[0], "group": user[1], "extra_groups": []}


def grade(python: str, root: Path, env: dict[str, str], user: tuple[int, int] | None) -> dict:
    """Run ``course grade`` on the class as the teacher would; return its JSON by student."""
    command = [python, "-m", "course.cli", "grade", "submissions", "--json", "--quiet"]
    command += ["--seed", str(SEED), "--workers", "2", "--timeout", "90", "--cell-timeout", "20"]
    proc = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=600, **as_user(user)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "files confined by Landlock" in proc.stderr and "own PID namespace" in proc.stderr
    data = json.loads(proc.stdout)
    return {s["student"]: s for s in data["submissions"]} | {"_stderr": proc.stderr}


def attack_and_check(
    python: str, root: Path, env: dict[str, str], user: tuple[int, int] | None
) -> None:
    """Grade the class twice (fresh, then resumed) and check that every attack failed."""
    package = Path(
        subprocess.run(
            [python, "-c", "import course, os; print(os.path.dirname(course.__file__))"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            **as_user(user),
        ).stdout.strip()
    )
    site_packages = package.parent if package.parent.name == "site-packages" else None
    with tcp_server() as (port, received):
        paths = build_class(root, port)
        if user is not None:
            for p in [root, *root.rglob("*")]:
                os.chown(p, *user)
        before_package = tree_digest(package)
        before_subs = tree_digest(paths["subs"])
        shell = subprocess.Popen(["sleep", "600"], **as_user(user))
        try:
            first = grade(python, root, env, user)
            time.sleep(4)  # past the moment a process left behind would rewrite the gradebook
            gradebook = paths["out"].read_bytes()
            second = grade(python, root, env, user)
            assert shell.poll() is None, "the teacher's shell was killed"
        finally:
            shell.kill()
            shell.wait()
    assert "reused" in second["_stderr"]
    assert f"({len(HONEST) + len(ATTACKS)} reused from an earlier run)" in second["_stderr"]
    for run in (first, second):
        for student, total in EXPECTED.items():
            assert run[student]["total"] == total, (student, run[student])
        for student in ATTACKS:
            row = run[student]
            assert row["total"] <= 1, (student, row)  # only its own honest answer
            assert row["status"] == "graded", (student, row)
    assert received == [], "a submission reached a server on 127.0.0.1"
    assert leftover_processes() == [], "a process started by a submission outlived grading"
    assert paths["out"].read_bytes() == gradebook
    rows = {r["student"]: r for r in csv.DictReader(paths["out"].open())}
    assert {s: int(rows[s]["total"]) for s in EXPECTED} == EXPECTED
    assert paths["secret"].read_text() == SECRET
    feedback = " ".join(p.read_text() for p in paths["feedback"].rglob("*.md"))
    key = paths["key"].read_text().strip()
    for leaked in (SECRET, key, "stole:"):
        assert leaked not in feedback and leaked not in json.dumps(first)
    assert "PermissionError" in feedback  # the reads were tried, and refused
    assert tree_digest(paths["subs"]) == before_subs
    assert tree_digest(package) == before_package
    if site_packages is not None:
        assert not (site_packages / "sitecustomize.py").exists()


@pytest.fixture(scope="module", autouse=True)
def confinement_holds() -> None:
    """Never let these attacks loose where the grader would refuse to grade (they would kill
    every process they can reach): skip, and say what this machine lacks."""
    from course.grading import grade as g

    weak = g.probe_sandbox(g.Limits()).weaknesses()
    if weak:
        pytest.skip(f"this machine cannot confine submissions ({'; '.join(weak)})")


def test_attacks_fail_when_graded_as_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("grading as root needs root (the unprivileged case is the other test)")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    env["SECRET_TOKEN"] = SECRET  # the grader's environment must not reach a submission either
    root = Path(tempfile.mkdtemp(prefix="course-attacks-root-"))
    try:
        attack_and_check(sys.executable, root, env, None)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_attacks_fail_when_graded_as_a_normal_user() -> None:
    if os.geteuid() != 0:  # already unprivileged: grade as ourselves, with this environment
        root = Path(tempfile.mkdtemp(prefix="course-attacks-user-"))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root)}
        try:
            attack_and_check(sys.executable, root, env | {"SECRET_TOKEN": SECRET}, None)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    user = unprivileged_user()
    venv = user_venv(user)
    root = Path(tempfile.mkdtemp(prefix="course-attacks-user-"))
    os.chmod(root, 0o755)
    env = {"PATH": f"{venv}/bin:/usr/bin:/bin", "HOME": str(root), "SECRET_TOKEN": SECRET}
    try:
        attack_and_check(str(venv / "bin" / "python"), root, env, user)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- the unprivileged user and its environment (root only) ----------------------------------


def unprivileged_user() -> tuple[int, int]:
    """(uid, gid) of the unprivileged user to grade as (created when missing)."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(USER).pw_uid, pwd.getpwnam(USER).pw_gid
    if shutil.which("useradd") is None:
        pytest.skip("no useradd on this machine: cannot create an unprivileged user to grade as")
    made = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            USER,
        ],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot create the user {USER}: {made.stderr.strip()}")
    return pwd.getpwnam(USER).pw_uid, pwd.getpwnam(USER).pw_gid


def user_venv(user: tuple[int, int]) -> Path:
    """A virtual environment the user owns, with the course's dependencies installed from this
    machine's disk and the course copied in; cached by the hash of pyproject.toml."""
    python = Path("/usr/bin/python3")
    if not python.exists():
        pytest.skip("no /usr/bin/python3 to build the unprivileged user's environment from")
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    venv = Path("/var/tmp") / f"course-grade-test-venv-{hashlib.sha256(pyproject).hexdigest()[:12]}"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        venv.mkdir(mode=0o755)
        os.chown(venv, *user)
        pip_env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(venv),
            "PIP_INDEX_URL": "file:///opt/pypi/simple",
            "PIP_EXTRA_INDEX_URL": "file:///opt/pypi-more/simple",
            "PIP_FIND_LINKS": "/opt/wheels",
            "PIP_CONSTRAINT": "/etc/xdg/pip/constraints.txt",
            "PIP_NO_CACHE_DIR": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        deps = tomllib.loads(pyproject.decode())["project"]["dependencies"]
        local = [d for d in deps if not d.startswith("landlock")]
        steps = [
            [str(python), "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "torch==2.13.0", *local],
        ]
        for step in steps:
            done = subprocess.run(
                step, env=pip_env, capture_output=True, text=True, **as_user(user)
            )
            if done.returncode != 0:
                pytest.skip(f"cannot build the user's environment: {done.stderr.strip()[-500:]}")
        # landlock is pure Python and not on this machine's disk: copy the grader's own.
        site = next((venv / "lib").glob("python3*/site-packages"))
        import landlock

        source = Path(landlock.__file__).parent
        shutil.copytree(source, site / "landlock", ignore=shutil.ignore_patterns("__pycache__"))
        for p in [site / "landlock", *(site / "landlock").rglob("*")]:
            os.chown(p, *user)
        (venv / ".complete").touch()
    # The course as it is now, installed by copy (the venv is shared across versions).
    site = next((venv / "lib").glob("python3*/site-packages"))
    shutil.rmtree(site / "course", ignore_errors=True)
    shutil.copytree(
        Path(course.__file__).parent, site / "course", ignore=shutil.ignore_patterns("__pycache__")
    )
    for p in [site / "course", *(site / "course").rglob("*")]:
        os.chown(p, *user)
    return venv
