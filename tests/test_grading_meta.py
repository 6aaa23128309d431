"""Tests for the Lesson 06 checks (course/grading/exercises/meta.py).

Right answers written differently (loops, numpy, float64, torch.lerp, stacked tensors) pass;
the classic mistakes of Reptile, written as a student would write them, fail with their hints;
a stub is "not attempted"; broken code fails cleanly.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from check_helpers import answer_tests, assert_fails, assert_passes, hint_coverage_test

from course import meta as ref
from course.grading import check, exercise_ids
from course.grading.core import NOT_ATTEMPTED, get_exercise
from course.grading.exercises import meta as checks

IDS = ["meta.reptile_step"]

# --- correct answers, written in other ways ---------------------------------------------------


def reptile_loops(meta_params, adapted, step_size):
    new = []
    for i in range(len(meta_params)):
        total = torch.zeros_like(meta_params[i])
        for task in adapted:
            total = total + task[i]
        mean = total / len(adapted)
        new.append(meta_params[i] + step_size * (mean - meta_params[i]))
    return new


def reptile_lerp(meta_params, adapted, step_size):
    means = [torch.stack(list(ps)).mean(0) for ps in zip(*adapted)]
    return [torch.lerp(theta, m, step_size) for theta, m in zip(meta_params, means)]


def reptile_numpy(meta_params, adapted, step_size):
    out = []
    for i, theta in enumerate(meta_params):
        t = theta.numpy().astype(np.float64)
        diffs = np.mean([task[i].numpy() - t for task in adapted], axis=0)
        out.append(torch.from_numpy(t + step_size * diffs))
    return tuple(out)


def reptile_mean_of_differences(meta_params, adapted, step_size):
    K = len(adapted)
    return [
        theta.clone() + step_size / K * sum(task[i] - theta for task in adapted)
        for i, theta in enumerate(meta_params)
    ]


def reptile_no_grad_clone(meta_params, adapted, step_size):
    with torch.no_grad():
        new = [theta.clone() for theta in meta_params]
        for theta in new:
            theta.mul_(1 - step_size)
        for task in adapted:
            for theta, p in zip(new, task):
                theta.add_(p, alpha=step_size / len(adapted))
    return new


CORRECT = [
    ("meta.reptile_step", reptile_loops),
    ("meta.reptile_step", reptile_lerp),
    ("meta.reptile_step", reptile_numpy),
    ("meta.reptile_step", reptile_mean_of_differences),
    ("meta.reptile_step", reptile_no_grad_clone),
]

# --- the classic mistakes, as students write them ----------------------------------------------


def reptile_sign(meta_params, adapted, step_size):
    return [
        theta - step_size * (torch.stack([t[i] for t in adapted]).mean(0) - theta)
        for i, theta in enumerate(meta_params)
    ]


def reptile_last_task(meta_params, adapted, step_size):
    for task in adapted:
        new = [theta + step_size * (p - theta) for theta, p in zip(meta_params, task)]
    return new


def reptile_first_task(meta_params, adapted, step_size):
    return [theta + step_size * (p - theta) for theta, p in zip(meta_params, adapted[0])]


def reptile_sum(meta_params, adapted, step_size):
    new = [theta.clone() for theta in meta_params]
    for task in adapted:
        for i, p in enumerate(task):
            new[i] = new[i] + step_size * (p - meta_params[i])
    return new


def reptile_serial(meta_params, adapted, step_size):
    new = list(meta_params)
    for task in adapted:
        new = [theta + step_size * (p - theta) for theta, p in zip(new, task)]
    return new


def reptile_swapped(meta_params, adapted, step_size):
    means = [torch.stack(list(ps)).mean(0) for ps in zip(*adapted)]
    return [torch.lerp(m, theta, step_size) for theta, m in zip(meta_params, means)]


def reptile_mean_only(meta_params, adapted, step_size):
    return [torch.stack(list(ps)).mean(0) for ps in zip(*adapted)]


def reptile_transposed(meta_params, adapted, step_size):
    return [
        theta + step_size * (torch.stack(list(adapted[i])).mean(0) - theta)
        for i, theta in enumerate(meta_params)
    ]


def reptile_in_place(meta_params, adapted, step_size):
    for i, theta in enumerate(meta_params):
        mean = torch.stack([task[i] for task in adapted]).mean(0)
        theta += step_size * (mean - theta)
    return meta_params


def reptile_mutates_adapted(meta_params, adapted, step_size):
    total = adapted[0]
    for task in adapted[1:]:
        for t, p in zip(total, task):
            t.add_(p)  # accumulates into task 0's tensors
    return [theta + step_size * (t / len(adapted) - theta) for theta, t in zip(meta_params, total)]


def reptile_returns_inputs(meta_params, adapted, step_size):
    if step_size == 0:
        return list(meta_params)
    return reptile_loops(meta_params, adapted, step_size)


WRONG = [
    ("meta.reptile_step", reptile_sign, checks.SIGN),
    ("meta.reptile_step", reptile_last_task, checks.LAST_TASK),
    ("meta.reptile_step", reptile_first_task, checks.FIRST_TASK),
    ("meta.reptile_step", reptile_sum, checks.SUM_TASKS),
    ("meta.reptile_step", reptile_serial, checks.SERIAL),
    ("meta.reptile_step", reptile_swapped, checks.SWAPPED),
    ("meta.reptile_step", reptile_mean_only, checks.NO_STEP_SIZE),
    ("meta.reptile_step", reptile_transposed, checks.TRANSPOSED),
    ("meta.reptile_step", reptile_in_place, None),
    ("meta.reptile_step", reptile_mutates_adapted, None),
    ("meta.reptile_step", reptile_returns_inputs, None),
]

(
    test_correct_answers_pass,
    test_correct_answers_pass_with_other_seeds,
    test_student_mistakes_fail,
    test_every_listed_mistake_fails_with_its_hint,
) = answer_tests(IDS, CORRECT, WRONG)
test_every_listed_hint_is_reached_by_a_student_written_mistake = hint_coverage_test(IDS, WRONG)


def test_every_exercise_is_registered():
    assert exercise_ids("06_generalisation") == IDS


def test_reference_passes():
    assert_passes("meta.reptile_step", lambda *args: ref.reptile_step(*args))


def test_library_reference_itself_is_refused():
    result = check("meta.reptile_step", ref.reptile_step)
    assert not result.passed and "library's own" in result.message


def test_changing_the_meta_parameters_in_place_is_named():
    result = assert_fails("meta.reptile_step", reptile_in_place)
    assert "changed its argument `meta_params[0]` in place" in result.message


def test_changing_an_adapted_tensor_in_place_is_named():
    result = assert_fails("meta.reptile_step", reptile_mutates_adapted)
    assert "changed its argument `adapted[0][0]` in place" in result.message


def test_returning_an_input_tensor_is_caught():
    result = assert_fails("meta.reptile_step", reptile_returns_inputs)
    assert "shares memory with `meta_params[0]`" in result.message


def test_detach_shares_memory_and_is_caught_too():
    def detached_when_still(meta_params, adapted, step_size):
        if step_size == 0:
            return [theta.detach() for theta in meta_params]
        return reptile_loops(meta_params, adapted, step_size)

    assert_fails("meta.reptile_step", detached_when_still)


def test_too_few_tensors_fail_clearly():
    result = assert_fails("meta.reptile_step", lambda m, a, s: reptile_loops(m, a, s)[:1])
    assert "one per meta-parameter" in result.message


def test_a_single_tensor_instead_of_a_list_fails_clearly():
    result = assert_fails("meta.reptile_step", lambda m, a, s: reptile_loops(m, a, s)[0])
    assert "expected a list" in result.message


def stub(*args, **kwargs):
    raise NotImplementedError


def test_stub_is_not_attempted():
    result = check("meta.reptile_step", stub)
    assert result.status == NOT_ATTEMPTED and result.score == 0
    assert "Not attempted" in result.message and "Traceback" not in result.message


def test_missing_function_is_not_attempted():
    assert check("meta.reptile_step", None).status == NOT_ATTEMPTED


def test_code_that_raises_fails_with_the_error_and_line():
    def raises(meta_params, adapted, step_size):
        return [1, 2][5]

    result = assert_fails("meta.reptile_step", raises)
    assert "raised IndexError" in result.message and "return [1, 2][5]" in result.message


def test_returning_none_fails():
    result = assert_fails("meta.reptile_step", lambda *args: None)
    assert "None" in result.message


def test_the_check_is_fast():
    exercise = get_exercise("meta.reptile_step")
    exercise.check(reptile_loops)  # warm up
    start = time.process_time()
    exercise.check(reptile_loops)
    assert time.process_time() - start < 0.5


def test_infinite_loop_times_out(monkeypatch):
    monkeypatch.setattr(get_exercise("meta.reptile_step"), "time_limit", 0.3)

    def forever(meta_params, adapted, step_size):
        k = 0
        while k < len(adapted):  # forgets to advance k
            pass

    result = assert_fails("meta.reptile_step", forever)
    assert "did not finish within 0.3 s" in result.message


@pytest.mark.parametrize("K", [1, 3])
def test_reference_matches_the_formula(K):
    g = torch.Generator().manual_seed(K)
    theta = [torch.randn(3, 2, generator=g), torch.randn(2, generator=g)]
    adapted = [[torch.randn(p.shape, generator=g) for p in theta] for _ in range(K)]
    new = ref.reptile_step(theta, adapted, 0.3)
    for i, p in enumerate(theta):
        mean = sum(a[i] for a in adapted) / K
        torch.testing.assert_close(new[i], p + 0.3 * (mean - p))
