"""Tests for course/doctor.py: ``course doctor`` says what is off and how to fix it."""

from __future__ import annotations

import io
import types
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course import doctor
from course.cli import main
from course.release import release

SOLUTION = new_notebook(
    cells=[
        new_markdown_cell("# Lesson 01\nWrite `double`."),
        new_code_cell("from course.grading import check\nfrom course.mdp import gridworld"),
        new_code_cell(
            "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"
        ),
        new_code_cell('check("mdp.bellman_backup", double)'),
        new_markdown_cell("The end."),
    ]
)


@pytest.fixture
def course_dir(tmp_path: Path) -> Path:
    """A course folder with one solution and its freshly released lesson."""
    (tmp_path / "solutions").mkdir()
    nbformat.write(SOLUTION, tmp_path / "solutions" / "01_demo.ipynb")
    release(tmp_path / "solutions", tmp_path / "lessons")
    return tmp_path


def _lesson(course_dir: Path) -> nbformat.NotebookNode:
    # the release's cells follow the Colab install cell, so SOLUTION's cell i is cell i + 1 here
    return nbformat.read(course_dir / "lessons" / "01_demo.ipynb", as_version=4)


def _write_lesson(course_dir: Path, nb: nbformat.NotebookNode) -> None:
    nbformat.write(nb, course_dir / "lessons" / "01_demo.ipynb")


def test_finding_is_ok_without_a_fix() -> None:
    assert doctor.Finding("x", "fine").ok
    assert not doctor.Finding("x", "broken", "Do this.").ok


def test_python_too_old_says_which_version_to_use() -> None:
    assert doctor.check_python((3, 11, 7)).ok
    old = doctor.check_python((3, 9, 18))
    assert not old.ok and "3.9.18" in old.detail and "3.10" in old.fix


def test_library_check_reports_missing_and_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    assert doctor.check_library("numpy").ok
    missing = doctor.check_library("surely-not-installed-package")
    assert not missing.ok and missing.detail == "not installed" and "pip install" in missing.fix
    monkeypatch.setattr(doctor, "_declared_specifier", lambda name: "<1.0")
    too_new = doctor.check_library("gymnasium")
    assert not too_new.ok and "<1.0" in too_new.detail and "<1.0" in too_new.fix


def _fake_torch(cuda: str | None, available: bool, hip: str | None = None) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        __version__="2.13.0",
        version=types.SimpleNamespace(cuda=cuda, hip=hip),
        cuda=types.SimpleNamespace(
            is_available=lambda: available, get_device_name=lambda i: "Tesla T4"
        ),
        backends=types.SimpleNamespace(mps=types.SimpleNamespace(is_available=lambda: False)),
    )


def test_describe_torch_names_build_and_device() -> None:
    assert doctor.describe_torch(_fake_torch(None, False)) == "2.13.0, CPU build, device cpu"
    gpu = doctor.describe_torch(_fake_torch("12.6", True))
    assert "CUDA 12.6 build" in gpu and "cuda available (Tesla T4)" in gpu
    no_gpu = doctor.describe_torch(_fake_torch("12.6", False))
    assert "CUDA 12.6 build" in no_gpu and "run on the CPU" in no_gpu
    assert "ROCm 6.2 build" in doctor.describe_torch(_fake_torch(None, False, hip="6.2"))


def test_torch_check_on_this_machine() -> None:
    found = doctor.check_torch()
    assert found.ok and found.topic == "torch" and "build" in found.detail


def _versions(**installed: str | None):  # noqa: ANN202
    return lambda name: installed.get(name)


@pytest.mark.parametrize(
    ("installed", "extension", "ok", "words"),
    [
        (dict(ipywidgets="8.1.9", jupyterlab_widgets="3.0.17", jupyterlab="4.6.6"), True, True,
         "will render"),
        (dict(jupyterlab_widgets="3.0.17", jupyterlab="4.6.6"), True, False, "not installed"),
        (dict(ipywidgets="8.1.9", jupyterlab="4.6.6"), True, False, "plain text"),
        (dict(ipywidgets="8.1.9", jupyterlab_widgets="1.1.1", jupyterlab="4.6.6"), True, False,
         "do not match"),
        (dict(ipywidgets="7.8.1", jupyterlab_widgets="1.1.7", jupyterlab="4.6.6"), True, True,
         "will render"),
        (dict(ipywidgets="8.1.9", jupyterlab_widgets="3.0.17", jupyterlab="2.3.2"), True, False,
         "cannot load"),
        (dict(ipywidgets="8.1.9", jupyterlab_widgets="3.0.17", jupyterlab="4.6.6"), False, False,
         "does not see"),
        (dict(ipywidgets="8.1.9", jupyterlab_widgets="3.0.17"), True, True, "not in this"),
    ],
)  # fmt: skip
def test_widgets_check(installed: dict, extension: bool, ok: bool, words: str) -> None:
    found = doctor.check_widgets(_versions(**installed), lambda: extension)
    assert found.ok is ok and words in found.detail
    assert ok or found.fix.endswith(".")


