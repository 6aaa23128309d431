"""Experiment sweeps: one function run over seeds x configs x tasks, here or on a Ray cluster.

A study such as ``benchmarks/bench_transfer.py`` runs one experiment per (seed, config, task).
:func:`grid` lists those points and :func:`sweep` runs a function on each of them, in this
process by default or on a Ray cluster with ``backend="ray"``, with a progress bar either way::

    from course.sweep import grid, sweep

    def zero_shot(point):  # a module-level function: Ray sends it to its workers
        ...  # train or evaluate with seed=point.seed, config=point.config, task=point.task
        return score

    points = grid(seeds=range(20), configs=["full", "freeze_trunk"], tasks=["long_pole"])
    scores = sweep(zero_shot, points)                                    # here, one by one
    scores = sweep(zero_shot, points, backend="ray", address="HEAD:6379")  # on a cluster

The results come back in the order of ``points`` and do not depend on where they ran: each call
runs with one torch thread (so that sums are added in the same order everywhere) and with the
global random generators of ``random``, numpy and torch seeded from the point (a function that
forgets to seed gets the same numbers on every backend, whatever ran before it in the same
process). The function must not rely on any other state of the process that calls ``sweep``.

Ray is an optional extra (``pip install "rl-transfer-course[cluster]"``), imported only when a
sweep asks for it. The function must be importable on the workers (a function of an installed
module such as ``course``) or be defined in the script or notebook that calls ``sweep`` (Ray then
sends the function itself).
"""

from __future__ import annotations

import importlib.metadata
import itertools
import os
import random
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["BACKENDS", "Point", "SweepError", "describe_ray", "grid", "sweep"]

R = TypeVar("R")
BACKENDS = ("local", "ray")
INSTALL_RAY = "pip install 'rl-transfer-course[cluster]'"


class SweepError(RuntimeError):
    """A point of a sweep failed; the message names the point, ``__cause__`` is the error."""


@dataclass(frozen=True)
class Point:
    """One experiment of a sweep.

    Attributes:
        seed: The seed of the run.
        config: What is varied (a name, a frozen config dataclass...).
        task: Where it runs (a task name, a ``CartPoleTask``...).
    """

    seed: int
    config: Any = None
    task: Any = None


def grid(
    seeds: Iterable[int], configs: Iterable[Any] = (None,), tasks: Iterable[Any] = (None,)
) -> list[Point]:
    """Every combination of seeds, configs and tasks, seeds varying slowest.

    Args:
        seeds: Seeds of the runs (each must be an ``int``).
        configs: The configurations to compare (anything Ray can pickle).
        tasks: The tasks to run each on.

    Returns:
        A ``list[Point]`` of length ``len(seeds) * len(configs) * len(tasks)``.

    Example:
        >>> [(p.seed, p.config) for p in grid(range(2), configs=["a", "b"])]
        [(0, 'a'), (0, 'b'), (1, 'a'), (1, 'b')]
    """
    seeds, configs, tasks = list(seeds), list(configs), list(tasks)
    bad = [s for s in seeds if not isinstance(s, (int, np.integer)) or isinstance(s, bool)]
    if bad:
        raise TypeError(f"seed {bad[0]!r} is not an int; seeds must be integers such as range(5)")
    return [Point(int(s), c, t) for s, c, t in itertools.product(seeds, configs, tasks)]


def _point_seed(point: Any, index: int) -> int:
    return point.seed if isinstance(point, Point) else index


def run_point(fn: Callable[[Any], R], point: Any, seed: int) -> R:
    """Call ``fn(point)`` as every backend does: one torch thread, global generators seeded.

    The caller's thread count and generator states are restored afterwards.
    """
    threads = torch.get_num_threads()
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        torch.set_num_threads(1)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        return fn(point)
    finally:
        torch.set_num_threads(threads)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


def _failed(index: int, point: Any) -> str:
    return f"point {index} of the sweep ({point!r}) failed"


def _run_local(fn: Callable[[Any], R], points: Sequence[Any], bar: tqdm) -> list[R]:
    results = []
    for index, point in enumerate(points):
        try:
            results.append(run_point(fn, point, _point_seed(point, index)))
        except Exception as exc:
            raise SweepError(f"{_failed(index, point)}: {type(exc).__name__}: {exc}") from exc
        bar.update(1)
    return results


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"backend='ray' needs Ray: `{INSTALL_RAY}`") from exc
    return ray


def _run_ray(
    fn: Callable[[Any], R], points: Sequence[Any], bar: tqdm, address: str | None
) -> list[R]:
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        options: dict[str, Any] = {"logging_level": "warning"}
        if address is None and not os.environ.get("RAY_ADDRESS"):
            options["include_dashboard"] = False  # a Ray of this machine only, for this sweep
        if address is not None and address != "auto":
            why = head_problem(address)
            if why is not None:
                raise ConnectionError(f"{why}: start it with `ray start --head` or correct it")
        ray.init(address=address, **options)
    try:
        task = ray.remote(num_cpus=1)(run_point).options(scheduling_strategy="SPREAD")
        fn_ref = ray.put(fn)
        refs = [task.remote(fn_ref, p, _point_seed(p, i)) for i, p in enumerate(points)]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
        results = []
        for index, (point, ref) in enumerate(zip(points, refs)):
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if exc.cause is not None else exc
                message = f"{_failed(index, point)}: {type(cause).__name__}: {cause}"
                raise SweepError(message) from cause
        return results
    finally:
        if started:
            ray.shutdown()


