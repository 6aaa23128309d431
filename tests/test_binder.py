"""The Binder set-up in binder/: what mybinder.org builds, checked without Docker.

Two tests:

- ``test_repo2docker_build_plan`` asks repo2docker itself (the builder mybinder.org runs) for its
  build plan: ``repo2docker --no-build`` prints the Dockerfile it would build and needs no Docker
  daemon. The plan must come from binder/ (the root pyproject.toml is then not installed by
  itself), pin the Python of runtime.txt, and install binder/requirements.txt after the whole
  repository is copied in (it installs the course from ``.``); the requirements must pin a CPU
  build of torch, the version the tests run with.
- ``test_binder_requirements_run_lesson_01`` (slow) installs binder/requirements.txt into a
  fresh virtual environment, as the image build does, then executes Lesson 01's solution and
  lesson with that environment's Jupyter and kernel, and runs ``course doctor`` in it. Nothing is
  reused between runs: a missing install step fails here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
NOTEBOOK = "01_mdps.ipynb"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
COPY_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis",
    "build", "dist", ".ipynb_checkpoints", "docs",
)  # fmt: skip


def _requirements() -> list[str]:
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    return [s for s in (line.split("#", 1)[0].strip() for line in lines) if s]


def _runtime_python() -> str:
    runtime = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-(3\.\d+)", runtime)
    assert match, f"binder/runtime.txt should read like 'python-3.11', not {runtime!r}"
    return match.group(1)


def test_binder_folder_holds_the_whole_configuration() -> None:
    # with binder/ present, repo2docker ignores configuration files at the root
    assert sorted(p.name for p in BINDER.iterdir()) == ["requirements.txt", "runtime.txt"]
    # the Python the test suite runs with is the one Binder gets
    assert _runtime_python() == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_requirements_pin_cpu_torch_and_install_the_course() -> None:
    reqs = _requirements()
    assert f"--extra-index-url {CPU_INDEX}" in reqs
    pins = [r for r in reqs if r.startswith("torch")]
    assert len(pins) == 1 and re.fullmatch(r"torch==[\d.]+\+cpu", pins[0]), pins
    # the same torch the library is tested with here, in its CPU build
    assert pins[0].split("==")[1].split("+")[0] == torch.__version__.split("+")[0]
    local = [r for r in reqs if re.fullmatch(r"(-e\s+)?\.(\[[\w,]+\])?", r)]
    assert len(local) == 1, "binder/requirements.txt must install the course itself ('-e .')"
    assert "lab" in local[0], "the lab extra brings JupyterLab and the widgets' front end"


def test_repo2docker_build_plan() -> None:
    if importlib.util.find_spec("repo2docker") is None:
        pytest.fail("repo2docker is missing: `.venv/bin/pip install -e '.[dev]'` installs it")
    proc = subprocess.run(
        [sys.executable, "-m", "repo2docker", "--no-build", "--user-id=1000", "--user-name=jovyan",
         str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"},  # proves: no daemon
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    plan = proc.stdout
    python = _runtime_python()
    assert f"Building conda environment for python={python}" in proc.stderr
    # the conda lock file of that Python, its name escaped in the plan ("." -2e, "-" -2d)
    lock = f"environment.py-{python}-linux-64.lock".replace("-", "-2d").replace(".", "-2e")
    assert lock in plan, plan
    install = 'pip install --no-cache-dir -r "binder/requirements.txt"'
    copy_repo = re.search(r"^COPY --chown=\S+ src/ \$\{REPO_DIR\}/$", plan, re.MULTILINE)
    assert install in plan and copy_repo, plan
    # requirements that install the repository run only once the repository is copied in
    assert plan.index(install) > copy_repo.start()
    # the plan comes from binder/: the root pyproject.toml is not built on its own
    assert "pip install --no-cache-dir ." not in plan.replace(install, "")
    assert re.search(r"^COPY --chown=\S+ src/binder/requirements\.txt ", plan, re.MULTILINE)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def _is_check(source: str, output: dict) -> bool:
    return source.lstrip().startswith("check(") and "text/plain" in output.get("data", {})


def _outputs(nb: nbformat.NotebookNode) -> list[tuple[str, dict]]:
    return [
        (cell.source, out) for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    ]


@pytest.mark.slow
def test_binder_requirements_run_lesson_01(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=COPY_IGNORE)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_dir = venv / "bin"
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PIP_NO_CACHE_DIR="1",  # as in the image build
        PIP_RETRIES="0",  # an unreachable extra index is skipped at once, not retried for minutes
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
        JUPYTER_PLATFORM_DIRS="1",
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        MPLCONFIGDIR=str(tmp_path / "mpl"),
    )
    _run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "-r", "binder/requirements.txt"],
        repo,
        env,
        timeout=1500,
    )

    code = "import torch, course; print(torch.__version__, course.__file__)"
    versions = _run([str(bin_dir / "python"), "-c", code], tmp_path, env, timeout=120)
    assert versions.split()[0].endswith("+cpu"), versions
    assert Path(versions.split()[1]).is_relative_to(repo), "the course must come from the repo"

    solution = repo / "solutions" / NOTEBOOK
    lesson = repo / "lessons" / NOTEBOOK
    if not lesson.exists():  # not released yet: make it as `course release` would
        _run([str(bin_dir / "course"), "release"], repo, env, timeout=120)
    ran = {}
    for name, path in (("solution", solution), ("lesson", lesson)):
        _run(
            [str(bin_dir / "jupyter"), "nbconvert", "--to", "notebook", "--execute",
             "--ExecutePreprocessor.timeout=600", "--ExecutePreprocessor.kernel_name=python3",
             f"--output-dir={tmp_path / name}", str(path)],
            path.parent,
            env,
            timeout=900,
        )  # fmt: skip
        ran[name] = nbformat.read(tmp_path / name / NOTEBOOK, as_version=4)

    lesson_cells, solution = ran["lesson"].cells, _outputs(ran["solution"])
    bad = [
        (src[:60], out.get("ename") or out.get("text", "")[:300])
        for src, out in solution
        if out.output_type == "error" or out.get("name") == "stderr"
    ]
    assert not bad, f"the solution shows errors or warnings in the Binder environment: {bad}"
    verdicts = [out.data["text/plain"] for src, out in solution if _is_check(src, out)]
    assert verdicts and all(v.startswith("PASS") for v in verdicts), verdicts
    assert any("image/png" in out.get("data", {}) for _, out in solution), "no figure"
    assert any(
        "application/vnd.jupyter.widget-view+json" in out.get("data", {}) for _, out in solution
    ), "the gridworld explorer should display as a widget"

    # the lesson runs top to bottom: only cells tagged raises-exception fail, and checks say
    # "not attempted"
    errors = [
        (cell.source[:60], out.ename)
        for cell in lesson_cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    unexpected = [
        (cell.source[:60], out.ename)
        for cell in lesson_cells
        if cell.cell_type == "code" and "raises-exception" not in cell.metadata.get("tags", [])
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not unexpected, unexpected
    assert "NotImplementedError" in {ename for _, ename in errors}, errors
    verdicts = [
        out.data["text/plain"] for src, out in _outputs(ran["lesson"]) if _is_check(src, out)
    ]
    assert len(verdicts) == len([src for src, _ in solution if src.lstrip().startswith("check(")])
    assert verdicts and all("not attempted" in v.lower() for v in verdicts), verdicts

    doctor = subprocess.run(
        [str(bin_dir / "course"), "doctor", "--path", str(repo)],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    for topic in ("Python", "torch", "widgets"):
        assert re.search(rf"^ok\s+{topic}\b", doctor.stdout, re.MULTILINE), doctor.stdout
    assert "CPU build" in doctor.stdout and "will render in JupyterLab" in doctor.stdout
