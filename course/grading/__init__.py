"""Instant, helpful checks for every graded exercise, and the class grader behind them.

In a notebook::

    from course.grading import check
    check("mdp.bellman_backup", bellman_backup)

shows a green pass, or a red fail with the first failing input, what was expected, what came back
and a hint aimed at the likely mistake. ``course grade`` (``course.grading.grade``) runs the same
exercises on a whole class's notebooks, in isolated processes.
"""

from __future__ import annotations

from typing import Any

from course.grading import exercises as _exercises  # noqa: F401  (registers every exercise)
from course.grading.core import (
    EXERCISES,
    FAIL,
    CheckResult,
    Exercise,
    get_exercise,
    lesson_exercises,
)

__all__ = ["EXERCISES", "CheckResult", "Exercise", "check", "exercise_ids", "lesson_exercises"]


def check(exercise_id: str, obj: Any, seed: int = 0) -> CheckResult:
    """Judge a student's function or class against the reference on many randomized cases.

    Args:
        exercise_id: ``"<module>.<name>"`` as in the syllabus, e.g. ``"mdp.bellman_backup"``.
        obj: the student's function or class.
        seed: seeds the randomized cases; the same seed always gives the same cases.

    Returns:
        A ``CheckResult`` with ``.passed``, ``.score``, ``.max_score`` and ``.message``.

    Raises:
        KeyError: ``exercise_id`` is unknown (the message lists the known ids).
    """
    exercise = get_exercise(exercise_id)
    try:
        return exercise.check(obj, seed=seed)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a check reports; it never crashes on a student's answer
        return CheckResult(
            exercise_id=exercise_id,
            status=FAIL,
            score=0,
            max_score=sum(exercise.parts.values()),
            message=f"The check could not judge this answer ({type(exc).__name__}: {exc}).",
        )


def exercise_ids(lesson: str | None = None) -> list[str]:
    """The known exercise ids, optionally only those of one lesson (e.g. ``"01_mdps"``)."""
    return sorted(i for i, ex in EXERCISES.items() if lesson is None or ex.lesson == lesson)
