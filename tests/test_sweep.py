"""Tests for course/sweep.py: sweeps give the same results here and on a real Ray cluster.

The ``cluster`` fixture starts a Ray head and a second worker node on 127.0.0.1
(``tests/sweep_cluster.py``), runs a sweep and grades a small class on them
(``course grade --ray``), inside namespaces it creates: a network namespace with only
loopback up, so that no traffic leaves the machine (Ray binds the machine's outward address
otherwise), and a PID namespace, so that every Ray process ends with the test. It skips only when
Ray is not installed (``pip install -e '.[dev]'`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sweep_cluster
import torch

from course import sweep as sweep_module
from course.sweep import Point, SweepError, describe_ray, grid, sweep

HERE = Path(__file__).resolve().parent


def test_grid_lists_every_combination_seeds_slowest() -> None:
    points = grid(seeds=range(2), configs=["a", "b"], tasks=["x", "y", "z"])
    assert len(points) == 12
    assert points[0] == Point(0, "a", "x") and points[1] == Point(0, "a", "y")
    assert points[-1] == Point(1, "b", "z")
    assert grid([3]) == [Point(3)]


@pytest.mark.parametrize("seeds", [[0.5], ["1"], [True]])
def test_grid_rejects_seeds_that_are_not_integers(seeds) -> None:
    with pytest.raises(TypeError, match="must be integers"):
        grid(seeds)


def _uses_global_generators(point: Point) -> tuple[float, float, float, int]:
    # a careless experiment: global generators, and it leaves them changed
    import random

    return (
        random.random(),
        float(np.random.rand()),
        float(torch.rand(())),
        torch.get_num_threads(),
    )


def test_local_results_depend_only_on_the_point() -> None:
    points = grid(seeds=[4, 5, 4])
    first = sweep(_uses_global_generators, points, progress=False)
    assert first[0] == first[2] != first[1], "the same seed must give the same numbers"
    assert all(r[3] == 1 for r in first), "each point runs with one torch thread"
    alone = sweep(_uses_global_generators, points[1:2], progress=False)
    assert alone == first[1:2], "a point's result must not depend on what ran before it"


def test_sweep_restores_the_callers_state() -> None:
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sweep(_uses_global_generators, grid(range(3)), progress=False)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


def test_points_that_are_not_points_are_seeded_by_position() -> None:
    results = sweep(lambda x: (x, float(torch.rand(()))), ["a", "b"], progress=False)
    assert [r[0] for r in results] == ["a", "b"]
    assert results == sweep(lambda x: (x, float(torch.rand(()))), ["a", "b"], progress=False)


def _fails_on_two(point: Point) -> int:
    if point.seed == 2:
        raise ValueError("no good")
    return point.seed


def test_a_failing_point_is_named() -> None:
    with pytest.raises(SweepError, match=r"point 2 of the sweep \(Point\(seed=2.*ValueError: no"):
        sweep(_fails_on_two, grid(range(4)), progress=False)


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="use one of 'local', 'ray'"):
        sweep(_fails_on_two, [], backend="dask")
    with pytest.raises(ValueError, match="pass backend='ray'"):
        sweep(_fails_on_two, [], address="127.0.0.1:6379")


def test_progress_bar_counts_the_points(capsys) -> None:
    sweep(_fails_on_two, grid(range(2)), desc="seeds")
    err = capsys.readouterr().err
    assert "seeds" in err and "2/2" in err


def test_local_sweep_does_not_import_ray() -> None:
    code = (
        "import sys\nfrom course.sweep import grid, sweep\n"
        "sweep(lambda p: p.seed, grid(range(2)), progress=False)\n"
        "import course.doctor\ncourse.doctor.diagnose('.')\n"
        "print('ray' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


# course doctor's line about Ray (loopback only)


def test_describe_ray_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise sweep_module.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(sweep_module.importlib.metadata, "version", missing)
    detail, fix = describe_ray()
    assert fix is None, "Ray is optional: its absence is not a problem"
    assert "not installed" in detail and "rl-transfer-course[cluster]" in detail


def test_describe_ray_reachable_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (`pip install -e '.[dev]'`)")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    detail, fix = describe_ray()
    assert fix is None and "no cluster named" in detail
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        detail, fix = describe_ray()
        assert fix is None and f"cluster at 127.0.0.1:{port} reachable" in detail
    detail, fix = describe_ray(f"127.0.0.1:{port}", timeout=1)  # closed now
    assert "not reachable" in detail and "ray start --head" in fix
    detail, fix = describe_ray("no-port-here")
    assert "not HOST:PORT" in detail and fix


def test_doctor_reports_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    from course import doctor

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    [found] = [f for f in doctor.diagnose(HERE.parent) if f.topic == "ray"]
    assert found.ok and found.detail == describe_ray()[0]


def test_an_address_that_is_not_a_ray_head_fails_at_once() -> None:
    pytest.importorskip("ray", reason="Ray is not installed (`pip install -e '.[dev]'`)")
    with socket.socket() as server:  # listens, but speaks no gRPC (Ray would wait for minutes)
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="not as a Ray cluster's head"):
            sweep(_fails_on_two, grid(range(2)), backend="ray", address=address, progress=False)
        assert time.monotonic() - started < 30
    assert sweep_module.head_problem(address, timeout=1).startswith("no Ray cluster answers")


def _namespaces() -> list[str]:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing: the Ray test needs it to stay on loopback")
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    return ["unshare", *user, "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[dict, Path]]:
    """Run ``sweep_cluster.py`` once on its class: (its report, the folder it worked in)."""
    pytest.importorskip("ray", reason="Ray is not installed (`pip install -e '.[dev]'`)")
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    sweep_cluster.write_class(temp / "subs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="disabled", RAY_DISABLE_USAGE_STATS="1", OMP_NUM_THREADS="1")
    # Ray's start-up deadlines (60 s) assume an idle machine; a busy one can need more
    env.update(RAY_DASHBOARD_STARTUP_TIMEOUT_S="300", RAY_agent_register_timeout_ms="300000")
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [*_namespaces(), sys.executable, str(HERE / "sweep_cluster.py"), str(temp)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=temp,
        )
        if "timed out during startup" in proc.stderr:
            pytest.fail(
                "Ray could not start its nodes: each raylet gives its agents 15 s to start, and "
                f"this machine was too busy for that in 3 attempts.\n{proc.stderr[-3000:]}"
            )
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"cluster up in {report['cluster_s']} s (head {report['head_s']} s; "
              f"{report['start_attempts']} `ray start`s), sweeps {report['sweep_s']} s, grading "
              f"{report['grade_s']} s, all {time.monotonic() - started:.1f} s")  # fmt: skip
        yield report, temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_sweep_on_a_two_node_ray_cluster(cluster: tuple[dict, Path]) -> None:
    report, _ = cluster
    assert report["alive"] == 2, report
    assert report["addresses"] == ["127.0.0.1"], "every node must be on loopback"
    assert report["nodes_used"] == 2, "the sweep should spread over both nodes"
    local = sweep(sweep_cluster.zero_shot, sweep_cluster.POINTS, progress=False)
    assert report["results"] == local, "results must not depend on where they ran"
    assert len(set(local)) > 1


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_grading_on_a_two_node_ray_cluster_equals_the_local_run(
    cluster: tuple[dict, Path],
) -> None:
    from course.grading.gradebook import ResultCache

    report, temp = cluster
    graded = report["grading"]
    local = sweep_cluster.grade(temp / "subs", temp / "local-grades", ray=False)
    assert graded["submissions"] == [r.to_json() for r in local.submissions]
    ray_out, local_out = temp / "ray-grades", temp / "local-grades"
    assert (ray_out / "grades.csv").read_bytes() == (local_out / "grades.csv").read_bytes()
    assert _files(ray_out / "feedback") == _files(local_out / "feedback")
    ray_cache = ResultCache(ray_out / "grades.cache.jsonl")
    local_cache = ResultCache(local_out / "grades.cache.jsonl")
    assert ray_cache.rejected == 0, "the head signs every line with its own key"
    assert ray_cache.entries == local_cache.entries and len(ray_cache.entries) == 4
    assert ray_cache.seed == local_cache.seed == sweep_cluster.GRADE_SEED
    # a second run on the cluster reuses every result, unchanged
    assert graded["reused"] == 4 and graded["again"] == graded["submissions"]
    # every node was probed, and the summary says what each confines
    assert len(graded["nodes"]) == 2 and all(
        n.startswith("127.0.0.1 (node ") for n in graded["nodes"]
    )
    assert sorted(graded["graded_on"]) == graded["nodes"], "both nodes graded notebooks"
    assert sum(graded["graded_on"].values()) == 4 and min(graded["graded_on"].values()) > 0
    counts = " + ".join(str(graded["graded_on"][n]) for n in graded["nodes"])
    assert (
        f"graded on 2 Ray nodes ({counts} notebooks), each probed first: network cut off"
        in (graded["summary"])
    )
    # the class is graded as it should be, not merely the same way twice
    rows = {r.student: r for r in local.submissions}
    assert rows["ada"].total == rows["ada"].max_score > 0
    assert rows["bob"].status == "graded" and rows["bob"].total == 0
    assert rows["cy"].status == "graded" and rows["cy"].total == 0
    assert any("run again without that cell" in n for n in rows["cy"].notes)
    assert rows["dee"].status == "not JSON"
