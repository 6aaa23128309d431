"""Wall time and peak memory of every notebook, each run top to bottom in a fresh kernel.

Run: ``python benchmarks/bench_notebooks.py [NOTEBOOK ...] [--lessons]``

Without arguments it runs every notebook in ``solutions/`` (with ``--lessons`` also those in
``lessons/``, which raise where exercises are stubs: their errors are allowed). Each notebook is
executed by nbclient in a new kernel with ``OMP_NUM_THREADS=1`` (one core, as on Binder). The
time includes starting the kernel; the memory is the peak resident set size (``VmHWM``) of the
kernel and any process it started, polled every 20 ms; the CPU seconds are those of the same
processes (user + system), the steadier figure on a shared machine, where other processes
stretch the wall time but not the CPU time much.

To compare two versions of the library side by side, run the old one's notebooks with its
folder first on ``PYTHONPATH`` (the kernels inherit it)::

    PYTHONPATH=/tmp/old python benchmarks/bench_notebooks.py /tmp/old/solutions/04_multitask.ipynb

Prints a table and exits with status 1 if a notebook is over budget (60 s, 1536 MiB: a Binder
session has 1 CPU and 2 GB).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
BUDGET_SECONDS = 60.0
BUDGET_MIB = 1536.0


@dataclass(frozen=True)
class Measurement:
    """One notebook's run."""

    notebook: Path
    seconds: float
    peak_mib: float
    error: str | None
    cpu_seconds: float = float("nan")

    @property
    def within_budget(self) -> bool:
        return self.error is None and self.seconds < BUDGET_SECONDS and self.peak_mib < BUDGET_MIB


def _high_water_mark_bytes(process: psutil.Process) -> int:
    """Peak resident memory of a live process (``VmHWM``; current RSS where unavailable)."""
    try:
        with open(f"/proc/{process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return process.memory_info().rss
    except (OSError, psutil.Error):
        return 0


class _PeakMemory:
    """Polls the peak memory of this process's children (the kernel and what it starts)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def poll(self) -> None:
        for child in psutil.Process().children(recursive=True):
            self.peaks[child.pid] = max(self.peaks.get(child.pid, 0), _high_water_mark_bytes(child))
            try:
                times = child.cpu_times()
            except psutil.Error:
                continue
            self.cpu[child.pid] = max(self.cpu.get(child.pid, 0.0), times.user + times.system)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    @property
    def mib(self) -> float:
        return sum(self.peaks.values()) / 2**20

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())


def measure(path: Path, allow_errors: bool = False) -> Measurement:
    """Execute one notebook in a fresh kernel (in its own folder) and measure it."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(path.parent)}},
    )
    error = None
    start = time.perf_counter()
    with _PeakMemory() as memory:
        try:
            with client.setup_kernel():
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
                memory.poll()  # the last peak, before the kernel shuts down
        except Exception as exc:  # a failing notebook is reported, not fatal to the table
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}"
    seconds = time.perf_counter() - start
    return Measurement(path, seconds, memory.mib, error, memory.cpu_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: solutions/*.ipynb")
    parser.add_argument("--lessons", action="store_true", help="also run lessons/*.ipynb")
    args = parser.parse_args(argv)

    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the kernels
    os.environ["MKL_NUM_THREADS"] = "1"
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    paths = list(args.notebooks) or sorted((ROOT / "solutions").glob("*.ipynb"))
    if args.lessons and not args.notebooks:
        paths += sorted((ROOT / "lessons").glob("*.ipynb"))
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1

    print(f"{'notebook':<34} | {'seconds':>7} | {'CPU s':>7} | {'peak MiB':>8} | within budget")
    print(f"{'-' * 34}-|-{'-' * 7}-|-{'-' * 7}-|-{'-' * 8}-|--------------")
    results = []
    for path in paths:
        path = path.resolve()
        result = measure(path, allow_errors=path.parent.name == "lessons")
        results.append(result)
        name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        verdict = "yes" if result.within_budget else "NO"
        if result.error:
            verdict += f" ({result.error})"
        print(
            f"{name:<34} | {result.seconds:7.1f} | {result.cpu_seconds:7.1f} | "
            f"{result.peak_mib:8.0f} | {verdict}"
        )
    print(f"budget: < {BUDGET_SECONDS:g} s and < {BUDGET_MIB:g} MiB per notebook, one thread")
    return 0 if all(r.within_budget for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
