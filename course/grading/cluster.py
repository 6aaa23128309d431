"""``course grade --ray``: the same per-submission grading, fanned out over a Ray cluster.

The teacher's machine (the head of the run, where ``course grade`` was started) keeps
everything that decides what is trusted: it finds the notebooks, reads their bytes, looks them
up in the results cache, signs the cache with its HMAC key and writes the gradebook and the
feedback. A worker gets, per submission, only what grading it needs: the notebook's bytes, its
name, the seed, the limits and the lesson filter. It runs ``grade.grade_submission`` (the
confined run in ``sandbox.py``, then the judge), exactly as a local run does, and sends the
result back as JSON bytes. The cache key never leaves the head: a worker cannot sign a result,
and what it sends back is checked for form before it is stored.

Each worker process first measures what its node confines (``probe_sandbox``) and runs nothing
when that falls short of what the teacher guide promises, unless the teacher allowed weak
isolation; the head probes every node before the first submission, so such a run stops before
it starts, and the summary says what each node confines. A worker also refuses when its grading
code differs from the head's (another course version would grade differently).

Ray is imported here only, and this module only under ``--ray``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from course.grading.grade import grade_submission, unreadable
from course.grading.gradebook import course_fingerprint
from course.grading.isolation import can_use_dedicated_users, lease_uid, probe_sandbox
from course.grading.records import Confinement, GradeError, Limits, SandboxInfo, SubmissionResult
from course.sweep import INSTALL_RAY, head_problem

__all__ = ["RayGrader", "grade_remote", "node_sandbox"]

# A worker's sandbox and confinement, measured once per worker process and kept: its dedicated
# user stays leased to this process while it lives, so two workers of a node never share one.
_WORKER: dict[Limits, tuple[SandboxInfo, Confinement]] = {}


def _worker_setup(limits: Limits) -> tuple[SandboxInfo, Confinement]:
    if limits not in _WORKER:
        uid = lease_uid() if can_use_dedicated_users() else None
        info = probe_sandbox(limits, uids=[] if uid is None else [uid])
        confinement = Confinement(
            uid=uid if info.dedicated_users else None,
            cgroup=info.process_limit == "cgroup",
            require=info.required(limits.isolate_network),
        )
        _WORKER[limits] = info, confinement
    return _WORKER[limits]


def _refusal(limits: Limits, fingerprint: str, allow_weak: bool) -> str | None:
    """Why this worker must not grade (None: it may)."""
    mine = course_fingerprint()
    if mine != fingerprint:
        return (
            f"node {socket.gethostname()} has other grading code than the machine that runs "
            f"`course grade` (course fingerprint {mine}, not {fingerprint}): install the same "
            "version of the course on every node"
        )
    info, _ = _worker_setup(limits)
    weak = info.weaknesses(limits.isolate_network)
    if weak and not allow_weak:
        return (
            f"node {socket.gethostname()} cannot confine submissions as the teacher guide "
            f"promises ({'; '.join(weak)}): grade on nodes that can, or pass "
            "--allow-weak-isolation to grade anyway"
        )
    return None


def node_sandbox(limits: dict, fingerprint: str) -> bytes:
    """On a worker: what its node confines, as JSON bytes (``{"sandbox": {...}}``), and, when
    its grading code is not the head's, why it refuses (``"refused"``)."""
    limits_ = Limits(**limits)
    info, _ = _worker_setup(limits_)
    why = _refusal(limits_, fingerprint, allow_weak=True)
    return json.dumps({"sandbox": info.__dict__, "refused": why}).encode()


def grade_remote(
    data: bytes,
    notebook: str,
    student: str,
    seed: int,
    limits: dict,
    lesson: str | None,
    fingerprint: str,
    allow_weak: bool,
) -> bytes:
    """On a worker: grade one submission's bytes as a local run does; the result as JSON bytes
    (``{"result": SubmissionResult.to_json()}``, or ``{"refused": why}``)."""
    limits_ = Limits(**limits)
    why = _refusal(limits_, fingerprint, allow_weak)
    if why is not None:
        return json.dumps({"refused": why}).encode()
    _, confinement = _worker_setup(limits_)
    result = grade_submission(data, Path(notebook), student, seed, limits_, confinement, lesson)
    return json.dumps({"result": result.to_json(), "node": _node_id()}).encode()


