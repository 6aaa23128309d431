"""Tests of ``course grade --ray`` that need no cluster (``tests/test_sweep.py`` grades a class
on a real two-node Ray cluster and compares it with a local run).

Without ``--ray`` nothing imports Ray, and grading works where Ray cannot be imported; the
errors for a missing Ray or an unreachable cluster say what to do; a worker refuses to grade
where its node confines less than promised or runs other grading code; and the teacher's side
refuses a weak node, shows its progress bar and writes what a local run writes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from course.grading import cluster
from course.grading import grade as g
from course.grading.core import lesson_exercises
from course.grading.gradebook import course_fingerprint
from course.release import LESSON_FORMAT_VERSION

LIMITS = g.Limits(timeout=60, cell_timeout=10, memory_mb=1280)
Q_FROM_V = """import torch
def q_from_v(mdp, V):
    V = torch.where(mdp.terminal, torch.zeros_like(V), V.to(mdp.dtype))
    return mdp.R + mdp.gamma * torch.einsum("sat,t->sa", mdp.P, V)
"""
STRONG = g.SandboxInfo(True, False, "cgroup", True, True, True, 7)
WEAK = g.SandboxInfo(False, False, "none")


def _class(root: Path) -> Path:
    """Two students of Lesson 01: one answer right, and a file that is not a notebook."""
    nb = new_notebook(cells=[new_code_cell(Q_FROM_V)])
    nb.metadata["course"] = {"lesson": "01_mdps", "version": LESSON_FORMAT_VERSION}
    (root / "subs" / "ann").mkdir(parents=True)
    nbformat.write(nb, root / "subs" / "ann" / "01_mdps.ipynb")
    (root / "subs" / "ben").mkdir()
    (root / "subs" / "ben" / "01_mdps.ipynb").write_text('{"cells": [')
    return root / "subs"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GRADE_WITHOUT_RAY = """
