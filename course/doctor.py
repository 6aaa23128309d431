"""``course doctor``: what a student needs to know when something is off.

Checks the Python, the torch build and device, the libraries the lessons use, whether ipywidgets
will render in JupyterLab, whether Ray (optional, for sweeps and grading on a cluster) is
installed and its cluster reachable, and whether the lesson notebooks match the installed
library and the solutions they are generated from. Each problem comes with a one-sentence fix;
the exit status is 0 when nothing needs fixing and 1 otherwise.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import importlib.util
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import nbformat

DISTRIBUTION = "rl-transfer-course"
MIN_PYTHON = (3, 10)
CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([\w.]+)["']""")
# jupyterlab_widgets release line that serves each ipywidgets major version
WIDGETS_FRONTEND = {7: 1, 8: 3}


@dataclass(frozen=True)
class Finding:
    """One line of the report.

    Attributes:
        topic: What was checked (``"torch"``, ``"widgets"``...).
        detail: What was found.
        fix: One sentence saying what to do, or ``None`` when nothing needs fixing.
    """

    topic: str
    detail: str
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.fix is None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _declared_specifier(name: str) -> str:
    """The version range the course declares for a dependency (``""`` if unknown)."""
    try:
        from packaging.requirements import Requirement

        for line in metadata.requires(DISTRIBUTION) or []:
            req = Requirement(line)
            if req.marker is None and req.name.lower() == name.lower():
                return str(req.specifier)
    except (ImportError, metadata.PackageNotFoundError, ValueError):
        pass
    return ""


def _satisfies(version: str, specifier: str) -> bool:
    if not specifier:
        return True
    try:
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(specifier).contains(version, prereleases=True)
    except (ImportError, ValueError):
        return True


def check_python(version_info: Sequence[int] = sys.version_info) -> Finding:
    """Whether the running Python is recent enough for the course."""
    version = ".".join(str(v) for v in version_info[:3])
    detail = f"{version} ({sys.executable})"
    if tuple(version_info[:2]) < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return Finding("Python", detail, f"Use Python {need} or newer to create the environment.")
    return Finding("Python", detail)


def check_library(name: str, module: str | None = None) -> Finding:
    """Whether a library is importable and inside the version range the course declares."""
    version = _version(name)
    install = f"Install it in this environment: `{sys.executable} -m pip install -e .`."
    if version is None:
        return Finding(name, "not installed", install)
    try:
        importlib.import_module(module or name)
    except Exception as exc:  # a broken install can raise anything on import
        return Finding(name, f"{version}, import fails ({type(exc).__name__}: {exc})", install)
    specifier = _declared_specifier(name)
    if not _satisfies(version, specifier):
        pip = f"{sys.executable} -m pip install '{name}{specifier}'"
        fix = f"Install a version in {specifier}: `{pip}`."
        return Finding(name, f"{version} (the course needs {specifier})", fix)
    return Finding(name, version)


def describe_torch(torch: Any) -> str:
    """The torch version, its build (CPU, CUDA, ROCm) and the best device it can use."""
    if getattr(torch.version, "hip", None):
        build = f"ROCm {torch.version.hip} build"
    elif torch.version.cuda:
        build = f"CUDA {torch.version.cuda} build"
    else:
        build = "CPU build"
    if torch.cuda.is_available():
        device = f"cuda available ({torch.cuda.get_device_name(0)})"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "mps available"
    elif build != "CPU build":
        device = "no GPU found, lessons run on the CPU"
    else:
        device = "device cpu"
    return f"{torch.__version__}, {build}, {device}"


def check_torch() -> Finding:
    """The torch version, build and device; a problem only if torch is missing or too old."""
    found = check_library("torch")
    if not found.ok:
        return found
    import torch

    return Finding("torch", describe_torch(torch))


def _labextension_installed(name: str = "@jupyter-widgets/jupyterlab-manager") -> bool:
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:
        roots = [Path(sys.prefix) / "share" / "jupyter" / "labextensions"]
    else:
        roots = [Path(p) for p in jupyter_path("labextensions")]
    return any((root / name / "package.json").is_file() for root in roots)


