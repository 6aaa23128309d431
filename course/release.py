"""Generate the student notebooks in ``lessons/`` from the complete ones in ``solutions/``.

A teacher edits only ``solutions/``. In a solution notebook, the part of a cell the student writes
stands between two marker lines::

    def bellman_backup(mdp, V, pi):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

``release`` replaces each such region by a stub at the same indentation (``raise
NotImplementedError``; in Markdown cells, a prompt for the student's answer), clears every output,
drops cells tagged ``solution-only``, and tags ``raises-exception`` every cell that would fail
until the student has written their code: the cells that call an exercise, and, transitively, the
cells that use what those computed. Check cells (``check("...", name)``) are never tagged: they
report "not attempted" instead of raising. So a lesson runs top to bottom as shipped.

Every lesson starts with one more cell, tagged ``colab-install`` (see :func:`colab_install_cell`):
when the notebook runs in Google Colab, detected by the ``google.colab`` module its kernel loads,
it installs the course from this repository and torch at the version the course is tested with
(the Makefile's ``TORCH`` and binder/requirements.txt pin the same one); anywhere else it does
nothing and prints nothing.
"""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import json
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = ["# YOUR CODE HERE", "raise NotImplementedError"]
MARKDOWN_STUB = "_Your answer here._"
SOLUTION_ONLY, RAISES = "solution-only", "raises-exception"
# Written into every lesson's metadata as {"course": {"lesson": stem, "version": ...}}, so that
# ``course grade`` recognises a submission's lesson; bump it when graded exercises change.
LESSON_FORMAT_VERSION = 1
CHECK_FUNCTIONS = {"check"}
# Where the lessons are published: the Colab links and the Colab install read from here (the
# README's badges name the same repository and branch).
REPOSITORY, BRANCH = "ORG/REPO", "main"
DISTRIBUTION = "rl-transfer-course"
# The torch the course is tested with: the Makefile's TORCH and binder/requirements.txt agree.
TORCH_PIN = "torch==2.13.0"
COLAB_INSTALL = "colab-install"
COLAB_CELL = """\
# In Google Colab, install the course first (the versions it is tested with); elsewhere this cell
# does nothing. Added to every lesson by `course release`.
import sys

if "google.colab" in sys.modules:
    import importlib.metadata
    import subprocess

    try:
        _course = importlib.metadata.version({distribution})
    except importlib.metadata.PackageNotFoundError:
        _course = None
    if _course != {version}:
        print("Installing the course (a minute or two)...")
        subprocess.run(
            [
                sys.executable,
{arguments}
            ],
            check=True,
        )
    from google.colab import output as colab_output

    colab_output.enable_custom_widget_manager()  # the lessons' widgets are ipywidgets 8
"""


class ReleaseError(ValueError):
    """A solution notebook is malformed (unbalanced markers, unparsable cell)."""


@dataclass(frozen=True)
class Released:
    """One generated lesson and whether the copy on disk was already up to date."""

    solution: Path
    lesson: Path
    up_to_date: bool


