"""Tests for the Lesson 06 checks (course/grading/exercises/meta.py).

Right answers written differently (loops, numpy, float64, torch.lerp, stacked tensors) pass;
the classic mistakes of Reptile, written as a student would write them, fail with their hints;
a stub is "not attempted"; broken code fails cleanly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from check_helpers import answer_tests, assert_fails, hint_coverage_test, robustness_tests

from course import meta as ref
from course.grading import exercise_ids
from course.grading.core import get_exercise
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


(
    test_reference_passes,
    test_library_object_itself_is_refused,
    test_stub_is_not_attempted,
    test_missing_answer_is_not_attempted,
    test_broken_code_fails_without_crashing,
    test_a_check_runs_in_well_under_a_second,
) = robustness_tests(IDS, CORRECT, WRONG)