import sys
from course.cli import main
args = ["grade", "subs", "--seed", "3", "--quiet", "--timeout", "60"]
assert main(args) == 0
print("ray imported:", "ray" in sys.modules)
sys.modules["ray"] = None  # from here on, `import ray` fails as if Ray were not installed
assert main([*args, "--fresh", "--out", "again/grades.csv", "--feedback", "again/fb"]) == 0
print("rc with --ray:", main([*args, "--ray"]))
"""


def test_grading_without_ray_never_imports_it(tmp_path: Path) -> None:
    _class(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", GRADE_WITHOUT_RAY],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ray imported: False" in proc.stdout
    assert "rc with --ray: 2" in proc.stdout
    assert "--ray needs Ray, which is not installed" in proc.stderr
    assert "pip install 'rl-transfer-course[cluster]'" in proc.stderr
    first = (tmp_path / "grades" / "grades.csv").read_text()
    assert first == (tmp_path / "again" / "grades.csv").read_text()
    full = sum(sum(ex.parts.values()) for ex in lesson_exercises("01_mdps"))
    assert f",1,0,0,0,0,1,{full},graded," in first  # ann: q_from_v right, the rest missing


def test_an_unreachable_cluster_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (`pip install -e '.[dev]'`)")
    from course.cli import main

    subs = _class(tmp_path)
    address = f"127.0.0.1:{_closed_port()}"
    out = ["--out", str(tmp_path / "g" / "grades.csv"), "--quiet"]
    assert main(["grade", str(subs), *out, "--ray", address]) == 2
    err = capsys.readouterr().err
    assert f"no Ray cluster answers at {address}" in err and "ray start --head" in err
    assert not (tmp_path / "g").exists(), "nothing is written when the cluster is unreachable"


def test_an_address_where_no_ray_head_listens_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (`pip install -e '.[dev]'`)")
    with socket.socket() as server:  # answers TCP, but is no Ray head: Ray would wait minutes
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(g.GradeError, match="answers, but not as a Ray cluster's head"):
            g.grade_class([_class(tmp_path)], out=None, feedback=None, ray=address)


def test_an_address_that_is_a_path_says_where_to_put_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from course.cli import main

    subs = _class(tmp_path)
    assert main(["grade", "--ray", str(subs), str(subs)]) == 2
    assert "put --ray after the notebooks" in capsys.readouterr().err


# --- the worker's side, called here as Ray would call it on a node -----------------------------


@pytest.fixture
def fresh_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "_WORKER", {})


def _remote(data: bytes, fingerprint: str, allow_weak: bool) -> dict:
    raw = cluster.grade_remote(
        data, "/class/ann/01_mdps.ipynb", "ann", 3, LIMITS.__dict__, None, fingerprint, allow_weak
    )
    assert isinstance(raw, bytes), "results travel back as bytes"
    return json.loads(raw)


def test_a_worker_that_cannot_confine_refuses(
    fresh_worker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "probe_sandbox", lambda limits, uids=None: WEAK)
    answer = _remote(b'{"cells": [', course_fingerprint(), allow_weak=False)
    assert set(answer) == {"refused"}
    assert "cannot confine submissions" in answer["refused"]
    assert "--allow-weak-isolation" in answer["refused"]
    answer = _remote(b'{"cells": [', course_fingerprint(), allow_weak=True)
    assert answer["result"]["status"] == g.NOT_JSON and answer["result"]["student"] == "ann"
    sandbox = json.loads(cluster.node_sandbox(LIMITS.__dict__, course_fingerprint()))
    assert g.SandboxInfo(**sandbox["sandbox"]) == WEAK and sandbox["refused"] is None


def test_a_worker_with_other_grading_code_refuses(fresh_worker: None) -> None:
    answer = _remote(b'{"cells": [', "0123456789abcdef", allow_weak=True)
    assert "other grading code" in answer["refused"] and "same version" in answer["refused"]


def test_a_worker_grades_as_a_local_run_does(fresh_worker: None, tmp_path: Path) -> None:
    path = _class(tmp_path) / "ann" / "01_mdps.ipynb"
    local = g.grade_notebook(path, 3, LIMITS, lesson_filter=None)
    info, confinement = cluster._worker_setup(LIMITS)
    assert confinement.require == info.required(), "a worker requires what its probe found"
    raw = cluster.grade_remote(
        path.read_bytes(), str(path), g.student_of(path), 3, LIMITS.__dict__, None,
        course_fingerprint(), False,
    )  # fmt: skip
    assert json.loads(raw)["result"] == local.to_json()


def test_leased_users_are_not_handed_out_twice() -> None:
    from course.grading import isolation

    uid = isolation.lease_uid()
    assert uid is not None
    other = subprocess.run(
        [sys.executable, "-c", "from course.grading import isolation as i; print(i.lease_uid())"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode == 0, other.stderr
    assert int(other.stdout) != uid, "another process must not get a user leased here"
    assert uid in isolation.free_uids(1000), "this process may still use its own lease"


# --- the teacher's side, with a stand-in for the cluster ---------------------------------------


class FakeCluster:
    """Stands in for ``RayGrader``: its nodes are named, and it grades through ``grade_remote``
    in this process (the real cluster is tested in tests/test_sweep.py)."""

    nodes = {"127.0.0.1 (node aaaaaaaa)": STRONG, "127.0.0.1 (node bbbbbbbb)": STRONG}
    closed = 0

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.graded_on: dict[str, int] = {}

    def probe(self, limits: g.Limits) -> dict[str, g.SandboxInfo]:
        return dict(self.nodes)

    def grade(
        self,
        jobs: Sequence[tuple[Path, str]],
        seed: int,
        limits: g.Limits,
        lesson: str | None,
        allow_weak: bool,
    ) -> Iterator[g.SubmissionResult]:
        names = sorted(self.nodes)
        for i, (path, student) in enumerate(reversed(jobs)):  # finished in another order
            node = names[i % len(names)]
            self.graded_on[node] = self.graded_on.get(node, 0) + 1
            raw = cluster.grade_remote(
                path.read_bytes(), str(path), student, seed, limits.__dict__, lesson,
                course_fingerprint(), allow_weak,
            )  # fmt: skip
            yield g.SubmissionResult.from_json(cluster._answer(raw, str(path))["result"])

    def close(self) -> None:
        FakeCluster.closed += 1


def test_the_teacher_refuses_a_weak_node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cluster, "RayGrader", FakeCluster)
    weak_node = {**FakeCluster.nodes, "10.0.0.9 (node cccccccc)": WEAK}
    monkeypatch.setattr(FakeCluster, "nodes", weak_node)
    closed = FakeCluster.closed
    with pytest.raises(g.GradeError, match=r"Ray node 10.0.0.9 \(node cccccccc\) cannot confine"):
        g.grade_class([_class(tmp_path)], out=None, feedback=None, ray="10.0.0.1:6379")
    assert FakeCluster.closed == closed + 1, "the cluster is left even when grading stops"


def test_the_teacher_writes_what_a_local_run_writes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    subs = _class(tmp_path)
    local = g.grade_class([subs], tmp_path / "l" / "g.csv", tmp_path / "l" / "fb", seed=3,
                          limits=LIMITS, progress=False)  # fmt: skip
    monkeypatch.setattr(cluster, "RayGrader", FakeCluster)
    remote = g.grade_class([subs], tmp_path / "r" / "g.csv", tmp_path / "r" / "fb", seed=3,
                           limits=LIMITS, ray=True)  # fmt: skip
    err = capsys.readouterr().err
    assert "grading" in err and "2/2" in err, "the same progress bar as a local run"
    assert [r.to_json() for r in remote.submissions] == [r.to_json() for r in local.submissions]
    for name in ("g.csv", "fb/ann/01_mdps.md", "fb/ben/01_mdps.md"):
        assert (tmp_path / "r" / name).read_text() == (tmp_path / "l" / name).read_text()
    assert remote.nodes == FakeCluster.nodes and not local.nodes
    assert remote.graded_on == {name: 1 for name in FakeCluster.nodes}
    assert "graded on 2 Ray nodes (1 + 1 notebooks), each probed first: network cut" in (
        remote.summary()
    )
    assert "Ray" not in local.summary()