def sweep(
    fn: Callable[[Any], R],
    points: Iterable[Any],
    backend: Literal["local", "ray"] = "local",
    address: str | None = None,
    progress: bool = True,
    desc: str = "sweep",
) -> list[R]:
    """Run ``fn`` on every point, here or on Ray; the results do not depend on where they ran.

    Args:
        fn: The experiment, ``fn(point) -> result``; the result must be picklable.
        points: What to run it on, usually :func:`grid`'s points (any picklable objects; a
            point that is not a :class:`Point` is seeded by its position).
        backend: ``"local"`` (this process, one point after the other) or ``"ray"``.
        address: With ``backend="ray"``, the cluster to use (``"HOST:PORT"`` of its head, as
            ``ray start --head`` prints it); ``None`` uses ``RAY_ADDRESS`` if set, else starts
            Ray on this machine. Ignored when Ray is already initialised in this process.
        progress: Show a progress bar (one step per finished point).
        desc: The progress bar's label.

    Returns:
        ``[fn(point) for point in points]``, in the order of ``points``.

    Raises:
        ValueError: If ``backend`` is not one of :data:`BACKENDS`, or an address is given to
            the local backend.
        ImportError: If ``backend="ray"`` and Ray is not installed.
        ConnectionError: If ``address`` names no Ray head (Ray would wait for minutes there).
        SweepError: If ``fn`` raised on a point (the first such point in order is named).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend is {backend!r}; use one of {', '.join(map(repr, BACKENDS))}")
    if backend == "local" and address is not None:
        raise ValueError(f"address {address!r} is for a Ray cluster: pass backend='ray' too")
    points = list(points)
    with tqdm(total=len(points), desc=desc, unit="run", disable=not progress) as bar:
        if backend == "local":
            return _run_local(fn, points, bar)
        return _run_ray(fn, points, bar, address)


def _reachable(address: str, timeout: float) -> str | None:
    """``None`` if a TCP connection to ``HOST:PORT`` opens, else why not."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return f"{address!r} is not HOST:PORT"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


# What an HTTP/2 client sends first (the preface, then an empty SETTINGS frame); a gRPC server,
# as a Ray head is, answers with a SETTINGS frame (its type, 4, is the fourth byte).
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def head_problem(address: str, timeout: float = 5.0) -> str | None:
    """Why ``HOST:PORT`` is not a Ray head to attach to (None: it answers as one).

    Ray itself would wait for minutes on an address that is wrong; this opens one TCP
    connection and checks that a gRPC server answers there.
    """
    why = _reachable(address, timeout)
    if why is not None:
        return f"no Ray cluster answers at {address} ({why})"
    host, _, port = address.removeprefix("ray://").rpartition(":")
    answer = b""
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            conn.sendall(_HTTP2_HELLO)
            while len(answer) < 9:
                chunk = conn.recv(9 - len(answer))
                if not chunk:
                    break
                answer += chunk
    except OSError:
        pass
    if len(answer) == 9 and answer[3] == 4:
        return None
    return f"{address} answers, but not as a Ray cluster's head (no gRPC server there)"


def describe_ray(address: str | None = None, timeout: float = 2.0) -> tuple[str, str | None]:
    """Whether Ray is installed and its cluster reachable, for ``course doctor``.

    Only opens a TCP connection to the head (Ray is not imported), and only when an address is
    given or ``RAY_ADDRESS`` is set.

    Args:
        address: The head's ``HOST:PORT`` (default: ``RAY_ADDRESS``).
        timeout: Seconds to wait for the connection.

    Returns:
        What was found, and one sentence saying what to do (``None`` when nothing needs doing:
        Ray is optional).
    """
    try:
        version = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return (
            f"not installed (optional: `{INSTALL_RAY}` runs sweeps and `course grade --ray` on "
            "a Ray cluster)",
            None,
        )
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return (
            f"{version}; no cluster named (set RAY_ADDRESS=HOST:PORT to use one; sweeps with "
            "backend='ray' and `course grade --ray` start Ray on this machine otherwise)",
            None,
        )
    if address == "auto":
        return f"{version}; RAY_ADDRESS=auto (the cluster started on this machine)", None
    why = _reachable(address, timeout)
    if why is None:
        return f"{version}; cluster at {address} reachable", None
    return (
        f"{version}; cluster at {address} not reachable ({why})",
        "Start the cluster (`ray start --head` on its head machine) or correct RAY_ADDRESS.",
    )