def strip_solutions(source: str, markdown: bool = False, where: str = "cell") -> tuple[str, bool]:
    """Replace every ``BEGIN``/``END SOLUTION`` region of a cell's source by a stub.

    Returns:
        The new source and whether any region was replaced.
    """
    out: list[str] = []
    inside = False
    found = False
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ReleaseError(f"{where}, line {number}: {BEGIN} inside another solution")
            inside, found = True, True
            indent = line[: len(line) - len(line.lstrip())]
            stub = [MARKDOWN_STUB] if markdown else CODE_STUB
            out.extend(indent + s for s in stub)
        elif stripped == END:
            if not inside:
                raise ReleaseError(f"{where}, line {number}: {END} without a {BEGIN} before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ReleaseError(f"{where}: {BEGIN} is never closed by {END}")
    return "\n".join(out), found


def _loads_and_stores(tree: ast.Module, tainted: set[str]) -> tuple[bool, set[str], set[str]]:
    """What executing a cell reads and binds, ignoring function bodies (run later, not now).

    Returns:
        (whether executing it reads a tainted name, names it binds at top level, names of the
        functions/classes it defines whose bodies read a tainted name).
    """
    reads_tainted = False
    binds: set[str] = set()
    tainted_defs: set[str] = set()
    tainted = set(tainted)  # grows as this cell defines functions that call a stub

    def reads(node: ast.AST) -> set[str]:
        names = set()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
                names.add(sub.id)
        return names

    def check_call_args(node: ast.AST) -> set[str]:
        # names passed straight to check(...) are judged, not called
        skip = set()
        for sub in ast.walk(node):
            if (
                isinstance(sub, ast.Call)
                and isinstance(sub.func, ast.Name)
                and sub.func.id in CHECK_FUNCTIONS
            ):
                skip |= {a.id for a in sub.args if isinstance(a, ast.Name)}
        return skip

    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            binds.add(stmt.name)
            if reads(stmt) & tainted:
                tainted_defs.add(stmt.name)
                tainted.add(stmt.name)
            continue
        skip = check_call_args(stmt)
        stmt_reads = {n for n in reads(stmt) if n not in skip}
        if stmt_reads & tainted:
            reads_tainted = True
        for sub in ast.walk(stmt):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
                binds.add(sub.id)
            elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                binds |= {(a.asname or a.name).split(".")[0] for a in sub.names}
    return reads_tainted, binds, tainted_defs


def course_version() -> str:
    """The version of the installed course (the one ``course release`` generates lessons for)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ReleaseError(
            f"{DISTRIBUTION} is not installed: run `pip install -e .` in the course folder"
        ) from exc


def colab_install_command() -> list[str]:
    """The pip arguments a lesson's first cell runs in Colab, after ``sys.executable -m pip``.

    torch at the version the course is tested with, and the course from the branch the lesson
    was opened from, so that lesson and library match.
    """
    source = f"{DISTRIBUTION} @ git+https://github.com/{REPOSITORY}@{BRANCH}"
    return ["install", "--quiet", TORCH_PIN, source]


def colab_url(lesson: str) -> str:
    """The "Open in Colab" link of a lesson, e.g. ``colab_url("01_mdps.ipynb")``."""
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/lessons/{lesson}"


def colab_install_cell(version: str | None = None) -> nbformat.NotebookNode:
    """The code cell that installs the course when, and only when, it runs in Colab.

    Args:
        version: The course version the lesson is made for (default: the installed one). A Colab
            runtime that already has it (the cell ran before) installs nothing.
    """
    source = COLAB_CELL.format(
        distribution=json.dumps(DISTRIBUTION),
        version=json.dumps(version or course_version()),
        arguments="\n".join(
            f"{' ' * 16}{json.dumps(a)}," for a in ["-m", "pip", *colab_install_command()]
        ),
    )
    cell = nbformat.v4.new_code_cell(source.rstrip("\n"))
    cell.id = COLAB_INSTALL  # a fixed id, so that releasing twice writes the same lesson
    cell.metadata["tags"] = [COLAB_INSTALL]
    return cell


def make_lesson(solution: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The student version of a solution notebook (a new object; the input is not changed).

    Its first cell is :func:`colab_install_cell`; the solution's cells follow, transformed.
    """
    nb = copy.deepcopy(solution)
    install = colab_install_cell()
    if (nb.nbformat, nb.nbformat_minor) < (4, 5):
        del install["id"]  # cell ids came with nbformat 4.5
    cells = [install]
    tainted: set[str] = set()
    for index, cell in enumerate(nb.cells):
        tags = list(cell.get("metadata", {}).get("tags", []))
        if SOLUTION_ONLY in tags:
            continue
        where = f"{name}, cell {index}"
        source, stubbed = strip_solutions(cell.source, cell.cell_type == "markdown", where)
        cell.source = source
        cell.metadata = {"tags": [t for t in tags if t != RAISES]} if tags else {}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            try:
                tree = ast.parse(_without_magics(source))
            except SyntaxError as exc:
                raise ReleaseError(f"{where}: cannot parse the cell ({exc.msg})") from exc
            if stubbed:
                tainted |= {
                    s.name
                    for s in tree.body
                    if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                }
            reads_tainted, binds, tainted_defs = _loads_and_stores(tree, tainted)
            tainted |= tainted_defs
            if reads_tainted or (stubbed and _runs_stub(tree)):
                tainted |= binds
                cell.metadata.setdefault("tags", []).append(RAISES)
            if not cell.metadata.get("tags"):
                cell.metadata.pop("tags", None)
        cells.append(cell)
    nb.cells = cells
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in ("kernelspec", "language_info")}
    if name.endswith(".ipynb"):
        nb.metadata["course"] = {"lesson": name[: -len(".ipynb")], "version": LESSON_FORMAT_VERSION}
    return nb


def _runs_stub(tree: ast.Module) -> bool:
    """Whether a stub sits at the top level of the cell (so running the cell raises)."""
    return any(
        isinstance(s, ast.Raise)
        and isinstance(s.exc, ast.Name)
        and s.exc.id == "NotImplementedError"
        for s in tree.body
    )


def _without_magics(source: str) -> str:
    # IPython magics and shell escapes are not Python; blank them so ast can read the rest
    return re.sub(r"^\s*[%!].*$", "", source, flags=re.MULTILINE)


def release(
    solutions: Path | str = "solutions", lessons: Path | str = "lessons", check_only: bool = False
) -> list[Released]:
    """Regenerate every lesson from its solution (or, with ``check_only``, only compare).

    Returns:
        One ``Released`` per solution notebook, saying whether the lesson on disk was current.
    """
    solutions, lessons = Path(solutions), Path(lessons)
    paths = sorted(solutions.glob("*.ipynb"))
    if not paths:
        raise ReleaseError(f"no notebooks in {solutions}/: run from the course's root folder")
    results = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        text = nbformat.writes(make_lesson(nb, path.name)) + "\n"
        target = lessons / path.name
        current = target.exists() and target.read_text(encoding="utf-8") == text
        if not current and not check_only:
            lessons.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".ipynb.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(target)
        results.append(Released(path, target, current))
    return results


def stale_lessons(
    solutions: Path | str = "solutions", lessons: Path | str = "lessons"
) -> list[Path]:
    """Lessons that do not match what ``release`` would generate now (empty when all current)."""
    return [r.lesson for r in release(solutions, lessons, check_only=True) if not r.up_to_date]
