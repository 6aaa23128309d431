"""The check machinery: plain data, judging, hints, parts, time limits, and the two halves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from course.grading import check, exercise_ids, plain
from course.grading.core import (
    FAIL,
    NOT_ATTEMPTED,
    PASS,
    Case,
    CheckResult,
    Exercise,
    Outcome,
    compare,
)


class Square(Exercise):
    """A toy exercise: return x squared, elementwise, without changing x."""

    id, name, lesson = "toy.square", "square", "00_toy"
    parts = {"small": 1, "large": 2}
    time_limit = 0.5

    def reference(self, x):
        return x * x

    def mistakes(self):
        return {"square, do not double": lambda x: 2 * x}

    def cases(self, generator):
        small = [
            Case(f"small #{k}", (torch.randn(3, generator=generator),), part="small")
            for k in range(3)
        ]
        large = [
            Case(f"large #{k}", (torch.randn(50, generator=generator) * 10,), part="large")
            for k in range(3)
        ]
        return small + large


EX = Square()


def test_plain_roundtrip_of_tensors_arrays_and_tuples():
    value = (torch.tensor([1.5, float("nan")]), np.arange(3), 2, 0.5, True, None)
    data = json.loads(json.dumps(plain.encode(value)))
    items = data["items"]
    assert torch.equal(plain.to_tensor(items[1]), torch.arange(3))
    assert torch.isnan(plain.to_tensor(items[0])[1])
    assert plain.to_tensor(items[2]).item() == 2 and items[4] is True and items[5] is None


def test_plain_refuses_huge_answers():
    with pytest.raises(plain.EncodeError, match="elements"):
        plain.encode(torch.zeros(plain.MAX_ELEMENTS + 1))


def test_encoding_never_calls_the_answers_own_methods():
    class Liar(torch.Tensor):
        def __eq__(self, other):
            return True

    assert plain.encode(object())["type"] == "object"
    assert plain.encode(torch.zeros(2).as_subclass(Liar))["data"] == [0.0, 0.0]


def test_compare_accepts_any_float_dtype_and_lists():
    want = plain.encode(torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert compare(plain.encode(torch.tensor([1.0, 2.0])), want) is None
    assert compare(plain.encode(np.array([1.0, 2.0], dtype=np.float32)), want) is None
    assert compare(plain.encode([1.0, 2.0]), want) is None
    assert "shape" in compare(plain.encode(torch.zeros(3)), want)
    assert "differ" in compare(plain.encode(torch.tensor([1.0, 2.5])), want)
    assert "integers" in compare(plain.encode(torch.zeros(2)), plain.encode(torch.zeros(2).long()))
    assert "NaN" in compare(plain.encode(torch.tensor([1.0, float("nan")])), want)
    assert "expected" in compare(None, want)


def test_correct_answers_written_differently_pass():
    for answer in (
        lambda x: x * x,
        lambda x: x.double() ** 2,
        lambda x: np.square(x.numpy()),
        lambda x: [float(v) ** 2 for v in x],
    ):
        result = EX.check(answer)
        assert result.passed and result.score == result.max_score == 3, result.message


def test_known_mistake_fails_with_its_hint_and_shows_the_input():
    result = EX.check(lambda x: 2 * x)
    assert result.status == FAIL and result.score == 0
    assert "square, do not double" in result.message
    assert "input:" in result.message and "case 0, small #0" in result.message


def test_parts_score_separately():
    result = EX.check(lambda x: x * x if len(x) < 10 else x)
    assert result.status == FAIL and result.score == 1
    assert "[large]" in result.message and "Parts that pass: small" in result.message


def test_not_attempted_missing_and_wrong_kind():
    def square(x):
        raise NotImplementedError

    assert EX.check(square).status == NOT_ATTEMPTED
    assert "replace `raise NotImplementedError`" in EX.check(square).message
    assert EX.check(None).status == NOT_ATTEMPTED
    assert "should be a function" in EX.check(42).message


def test_broken_code_is_reported_not_raised():
    def square(x):
        return x * undefined_name  # noqa: F821

    result = EX.check(square)
    assert result.status == FAIL
    assert "NameError" in result.message and "x * undefined_name" in result.message
    assert "SystemExit" in EX.check(lambda x: exit(3)).message


def test_mutating_an_input_is_caught():
    def square(x):
        x *= x
        return x

    assert "in place" in EX.check(square).message


def test_runaway_loop_times_out():
    def square(x):
        while True:
            pass

    result = EX.check(square)
    assert result.status == FAIL and "did not finish" in result.message


def test_two_halves_through_json_give_the_same_verdict():
    answer = lambda x: 2 * x  # noqa: E731
    outcomes = EX.collect(answer, seed=3)
    shipped = json.loads(json.dumps([o.to_json() for o in outcomes]))
    graded = EX.grade([Outcome.from_json(o) for o in shipped], seed=3)
    assert graded == EX.check(answer, seed=3) or graded.message.startswith("[small]")
    assert graded.score == 0


def test_forged_or_missing_outcomes_cannot_pass():
    good = [o.to_json() for o in EX.collect(lambda x: x * x)]
    assert EX.grade([Outcome.from_json(o) for o in good]).passed
    assert not EX.grade([Outcome.from_json(o) for o in good[:-1]]).passed
    forged = [dict(o, value={"type": "object", "class": "Always"}) for o in good]
    assert not EX.grade([Outcome.from_json(o) for o in forged]).passed
    assert Outcome.from_json("garbage").error == "MalformedOutcome"


def test_same_seed_same_cases_other_seed_other_cases():
    a, b, c = EX.build_cases(1), EX.build_cases(1), EX.build_cases(2)
    assert all(torch.equal(x.args[0], y.args[0]) for x, y in zip(a, b))
    assert not torch.equal(a[0].args[0], c[0].args[0])


def test_check_result_renders_text_and_html():
    result = CheckResult("toy.square", PASS, 1, 1, "All 6 cases pass.")
    assert str(result).startswith("PASS toy.square (1/1)")
    assert "&#10004;" in result._repr_html_() and "passed" in result._repr_html_()
    failed = CheckResult("toy.square", FAIL, 0, 1, "<script>")
    assert "<script>" not in failed._repr_html_()


def test_unknown_id_lists_the_known_ones():
    with pytest.raises(KeyError, match="mdp.bellman_backup"):
        check("mdp.no_such_thing", print)
    assert "mdp.value_iteration" in exercise_ids("01_mdps")


# --- an exercise is declared once: everything that names it derives from `solves` -------------


def test_id_name_and_kind_derive_from_the_library_object():
    from course import replay, td

    class QLearning(Exercise):
        solves = td.q_learning_update
        lesson = "02_replay"

    class Buffer(Exercise):
        solves = replay.ReplayBuffer

    assert (QLearning.id, QLearning.name, QLearning.kind) == (
        "td.q_learning_update",
        "q_learning_update",
        "function",
    )
    assert (Buffer.id, Buffer.kind) == ("replay.ReplayBuffer", "class")
    Q = torch.zeros(2, 2)
    assert QLearning().reference(Q, 0, 1, 1.0, 1, True, 0.5, 0.9)[0, 1] == 0.5
    problem = QLearning().unusable(td.q_learning_update)
    assert problem is not None and "library's own" in problem


def test_registered_exercises_name_what_they_solve():
    import importlib

    from course.grading.core import EXERCISES

    for exercise_id, exercise in EXERCISES.items():
        module, name = exercise_id.split(".")
        # the id names a public object of course.<module>, and it is the one the check judges by
        assert getattr(importlib.import_module(f"course.{module}"), name) is exercise.solves
        assert name in importlib.import_module(f"course.{module}").__all__


def test_an_exercise_without_a_library_object_is_refused():
    from course.grading.core import register

    with pytest.raises(TypeError, match="function or class of course"):

        class Outside(Exercise):
            solves = json.dumps

    with pytest.raises(TypeError, match="needs `solves`"):

        @register
        class Nameless(Exercise):
            lesson = "00_toy"


def test_the_readme_points_table_is_what_the_grader_awards():
    """README's "How points are set" table lists every exercise with its points and parts."""
    from pathlib import Path

    from course.grading.core import EXERCISES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    header = "| lesson | exercise | points | parts |\n|---|---|---|---|\n"
    assert header in readme
    rows = readme.split(header, 1)[1].split("\n\n", 1)[0].strip().splitlines()
    listed = {}
    for row in rows:
        lesson, exercise_id, points, parts = (cell.strip() for cell in row.strip("|").split("|"))
        listed[exercise_id.strip("`")] = (lesson, int(points), parts)
    awarded = {}
    for exercise in EXERCISES.values():
        parts = exercise.parts
        named = (
            "; ".join(f"{n or 'result'} ({p})" for n, p in parts.items()) if len(parts) > 1 else ""
        )
        awarded[exercise.id] = (exercise.lesson, sum(parts.values()), named)
    assert listed == awarded
