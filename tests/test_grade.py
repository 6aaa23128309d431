"""Tests of ``course grade``: every hostile submission gets a clear row, never a crash.

One class of notebooks (a correct one, partial ones and one per hostile behaviour) is graded once
for the whole module, with two workers and tight limits; each test reads its row.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course.grading import grade as g
from course.grading.core import EXERCISES, get_exercise, lesson_exercises
from course.release import make_lesson

ROOT = Path(__file__).resolve().parents[1]
LIMITS = g.Limits(timeout=60, cell_timeout=3, memory_mb=1280, max_processes=48)
SEED = 7

SETUP = "import torch\nfrom course.grading import check\n%matplotlib inline\n!echo hi"

CORRECT = {
    "q_from_v": """def q_from_v(mdp, V):
    V = torch.as_tensor(V).to(mdp.dtype)
    V = torch.where(mdp.terminal, torch.zeros_like(V), V)
    return mdp.R + mdp.gamma * torch.einsum("sat,t->sa", mdp.P, V)
""",
    "bellman_backup": """def bellman_backup(mdp, V, pi):
    return (pi.to(mdp.dtype) * q_from_v(mdp, V)).sum(-1)
""",
    "policy_evaluation": """def policy_evaluation(mdp, pi, tol=1e-8):
    P = mdp.P.double()
    P_pi = torch.einsum("sa,sat->st", pi.double(), P)
    r_pi = (pi.double() * mdp.R.double()).sum(-1)
    keep = ~mdp.terminal
    if mdp.gamma == 1.0:  # states that never terminate collect nothing here
        reach = mdp.terminal.clone()
        for _ in range(mdp.n_states):
            reach = reach | (P_pi[:, reach] > 0).any(-1)
        keep = keep & reach
    idx = keep.nonzero().flatten()
    V = torch.zeros(mdp.n_states, dtype=torch.float64)
    A = torch.eye(len(idx), dtype=torch.float64) - mdp.gamma * P_pi[idx][:, idx]
    V[idx] = torch.linalg.solve(A, r_pi[idx])
    return V.to(mdp.dtype)
""",
    "greedy_policy": """def greedy_policy(Q):
    return torch.nn.functional.one_hot(Q.argmax(-1), Q.shape[-1]).to(Q.dtype)
""",
    "value_iteration": """def value_iteration(mdp, tol=1e-8):
    m = mdp.to(dtype=torch.float64)
    V = torch.zeros(mdp.n_states, dtype=torch.float64)
    for _ in range(100_000):
        new = q_from_v(m, V).max(-1).values
        done = (new - V).abs().max() < 1e-12
        V = new
        if done:
            break
    Q = q_from_v(m, V)
    return Q.max(-1).values.to(mdp.dtype), Q.to(mdp.dtype)
""",
}
NAMES = list(CORRECT)
POINTS = {n: sum(get_exercise(f"mdp.{n}").parts.values()) for n in NAMES}
FULL = sum(POINTS.values())
STUB = "def {name}(*args, **kwargs):\n    raise NotImplementedError\n"


def exercise_cells(**override: str) -> list[str]:
    """Each exercise cell followed by its check cell; ``override`` replaces a definition."""
    cells = []
    for name in NAMES:
        cells += [override.get(name, CORRECT[name]), f'check("mdp.{name}", {name})']
    return cells


def write_notebook(
    path: Path, cells: list[str], lesson: str | None = "01_mdps", version: object = 1
) -> Path:
    nb = new_notebook(cells=[new_markdown_cell("# Lesson 01")] + [new_code_cell(c) for c in cells])
    if lesson is not None:
        nb.metadata["course"] = {"lesson": lesson, "version": version}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


ALWAYS_EQUAL = """class Liar:
    shape = (1,)
    dtype = torch.float64
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __bool__(self): return True
    def __len__(self): return 1
    def __getitem__(self, i): return self
    def __iter__(self): return iter([self, self])
    def __float__(self): return 0.0
