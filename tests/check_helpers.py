"""Assertions shared by the tests of every lesson's checks (tests/test_grading_*.py)."""

from __future__ import annotations

from course.grading import check
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
