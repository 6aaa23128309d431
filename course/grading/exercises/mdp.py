"""Checks for Lesson 01 (finite MDPs): the five exercises of ``course/mdp.py``.

Every case is an MDP from ``course.mdp.random_mdp`` (or a tiny hand-made one) with varied sizes,
discounts, terminal states and stochasticity. Values handed to the student's function hold
garbage at terminal states on purpose: nothing may be bootstrapped from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from course import mdp as ref
from course.grading.core import Case, Exercise, compare, register
from course.grading.plain import describe, show_tensor

LESSON = "01_mdps"


# --- the MDPs every exercise is tried on ------------------------------------------------------


def _chain() -> ref.TabularMDP:
    """0 -> 1 -> 2 (terminal): action 0 moves right for reward 1, action 1 stays for reward 0."""
    P = torch.zeros(3, 2, 3, dtype=torch.float64)
    P[0, 0, 1] = P[1, 0, 2] = 1.0
    P[0, 1, 0] = P[1, 1, 1] = 1.0
    P[2, :, 2] = 1.0
    R = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    return ref.TabularMDP(P, R, gamma=0.9, terminal=torch.tensor([False, False, True]))


def _coin() -> ref.TabularMDP:
    """Two states, no terminal: action 1 is a coin flip between them."""
    P = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]], dtype=torch.float64)
    R = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    return ref.TabularMDP(P, R, gamma=0.5)


def mdp_cases(generator: torch.Generator, n_random: int = 24) -> Iterator[tuple[str, Any]]:
    """(label, mdp) pairs: hand-made edge cases first, then random MDPs, small before large."""
    yield "a 3-state chain ending in a terminal state (gamma 0.9)", _chain()
    yield "a 2-state coin-flip MDP without terminal states (gamma 0.5)", _coin()
    yield "a one-action MDP (gamma 0)", ref.random_mdp(3, 1, 0.0, generator)
    gammas = (0.0, 0.5, 0.9, 0.99, 1.0)
    for k in range(n_random):
        S = 2 + k // 4 + int(torch.randint(0, 2, (1,), generator=generator))
        A = 1 + int(torch.randint(0, 4, (1,), generator=generator))
        gamma = gammas[k % len(gammas)]
        n_terminal = int(
            torch.randint(1 if gamma == 1 else 0, min(3, S), (1,), generator=generator)
        )
        deterministic = k % 3 == 0
        # float32 MDPs only where float32 arithmetic can reach the default tolerance
        dtype = torch.float32 if k % 4 == 3 and gamma <= 0.9 else torch.float64
        mdp = ref.random_mdp(
            S, A, gamma, generator, n_terminal=n_terminal, deterministic=deterministic, dtype=dtype
        )
        kind = "deterministic" if deterministic else "stochastic"
        terminals = mdp.terminal.nonzero().flatten().tolist()
        label = (
            f"a random {kind} MDP (S={S}, A={A}, gamma={gamma:g}, terminal states "
            f"{terminals}, {str(dtype).removeprefix('torch.')})"
        )
        yield label, mdp


def _garbage_values(mdp: ref.TabularMDP, generator: torch.Generator) -> torch.Tensor:
    V = 3 * torch.randn(mdp.n_states, generator=generator, dtype=torch.float64)
    V[mdp.terminal] = 100.0  # must never be read: terminal states have value 0
    return V.to(mdp.dtype)


def show_mdp(mdp: ref.TabularMDP, **tensors: torch.Tensor) -> str:
    """The inputs of a case, printed when it is small enough to read."""
    head = (
        f"S={mdp.n_states}, A={mdp.n_actions}, gamma={mdp.gamma:g}, "
        f"terminal={mdp.terminal.nonzero().flatten().tolist()}"
    )
    if mdp.n_states > 4:
        return head
    lines = [head, "P[s, a, s'] = " + show_tensor(mdp.P), "R[s, a] = " + show_tensor(mdp.R)]
    lines += [f"{name} = {show_tensor(t)}" for name, t in tensors.items()]
    return "\n".join(lines)


# --- classic mistakes, written once and shared by the hints ------------------------------------


def _q(
    mdp: ref.TabularMDP,
    V: torch.Tensor,
    *,
    transpose: bool = False,
    gamma: float | None = None,
    mask_terminal: bool = True,
) -> torch.Tensor:
    V = torch.as_tensor(V).to(mdp.dtype)
    if mask_terminal:
        V = torch.where(mdp.terminal, torch.zeros_like(V), V)
    g = mdp.gamma if gamma is None else gamma
    pattern = "tas,t->sa" if transpose else "sat,t->sa"
    Q = mdp.R + g * torch.einsum(pattern, mdp.P, V)
    return Q if mask_terminal else Q


WRONG_AXIS = (
    "P is indexed P[s, a, s'] (from s, by a, to s'): sum over the LAST axis against V, "
    "e.g. `(mdp.P * V).sum(-1)` or `mdp.P @ V`"
)
NO_GAMMA = "the future is discounted: multiply the expected next value by mdp.gamma"
BOOTSTRAP_TERMINAL = (
    "nothing follows a terminal state: read V as 0 there "
    "(e.g. `V = torch.where(mdp.terminal, 0.0, V)`) before looking ahead"
)


EXPECTATION_NOT_MAX = (
    "this is the expectation operator of the policy pi: weight each action's value by "
    "pi[s, a] and sum; a max over actions belongs to the optimality operator"
)
MAX_NOT_MEAN = "value iteration backs up the BEST action (max over a), not the average"
BOOTSTRAP_INTO_TERMINAL = (
    "setting the result to 0 at terminal states is not enough: the states that move INTO a "
    "terminal state must not add gamma * V there either; read V as 0 at terminal states before "
    "looking ahead"
)
UNIFORM_NOT_PI = (
    "each action's value must be weighted by pi[s, a] (the policy), not averaged "
    "uniformly over actions"
)
STOPPED_EARLY = (
    "stopped before convergence: keep applying the backup until the largest change in V "
    "is below tol (or solve the linear system exactly)"
)
EVALUATION_MAX = (
    "these are the optimal values V*, not the values of pi: policy evaluation weights each "
    "action by pi[s, a]; the max over actions belongs to value iteration"
)
SINGULAR_SOLVE = (
    "hint: with gamma = 1 the rows of I - gamma * P_pi at terminal states are all zero, so the "
    "full system is singular: solve only for the non-terminal states (V is 0 at terminal "
    "states), or replace the terminal rows by the equation V[s] = 0"
)
TIES_LOWEST = (
    "ties must go to the LOWEST action index (torch.argmax does this; a loop with `>=` "
    "keeps the last one)"
)
ONE_HOT = "return a one-hot policy of shape [S, A] (1 on the chosen action), not the action indices"
ARGMAX = "the greedy action has the LARGEST value (argmax, not argmin)"
SPREAD_TIES = (
    "with several tied actions, pick one of them (the lowest index), do not spread "
    "probability over all of them"
)
STOPPED_EARLY_VI = (
    "stopped before convergence: keep sweeping until the largest change in V is below tol"
)


def _zero_terminal_rows(mdp: ref.TabularMDP, x: torch.Tensor) -> torch.Tensor:
    """Zeroes a result at terminal states only (their predecessors still read V there)."""
    x = x.clone()
    x[mdp.terminal] = 0.0
    return x


def _optimal_values(mdp: ref.TabularMDP) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(V*, Q*)`` by policy iteration with linear solves, in the MDP's dtype."""
    m = mdp.to(dtype=torch.float64)
    pi = ref.greedy_policy(m.R)
    try:
        for _ in range(1000):
            Q = ref.q_from_v(m, ref.policy_evaluation(m, pi))
            better = Q.max(-1).values > (pi * Q).sum(-1) + 1e-12
            if not better.any():
                V = Q.max(-1).values
                return V.to(mdp.dtype), ref.q_from_v(m, V).to(mdp.dtype)
            # only states that strictly improve change action, so ties cannot make it cycle
            pi = torch.where(better[:, None], ref.greedy_policy(Q), pi)
    except ValueError:  # gamma = 1 and a policy that never terminates: sweep instead
        pass
    return ref.value_iteration(mdp)