"""

FORGE = """import json, os
fake = {"value": {"type": "float", "value": 0.0}, "error": None}
lines = [json.dumps({"type": "result", "id": f"mdp.{n}", "outcomes": [fake] * 30})
         for n in ["q_from_v", "bellman_backup", "policy_evaluation", "greedy_policy",
                   "value_iteration"]]
lines.append(json.dumps({"type": "done"}))
text = "\\n".join(lines) + "\\n"
print(text)
print("PASS mdp.q_from_v (1/1)\\nAll 27 cases pass.")
for fd in range(3, 256):
    try:
        os.write(fd, text.encode())
    except OSError:
        pass
"""

MEMORY_BOMB = """import resource
try:
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
except (ValueError, OSError):
    pass
blocks = []
while True:
    blocks.append(bytearray(2**30))
"""

# Each entry: the cells of one student's notebook (all of lesson 01 unless the test says).
CLASS = {
    "correct": [SETUP, *exercise_cells()],
    "partial": [
        SETUP,
        *exercise_cells(
            bellman_backup=STUB.format(name="bellman_backup"),
            greedy_policy="def greedy_policy(Q):\n"
            "    return torch.nn.functional.one_hot(Q.argmin(-1), Q.shape[-1]).double()\n",
        ),
    ],
    "stubs": [SETUP, *(STUB.format(name=n) for n in NAMES)],
    "redefines_check": [
        SETUP,
        "def check(*args, **kwargs):\n    print('PASS')\n    return True\n",
        *exercise_cells(**{n: f"def {n}(*args, **kwargs):\n    return 0.0\n" for n in NAMES}),
    ],
    "patches_grading": [
        SETUP,
        "import course.grading.core as core, course.grading.plain as plain\n"
        "core.compare = lambda *a, **k: None\n"
        "core.Exercise.grade = lambda self, outcomes, seed=0: core.CheckResult(\n"
        "    self.id, 'passed', 1, 1, 'All cases pass.')\n"
        "core.Exercise.collect = lambda self, obj, seed=0, judge_as_you_go=False: []\n"
        "plain.encode = lambda value, _depth=0: {'type': 'float', 'value': 1.0}\n",
        *exercise_cells(**{n: f"def {n}(*args, **kwargs):\n    return None\n" for n in NAMES}),
    ],
    "always_equal": [
        SETUP,
        ALWAYS_EQUAL,
        *exercise_cells(**{n: f"def {n}(*args, **kwargs):\n    return Liar()\n" for n in NAMES}),
    ],
    "forges_results": [SETUP, CORRECT["q_from_v"], FORGE],
    "exits_early": [
        SETUP,
        *exercise_cells()[:4],
        "import os\nos._exit(0)",
        *exercise_cells()[4:],
    ],
    "infinite_loops": [
        SETUP,
        "while True:\n    pass",
        *exercise_cells(greedy_policy="def greedy_policy(Q):\n    while True:\n        pass\n"),
    ],
    "memory_bomb": [
        SETUP,
        MEMORY_BOMB,
        "blocks = None",
        *exercise_cells(
            bellman_backup="def bellman_backup(mdp, V, pi):\n    return torch.zeros(10**11)\n"
        ),
    ],
    "syntax_error": [SETUP, *exercise_cells()[:2], "def broken(:\n    pass", *exercise_cells()[2:]],
    "missing_exercises": [SETUP, CORRECT["q_from_v"], CORRECT["greedy_policy"]],
    "imports_reference": [
        SETUP,
        "import course.mdp\n"
        "from course.mdp import q_from_v, bellman_backup\n"
        "from course.grading.core import EXERCISES\n"
        "def policy_evaluation(mdp, pi, tol=1e-8):\n"
        "    return EXERCISES['mdp.policy_evaluation'].solves(mdp, pi, tol)\n"
        "def greedy_policy(Q):\n    return course.mdp.greedy_policy(Q)\n"
        "def value_iteration(mdp, tol=1e-8):\n"
        "    import importlib\n"
        "    return importlib.import_module('course.mdp').value_iteration(mdp, tol)\n",
    ],
    "no_metadata": [SETUP, *exercise_cells()],
}
FORK_BOMB = [SETUP, "import os\nwhile True:\n    os.fork()", *exercise_cells()]


@pytest.fixture(scope="module")
def sandbox_info() -> g.SandboxInfo:
    return g.probe_sandbox(LIMITS)


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory, sandbox_info: g.SandboxInfo) -> dict:
    """Grade the whole class once; return rows by student and the paths involved."""
    root = tmp_path_factory.mktemp("class")
    subs = root / "submissions"
    for student, cells in CLASS.items():
        lesson = None if student == "no_metadata" else "01_mdps"
        write_notebook(subs / student / "01_mdps.ipynb", cells, lesson)
    if sandbox_info.process_limit != "none":  # a fork bomb is only safe with a process cap
        write_notebook(subs / "fork_bomb" / "01_mdps.ipynb", FORK_BOMB)
    huge = write_notebook(subs / "huge_output" / "01_mdps.ipynb", [SETUP, *exercise_cells()])
    nb = nbformat.read(huge, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="x" * 20_000_000)]
    nbformat.write(nb, huge)
    (subs / "empty").mkdir()
    (subs / "empty" / "01_mdps.ipynb").write_bytes(b"")
    (subs / "not_json").mkdir()
    (subs / "not_json" / "01_mdps.ipynb").write_text("def q_from_v(mdp, V): ...")
    (subs / "not_notebook").mkdir()
    (subs / "not_notebook" / "01_mdps.ipynb").write_text(json.dumps({"cells": "none"}))
    write_notebook(subs / "unknown_lesson" / "07_poetry.ipynb", [SETUP], lesson="07_poetry")
    write_notebook(subs / "unknown_version" / "01_mdps.ipynb", [SETUP], version=99)
    write_notebook(subs / "unrecognisable" / "homework.ipynb", ["print('hello')"], lesson=None)
    (subs / "correct" / ".ipynb_checkpoints").mkdir()
    (subs / "correct" / ".ipynb_checkpoints" / "01_mdps-checkpoint.ipynb").write_text("{}")

    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in subs.rglob("*.ipynb")}
    out, feedback = root / "grades.csv", root / "feedback"
    with pytest.MonkeyPatch.context() as patch:  # the course's source may change meanwhile
        patch.setattr(g, "course_fingerprint", lambda: "fixed")
        results = g.grade_class(
            [subs],
            out=out,
            feedback=feedback,
            workers=2,
            limits=LIMITS,
            seed=SEED,
            progress=False,
        )
    rows = {r.student: r for r in results.submissions}
    return {
        "rows": rows,
        "results": results,
        "out": out,
        "feedback": feedback,
        "before": before,
        "subs": subs,
        "root": root,
    }


def scores(row: g.SubmissionResult) -> dict[str, int]:
    return {r.exercise_id.split(".")[1]: r.score for r in row.results}


def statuses(row: g.SubmissionResult) -> dict[str, str]:
    return {r.exercise_id.split(".")[1]: r.status for r in row.results}


def test_correct_notebook_gets_full_marks(graded: dict) -> None:
    row = graded["rows"]["correct"]
    assert row.status == g.GRADED
    assert (row.total, row.max_score) == (FULL, FULL)
    assert row.cell_errors == []  # magics and shell escapes are not run as Python


def test_partial_answers_score_exercise_by_exercise(graded: dict) -> None:
    row = graded["rows"]["partial"]
    assert scores(row) == {
        n: POINTS[n] * (n not in ("bellman_backup", "greedy_policy")) for n in NAMES
    }
    assert statuses(row)["bellman_backup"] == "not attempted"
    greedy = next(r for r in row.results if r.exercise_id == "mdp.greedy_policy")
    assert "argmin" in greedy.message  # the hint reaches the feedback


def test_generated_stubs_score_zero(graded: dict) -> None:
    row = graded["rows"]["stubs"]
    assert row.status == g.GRADED and row.total == 0
    assert set(statuses(row).values()) == {"not attempted"}


@pytest.mark.parametrize(
    "student", ["redefines_check", "patches_grading", "always_equal", "imports_reference"]
)
def test_cheating_gains_nothing(graded: dict, student: str) -> None:
    row = graded["rows"][student]
    assert row.status == g.GRADED
    assert row.total == 0, str(row.results)


def test_the_library_reference_is_refused(graded: dict) -> None:
    row = graded["rows"]["imports_reference"]
    messages = {r.exercise_id: r.message for r in row.results}
    assert "library's own" in messages["mdp.q_from_v"]
    assert "ReferenceNotAvailable" in messages["mdp.policy_evaluation"]  # through the grader
    assert "ReferenceNotAvailable" in messages["mdp.greedy_policy"]
    assert "ReferenceNotAvailable" in messages["mdp.value_iteration"]


def test_forged_report_lines_and_printed_results_are_ignored(graded: dict) -> None:
    row = graded["rows"]["forges_results"]
    assert row.status == g.GRADED
    assert scores(row) == {n: POINTS[n] * (n == "q_from_v") for n in NAMES}
    assert statuses(row)["bellman_backup"] == "missing"


def test_os_exit_in_a_cell_costs_only_that_cell(graded: dict) -> None:
    row = graded["rows"]["exits_early"]
    assert row.status == g.GRADED
    assert row.total == FULL
    assert any("Code cell 5 stopped the whole run" in n for n in row.notes), row.notes


def test_infinite_loops_cost_only_their_exercise(graded: dict) -> None:
    row = graded["rows"]["infinite_loops"]
    assert row.status == g.GRADED
    assert scores(row) == {n: POINTS[n] * (n != "greedy_policy") for n in NAMES}
    greedy = next(r for r in row.results if r.exercise_id == "mdp.greedy_policy")
    assert "did not finish" in greedy.message
    assert [e["error"] for e in row.cell_errors] == ["CellTimeout"]


def test_memory_bomb_costs_only_its_exercise(graded: dict) -> None:
    row = graded["rows"]["memory_bomb"]
    assert row.status == g.GRADED
    assert scores(row) == {n: POINTS[n] * (n != "bellman_backup") for n in NAMES}
    assert [e["error"] for e in row.cell_errors] == ["MemoryError"]


def test_fork_bomb_is_contained(graded: dict, sandbox_info: g.SandboxInfo) -> None:
    if sandbox_info.process_limit == "none":
        pytest.skip("no process cap on this machine (root without cgroups): not safe to run")
    row = graded["rows"]["fork_bomb"]
    assert row.status == g.GRADED
    assert row.total == FULL, str(row.results)
    # The cell stops when its fork fails, or at its time limit if its copies keep freeing slots.
    assert [e["error"] for e in row.cell_errors] in (["BlockingIOError"], ["CellTimeout"])


def test_syntax_error_in_one_cell_does_not_stop_the_others(graded: dict) -> None:
    row = graded["rows"]["syntax_error"]
    assert row.total == FULL
    assert [e["error"] for e in row.cell_errors] == ["SyntaxError"]
    assert "def broken(:" in row.cell_errors[0]["where"]


def test_huge_output_cell_is_graded(graded: dict) -> None:
    row = graded["rows"]["huge_output"]
    assert (row.status, row.total) == (g.GRADED, FULL)


def test_missing_exercises_say_so(graded: dict) -> None:
    row = graded["rows"]["missing_exercises"]
    assert scores(row) == {n: POINTS[n] * (n in ("q_from_v", "greedy_policy")) for n in NAMES}
    missing = next(r for r in row.results if r.exercise_id == "mdp.value_iteration")
    assert missing.status == "missing" and "No `value_iteration`" in missing.message


def test_lesson_is_recognised_without_metadata(graded: dict) -> None:
    row = graded["rows"]["no_metadata"]
    assert (row.lesson, row.total) == ("01_mdps", FULL)
    assert any("recognised from the notebook's exercises" in n for n in row.notes)


@pytest.mark.parametrize(
    ("student", "status", "words"),
    [
        ("empty", g.EMPTY, "empty"),
        ("not_json", g.NOT_JSON, "not JSON"),
        ("not_notebook", g.NOT_NOTEBOOK, "no list of cells"),
        ("unknown_lesson", g.UNKNOWN_LESSON, "07_poetry"),
        ("unknown_version", g.UNKNOWN_VERSION, "version 99"),
        ("unrecognisable", g.UNKNOWN_LESSON, "No exercise"),
    ],
)
def test_bad_input_gets_a_clear_row(graded: dict, student: str, status: str, words: str) -> None:
    row = graded["rows"][student]
    assert row.status == status
    assert row.results == [] and row.total == 0
    assert words in " ".join(row.notes)


def test_gradebook_has_one_row_per_submission(graded: dict) -> None:
    with open(graded["out"], newline="") as file:
        rows = list(csv.DictReader(file))
    ids = [ex.id for ex in lesson_exercises("01_mdps")]
    assert list(rows[0]) == ["student", "lesson", *ids, "total", "max", "status", "notebook"]
    assert [r["student"] for r in rows] == sorted(graded["rows"])  # checkpoints skipped
    correct = next(r for r in rows if r["student"] == "correct")
    assert [correct[i] for i in ids] == [str(POINTS[i.split(".")[1]]) for i in ids]
    assert correct["total"] == str(FULL)
    empty = next(r for r in rows if r["student"] == "empty")
    assert empty["status"] == "empty file" and empty[ids[0]] == ""
    assert not list(graded["out"].parent.glob(".grades.csv.*"))  # no temp file left


def test_feedback_says_what_failed_and_why(graded: dict) -> None:
    text = (graded["feedback"] / "partial" / "01_mdps.md").read_text()
    partial = FULL - POINTS["bellman_backup"] - POINTS["greedy_policy"]
    assert f"Score: **{partial} / {FULL}**" in text
    assert "| `mdp.greedy_policy` | failed | 0/1 |" in text
    assert "argmin" in text
    text = (graded["feedback"] / "syntax_error" / "01_mdps.md").read_text()
    assert "SyntaxError" in text
    assert len(list(graded["feedback"].rglob("*.md"))) == len(graded["rows"])


def test_student_files_are_never_modified(graded: dict) -> None:
    for path, (data, mtime) in graded["before"].items():
        assert path.read_bytes() == data
        assert path.stat().st_mtime_ns == mtime


def test_summary_counts(graded: dict) -> None:
    counts = graded["results"].counts()
    n_bad = 6  # empty, not JSON, not a notebook, unknown lesson and version, unrecognisable
    assert counts["failed to run"] == n_bad
    assert counts["graded"] == len(graded["rows"]) - n_bad
    assert "graded" in graded["results"].summary()


def test_resume_reuses_results_and_gives_identical_scores(
    graded: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(g, "course_fingerprint", lambda: "fixed")
    again = g.grade_class(
        [graded["subs"]],
        out=graded["out"],
        feedback=None,
        workers=1,
        limits=LIMITS,
        progress=False,
    )  # no --seed: the cached run's seed is reused
    assert again.seed == SEED
    assert again.reused == len(graded["rows"])
    assert [r.to_json() for r in again.submissions] == [
        r.to_json() for r in graded["results"].submissions
    ]
    # the feedback too, exercises in the lesson's order (the cache stores them sorted by id)
    assert [g.feedback_markdown(r) for r in again.submissions] == [
        g.feedback_markdown(r) for r in graded["results"].submissions
    ]


def test_lesson_filter_gives_other_lessons_a_row(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "bob" / "01_mdps.ipynb", [SETUP])
    row = g.grade_notebook(path, SEED, LIMITS, lesson_filter="02_replay")
    assert row.status == g.OTHER_LESSON and "not 02_replay" in row.notes[0]


def test_run_past_the_timeout_is_reported(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "carol" / "01_mdps.ipynb", [SETUP, *exercise_cells()])
    row = g.grade_notebook(path, SEED, g.Limits(timeout=0.5))
    assert row.status == g.TIMED_OUT
    assert row.total == 0 and {r.status for r in row.results} == {"not run"}
    assert "time limit" in row.results[0].message


def test_parse_report_ignores_garbage_and_lines_after_done() -> None:
    ids = ["mdp.q_from_v"]
    good = {"type": "result", "id": "mdp.q_from_v", "outcomes": []}
    forged = {"type": "result", "id": "mdp.q_from_v", "outcomes": [{"value": 1}]}
    data = b"\n".join(
        [
            b"not json",
            b"[1, 2]",
            b'{"type": "result", "id": "x", "value": NaN}',
            json.dumps(forged).encode(),
            json.dumps(good).encode(),
            b'{"type": "done"}',
            json.dumps(forged).encode(),
        ]
    )
    report = g.parse_report(data, ids)
    assert report.done and report.results == {"mdp.q_from_v": good}
    assert not g.parse_report(b"\x00\xff" * 100, ids).done


def test_cli_grade_writes_gradebook_and_json(tmp_path: Path) -> None:
    cells = [SETUP, CORRECT["q_from_v"], *(STUB.format(name=n) for n in NAMES[1:])]
    write_notebook(tmp_path / "subs" / "dan" / "01_mdps.ipynb", cells)
    (tmp_path / "subs" / "eve").mkdir()
    (tmp_path / "subs" / "eve" / "01_mdps.ipynb").write_text("")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "course.cli",
            "grade",
            "subs",
            "--json",
            "--seed",
            "3",
            "--quiet",
            "--timeout",
            "60",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    by_student = {s["student"]: s for s in data["submissions"]}
    assert by_student["dan"]["exercises"]["mdp.q_from_v"]["status"] == "passed"
    assert by_student["dan"]["total"] == 1 and by_student["eve"]["status"] == "empty file"
    assert "2 notebooks: 1 graded, 1 failed to run, 0 timed out" in proc.stderr
    assert (tmp_path / "grades" / "grades.csv").exists()
    assert (tmp_path / "grades" / "feedback" / "dan").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grades", "subs"]  # nothing loose


def test_cli_grade_without_notebooks_fails_clearly(tmp_path: Path) -> None:
    from course.cli import main

    assert main(["grade", str(tmp_path / "nothing-here")]) == 2


SOLUTIONS = sorted(
    p
    for p in (ROOT / "solutions").glob("*.ipynb")
    if any(ex.lesson == p.stem for ex in EXERCISES.values())
)


@pytest.mark.slow
@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solution_gets_full_marks_and_lesson_gets_zero(solution: Path, tmp_path: Path) -> None:
    lesson = tmp_path / "student" / solution.name
    lesson.parent.mkdir()
    nbformat.write(make_lesson(nbformat.read(solution, as_version=4), solution.name), lesson)
    limits = g.Limits(timeout=300, cell_timeout=120)
    results = g.grade_class(
        [solution, lesson],
        out=None,
        feedback=None,
        workers=2,
        limits=limits,
        seed=SEED,
        progress=False,
    )
    by_path = {Path(r.notebook): r for r in results.submissions}
    full, zero = by_path[solution], by_path[lesson]
    assert full.status == g.GRADED and full.total == full.max_score > 0, str(full.results)
    assert zero.status == g.GRADED and zero.total == 0, str(zero.results)
    assert zero.lesson == solution.stem


def test_os_environment_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    env = g._environment(tmp_path)
    assert "SECRET_TOKEN" not in env and env["HOME"] == str(tmp_path)
    assert os.environ["SECRET_TOKEN"] == "hunter2"


def test_cells_tagged_grade_skip_are_not_run() -> None:
    from course.grading import sandbox

    nb = new_notebook(cells=[new_code_cell("a = 1"), new_code_cell("train_for_an_hour()")])
    nb.cells[1].metadata["tags"] = [sandbox.GRADE_SKIP]
    cells = sandbox.code_cells(json.loads(nbformat.writes(nb)))
    assert cells == [(0, "a = 1"), (1, "")]