def check_widgets(
    version: Callable[[str], str | None] = _version,
    labextension: Callable[[], bool] = _labextension_installed,
) -> Finding:
    """Whether ipywidgets will render in JupyterLab (kernel side and front end, matching).

    Args:
        version: Installed version of a distribution, or ``None`` (replaceable in tests).
        labextension: Whether the widgets' JupyterLab extension is installed.
    """
    ipywidgets, frontend, lab = (
        version(n) for n in ("ipywidgets", "jupyterlab_widgets", "jupyterlab")
    )
    pip = f"`{sys.executable} -m pip install -e '.[lab]'`"
    if ipywidgets is None:
        return Finding("widgets", "ipywidgets is not installed", f"Install it: {pip}.")
    if frontend is None:
        return Finding(
            "widgets",
            f"ipywidgets {ipywidgets} without jupyterlab_widgets: sliders show as plain text",
            f"Install the front end in the environment that runs JupyterLab: {pip}.",
        )
    major = int(ipywidgets.split(".")[0])
    wanted = WIDGETS_FRONTEND.get(major)
    pair = f"ipywidgets {ipywidgets} + jupyterlab_widgets {frontend}"
    if wanted is not None and int(frontend.split(".")[0]) != wanted:
        return Finding(
            "widgets",
            f"{pair} do not match (ipywidgets {major} needs jupyterlab_widgets {wanted}.x)",
            f"Reinstall them together: `{sys.executable} -m pip install -U ipywidgets "
            "jupyterlab_widgets`.",
        )
    if lab is None:
        return Finding(
            "widgets",
            f"{pair}; JupyterLab is not in this environment "
            "(the Jupyter you open the lessons with needs jupyterlab_widgets too)",
        )
    if int(lab.split(".")[0]) < 3:
        return Finding(
            "widgets",
            f"{pair}, but JupyterLab {lab} cannot load them",
            f"Upgrade JupyterLab: `{sys.executable} -m pip install -U 'jupyterlab>=4'`.",
        )
    if not labextension():
        return Finding(
            "widgets",
            f"{pair}, but JupyterLab does not see the widgets extension",
            f"Reinstall the front end: `{sys.executable} -m pip install --force-reinstall "
            "jupyterlab_widgets`.",
        )
    return Finding("widgets", f"{pair}: will render in JupyterLab {lab}")


def _cell_key(cell: Any) -> tuple[str, str]:
    return cell.cell_type, cell.source.strip()


def _is_exercise_cell(cell: Any) -> bool:
    from course.release import CODE_STUB, MARKDOWN_STUB

    stub = MARKDOWN_STUB if cell.cell_type == "markdown" else CODE_STUB[-1]
    return stub in cell.source


def holds_student_work_only(lesson: Any, released: Any) -> bool:
    """Whether a lesson differs from its release only by what a student adds.

    A student fills in exercise cells, runs cells (outputs) and may add cells of their own; every
    other cell of the release must still be there, in order and unchanged.

    Args:
        lesson: The notebook on disk (an ``nbformat`` notebook).
        released: What ``course.release.make_lesson`` generates now.
    """
    wanted = [_cell_key(c) for c in released.cells if not _is_exercise_cell(c)]
    have = iter(_cell_key(c) for c in lesson.cells)
    return all(any(key == got for got in have) for key in wanted)


def library_mismatches(lesson: Any) -> list[str]:
    """Names a lesson uses that the installed library lacks (check ids and ``course`` imports)."""
    from course.grading import EXERCISES

    missing: list[str] = []
    for cell in lesson.cells:
        if cell.cell_type != "code":
            continue
        missing += [
            f"check id {i!r}" for i in CHECK_CALL.findall(cell.source) if i not in EXERCISES
        ]
        try:
            tree = ast.parse(re.sub(r"^\s*[%!].*$", "", cell.source, flags=re.MULTILINE))
        except SyntaxError:
            continue  # a student's unfinished cell says nothing about the library
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "course"
            ):
                continue
            try:
                module = importlib.import_module(node.module)
            except ImportError:
                missing.append(f"module {node.module}")
                continue
            missing += [
                f"{node.module}.{a.name}"
                for a in node.names
                if a.name != "*"
                and not hasattr(module, a.name)
                and not (
                    hasattr(module, "__path__")  # a submodule not imported yet
                    and importlib.util.find_spec(f"{node.module}.{a.name}") is not None
                )
            ]
    return missing


