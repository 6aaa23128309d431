"""Judging a run's report against references computed here, never by student code."""

from __future__ import annotations

import copy
import importlib
from typing import Any

from course.grading.core import (
    FAIL,
    MISSING,
    CheckResult,
    Exercise,
    Outcome,
    lesson_exercises,
)
from course.grading.records import EX_CRASHED, EX_NOT_RUN, EX_TIMED_OUT, Limits
from course.grading.run import Attempt, why_stopped

_GRADERS: dict[tuple[str, int], Exercise] = {}


def _grader(exercise: Exercise, seed: int) -> Exercise:
    """A copy of ``exercise`` that computes each reference answer once per seed, not once per
    submission (every submission is judged on the same cases)."""
    key = (exercise.id, seed)
    if key not in _GRADERS:
        grader = copy.copy(exercise)
        memo: dict[int, Any] = {}
        probe = type(exercise).probe

        def cached_probe(obj: Any, case: Any) -> Any:
            if obj == grader.reference:
                index = case.data.get("index")
                if index not in memo:
                    memo[index] = probe(grader, obj, case)
                return memo[index]
            return probe(grader, obj, case)

        cases = exercise.build_cases(seed)
        grader.probe = cached_probe  # type: ignore[method-assign]
        grader.build_cases = lambda seed_: cases if seed_ == seed else exercise.build_cases(seed_)
        _GRADERS[key] = grader
    return _GRADERS[key]


def _problem_message(exercise: Exercise, code: str) -> tuple[str, str]:
    if code == "missing":
        return MISSING, f"No `{exercise.name}` is defined in the notebook."
    if code == "reference":
        module = importlib.import_module("course." + exercise.id.split(".", 1)[0])
        return FAIL, exercise.unusable(getattr(module, exercise.name)) or ""
    wrong = 0 if exercise.kind == "function" else (lambda: None)
    return FAIL, exercise.unusable(wrong) or f"`{exercise.name}` cannot be used as an answer."


def judge(lesson: str, seed: int, attempt: Attempt, limits: Limits) -> list[CheckResult]:
    """Judge every exercise of ``lesson`` from a run's report, on this side."""
    results = []
    stopped = not attempt.report.done
    phase = attempt.report.phase
    for exercise in lesson_exercises(lesson):
        max_score = sum(exercise.parts.values())
        entry = attempt.report.results.get(exercise.id)

        def result(status: str, message: str, exercise: Exercise = exercise) -> CheckResult:
            return CheckResult(exercise.id, status, 0, sum(exercise.parts.values()), message)

        if entry is None:
            if stopped:
                status, why = why_stopped(attempt, limits)
                if phase != ("exercise", exercise.id):
                    status = EX_NOT_RUN
                    why = f"{why} before `{exercise.name}` could be tried"
                else:
                    why = f"{why} while `{exercise.name}` was being tried"
                results.append(result(status, why[0].upper() + why[1:] + "."))
            else:
                results.append(result(EX_CRASHED, "No result came back for this exercise."))
        elif isinstance(entry.get("problem"), str):
            status, message = _problem_message(exercise, entry["problem"])
            results.append(result(status, message))
        elif "timeout" in entry:
            results.append(
                result(
                    EX_TIMED_OUT,
                    f"`{exercise.name}` did not finish its cases in time (each case may take "
                    f"{exercise.time_limit:g} s): look for a loop that never ends.",
                )
            )
        elif isinstance(entry.get("outcomes"), list):
            n_cases = len(_grader(exercise, seed).build_cases(seed))
            outcomes = [
                None if o is None else Outcome.from_json(o) for o in entry["outcomes"][:n_cases]
            ]
            try:
                results.append(_grader(exercise, seed).grade(outcomes, seed))
            except Exception as exc:  # a malformed report must not stop the class
                results.append(
                    CheckResult(
                        exercise.id,
                        FAIL,
                        0,
                        max_score,
                        f"The grader could not judge this answer ({type(exc).__name__}).",
                    )
                )
        else:
            results.append(
                result(
                    EX_CRASHED,
                    f"The process trying `{exercise.name}` ended abruptly (os._exit, a crash in "
                    "native code, or an answer too large to send back).",
                )
            )
    return results