def test_widgets_render_here() -> None:
    assert doctor.check_widgets().ok, doctor.check_widgets()


def test_fresh_lessons_match(course_dir: Path) -> None:
    [found] = doctor.check_lessons(course_dir)
    assert found.ok and found.detail == "1 of 1 lessons match solutions/"


def test_student_work_is_not_out_of_date(course_dir: Path) -> None:
    nb = _lesson(course_dir)
    nb.cells[3].source = "def double(x):\n    return x + x"
    nb.cells[4].outputs = [nbformat.v4.new_output("stream", text="PASS\n")]
    nb.cells.insert(5, new_code_cell("double(21)  # my own experiment"))
    _write_lesson(course_dir, nb)
    [found] = doctor.check_lessons(course_dir)
    assert found.ok and "01_demo.ipynb with a student's work in it" in found.detail


@pytest.mark.parametrize("change", ["edit_markdown", "drop_check", "delete"])
def test_out_of_date_lesson_is_a_problem(course_dir: Path, change: str) -> None:
    if change == "delete":
        (course_dir / "lessons" / "01_demo.ipynb").unlink()
        nbformat.write(new_notebook(), course_dir / "lessons" / "00_other.ipynb")
    else:
        nb = _lesson(course_dir)
        if change == "edit_markdown":
            nb.cells[1].source = "# Lesson 01 (an older text)"
        else:
            del nb.cells[4]
        _write_lesson(course_dir, nb)
    [found] = doctor.check_lessons(course_dir)
    assert not found.ok and "01_demo.ipynb" in found.detail and "course release" in found.fix


def test_lesson_using_what_the_library_lacks(course_dir: Path) -> None:
    nb = _lesson(course_dir)
    nb.cells[2].source += "\nfrom course.mdp import no_such_function"
    nb.cells[4].source = 'check("mdp.no_such_exercise", double)'
    _write_lesson(course_dir, nb)
    problems = [f for f in doctor.check_lessons(course_dir) if not f.ok]
    assert problems, "a lesson newer than the library must be reported"
    detail = problems[0].detail
    assert "course.mdp.no_such_function" in detail and "'mdp.no_such_exercise'" in detail
    assert "pip install -e ." in problems[0].fix


def test_no_lessons_folder_says_where_to_run(tmp_path: Path) -> None:
    [found] = doctor.check_lessons(tmp_path)
    assert not found.ok and "--path" in found.fix


def test_lessons_without_solutions_are_checked_against_the_library(course_dir: Path) -> None:
    for path in (course_dir / "solutions").iterdir():
        path.unlink()
    (course_dir / "solutions").rmdir()
    [found] = doctor.check_lessons(course_dir)
    assert found.ok and "no solutions/" in found.detail


def test_broken_solution_is_reported(course_dir: Path) -> None:
    bad = new_notebook(cells=[new_code_cell("### BEGIN SOLUTION\nx = 1")])
    nbformat.write(bad, course_dir / "solutions" / "02_bad.ipynb")
    [found] = doctor.check_lessons(course_dir)
    assert not found.ok and "never closed" in found.detail


def test_report_prints_fixes_and_a_verdict() -> None:
    out = io.StringIO()
    assert doctor.report([doctor.Finding("a", "fine")], out) == 0
    assert "Verdict: all good" in out.getvalue()
    out = io.StringIO()
    status = doctor.report([doctor.Finding("a", "fine"), doctor.Finding("b", "bad", "Fix b.")], out)
    text = out.getvalue()
    assert status == 1 and "FIX b" in text and "-> Fix b." in text and "1 problem" in text


def test_cli_doctor(course_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["doctor", "--path", str(course_dir)])
    text = capsys.readouterr().out
    for topic in ("Python", "course", "torch", "gymnasium", "numpy", "widgets", "lessons"):
        assert f" {topic} " in text
    assert status == (0 if "Verdict: all good" in text else 1)
    assert "ok  lessons" in text


def test_cli_doctor_exits_1_when_lessons_are_stale(
    course_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (course_dir / "lessons" / "01_demo.ipynb").unlink()
    nbformat.write(new_notebook(), course_dir / "lessons" / "00_other.ipynb")
    assert main(["doctor", "--path", str(course_dir)]) == 1
    assert "FIX lessons" in capsys.readouterr().out
