"""Tests for the Lesson 01 checks (course/grading/exercises/mdp.py).

Every exercise must accept differently written correct answers (Python loops, numpy, float32,
a linear solve), reject the classic mistakes of the topic written as a student would write
them (with the matching hint where one is listed), report a stub as "not attempted", and fail
cleanly on broken code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from check_helpers import answer_tests, assert_fails, hint_coverage_test, robustness_tests, stub

from course import mdp as ref
from course.grading import check, exercise_ids
from course.grading.core import get_exercise
from course.grading.exercises import mdp as checks

IDS = [
    "mdp.q_from_v",
    "mdp.bellman_backup",
    "mdp.policy_evaluation",
    "mdp.greedy_policy",
    "mdp.value_iteration",
]


def masked(mdp: ref.TabularMDP, V: torch.Tensor) -> torch.Tensor:
    return torch.where(mdp.terminal, torch.zeros_like(V), V)


# --- mdp.q_from_v -------------------------------------------------------------------------------


def q_loops(mdp, V):
    S, A = mdp.n_states, mdp.n_actions
    P, R, term, v = mdp.P.tolist(), mdp.R.tolist(), mdp.terminal.tolist(), V.tolist()
    Q = torch.zeros(S, A, dtype=mdp.dtype)
    for s in range(S):
        for a in range(A):
            future = sum(P[s][a][t] * v[t] for t in range(S) if not term[t])
            Q[s, a] = R[s][a] + mdp.gamma * future
    return Q


def q_numpy(mdp, V):
    P, R = mdp.P.numpy(), mdp.R.numpy()
    v = np.where(mdp.terminal.numpy(), 0.0, V.numpy())
    return R + mdp.gamma * P @ v


def q_float32(mdp, V):
    v = V.float() * (~mdp.terminal).float()
    return mdp.R.float() + mdp.gamma * torch.einsum("sat,t->sa", mdp.P.float(), v)


def q_matmul(mdp, V):
    V = V.clone()
    V[mdp.terminal] = 0
    return mdp.R + mdp.gamma * (mdp.P @ V)


def q_wrong_axis(mdp, V):
    V = masked(mdp, V)
    # sums over where the transition comes FROM instead of where it goes
    return mdp.R + mdp.gamma * (mdp.P * V[:, None, None]).sum(0).T


def q_no_gamma(mdp, V):
    return mdp.R + mdp.P @ masked(mdp, V)


def q_bootstrap_terminal(mdp, V):
    return mdp.R + mdp.gamma * mdp.P @ V


def q_zero_terminal_rows_only(mdp, V):
    Q = mdp.R + mdp.gamma * mdp.P @ V
    Q[mdp.terminal] = 0.0
    return Q


# --- mdp.bellman_backup -------------------------------------------------------------------------


def backup_loops(mdp, V, pi):
    S, A = mdp.n_states, mdp.n_actions
    P, R, term = mdp.P.tolist(), mdp.R.tolist(), mdp.terminal.tolist()
    v, p = V.tolist(), pi.tolist()
    out = []
    for s in range(S):
        total = 0.0
        for a in range(A):
            future = sum(P[s][a][t] * (0.0 if term[t] else v[t]) for t in range(S))
            total += p[s][a] * (R[s][a] + mdp.gamma * future)
        out.append(total)
    return torch.tensor(out, dtype=mdp.dtype)


def backup_numpy(mdp, V, pi):
    P, R, pi = mdp.P.numpy(), mdp.R.numpy(), pi.numpy()
    v = np.where(mdp.terminal.numpy(), 0.0, V.numpy())
    return np.einsum("sa,sa->s", pi, R + mdp.gamma * np.einsum("sat,t->sa", P, v))


def backup_float32(mdp, V, pi):
    v = torch.where(mdp.terminal, 0.0, V.float())
    P_pi = torch.einsum("sa,sat->st", pi.float(), mdp.P.float())
    return (pi.float() * mdp.R.float()).sum(1) + mdp.gamma * P_pi @ v


def backup_wrong_axis(mdp, V, pi):
    Q = mdp.R + mdp.gamma * torch.einsum("tas,t->sa", mdp.P, masked(mdp, V))
    return (pi * Q).sum(-1)


def backup_no_gamma(mdp, V, pi):
    return (pi * (mdp.R + mdp.P @ masked(mdp, V))).sum(-1)


def backup_bootstrap_terminal(mdp, V, pi):
    return (pi * (mdp.R + mdp.gamma * mdp.P @ V)).sum(-1)


def backup_zero_terminal_rows(mdp, V, pi):
    V_new = (pi * (mdp.R + mdp.gamma * mdp.P @ V)).sum(-1)
    return torch.where(mdp.terminal, 0.0, V_new)


def backup_max(mdp, V, pi):
    return (mdp.R + mdp.gamma * mdp.P @ masked(mdp, V)).max(-1).values


def backup_mean(mdp, V, pi):
    return (mdp.R + mdp.gamma * mdp.P @ masked(mdp, V)).mean(-1)


# --- mdp.policy_evaluation ----------------------------------------------------------------------


def evaluation_iterative(mdp, pi, tol=1e-8):
    V = torch.zeros(mdp.n_states, dtype=mdp.dtype)
    while True:
        V_new = (pi * (mdp.R + mdp.gamma * mdp.P @ masked(mdp, V))).sum(-1)
        if (V_new - V).abs().max() < tol:
            return V_new
        V = V_new


def evaluation_loops(mdp, pi, tol=1e-8):
    S, A = mdp.n_states, mdp.n_actions
    P, R, term, p = mdp.P.tolist(), mdp.R.tolist(), mdp.terminal.tolist(), pi.tolist()
    V = [0.0] * S
    delta = float("inf")
    while delta >= tol:
        delta = 0.0
        for s in range(S):
            if term[s]:
                continue
            v = sum(
                p[s][a] * (R[s][a] + mdp.gamma * sum(P[s][a][t] * V[t] for t in range(S)))
                for a in range(A)
            )
            delta = max(delta, abs(v - V[s]))
            V[s] = v  # in place (Gauss-Seidel): converges to the same fixed point
    return V


def evaluation_solve_numpy(mdp, pi, tol=1e-8):
    P_pi = np.einsum("sa,sat->st", pi.numpy(), mdp.P.numpy())
    r_pi = (pi.numpy() * mdp.R.numpy()).sum(1)
    keep = ~mdp.terminal.numpy()
    V = np.zeros(mdp.n_states)
    A = np.eye(keep.sum()) - mdp.gamma * P_pi[np.ix_(keep, keep)]
    V[keep] = np.linalg.solve(A, r_pi[keep])
    return V


def evaluation_solve_identity_rows(mdp, pi, tol=1e-8):
    # terminal rows become V[s] = 0: the full system stays invertible even with gamma = 1
    P_pi = torch.einsum("sa,sat->st", pi, mdp.P)
    P_pi[mdp.terminal] = 0.0
    r_pi = (pi * mdp.R).sum(1)
    return torch.linalg.solve(torch.eye(mdp.n_states, dtype=mdp.dtype) - mdp.gamma * P_pi, r_pi)


def evaluation_solve_float32(mdp, pi, tol=1e-8):
    P_pi = torch.einsum("sa,sat->st", pi.float(), mdp.P.float())
    P_pi[mdp.terminal] = 0.0
    r_pi = (pi.float() * mdp.R.float()).sum(1)
    return torch.linalg.solve(torch.eye(mdp.n_states) - mdp.gamma * P_pi, r_pi)


def evaluation_fixed_sweeps(n):
    def evaluation(mdp, pi, tol=1e-8):
        V = torch.zeros(mdp.n_states, dtype=mdp.dtype)
        for _ in range(n):
            V = (pi * (mdp.R + mdp.gamma * mdp.P @ masked(mdp, V))).sum(-1)
        return V

    return evaluation


def evaluation_loose_stop(mdp, pi, tol=1e-8):
    V = torch.zeros(mdp.n_states, dtype=mdp.dtype)
    while True:
        V_new = (pi * (mdp.R + mdp.gamma * mdp.P @ masked(mdp, V))).sum(-1)
        if (V_new - V).abs().max() < 1e-2:  # "close enough"
            return V_new
        V = V_new


def evaluation_no_gamma(mdp, pi, tol=1e-8):
    V = torch.zeros(mdp.n_states, dtype=mdp.dtype)
    for _ in range(200):  # without gamma it may never converge, so the student capped it
        V_new = (pi * (mdp.R + mdp.P @ masked(mdp, V))).sum(-1)
        if (V_new - V).abs().max() < tol:
            return V_new
        V = V_new
    return V


def evaluation_full_solve(mdp, pi, tol=1e-8):
    # includes the terminal rows: singular when gamma = 1
    P_pi = torch.einsum("sa,sat->st", pi, mdp.P)
    r_pi = (pi * mdp.R).sum(1)
    return torch.linalg.solve(torch.eye(mdp.n_states, dtype=mdp.dtype) - mdp.gamma * P_pi, r_pi)


def evaluation_max(mdp, pi, tol=1e-8):
    V = torch.zeros(mdp.n_states, dtype=mdp.dtype)
    while True:
        V_new = (mdp.R + mdp.gamma * mdp.P @ masked(mdp, V)).max(-1).values
        if (V_new - V).abs().max() < tol:
            return V_new
        V = V_new


# --- mdp.greedy_policy --------------------------------------------------------------------------


def greedy_loops(Q):
    S, A = Q.shape
    pi = torch.zeros(S, A, dtype=Q.dtype)
    for s in range(S):
        best = 0
        for a in range(1, A):
            if Q[s, a] > Q[s, best]:
                best = a
        pi[s, best] = 1.0
    return pi


def greedy_numpy(Q):
    Q = np.asarray(Q)
    return np.eye(Q.shape[1])[Q.argmax(axis=1)]


def greedy_scatter(Q):
    return torch.zeros_like(Q).scatter_(1, Q.argmax(1, keepdim=True), 1.0)


def greedy_float32_max(Q):
    return torch.nn.functional.one_hot(torch.max(Q.float(), dim=1).indices, Q.shape[1]).float()


def greedy_last_tie(Q):
    S, A = Q.shape
    pi = torch.zeros(S, A)
    for s in range(S):
        best = 0
        for a in range(A):
            if Q[s, a] >= Q[s, best]:
                best = a
        pi[s, best] = 1.0
    return pi


def greedy_random_tie(Q):
    gen = torch.Generator().manual_seed(1)
    ties = (Q == Q.max(1, keepdim=True).values).double()
    return torch.nn.functional.one_hot(
        torch.multinomial(ties, 1, generator=gen).squeeze(1), Q.shape[1]
    ).double()


def greedy_indices(Q):
    return Q.argmax(1)


def greedy_argmin(Q):
    return torch.nn.functional.one_hot(Q.argmin(1), Q.shape[1]).to(Q.dtype)


def greedy_spread(Q):
    ties = (Q == Q.max(1, keepdim=True).values).to(Q.dtype)
    return ties / ties.sum(1, keepdim=True)


# --- mdp.value_iteration ------------------------------------------------------------------------


def vi_vectorised(mdp, tol=1e-8):
    V = torch.zeros(mdp.n_states, dtype=torch.float64)
    P, R = mdp.P.double(), mdp.R.double()
    while True:
        Q = R + mdp.gamma * P @ masked(mdp, V)
        V_new = Q.max(1).values
        if (V_new - V).abs().max() < tol:
            return V_new, R + mdp.gamma * P @ masked(mdp, V_new)
        V = V_new


def vi_loops(mdp, tol=1e-8):
    S, A = mdp.n_states, mdp.n_actions
    P, R, term = mdp.P.tolist(), mdp.R.tolist(), mdp.terminal.tolist()
    V = [0.0] * S

    def q(s, a):
        return R[s][a] + mdp.gamma * sum(P[s][a][t] * V[t] for t in range(S) if not term[t])

    for _ in range(100_000):
        V_new = [max([q(s, a) for a in range(A)]) for s in range(S)]
        delta = max(abs(x - y) for x, y in zip(V_new, V))
        V = V_new
        if delta < tol:
            break
    return torch.tensor(V), torch.tensor([[q(s, a) for a in range(A)] for s in range(S)])


def vi_numpy_bound(mdp, tol=1e-8):
    P, R = mdp.P.double().numpy(), mdp.R.double().numpy()
    live = ~mdp.terminal.numpy()
    V = np.zeros(mdp.n_states)
    while True:
        Q = R + mdp.gamma * P @ (V * live)
        V_new = Q.max(axis=1)
        delta = np.abs(V_new - V).max()
        V = V_new
        # contraction bound; with gamma = 1 fall back to the plain change
        if delta == 0 or (mdp.gamma < 1 and delta * mdp.gamma / (1 - mdp.gamma) < tol):
            break
        if mdp.gamma == 1 and delta < tol:
            break
    return V, R + mdp.gamma * P @ (V * live)


def vi_float32(mdp, tol=1e-8):
    P, R = mdp.P.float(), mdp.R.float()
    V = torch.zeros(mdp.n_states)
    for _ in range(100_000):
        Q = R + mdp.gamma * P @ torch.where(mdp.terminal, 0.0, V)
        V_new = Q.max(1).values
        # float32 cannot always get within 1e-8; an unchanged V is converged too
        if (V_new - V).abs().max() < max(tol, 1e-6):
            V = V_new
            break
        V = V_new
    return V, R + mdp.gamma * P @ torch.where(mdp.terminal, 0.0, V)


def vi_fixed_sweeps(n):
    def value_iteration(mdp, tol=1e-8):
        V = torch.zeros(mdp.n_states, dtype=mdp.dtype)
        for _ in range(n):
            Q = mdp.R + mdp.gamma * mdp.P @ masked(mdp, V)
            V = Q.max(1).values
        return V, Q

    return value_iteration


def vi_no_gamma(mdp, tol=1e-8):
    V = torch.zeros(mdp.n_states, dtype=mdp.dtype)
    for _ in range(200):
        Q = mdp.R + mdp.P @ masked(mdp, V)
        V_new = Q.max(1).values
        if (V_new - V).abs().max() < tol:
            return V_new, Q
        V = V_new
    return V, Q


def vi_ones_no_mask(mdp, tol=1e-8):
    V = torch.ones(mdp.n_states, dtype=mdp.dtype)  # any start converges... unless bootstrapped
    for _ in range(100_000):
        Q = mdp.R + mdp.gamma * mdp.P @ V
        V_new = Q.max(1).values
        if (V_new - V).abs().max() < tol:
            return V_new, Q
        V = V_new
    return V, Q


def vi_mean(mdp, tol=1e-8):
    V = torch.zeros(mdp.n_states, dtype=mdp.dtype)
    while True:
        Q = mdp.R + mdp.gamma * mdp.P @ masked(mdp, V)
        V_new = Q.mean(1)
        if (V_new - V).abs().max() < tol:
            return V_new, Q
        V = V_new


def vi_only_v(mdp, tol=1e-8):
    return vi_vectorised(mdp, tol)[0]


def vi_stale_q(mdp, tol=1e-8):
    V = torch.zeros(mdp.n_states, dtype=mdp.dtype)
    Q = torch.zeros(mdp.n_states, mdp.n_actions, dtype=mdp.dtype)  # never updated
    for _ in range(100_000):
        V_new = (mdp.R + mdp.gamma * mdp.P @ masked(mdp, V)).max(1).values
        if (V_new - V).abs().max() < tol:
            return V_new, Q
        V = V_new
    return V, Q


# --- tests --------------------------------------------------------------------------------------

REFERENCES = {
    "mdp.q_from_v": ref.q_from_v,
    "mdp.bellman_backup": ref.bellman_backup,
    "mdp.policy_evaluation": ref.policy_evaluation,
    "mdp.greedy_policy": ref.greedy_policy,
    "mdp.value_iteration": ref.value_iteration,
}

CORRECT = [
    ("mdp.q_from_v", q_loops),
    ("mdp.q_from_v", q_numpy),
    ("mdp.q_from_v", q_float32),
    ("mdp.q_from_v", q_matmul),
    ("mdp.bellman_backup", backup_loops),
    ("mdp.bellman_backup", backup_numpy),
    ("mdp.bellman_backup", backup_float32),
    ("mdp.policy_evaluation", evaluation_iterative),
    ("mdp.policy_evaluation", evaluation_loops),
    ("mdp.policy_evaluation", evaluation_solve_numpy),
    ("mdp.policy_evaluation", evaluation_solve_identity_rows),
    ("mdp.policy_evaluation", evaluation_solve_float32),
    ("mdp.greedy_policy", greedy_loops),
    ("mdp.greedy_policy", greedy_numpy),
    ("mdp.greedy_policy", greedy_scatter),
    ("mdp.greedy_policy", greedy_float32_max),
    ("mdp.value_iteration", vi_vectorised),
    ("mdp.value_iteration", vi_loops),
    ("mdp.value_iteration", vi_numpy_bound),
    ("mdp.value_iteration", vi_float32),
]

# (exercise, student-written mistake, hint expected in the message or None)
WRONG = [
    ("mdp.q_from_v", q_wrong_axis, checks.WRONG_AXIS),
    ("mdp.q_from_v", q_no_gamma, checks.NO_GAMMA),
    ("mdp.q_from_v", q_bootstrap_terminal, checks.BOOTSTRAP_TERMINAL),
    ("mdp.q_from_v", q_zero_terminal_rows_only, checks.BOOTSTRAP_INTO_TERMINAL),
    ("mdp.bellman_backup", backup_wrong_axis, checks.WRONG_AXIS),
    ("mdp.bellman_backup", backup_no_gamma, checks.NO_GAMMA),
    ("mdp.bellman_backup", backup_bootstrap_terminal, checks.BOOTSTRAP_TERMINAL),
    ("mdp.bellman_backup", backup_zero_terminal_rows, checks.BOOTSTRAP_INTO_TERMINAL),
    ("mdp.bellman_backup", backup_max, checks.EXPECTATION_NOT_MAX),
    ("mdp.bellman_backup", backup_mean, checks.UNIFORM_NOT_PI),
    ("mdp.policy_evaluation", evaluation_fixed_sweeps(10), checks.STOPPED_EARLY),
    ("mdp.policy_evaluation", evaluation_fixed_sweeps(100), None),
    ("mdp.policy_evaluation", evaluation_loose_stop, None),
    ("mdp.policy_evaluation", evaluation_no_gamma, checks.NO_GAMMA),
    ("mdp.policy_evaluation", evaluation_max, checks.EVALUATION_MAX),
    ("mdp.greedy_policy", greedy_last_tie, checks.TIES_LOWEST),
    ("mdp.greedy_policy", greedy_random_tie, None),
    ("mdp.greedy_policy", greedy_indices, checks.ONE_HOT),
    ("mdp.greedy_policy", greedy_argmin, checks.ARGMAX),
    ("mdp.greedy_policy", greedy_spread, checks.SPREAD_TIES),
    ("mdp.value_iteration", vi_fixed_sweeps(10), checks.STOPPED_EARLY_VI),
    ("mdp.value_iteration", vi_fixed_sweeps(100), None),
    ("mdp.value_iteration", vi_no_gamma, checks.NO_GAMMA),
    ("mdp.value_iteration", vi_ones_no_mask, checks.BOOTSTRAP_TERMINAL),
    ("mdp.value_iteration", vi_mean, checks.MAX_NOT_MEAN),
]


def test_every_exercise_is_registered():
    assert exercise_ids("01_mdps") == sorted(IDS)


(
    test_correct_answers_pass,
    test_correct_answers_pass_with_other_seeds,
    test_student_mistakes_fail,
    test_every_listed_mistake_fails_with_its_hint,
) = answer_tests(IDS, CORRECT, WRONG)
test_every_listed_hint_is_reached_by_a_student_written_mistake = hint_coverage_test(IDS, WRONG)


def test_singular_solve_with_gamma_one_is_explained():
    result = assert_fails("mdp.policy_evaluation", evaluation_full_solve)
    assert "gamma = 1" in result.message and "LinAlgError" in result.message
    assert checks.SINGULAR_SOLVE in result.message


def test_value_iteration_must_return_q_of_the_final_values():
    assert_fails("mdp.value_iteration", vi_stale_q)


def test_value_iteration_must_return_a_pair():
    result = assert_fails("mdp.value_iteration", vi_only_v)
    assert "returned tensor of shape" in result.message and "pair (V, Q)" in result.message


def test_check_reference_of_value_iteration_matches_the_library():
    exercise = get_exercise("mdp.value_iteration")
    for case in exercise.build_cases(0):
        V, Q = exercise.reference(*case.args, **case.kwargs)
        V_ref, Q_ref = ref.value_iteration(*case.args, **case.kwargs)
        assert V.dtype == V_ref.dtype and Q.dtype == Q_ref.dtype
        torch.testing.assert_close(V, V_ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(Q, Q_ref, atol=1e-5, rtol=0)


def test_other_seeds_give_other_cases_and_still_pass():
    exercise = get_exercise("mdp.q_from_v")
    a, b = exercise.build_cases(0), exercise.build_cases(1)
    assert not torch.equal(a[-1].args[1], b[-1].args[1])
    assert check("mdp.q_from_v", q_loops, seed=1).passed


# --- not attempted and broken code ---------------------------------------------------------------


def wrong_shape(*args, **kwargs):
    return torch.zeros(7, 3, 2)


@pytest.mark.parametrize("exercise_id", IDS)
def test_wrong_shape_fails(exercise_id):
    result = assert_fails(exercise_id, wrong_shape)
    assert "shape" in result.message or "pair (V, Q)" in result.message


def test_wrong_shape_names_both_shapes():
    result = assert_fails("mdp.q_from_v", wrong_shape)
    assert "returned shape (7, 3, 2); expected shape (3, 2)" in result.message


def test_changing_an_argument_in_place_fails():
    def q_in_place(mdp, V):
        V[mdp.terminal] = 0.0  # changes the caller's V
        return mdp.R + mdp.gamma * mdp.P @ V

    result = assert_fails("mdp.q_from_v", q_in_place)
    assert "in place" in result.message


@pytest.mark.parametrize("exercise_id", ["mdp.policy_evaluation", "mdp.value_iteration"])
def test_infinite_loop_times_out(exercise_id, monkeypatch):
    exercise = get_exercise(exercise_id)
    monkeypatch.setattr(exercise, "time_limit", 0.3)

    def never_converges(mdp, *args, **kwargs):
        V = torch.zeros(mdp.n_states)
        delta = 1.0
        while delta > 1e-8:
            V = V + 1.0  # delta is never recomputed
        return V

    result = assert_fails(exercise_id, never_converges)
    assert "did not finish within 0.3 s" in result.message


def test_default_time_limit_of_the_looping_exercises():
    assert get_exercise("mdp.value_iteration").time_limit == 10.0
    assert get_exercise("mdp.policy_evaluation").time_limit == 10.0


# --- the check API ------------------------------------------------------------------------------


def test_unknown_id_lists_the_known_ones():
    with pytest.raises(KeyError) as info:
        check("mdp.bellman", ref.bellman_backup)
    text = str(info.value)
    assert "mdp.bellman" in text
    for exercise_id in IDS:
        assert exercise_id in text


def test_result_renders_as_text_and_html():
    passed = check("mdp.greedy_policy", greedy_loops)
    assert str(passed).startswith("PASS mdp.greedy_policy (1/1)")
    assert repr(passed) == str(passed)
    assert "passed" in passed._repr_html_() and "#1a7f37" in passed._repr_html_()

    failed = check("mdp.greedy_policy", greedy_last_tie)
    text = str(failed)
    assert text.startswith("FAIL mdp.greedy_policy (0/1)")
    assert "Failed on case" in text and "input: Q = " in text
    html = failed._repr_html_()
    assert "failed" in html and "#cf222e" in html
    assert "<script" not in html and "hint:" in html

    todo = check("mdp.greedy_policy", stub)
    assert str(todo).startswith("TODO mdp.greedy_policy (0/1)")
    assert "not attempted" in todo._repr_html_()


def test_failure_message_shows_expected_and_got_on_a_small_input():
    result = check("mdp.q_from_v", q_no_gamma)
    assert "expected:" in result.message and "got:" in result.message
    assert "P[s, a, s'] = " in result.message


def test_html_escapes_the_message():
    def raises_markup(Q):
        raise ValueError("<b>bold</b>")

    html = check("mdp.greedy_policy", raises_markup)._repr_html_()
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html


(
    test_reference_passes,
    test_library_object_itself_is_refused,
    test_stub_is_not_attempted,
    test_missing_answer_is_not_attempted,
    test_broken_code_fails_without_crashing,
    test_a_check_runs_in_well_under_a_second,
) = robustness_tests(
    # value iteration's cases run to tol 1e-8 at gamma up to 0.99: about a second per answer
    IDS,
    CORRECT,
    WRONG,
    cpu_seconds={"mdp.value_iteration": 4.0},
)
