"""A sweep and a grading run on a real two-node Ray cluster on 127.0.0.1; prints one JSON line.

``tests/test_sweep.py`` runs this script inside new network, mount and PID namespaces: the only
network is a loopback this script brings up (Ray binds the machine's outward address otherwise),
and every Ray process ends with this script, the namespace's first process. It starts a head and
a second worker node (one CPU each), runs :data:`POINTS` through :func:`course.sweep.sweep` with
``backend="ray"``, and also reports on which nodes the points ran. Then it grades the small
class :func:`write_class` wrote (``course grade --ray``) into ``TEMP/ray-grades``, twice (the
second run reuses the cache), for the test to compare with a local run.

The experiment, :func:`zero_shot`, is a small real one: the mean return of a freshly seeded
Q-network's greedy policy on a CartPole task, for each (seed, hidden widths, task).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import torch

from course.dqn import QNetwork
from course.envs import CARTPOLE_TASKS, make_cartpole_vec
from course.evaluation import evaluate_policy
from course.grading.grade import ClassResults, Limits, grade_class
from course.release import make_lesson
from course.sweep import Point, grid, sweep

ROOT = Path(__file__).resolve().parents[1]
HEAD = "127.0.0.1:6399"
POINTS = grid(seeds=range(3), configs=[(16,), (32, 32)], tasks=["default", "long_pole"])
SPREAD_POINTS = grid(seeds=range(8))


def zero_shot(point: Point) -> float:
    """Mean return over 4 episodes of an untrained network's greedy policy (float64 sums)."""
    generator = torch.Generator().manual_seed(point.seed)
    q_net = QNetwork(4, 2, hidden=point.config)
    with torch.no_grad():
        for param in q_net.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    env = make_cartpole_vec([CARTPOLE_TASKS[point.task]], envs_per_task=2)
    returns = evaluate_policy(lambda obs: q_net(obs).argmax(-1), env, 4, seed=point.seed)
    with torch.no_grad():
        return float(returns.mean()) + float(q_net(torch.ones(1, 4)).sum())


def node_of(point: Point) -> str:
    """The Ray node this point ran on (a little work so both nodes get some)."""
    import ray

    time.sleep(0.3)
    return ray.get_runtime_context().get_node_id()


GRADE_SEED = 11
GRADE_LIMITS = Limits(timeout=120, cell_timeout=60, memory_mb=2048)
BROKEN_CELLS = [
    "import torch",
    "def greedy_policy(Q):\n    return Q.argmax(-1)  # indices, not a one-hot policy",
    "def q_from_v(mdp, V):\n    return mdp.R +",  # a syntax error
    "import os\nos._exit(1)",  # ends the run: graded again without this cell
]


def write_class(subs: Path) -> list[Path]:
    """A small class of Lesson 01: the solution, the lesson as released, a broken notebook and
    a file that is not a notebook. Returns the notebooks, each in its student's folder."""
    solution = nbformat.read(ROOT / "solutions" / "01_mdps.ipynb", as_version=4)
    lesson = make_lesson(solution, "01_mdps.ipynb")
    broken = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in BROKEN_CELLS])
    broken.metadata["course"] = dict(lesson.metadata["course"])
    notebooks = {"ada": solution, "bob": lesson, "cy": broken}
    paths = []
    for student, nb in notebooks.items():
        (subs / student).mkdir(parents=True)
        nbformat.write(nb, subs / student / "01_mdps.ipynb")
        paths.append(subs / student / "01_mdps.ipynb")
    (subs / "dee").mkdir()
    (subs / "dee" / "01_mdps.ipynb").write_text('{"cells": [')
    return [*paths, subs / "dee" / "01_mdps.ipynb"]


def grade(subs: Path, out: Path, ray: bool | str) -> ClassResults:
    """Grade the class as ``course grade`` does, here (``ray=False``) or on Ray."""
    return grade_class(
        [subs],
        out=out / "grades.csv",
        feedback=out / "feedback",
        limits=GRADE_LIMITS,
        seed=GRADE_SEED,
        progress=False,
        ray=ray,
    )