def check_lessons(root: Path | str = ".") -> list[Finding]:
    """Whether ``root/lessons`` matches the installed library and ``root/solutions``."""
    from course import release

    root = Path(root)
    lessons_dir, solutions_dir = root / "lessons", root / "solutions"
    lessons = sorted(lessons_dir.glob("*.ipynb"))
    if not lessons:
        return [
            Finding(
                "lessons",
                f"no notebooks in {lessons_dir}",
                "Run `course doctor` from the course's root folder, or pass --path FOLDER.",
            )
        ]
    findings = []
    for path in lessons:
        nb = nbformat.read(path, as_version=4)
        missing = library_mismatches(nb)
        if missing:
            findings.append(
                Finding(
                    "lessons",
                    f"{path.name} uses what the installed library lacks: {', '.join(missing)}",
                    f"Install the library from this course folder: "
                    f"`{sys.executable} -m pip install -e .`.",
                )
            )
    if not solutions_dir.is_dir():
        findings.append(Finding("lessons", f"{len(lessons)} lessons (no solutions/ to compare)"))
        return findings
    try:
        stale = set(release.stale_lessons(solutions_dir, lessons_dir))
    except (release.ReleaseError, OSError, ValueError) as exc:
        return findings + [
            Finding(
                "lessons",
                f"solutions/ cannot be released: {exc}",
                "Fix the solution notebook named above, then run `course release`.",
            )
        ]
    worked_on, outdated = [], []
    for lesson_path in sorted(stale):
        solution_path = solutions_dir / lesson_path.name
        released = release.make_lesson(nbformat.read(solution_path, as_version=4))
        if not lesson_path.exists():
            outdated.append(f"{lesson_path.name} (missing)")
        elif holds_student_work_only(nbformat.read(lesson_path, as_version=4), released):
            worked_on.append(lesson_path.name)
        else:
            outdated.append(lesson_path.name)
    n_solutions = len(list(solutions_dir.glob("*.ipynb")))
    detail = f"{n_solutions - len(outdated)} of {n_solutions} lessons match solutions/"
    if worked_on:
        detail += f" ({', '.join(worked_on)} with a student's work in it)"
    if outdated:
        findings.append(
            Finding(
                "lessons",
                f"{detail}; out of date: {', '.join(outdated)}",
                "Regenerate them with `course release` (copy any answers you wrote in them "
                "elsewhere first).",
            )
        )
    else:
        findings.append(Finding("lessons", detail))
    return findings


def diagnose(root: Path | str = ".") -> list[Finding]:
    """Every check, in the order the report prints them."""
    findings = [check_python()]
    version = _version(DISTRIBUTION)
    findings.append(Finding("course", f"{version or 'not installed'} ({Path(__file__).parent})"))
    findings.append(check_torch())
    for name in ("gymnasium", "numpy", "matplotlib"):
        findings.append(check_library(name))
    findings.append(check_widgets())
    from course.sweep import describe_ray  # Ray itself is not imported

    findings.append(Finding("ray", *describe_ray()))
    try:
        findings += check_lessons(root)
    except Exception as exc:  # the report must still come out when the library is broken
        findings.append(
            Finding(
                "lessons",
                f"cannot be checked ({type(exc).__name__}: {exc})",
                f"Reinstall the course: `{sys.executable} -m pip install -e .`.",
            )
        )
    return findings


def report(findings: Sequence[Finding], stream: TextIO | None = None) -> int:
    """Print the findings and a verdict line; return the exit status (0 all fine, 1 otherwise)."""
    stream = stream or sys.stdout
    width = max(len(f.topic) for f in findings)
    for f in findings:
        mark = "ok " if f.ok else "FIX"
        print(f"{mark} {f.topic:<{width}}  {f.detail}", file=stream)
        if not f.ok:
            print(f"    {'':<{width}}  -> {f.fix}", file=stream)
    problems = [f for f in findings if not f.ok]
    if problems:
        print(f"Verdict: {len(problems)} problem(s) to fix, see the lines marked FIX.", file=stream)
        return 1
    print("Verdict: all good, open lessons/01_mdps.ipynb in JupyterLab.", file=stream)
    return 0


def run(root: Path | str = ".", stream: TextIO | None = None) -> int:
    """``course doctor``: diagnose and print; returns the exit status."""
    return report(diagnose(root), stream)