# --- the exercises -----------------------------------------------------------------------------


class _MDPExercise(Exercise):
    lesson = LESSON
    atol = 1e-4
    rtol = 1e-4


@register
class QFromV(_MDPExercise):
    solves = ref.q_from_v

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        return {
            WRONG_AXIS: lambda mdp, V: _q(mdp, V, transpose=True),
            NO_GAMMA: lambda mdp, V: _q(mdp, V, gamma=1.0),
            BOOTSTRAP_TERMINAL: lambda mdp, V: _q(mdp, V, mask_terminal=False),
            BOOTSTRAP_INTO_TERMINAL: lambda mdp, V: _zero_terminal_rows(
                mdp, _q(mdp, V, mask_terminal=False)
            ),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        out = []
        for label, mdp in mdp_cases(generator):
            V = _garbage_values(mdp, generator)
            out.append(Case(label, (mdp, V), shown=show_mdp(mdp, V=V)))
        return out


@register
class BellmanBackup(_MDPExercise):
    solves = ref.bellman_backup
    parts = {"": 2}

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def expect(Q: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
            return (pi * Q).sum(-1)

        return {
            WRONG_AXIS: lambda mdp, V, pi: expect(_q(mdp, V, transpose=True), pi),
            NO_GAMMA: lambda mdp, V, pi: expect(_q(mdp, V, gamma=1.0), pi),
            BOOTSTRAP_TERMINAL: lambda mdp, V, pi: expect(_q(mdp, V, mask_terminal=False), pi),
            BOOTSTRAP_INTO_TERMINAL: lambda mdp, V, pi: _zero_terminal_rows(
                mdp, expect(_q(mdp, V, mask_terminal=False), pi)
            ),
            EXPECTATION_NOT_MAX: lambda mdp, V, pi: _q(mdp, V).max(-1).values,
            UNIFORM_NOT_PI: lambda mdp, V, pi: _q(mdp, V).mean(-1),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        out = []
        for k, (label, mdp) in enumerate(mdp_cases(generator)):
            V = _garbage_values(mdp, generator)
            pi = ref.random_policy(mdp, generator, deterministic=k % 3 == 1)
            out.append(Case(label, (mdp, V, pi), shown=show_mdp(mdp, V=V, pi=pi)))
        return out


@register
class PolicyEvaluation(_MDPExercise):
    solves = ref.policy_evaluation
    parts = {"": 2}
    time_limit = 10.0

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def iterate(
            mdp: ref.TabularMDP,
            pi: torch.Tensor,
            sweeps: int = 100_000,
            gamma: float | None = None,
            mask_terminal: bool = True,
        ) -> torch.Tensor:
            V = torch.zeros(mdp.n_states, dtype=torch.float64)
            m = mdp.to(dtype=torch.float64)
            for _ in range(sweeps):
                new = (pi.double() * _q(m, V, gamma=gamma, mask_terminal=mask_terminal)).sum(-1)
                if (new - V).abs().max() < 1e-10:
                    return new
                V = new
            return V

        # Iterating from V = 0 without masking terminal states is no mistake (V stays 0 there);
        # bootstrapping from them bites in the full linear solve with gamma = 1 (`_verdict`).
        return {
            STOPPED_EARLY: lambda mdp, pi, tol=1e-8: iterate(mdp, pi, sweeps=10),
            NO_GAMMA: lambda mdp, pi, tol=1e-8: iterate(mdp, pi, sweeps=200, gamma=1.0),
            EVALUATION_MAX: lambda mdp, pi, tol=1e-8: _optimal_values(mdp)[0],
        }

    def _verdict(self, case: Case, outcome: Any) -> str | None:
        reason = super()._verdict(case, outcome)
        if reason is not None and outcome is not None and "LinAlgError" in (outcome.error or ""):
            reason += "\n" + SINGULAR_SOLVE
        return reason

    def cases(self, generator: torch.Generator) -> list[Case]:
        out = []
        for k, (label, mdp) in enumerate(mdp_cases(generator)):
            pi = ref.random_policy(mdp, generator, deterministic=k % 3 == 1)
            kwargs = {"tol": 1e-6} if mdp.dtype == torch.float32 else {}
            out.append(Case(label, (mdp, pi), kwargs, shown=show_mdp(mdp, pi=pi)))
        return out


@register
class GreedyPolicy(_MDPExercise):
    solves = ref.greedy_policy
    atol = rtol = 0.0

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def one_hot(action: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(action, Q.shape[-1]).to(torch.float64)

        return {
            TIES_LOWEST: lambda Q: one_hot(Q.shape[-1] - 1 - Q.flip(-1).argmax(-1), Q),
            ONE_HOT: lambda Q: Q.argmax(-1),
            ARGMAX: lambda Q: one_hot(Q.argmin(-1), Q),
            SPREAD_TIES: lambda Q: (
                (Q == Q.max(-1, keepdim=True).values).to(Q.dtype)
                / (Q == Q.max(-1, keepdim=True).values).to(Q.dtype).sum(-1, keepdim=True)
            ),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        fixed = [
            ("a single state with a clear best action", torch.tensor([[0.0, 2.0, 1.0]])),
            ("a three-way tie (expect action 0)", torch.tensor([[1.0, 1.0, 1.0]])),
            ("ties after the first action", torch.tensor([[0.0, 5.0, 5.0], [-1.0, -2.0, -1.0]])),
            ("negative values", torch.tensor([[-3.0, -1.0], [-0.5, -7.0]], dtype=torch.float64)),
        ]
        out = [Case(label, (Q,), shown=f"Q = {show_tensor(Q)}") for label, Q in fixed]
        for k in range(16):
            S, A = 2 + k % 6, 2 + k % 4
            # half-integer values make exact ties common
            Q = torch.randint(-4, 5, (S, A), generator=generator).double() / 2
            dtype = (torch.float32, torch.float64)[k % 2]
            out.append(
                Case(
                    f"random Q with ties (S={S}, A={A}, {str(dtype)[6:]})",
                    (Q.to(dtype),),
                    shown=f"Q = {show_tensor(Q)}",
                )
            )
        return out


@register
class ValueIteration(_MDPExercise):
    solves = ref.value_iteration
    parts = {"": 2}
    time_limit = 10.0

    def reference(self, mdp: ref.TabularMDP, tol: float = 1e-8) -> tuple[torch.Tensor, ...]:
        # The exact optimum: far faster than sweeping to 1e-8 at gamma = 0.99, and within 1e-6
        # of ref.value_iteration (asserted in the tests).
        return _optimal_values(mdp)

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def iterate(
            mdp: ref.TabularMDP,
            sweeps: int = 100_000,
            gamma: float | None = None,
            mask_terminal: bool = True,
            backup: str = "max",
            start: float = 0.0,
        ) -> tuple[torch.Tensor, ...]:
            m = mdp.to(dtype=torch.float64)
            V = torch.full((mdp.n_states,), start, dtype=torch.float64)
            Q = _q(m, V)
            for _ in range(sweeps):
                Q = _q(m, V, gamma=gamma, mask_terminal=mask_terminal)
                new = Q.max(-1).values if backup == "max" else Q.mean(-1)
                if (new - V).abs().max() < 1e-11:
                    V = new
                    break
                V = new
            return V, Q

        # From V = 0, not masking terminal states changes nothing (V stays 0 there); it shows
        # when V starts elsewhere, e.g. at 1, and gamma = 1 never forgets that start.
        return {
            STOPPED_EARLY_VI: lambda mdp, tol=1e-8: iterate(mdp, sweeps=10),
            NO_GAMMA: lambda mdp, tol=1e-8: iterate(mdp, sweeps=200, gamma=1.0),
            BOOTSTRAP_TERMINAL: lambda mdp, tol=1e-8: iterate(mdp, mask_terminal=False, start=1.0),
            MAX_NOT_MEAN: lambda mdp, tol=1e-8: iterate(mdp, backup="mean"),
        }

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        if not (isinstance(got, dict) and got.get("type") in ("tuple", "list")):
            return f"returned {describe(got)}; it should return a pair (V, Q): `return V, Q`"
        reason = compare(got, want, self.atol, self.rtol)
        if reason is not None:
            reason = reason.replace("item 0 of the returned tuple", "V").replace(
                "item 1 of the returned tuple", "Q"
            )
        return reason

    def cases(self, generator: torch.Generator) -> list[Case]:
        out = []
        for label, mdp in mdp_cases(generator):
            kwargs = {"tol": 1e-6} if mdp.dtype == torch.float32 else {}
            out.append(Case(label, (mdp,), kwargs, shown=show_mdp(mdp)))
        return out
