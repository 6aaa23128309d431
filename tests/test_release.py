"""course release: solutions/ -> lessons/, and the lessons on disk are current."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

from course.cli import main
from course.release import (
    CODE_STUB,
    COLAB_INSTALL,
    DISTRIBUTION,
    MARKDOWN_STUB,
    RAISES,
    TORCH_PIN,
    ReleaseError,
    colab_install_cell,
    colab_install_command,
    colab_url,
    course_version,
    make_lesson,
    release,
    stale_lessons,
    strip_solutions,
)

ROOT = Path(__file__).resolve().parent.parent


def notebook(*cells: tuple[str, str], tags: dict[int, list[str]] | None = None):
    nb = nbformat.v4.new_notebook()
    for i, (kind, source) in enumerate(cells):
        cell = (nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell)(
            source
        )
        if tags and i in tags:
            cell.metadata["tags"] = tags[i]
        if kind == "code":
            cell.outputs = [nbformat.v4.new_output("stream", text="out\n")]
            cell.execution_count = i + 1
        nb.cells.append(cell)
    return nb


EXERCISE = """def double(x):
    \"\"\"Twice x.\"\"\"
    ### BEGIN SOLUTION
    y = 2 * x
    return y
    ### END SOLUTION"""


def test_solution_region_becomes_an_indented_stub():
    source, found = strip_solutions(EXERCISE)
    assert found
    assert "2 * x" not in source
    assert source.splitlines()[-2:] == ["    " + line for line in CODE_STUB]
    assert source.startswith('def double(x):\n    """Twice x."""')


def test_markdown_answer_becomes_a_prompt():
    source, found = strip_solutions("Q?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION", True)
    assert found and source == f"Q?\n{MARKDOWN_STUB}"


@pytest.mark.parametrize(
    "source, message",
    [
        ("### BEGIN SOLUTION\nx = 1", "never closed"),
        ("x = 1\n### END SOLUTION", "without a"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "inside another"),
    ],
)
def test_unbalanced_markers_are_clear_errors(source, message):
    with pytest.raises(ReleaseError, match=message):
        strip_solutions(source, where="nb, cell 3")


def test_lesson_clears_outputs_and_tags_what_needs_the_student_code():
    nb = notebook(
        ("code", "import math\nfrom course.grading import check"),
        ("code", EXERCISE),
        ("code", 'check("x.double", double)'),
        ("code", "four = double(2)"),  # calls the stub: raises in the lesson
        ("code", "print(four + 1)"),  # uses what the failing cell would have made
        ("code", "def helper(v):\n    return double(v) + 1"),  # defining is fine...
        ("code", "helper(3)"),  # ...calling is not
        ("code", "print(math.pi)"),  # independent of the exercise
        ("code", "secret = 42"),
        ("markdown", "The end"),
        tags={8: ["solution-only"]},
    )
    lesson = make_lesson(nb)
    assert lesson.cells[0].metadata["tags"] == [COLAB_INSTALL]
    raises = [RAISES in c.metadata.get("tags", []) for c in lesson.cells[1:]]
    assert raises == [False, False, False, True, True, False, True, False, False]
    assert all(
        c.outputs == [] and c.execution_count is None for c in lesson.cells if c.cell_type == "code"
    )
    assert not any("secret" in c.source for c in lesson.cells)
    assert nb.cells[1].source == EXERCISE, "the solution notebook must not change"


def test_a_cell_that_defines_and_calls_a_helper_of_the_exercise_is_tagged():
    nb = notebook(
        ("code", EXERCISE),
        ("code", "def helper(v):\n    return double(v) + 1\n\nhelper(3)"),
        ("code", "def unrelated(v):\n    return v\n\nunrelated(3)"),
    )
    raises = [RAISES in c.metadata.get("tags", []) for c in make_lesson(nb).cells[1:]]
    assert raises == [False, True, False]


def test_top_level_stub_tags_its_own_cell():
    nb = notebook(("code", "### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION\nprint(answer)"))
    assert make_lesson(nb).cells[1].metadata["tags"] == [RAISES]


def test_release_writes_then_reports_current(tmp_path):
    (tmp_path / "solutions").mkdir()
    nbformat.write(notebook(("code", EXERCISE)), tmp_path / "solutions" / "01_x.ipynb")
    first = release(tmp_path / "solutions", tmp_path / "lessons")
    assert [r.up_to_date for r in first] == [False]
    assert stale_lessons(tmp_path / "solutions", tmp_path / "lessons") == []
    lesson = tmp_path / "lessons" / "01_x.ipynb"
    lesson.write_text(lesson.read_text().replace("YOUR CODE", "MY CODE"))
    assert stale_lessons(tmp_path / "solutions", tmp_path / "lessons") == [lesson]