def _node_id() -> str | None:
    """The Ray node this runs on (None outside a Ray worker)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise GradeError(f"--ray needs Ray, which is not installed: `{INSTALL_RAY}`") from exc
    return ray


def _answer(raw: Any, what: str) -> dict:
    """A worker's answer, checked for form: JSON bytes, read as data (Ray carries them between
    the teacher's own machines; no object a worker built is used here)."""
    try:
        answer = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise GradeError(f"{what}: the worker sent back something that is not JSON") from exc
    if not isinstance(answer, dict):
        raise GradeError(f"{what}: the worker sent back something that is not a result")
    if isinstance(answer.get("refused"), str):
        raise GradeError(answer["refused"])
    return answer


def _node_name(node: dict) -> str:
    return f"{node['NodeManagerAddress']} (node {node['NodeID'][:8]})"


class RayGrader:
    """A connection to a Ray cluster that grades submissions on its nodes.

    Args:
        address: ``"HOST:PORT"`` of the cluster's head (as ``ray start --head`` prints it), or
            None for ``ray.init()``'s default (``RAY_ADDRESS`` if set, else a Ray started on
            this machine for this run).

    Raises:
        GradeError: Ray is not installed, or no cluster answers at ``address``.
    """

    def __init__(self, address: str | None = None) -> None:
        self.ray = ray = _import_ray()
        if address and address != "auto":
            why = head_problem(address)
            if why is not None:
                raise GradeError(
                    f"{why}: start the cluster (`ray start --head` on its head machine) or "
                    "correct the address given to --ray"
                )
        self.started = not ray.is_initialized()
        if self.started:
            options: dict[str, Any] = {"logging_level": "warning", "log_to_driver": False}
            if address is None and not os.environ.get("RAY_ADDRESS"):
                options["include_dashboard"] = False  # a Ray of this machine, for this run
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise GradeError(f"cannot attach to the Ray cluster at {address}: {exc}") from exc
        self.fingerprint = course_fingerprint()
        self.names: dict[str, str] = {}  # node ID -> its name in the summary
        self.graded_on: Counter[str] = Counter()  # node name -> submissions it graded

    def close(self) -> None:
        """Leave the cluster (shut Ray down if this grader started it)."""
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()

    def probe(self, limits: Limits) -> dict[str, SandboxInfo]:
        """What every node that can run a submission confines, by node (``IP (node ID)``).

        Raises:
            GradeError: no node has a CPU, or a node has other grading code than this machine.
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [
            n for n in self.ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0)
        ]
        if not nodes:
            raise GradeError("the Ray cluster has no live node with a CPU to grade on")
        task = self.ray.remote(num_cpus=1, max_retries=0)(node_sandbox)
        refs = {
            _node_name(n): task.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(limits.__dict__, self.fingerprint)
            for n in nodes
        }
        self.names = {n["NodeID"]: _node_name(n) for n in nodes}
        found = {}
        for name, ref in sorted(refs.items()):
            answer = _answer(self.ray.get(ref), f"probing {name}")
            found[name] = SandboxInfo(**answer["sandbox"])
        return found

    def grade(
        self,
        jobs: Sequence[tuple[Path, str]],
        seed: int,
        limits: Limits,
        lesson: str | None,
        allow_weak: bool,
    ) -> Iterator[SubmissionResult]:
        """Grade every ``(path, student)`` on the cluster; yield results as they finish.

        The notebooks are read here, a few at a time (about two per CPU of the cluster are in
        flight), and travel to the workers as bytes.

        Raises:
            GradeError: a worker refused (weak isolation, other grading code) or failed.
        """
        ray = self.ray
        task = ray.remote(num_cpus=1)(grade_remote)
        window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        todo = list(jobs)
        pending: dict[Any, Path] = {}
        try:
            while todo or pending:
                while todo and len(pending) < window:
                    path, student = todo.pop(0)
                    try:
                        data = path.read_bytes()
                    except OSError as exc:
                        yield unreadable(path, seed, exc)
                        continue
                    ref = task.options(scheduling_strategy="SPREAD").remote(
                        data, str(path), student, seed, limits.__dict__, lesson,
                        self.fingerprint, allow_weak,
                    )  # fmt: skip
                    pending[ref] = path
                if not pending:
                    continue
                done, _ = ray.wait(list(pending), num_returns=1)
                path = pending.pop(done[0])
                try:
                    raw = ray.get(done[0])
                except ray.exceptions.RayError as exc:
                    raise GradeError(f"grading {path} on the Ray cluster failed: {exc}") from exc
                answer = _answer(raw, f"grading {path}")
                node = answer.get("node")
                self.graded_on[self.names.get(node, f"node {str(node)[:8]}")] += 1
                try:
                    yield SubmissionResult.from_json(answer["result"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise GradeError(f"grading {path}: the worker's result is malformed") from exc
        finally:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
