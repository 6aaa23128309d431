"""Assertions shared by the tests of every lesson's checks (tests/test_grading_*.py)."""

from __future__ import annotations

import time

import pytest
import torch

from course.grading import check, get_exercise
from course.grading.core import FAIL, NOT_ATTEMPTED, PASS, CheckResult


def assert_passes(exercise_id: str, obj: object) -> None:
    """A right answer passes with full marks."""
    result = check(exercise_id, obj)
    assert result.status == PASS, result.message
    assert result.passed and result.score == result.max_score


def assert_fails(exercise_id: str, obj: object, hint: str | None = None) -> CheckResult:
    """A wrong answer fails, loses marks, shows no traceback, and gets ``hint`` when given."""
    result = check(exercise_id, obj)
    assert result.status == FAIL, f"a wrong answer passed {exercise_id}"
    assert not result.passed and result.score < result.max_score
    assert "Traceback" not in result.message
    if hint is not None:
        assert f"hint: {hint}" in result.message, result.message
    return result


def answer_tests(ids, correct, wrong, as_student=None):
    """The answer tests every lesson's check tests share, for the calling module to collect.

    Args:
        ids: The lesson's exercise ids.
        correct: ``(exercise_id, answer)`` pairs written the way students write right answers.
        wrong: ``(exercise_id, answer, hint)`` triples: student-written mistakes and the hint
            each must get (``None``: any failure).
        as_student: ``as_student(exercise_id, mistake)`` adapts a mistake the exercise lists
            to the signature students answer with (default: unchanged).

    Returns:
        The test functions, in this order: right answers pass; they pass with other seeds too;
        the mistakes fail with their hints; every mistake an exercise lists fails with its
        hint.
    """

    adapt = as_student or (lambda exercise_id, mistake: mistake)
    listed = [(e, h) for e in ids for h in get_exercise(e).mistakes()]

    @pytest.mark.parametrize(
        ("exercise_id", "answer"), correct, ids=[f"{e}-{a.__name__}" for e, a in correct]
    )
    def test_correct_answers_pass(exercise_id, answer):
        assert_passes(exercise_id, answer)

    @pytest.mark.parametrize("seed", [1, 2])
    def test_correct_answers_pass_with_other_seeds(seed):
        for exercise_id, answer in correct:
            result = check(exercise_id, answer, seed=seed)
            assert result.passed, (exercise_id, answer.__name__, result.message)

    @pytest.mark.parametrize(
        ("exercise_id", "answer", "hint"), wrong, ids=[f"{e}-{a.__name__}" for e, a, _ in wrong]
    )
    def test_student_mistakes_fail(exercise_id, answer, hint):
        assert_fails(exercise_id, answer, hint)

    @pytest.mark.parametrize(
        ("exercise_id", "hint"), listed, ids=[f"{e}-{i}" for i, (e, _) in enumerate(listed)]
    )
    def test_every_listed_mistake_fails_with_its_hint(exercise_id, hint):
        mistake = get_exercise(exercise_id).mistakes()[hint]
        assert_fails(exercise_id, adapt(exercise_id, mistake), hint)

    return (
        test_correct_answers_pass,
        test_correct_answers_pass_with_other_seeds,
        test_student_mistakes_fail,
        test_every_listed_mistake_fails_with_its_hint,
    )


def hint_coverage_test(ids, wrong):
    """A test that every hint the exercises list is reached by a student-written mistake."""

    def test_every_listed_hint_is_reached_by_a_student_written_mistake():
        reached = {(e, h) for e, _, h in wrong if h is not None}
        missing = [(e, h) for e in ids for h in get_exercise(e).mistakes() if (e, h) not in reached]
        assert not missing, missing

    return test_every_listed_hint_is_reached_by_a_student_written_mistake


def _raises(*args, **kwargs):
    return [1, 2][5]


def stub(*args, **kwargs):
    # YOUR CODE HERE
    raise NotImplementedError


BROKEN = {
    "raises": (_raises, "raised IndexError"),
    "returns None": (lambda *args, **kwargs: None, "None"),
    "returns a string": (lambda *args, **kwargs: "a string", ""),
    "returns a wrong shape": (lambda *args, **kwargs: torch.zeros(7, 3, 2), ""),
    "returns a list of objects": (lambda *args, **kwargs: [object()], ""),
}


def robustness_tests(ids, correct, wrong, cpu_seconds=None):
    """The tests every function exercise shares: the reference written as a student's function
    passes, the library's own object is refused, a stub is "not attempted", a missing answer
    asks to be defined, broken code fails with a reason and no traceback, and a check (a right
    and a wrong answer) costs well under a second of CPU.

    Args:
        ids: The lesson's exercise ids.
        correct: ``(exercise_id, answer)`` pairs (the first of each id is timed).
        wrong: ``(exercise_id, answer, hint)`` triples (the first of each id is timed).
        cpu_seconds: exercise id -> CPU budget of its two checks where 1 s is not enough
            (say why at the call).

    Returns:
        The test functions, for the calling module to collect, in the order above.
    """

    @pytest.mark.parametrize("exercise_id", ids)
    def test_reference_passes(exercise_id):
        solves = get_exercise(exercise_id).solves
        assert_passes(exercise_id, lambda *args, **kwargs: solves(*args, **kwargs))

    @pytest.mark.parametrize("exercise_id", ids)
    def test_library_object_itself_is_refused(exercise_id):
        result = check(exercise_id, get_exercise(exercise_id).solves)
        assert not result.passed and "library's own" in result.message

    @pytest.mark.parametrize("exercise_id", ids)
    def test_stub_is_not_attempted(exercise_id):
        result = check(exercise_id, stub)
        assert result.status == NOT_ATTEMPTED and result.score == 0 and not result.passed
        assert "Not attempted" in result.message
        assert "Traceback" not in result.message and "NotImplementedError:" not in result.message

    @pytest.mark.parametrize("exercise_id", ids)
    def test_missing_answer_is_not_attempted(exercise_id):
        result = check(exercise_id, None)
        assert result.status == NOT_ATTEMPTED and "define it" in result.message

    @pytest.mark.parametrize("exercise_id", ids)
    @pytest.mark.parametrize("broken", list(BROKEN))
    def test_broken_code_fails_without_crashing(exercise_id, broken):
        answer, expected = BROKEN[broken]
        result = assert_fails(exercise_id, answer)
        assert expected in result.message and result.score == 0
        if broken == "raises":
            assert "return [1, 2][5]" in result.message  # the student's line is shown

    @pytest.mark.parametrize("exercise_id", ids)
    def test_a_check_runs_in_well_under_a_second(exercise_id):
        right = next(a for e, a in correct if e == exercise_id)
        mistaken = next(a for e, a, _ in wrong if e == exercise_id)
        check(exercise_id, right)  # warm up: first calls import and compile
        start = time.process_time()  # CPU time: wall time depends on what else the machine runs
        check(exercise_id, right)
        check(exercise_id, mistaken)
        assert time.process_time() - start < (cpu_seconds or {}).get(exercise_id, 1.0)

    return (
        test_reference_passes,
        test_library_object_itself_is_refused,
        test_stub_is_not_attempted,
        test_missing_answer_is_not_attempted,
        test_broken_code_fails_without_crashing,
        test_a_check_runs_in_well_under_a_second,
    )