def test_cli_check_exit_codes(tmp_path, capsys):
    (tmp_path / "solutions").mkdir()
    nbformat.write(notebook(("code", EXERCISE)), tmp_path / "solutions" / "01_x.ipynb")
    args = ["--solutions", str(tmp_path / "solutions"), "--lessons", str(tmp_path / "lessons")]
    assert main(["release", "--check", *args]) == 1
    assert "OUT OF DATE" in capsys.readouterr().out
    assert main(["release", *args]) == 0
    assert main(["release", "--check", *args]) == 0
    assert main(["release", "--solutions", str(tmp_path / "nothing")]) == 2
    assert "no notebooks" in capsys.readouterr().err


def test_shipped_lessons_are_generated_from_the_solutions():
    if not list((ROOT / "solutions").glob("*.ipynb")):
        pytest.skip("no solution notebooks yet")
    stale = stale_lessons(ROOT / "solutions", ROOT / "lessons")
    assert stale == [], f"lessons out of date: {stale}; run `course release`"


# The first cell of every lesson: installs the course in Colab, and only there.


class _Recorder:
    """Stands in for ``subprocess.run`` and ``enable_custom_widget_manager``: records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))


@pytest.fixture
def colab(monkeypatch: pytest.MonkeyPatch):
    """Runs the install cell as a kernel would, in Colab or not; pip and Colab are recorded."""
    pip = _Recorder()
    monkeypatch.setattr(subprocess, "run", pip)

    def run(in_colab: bool, installed: str | None) -> tuple[_Recorder, _Recorder]:
        widgets = _Recorder()
        if in_colab:
            output = types.ModuleType("google.colab.output")
            output.enable_custom_widget_manager = widgets
            module = types.ModuleType("google.colab")
            module.output = output
            monkeypatch.setitem(sys.modules, "google.colab", module)
        else:
            monkeypatch.delitem(sys.modules, "google.colab", raising=False)

        def version(name: str) -> str:
            if name == DISTRIBUTION and installed is not None:
                return installed
            raise importlib.metadata.PackageNotFoundError(name)

        monkeypatch.setattr(importlib.metadata, "version", version)
        exec(compile(colab_install_cell("0.1.0").source, "<install cell>", "exec"), {})
        return pip, widgets

    return run


def test_install_cell_does_nothing_outside_colab(colab, capsys) -> None:
    pip, widgets = colab(in_colab=False, installed=None)
    assert pip.calls == [] and widgets.calls == []
    assert capsys.readouterr() == ("", ""), "nbval compares the lessons' output: it must be empty"


def test_install_cell_in_colab_runs_the_pinned_install(colab, capsys) -> None:
    pip, widgets = colab(in_colab=True, installed=None)
    [(args, kwargs)] = pip.calls
    assert args == (
        [
            sys.executable, "-m", "pip", "install", "--quiet", "torch==2.13.0",
            "rl-transfer-course @ git+https://github.com/ORG/REPO@main",
        ],
    )  # fmt: skip
    assert kwargs == {"check": True}, "a failed install must stop the lesson, not pass silently"
    assert widgets.calls == [((), {})]
    assert "Installing the course" in capsys.readouterr().out


def test_install_cell_in_colab_skips_an_installed_course(colab) -> None:
    pip, widgets = colab(in_colab=True, installed="0.1.0")
    assert pip.calls == [] and len(widgets.calls) == 1
    pip, _ = colab(in_colab=True, installed="0.0.9")  # an older course: reinstall
    assert len(pip.calls) == 1


def test_install_pins_the_versions_the_course_is_tested_with() -> None:
    # the torch of `make setup` (Makefile's TORCH) and of Binder (its CPU build)
    makefile = re.search(r"^TORCH \?= (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert makefile and makefile.group(1) == TORCH_PIN
    binder = (ROOT / "binder" / "requirements.txt").read_text()
    assert re.search(rf"^{re.escape(TORCH_PIN)}\+cpu$", binder, re.MULTILINE)
    assert TORCH_PIN in colab_install_command()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{course_version()}"' in pyproject
    assert json.dumps(course_version()) in colab_install_cell().source


def test_every_shipped_lesson_starts_with_the_install_cell_and_has_a_colab_link() -> None:
    readme = (ROOT / "README.md").read_text()
    lessons = sorted((ROOT / "lessons").glob("*.ipynb"))
    assert lessons
    for path in lessons:
        first = nbformat.read(path, as_version=4).cells[0]
        assert first.source == colab_install_cell().source, path.name
        assert colab_url(path.name) in readme, f"README.md has no Colab link to {path.name}"