def _loopback_up() -> None:
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, siocgifflags, request))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def _agent_ports(first: int) -> list[str]:
    # Fixed ports (free: the namespace is new) spare the raylet from waiting for its agents to
    # report the ports they picked, a wait that times out on a busy machine.
    names = ["dashboard-agent-grpc-port", "dashboard-agent-listen-port", "runtime-env-agent-port",
             "metrics-export-port"]  # fmt: skip
    return [f"--{name}={first + i}" for i, name in enumerate(names)]


def _ray(*args: str, log: Path, attempts: int = 1) -> int:
    """Run ``ray ARGS``, again after a failure, up to ``attempts`` times; the attempts used."""
    ray = Path(sys.executable).with_name("ray")
    for attempt in range(1, attempts + 1):
        with log.open("a") as out:
            done = subprocess.run([str(ray), *args], stdout=out, stderr=out, timeout=300)
        if done.returncode == 0:
            return attempt
        if attempt == attempts:
            sys.stderr.write(log.read_text()[-4000:])
            raise RuntimeError(f"`ray {' '.join(args)}` failed {attempts} times; see {log}")
        # A raylet gives its agents 15 s to report their ports, which a busy machine can miss.
        # `ray stop` is safe here: in this PID namespace it sees only the processes started here.
        with log.open("a") as out:
            subprocess.run([str(ray), "stop", "--force"], stdout=out, stderr=out, timeout=120)


def main(temp: str) -> None:
    """Start the cluster with its files in ``temp`` (a short path: Ray's socket paths must fit)."""
    _loopback_up()
    log = Path(temp) / "start.log"
    # no autoscaler and no log forwarding: fewer processes to start on a busy machine
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=80000000",
              "--disable-usage-stats", "--include-log-monitor=false"]  # fmt: skip
    try:
        started = time.monotonic()
        head = ["--head", "--port=6399", "--include-dashboard=false", "--no-monitor",
                f"--temp-dir={temp}"]  # fmt: skip
        tries = _ray("start", *head, *common, *_agent_ports(52360), log=log, attempts=3)
        head_s = time.monotonic() - started
        tries += _ray("start", f"--address={HEAD}", *common, *_agent_ports(52370), log=log,
                      attempts=3)  # fmt: skip
        import ray

        ray.init(address=HEAD, logging_level="warning")
        deadline = time.monotonic() + 30
        while sum(n["Alive"] for n in ray.nodes()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        cluster_s = time.monotonic() - started
        results = sweep(zero_shot, POINTS, backend="ray", progress=False)
        nodes = sweep(node_of, SPREAD_POINTS, backend="ray", progress=False)
        sweep_s = time.monotonic() - started - cluster_s
        graded = grade(Path(temp) / "subs", Path(temp) / "ray-grades", HEAD)
        again = grade(Path(temp) / "subs", Path(temp) / "ray-grades", HEAD)
        report = {
            "grading": {
                "summary": graded.summary(),
                "nodes": sorted(graded.nodes),
                "graded_on": graded.graded_on,
                "submissions": [r.to_json() for r in graded.submissions],
                "reused": again.reused,
                "again": [r.to_json() for r in again.submissions],
            },
            "alive": sum(n["Alive"] for n in ray.nodes()),
            "addresses": sorted({n["NodeManagerAddress"] for n in ray.nodes()}),
            "results": results,
            "nodes_used": len(set(nodes)),
            "cluster_s": round(cluster_s, 1),
            "head_s": round(head_s, 1),
            "start_attempts": tries,
            "sweep_s": round(sweep_s, 1),
            "grade_s": round(time.monotonic() - started - cluster_s - sweep_s, 1),
        }
        ray.shutdown()
    except Exception:
        sys.stderr.write(log.read_text()[-4000:] if log.exists() else "")
        raise
    print(json.dumps(report))
    sys.stdout.flush()
    os._exit(0)  # ends the namespace: the kernel stops every Ray process with it


if __name__ == "__main__":
    main(sys.argv[1])
