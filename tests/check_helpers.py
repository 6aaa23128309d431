"""Assertions shared by the tests of every lesson's checks (tests/test_grading_*.py)."""

from __future__ import annotations

import pytest

from course.grading import check, get_exercise
from course.grading.core import FAIL, PASS, CheckResult


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
