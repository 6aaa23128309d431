"""Tests for the Lesson 02 TD checks (course/grading/exercises/td.py).

Both updates must accept correct answers written differently (in place or on a copy, numpy,
Python floats, a float32 table, `torch.where`), reject the classic mistakes of the topic written
as a student would write them (with the matching hint), report a stub as "not attempted", fail
cleanly on broken code, and enforce the contract on the caller's table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from check_helpers import answer_tests, assert_fails, hint_coverage_test, robustness_tests

from course import td as ref
from course.grading import exercise_ids
from course.grading.core import get_exercise
from course.grading.exercises import td as checks

IDS = ["td.q_learning_update", "td.sarsa_update"]

# --- td.q_learning_update: right answers -------------------------------------------------------


def q_in_place(Q, s, a, r, s_next, terminated, alpha, gamma):
    target = r + gamma * Q[s_next].max() * (not terminated)
    Q[s, a] += alpha * (target - Q[s, a])
    return Q


def q_on_a_copy(Q, s, a, r, s_next, terminated, alpha, gamma):
    Q = Q.clone()
    if terminated:
        target = r
    else:
        target = r + gamma * torch.max(Q[s_next])
    Q[s, a] = Q[s, a] + alpha * (target - Q[s, a])
    return Q


def q_python_floats(Q, s, a, r, s_next, terminated, alpha, gamma):
    row = Q[s_next].tolist()
    best = max(row)
    target = float(r) + (0.0 if terminated else gamma * best)
    old = Q[s, a].item()
    Q[s, a] = (1 - alpha) * old + alpha * target  # the same update, written as a blend
    return Q


def q_numpy(Q, s, a, r, s_next, terminated, alpha, gamma):
    q = Q.numpy().copy()
    target = r + gamma * np.max(q[s_next]) * (1 - int(terminated))
    q[s, a] += alpha * (target - q[s, a])
    return q


def q_float32_where(Q, s, a, r, s_next, terminated, alpha, gamma):
    Q32 = Q.float()
    future = torch.where(torch.tensor(terminated), torch.tensor(0.0), Q32[s_next].amax())
    td_error = r + gamma * future - Q32[s, a]
    out = Q32.clone()
    out[s, a] += alpha * td_error
    return out


def q_loop_over_actions(Q, s, a, r, s_next, terminated, alpha, gamma):
    best = Q[s_next, 0]
    for b in range(1, Q.shape[1]):
        if Q[s_next, b] > best:
            best = Q[s_next, b]
    target = r if terminated else r + gamma * best
    delta = target - Q[s, a]
    Q[s, a] = Q[s, a] + alpha * delta
    return Q


# --- td.q_learning_update: mistakes ------------------------------------------------------------


def q_bootstrap_terminated(Q, s, a, r, s_next, terminated, alpha, gamma):
    target = r + gamma * Q[s_next].max()
    Q[s, a] += alpha * (target - Q[s, a])
    return Q


def q_whole_row(Q, s, a, r, s_next, terminated, alpha, gamma):
    target = r + gamma * Q[s_next].max() * (not terminated)
    Q[s] += alpha * (target - Q[s])
    return Q


def q_every_entry(Q, s, a, r, s_next, terminated, alpha, gamma):
    target = r + gamma * Q[s_next].max() * (not terminated)
    return Q + alpha * (target - Q)


def q_max_current(Q, s, a, r, s_next, terminated, alpha, gamma):
    target = r + gamma * Q[s].max() * (not terminated)
    Q[s, a] += alpha * (target - Q[s, a])
    return Q


def q_same_action_next(Q, s, a, r, s_next, terminated, alpha, gamma):
    target = r + gamma * Q[s_next, a] * (not terminated)
    Q[s, a] += alpha * (target - Q[s, a])
    return Q


def q_alpha_on_target(Q, s, a, r, s_next, terminated, alpha, gamma):
    target = r + gamma * Q[s_next].max() * (not terminated)
    Q[s, a] += alpha * target - Q[s, a]
    return Q


def q_no_alpha(Q, s, a, r, s_next, terminated, alpha, gamma):
    Q[s, a] = r + gamma * Q[s_next].max() * (not terminated)
    return Q


def q_sign(Q, s, a, r, s_next, terminated, alpha, gamma):
    target = r + gamma * Q[s_next].max() * (not terminated)
    Q[s, a] += alpha * (Q[s, a] - target)
    return Q


def q_no_gamma(Q, s, a, r, s_next, terminated, alpha, gamma):
    target = r + Q[s_next].max() * (not terminated)
    Q[s, a] += alpha * (target - Q[s, a])
    return Q


def q_returns_value(Q, s, a, r, s_next, terminated, alpha, gamma):
    target = r + gamma * Q[s_next].max() * (not terminated)
    Q[s, a] += alpha * (target - Q[s, a])
    return Q[s, a].item()


def q_forgets_return(Q, s, a, r, s_next, terminated, alpha, gamma):
    target = r + gamma * Q[s_next].max() * (not terminated)
    Q[s, a] += alpha * (target - Q[s, a])


def q_zeroes_caller(Q, s, a, r, s_next, terminated, alpha, gamma):
    new = Q.clone()
    target = r + gamma * Q[s_next].max() * (not terminated)
    new[s, a] += alpha * (target - Q[s, a])
    Q[s_next] = 0.0  # "terminal states are 0", written into the caller's table
    return new


# --- td.sarsa_update ---------------------------------------------------------------------------


def sarsa_in_place(Q, s, a, r, s_next, a_next, terminated, alpha, gamma):
    target = r + gamma * Q[s_next, a_next] * (not terminated)
    Q[s, a] += alpha * (target - Q[s, a])
    return Q


def sarsa_on_a_copy(Q, s, a, r, s_next, a_next, terminated, alpha, gamma):
    new = Q.clone()
    future = 0.0 if terminated else Q[s_next][a_next].item()
    new[s][a] = Q[s][a] + alpha * (r + gamma * future - Q[s][a])
    return new


def sarsa_numpy(Q, s, a, r, s_next, a_next, terminated, alpha, gamma):
    q = Q.numpy().copy()
    target = r + (0 if terminated else gamma * q[s_next, a_next])
    q[s, a] = (1 - alpha) * q[s, a] + alpha * target
    return torch.from_numpy(q)


def sarsa_float32(Q, s, a, r, s_next, a_next, terminated, alpha, gamma):
    Q = Q.to(torch.float32)
    target = r + gamma * Q[s_next, a_next] * (0.0 if terminated else 1.0)
    return Q.index_put((torch.tensor([s]), torch.tensor([a])), Q[s, a] + alpha * (target - Q[s, a]))


def sarsa_bootstrap_terminated(Q, s, a, r, s_next, a_next, terminated, alpha, gamma):
    Q[s, a] += alpha * (r + gamma * Q[s_next, a_next] - Q[s, a])
    return Q


def sarsa_whole_row(Q, s, a, r, s_next, a_next, terminated, alpha, gamma):
    target = r + gamma * Q[s_next, a_next] * (not terminated)
    Q[s, :] += alpha * (target - Q[s, :])
    return Q


def sarsa_max(Q, s, a, r, s_next, a_next, terminated, alpha, gamma):
    target = r + gamma * Q[s_next].max() * (not terminated)
    Q[s, a] += alpha * (target - Q[s, a])
    return Q


def sarsa_current_state(Q, s, a, r, s_next, a_next, terminated, alpha, gamma):
    target = r + gamma * Q[s, a_next] * (not terminated)
    Q[s, a] += alpha * (target - Q[s, a])
    return Q


def sarsa_alpha_on_target(Q, s, a, r, s_next, a_next, terminated, alpha, gamma):
    Q[s, a] = alpha * (r + gamma * Q[s_next, a_next] * (not terminated))
    return Q


def sarsa_no_alpha(Q, s, a, r, s_next, a_next, terminated, alpha, gamma):
    Q[s, a] = r + gamma * Q[s_next, a_next] * (not terminated)
    return Q


def sarsa_sign(Q, s, a, r, s_next, a_next, terminated, alpha, gamma):
    target = r + gamma * Q[s_next, a_next] * (not terminated)
    Q[s, a] -= alpha * (target - Q[s, a])
    return Q


def sarsa_no_gamma(Q, s, a, r, s_next, a_next, terminated, alpha, gamma):
    target = r + Q[s_next, a_next] * (not terminated)
    Q[s, a] += alpha * (target - Q[s, a])
    return Q


def sarsa_returns_value(Q, s, a, r, s_next, a_next, terminated, alpha, gamma):
    target = r + gamma * Q[s_next, a_next] * (not terminated)
    return float(Q[s, a] + alpha * (target - Q[s, a]))


# --- tests -------------------------------------------------------------------------------------

CORRECT = [
    ("td.q_learning_update", q_in_place),
    ("td.q_learning_update", q_on_a_copy),
    ("td.q_learning_update", q_python_floats),
    ("td.q_learning_update", q_numpy),
    ("td.q_learning_update", q_float32_where),
    ("td.q_learning_update", q_loop_over_actions),
    ("td.sarsa_update", sarsa_in_place),
    ("td.sarsa_update", sarsa_on_a_copy),
    ("td.sarsa_update", sarsa_numpy),
    ("td.sarsa_update", sarsa_float32),
]

WRONG = [
    ("td.q_learning_update", q_bootstrap_terminated, checks.BOOTSTRAP_TERMINATED),
    ("td.q_learning_update", q_whole_row, checks.WHOLE_ROW),
    ("td.q_learning_update", q_every_entry, checks.EVERY_ENTRY),
    ("td.q_learning_update", q_max_current, checks.MAX_CURRENT),
    ("td.q_learning_update", q_same_action_next, checks.ACTION_IN_Q_LEARNING),
    ("td.q_learning_update", q_alpha_on_target, checks.ALPHA_TARGET_ONLY),
    ("td.q_learning_update", q_no_alpha, checks.NO_ALPHA),
    ("td.q_learning_update", q_sign, checks.SIGN),
    ("td.q_learning_update", q_no_gamma, checks.NO_GAMMA),
    ("td.q_learning_update", q_returns_value, checks.RETURN_TABLE),
    ("td.q_learning_update", q_forgets_return, None),
    ("td.q_learning_update", q_zeroes_caller, None),
    ("td.sarsa_update", sarsa_bootstrap_terminated, checks.BOOTSTRAP_TERMINATED),
    ("td.sarsa_update", sarsa_whole_row, checks.WHOLE_ROW),
    ("td.sarsa_update", sarsa_max, checks.MAX_IN_SARSA),
    ("td.sarsa_update", sarsa_current_state, checks.CURRENT_IN_SARSA),
    ("td.sarsa_update", sarsa_alpha_on_target, checks.ALPHA_TARGET_ONLY),
    ("td.sarsa_update", sarsa_no_alpha, checks.NO_ALPHA),
    ("td.sarsa_update", sarsa_sign, checks.SIGN),
    ("td.sarsa_update", sarsa_no_gamma, checks.NO_GAMMA),
    ("td.sarsa_update", sarsa_returns_value, checks.RETURN_TABLE),
]

(
    test_correct_answers_pass,
    test_correct_answers_pass_with_other_seeds,
    test_student_mistakes_fail,
    test_every_listed_mistake_fails_with_its_hint,
) = answer_tests(IDS, CORRECT, WRONG)
test_every_listed_hint_is_reached_by_a_student_written_mistake = hint_coverage_test(IDS, WRONG)


def test_both_exercises_are_registered_for_lesson_02():
    assert set(IDS) <= set(exercise_ids("02_replay"))


def test_points_weigh_the_idea():
    q, sarsa = get_exercise("td.q_learning_update"), get_exercise("td.sarsa_update")
    assert sum(q.parts.values()) == 3 and sum(sarsa.parts.values()) == 2


def test_bootstrapping_past_terminated_loses_only_that_part():
    result = assert_fails("td.q_learning_update", q_bootstrap_terminated)
    assert result.score == 2 and result.max_score == 3
    assert checks.UPDATE in result.message  # "Parts that pass: ..."


def test_in_place_update_without_return_is_told_to_return():
    result = assert_fails("td.q_learning_update", q_forgets_return)
    assert "return Q" in result.message


def test_changing_the_caller_table_otherwise_fails_with_the_contract():
    result = assert_fails("td.q_learning_update", q_zeroes_caller)
    assert "caller's table" in result.message and "Q.clone()" in result.message


def test_the_chained_case_feeds_the_returned_table_back():
    calls = []

    def counting(Q, *args):
        calls.append(Q)
        return ref.q_learning_update(Q, *args)

    exercise = get_exercise("td.q_learning_update")
    case = next(c for c in exercise.build_cases(0) if c.data.get("then"))
    exercise.probe(counting, case)
    assert len(calls) == 6
    assert all(c is calls[0] for c in calls)  # each call got what the previous one returned


def test_cases_hold_values_at_s_next_of_terminated_transitions():
    for exercise_id in IDS:
        exercise = get_exercise(exercise_id)
        terminated = [c for c in exercise.build_cases(0) if c.part == checks.TERMINATED]
        assert len(terminated) >= 5
        for case in terminated:
            Q, s_next = case.args[0], case.args[4]
            assert Q[s_next].abs().max() > 0


# --- not attempted and broken code -------------------------------------------------------------


@pytest.mark.parametrize("exercise_id", IDS)
def test_wrong_signature_fails_cleanly(exercise_id):
    def too_few(Q, s, a, r):
        return Q

    assert "TypeError" in assert_fails(exercise_id, too_few).message


(
    test_reference_passes,
    test_library_object_itself_is_refused,
    test_stub_is_not_attempted,
    test_missing_answer_is_not_attempted,
    test_broken_code_fails_without_crashing,
    test_a_check_runs_in_well_under_a_second,
) = robustness_tests(IDS, CORRECT, WRONG)
