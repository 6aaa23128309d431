"""Checks for Lesson 02 (learning from single transitions): the two updates of ``course/td.py``.

Every case is a table ``Q[S, A]`` with arbitrary values (also at ``s_next`` when the transition
terminated: nothing may be bootstrapped from there), one transition and a step size; one case
chains several transitions, each call getting the table the previous one returned, as a
training loop does. States, actions and rewards come as Python numbers or as numpy scalars
(gymnasium hands out ``numpy.int64`` states and Python ``int`` rewards).

The contract on the caller's table: the function may update it in place and return it, or
leave it alone and return a new table; it may not change the caller's table into anything
other than what it returns. The probe records what came back and what became of the caller's
table; the judge compares the returned table with the reference's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from course import td as ref
from course.grading import plain
from course.grading.core import Case, Exercise, compare, register
from course.grading.plain import show_tensor

LESSON = "02_replay"
UPDATE, TERMINATED = "update toward the target", "no bootstrap past terminated"

# --- classic mistakes, written once and shared by both exercises ---------------------------------

BOOTSTRAP_TERMINATED = (
    "when `terminated` is True the episode is over: the target is just r, with no "
    "gamma * Q[s_next, ...] term (multiply the future by `(not terminated)`), whatever the "
    "table holds at s_next"
)
WHOLE_ROW = (
    "only the entry Q[s, a] changes: index the state AND the action (`Q[s, a] += ...`), "
    "not the whole row Q[s]"
)
EVERY_ENTRY = (
    "only the entry Q[s, a] changes: the update touches one state-action pair, not the "
    "whole table (`Q[s, a] += alpha * (target - Q[s, a])`)"
)
MAX_CURRENT = (
    "bootstrap from the NEXT state: the target is r + gamma * max_a' Q[s_next, a'], "
    "not a max over Q[s] (the state the transition started from)"
)
ACTION_IN_Q_LEARNING = (
    "Q-learning bootstraps from the BEST action at s_next, `Q[s_next].max()`: the value of "
    "one particular action there (here the action a just taken) is SARSA's kind of target"
)
MAX_IN_SARSA = (
    "SARSA bootstraps from the action actually taken next, Q[s_next, a_next] (on-policy); "
    "the max over actions is Q-learning's target"
)
CURRENT_IN_SARSA = (
    "bootstrap from the NEXT state and action: the target uses Q[s_next, a_next], not Q[s, a_next]"
)
ALPHA_TARGET_ONLY = (
    "alpha multiplies the whole TD error, not the target alone: "
    "`Q[s, a] += alpha * (target - Q[s, a])` (so Q[s, a] moves a fraction alpha of the way)"
)
NO_ALPHA = (
    "move Q[s, a] only a fraction alpha of the way to the target: "
    "`Q[s, a] += alpha * (target - Q[s, a])`, not `Q[s, a] = target`"
)
SIGN = (
    "the sign of the TD error: it is target - Q[s, a], so that Q[s, a] moves TOWARD the "
    "target (`Q[s, a] - target` pushes it away)"
)
NO_GAMMA = "the future is discounted: multiply the next value by gamma"
RETURN_TABLE = "return the whole updated table Q (shape [S, A]), not the new value of Q[s, a] alone"


def _update(
    Q: torch.Tensor,
    s: Any,
    a: Any,
    r: Any,
    future: float,
    terminated: bool,
    alpha: float,
    gamma: float,
    *,
    mask_terminated: bool = True,
    rule: str = "right",
    where: str = "entry",
) -> torch.Tensor:
    """The update with one classic mistake switched on (``rule``, ``where``, no mask)."""
    if mask_terminated and terminated:
        future = 0.0
    target = float(r) + gamma * future
    old = Q[s, a].clone() if where == "entry" else (Q[s].clone() if where == "row" else Q.clone())
    new = {
        "right": old + alpha * (target - old),
        "alpha on target": old + alpha * target - old,
        "no alpha": old * 0 + target,
        "sign": old + alpha * (old - target),
    }[rule]
    if where == "entry":
        Q[s, a] = new
    elif where == "row":
        Q[s] = new
    else:
        Q[...] = new
    return Q


def _as_table(result: Any) -> torch.Tensor | None:
    """A returned table as a CPU tensor (a copy for numpy), or None if it is not an array."""
    if isinstance(result, torch.Tensor):
        return torch.Tensor.detach(result).cpu()
    if isinstance(result, np.ndarray) and result.dtype != object:
        return torch.from_numpy(result.copy())
    return None


def _shown(case_args: tuple, names: tuple[str, ...]) -> str:
    Q, *rest = case_args
    values = ", ".join(f"{n}={v!r}" for n, v in zip(names[1:], rest))
    return f"Q = {show_tensor(Q)}\n{values}"


class _TDExercise(Exercise):
    lesson = LESSON
    atol = 1e-5
    rtol = 1e-5
    mutates_args = True  # updating the caller's table in place is allowed; the probe checks it
    arg_names: tuple[str, ...] = ()

    def transition(self, generator: torch.Generator, S: int, A: int) -> dict[str, Any]:
        """The extra fields of a random transition (``a_next`` for SARSA)."""
        return {}

    def args(self, Q: torch.Tensor, fields: dict[str, Any]) -> tuple:
        return (Q, *(fields[name] for name in self.arg_names[1:]))

    @staticmethod
    def future(Q: torch.Tensor, s: Any, a: Any, s_next: Any, *a_next: Any) -> float:
        """The value the right update bootstraps from (``a_next``: SARSA's only)."""
        raise NotImplementedError

    def wrong_update(
        self, future: Callable[..., float] | None = None, gamma: float | None = None, **mistake: Any
    ) -> Callable[..., torch.Tensor]:
        """The update, called as the student's is, with one classic mistake: another ``future``
        (called as `future`), a fixed ``gamma``, or a switch of `_update`."""
        future_of = future or self.future

        def wrong(*args: Any) -> torch.Tensor:
            Q, s, a, r, s_next, *a_next, terminated, alpha, g = args
            value = future_of(Q, s, a, s_next, *a_next)
            return _update(
                Q, s, a, r, value, terminated, alpha, g if gamma is None else gamma, **mistake
            )

        return wrong

    # --- probe and judge ----------------------------------------------------------------

    def probe(self, obj: Any, case: Case) -> Any:
        args, kwargs = copy.deepcopy((case.args, case.kwargs))
        caller = args[0]
        result = obj(*args, **kwargs)
        for later in case.data.get("then", ()):  # a training loop feeds the table back in
            table = _as_table(result)
            if table is None:
                break
            result = obj(result if isinstance(result, torch.Tensor) else table, *later)
        changed = not torch.equal(caller, case.args[0])
        table = _as_table(result)
        same = (
            table is not None
            and table.shape == caller.shape
            and torch.equal(table.to(caller.dtype), caller)
        )
        return {
            "returned": plain.encode(result),
            "caller": "unchanged" if not changed else ("returned" if same else "other"),
        }

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        returned = got.get("returned") if isinstance(got, dict) else None
        if returned is None:
            if isinstance(got, dict) and got.get("caller") != "unchanged":
                return "returned None; it changed the table but must also return it: `return Q`"
            return "returned None; return the updated table Q (shape [S, A])"
        reason = compare(returned, want["returned"], self.atol, self.rtol)
        if reason is None and got.get("caller") == "other" and plain.is_array(returned):
            return (
                "changed the caller's table into something other than the table it returned: "
                "either update Q in place and return that same Q, or work on a copy "
                "(`Q = Q.clone()`) and leave the caller's table alone"
            )
        return reason

    # --- cases --------------------------------------------------------------------------

    def cases(self, generator: torch.Generator) -> list[Case]:
        g = generator
        out: list[Case] = []

        def add(label: str, Q: torch.Tensor, fields: dict[str, Any], **data: Any) -> None:
            args = self.args(Q, fields)
            part = TERMINATED if fields["terminated"] else UPDATE
            shown = _shown(args, self.arg_names)
            out.append(Case(label, args, shown=shown, part=part, data=dict(data)))

        def table(S: int, A: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
            return (torch.randint(-12, 13, (S, A), generator=g).double() / 4).to(dtype)

        def fields(S: int, A: int, **fixed: Any) -> dict[str, Any]:
            f = {
                "s": int(torch.randint(S, (1,), generator=g)),
                "a": int(torch.randint(A, (1,), generator=g)),
                "r": float(torch.randint(-8, 9, (1,), generator=g)) / 2,
                "s_next": int(torch.randint(S, (1,), generator=g)),
                "terminated": False,
                "alpha": 0.5,
                "gamma": 0.9,
                **self.transition(g, S, A),
            }
            f.update(fixed)
            return f

        Q = torch.tensor([[1.0, -2.0, 3.0], [4.0, 0.5, -1.0]], dtype=torch.float64)
        add("a transition from state 0 to state 1", Q, fields(2, 3, s=0, a=1, s_next=1, r=-1.0))
        add(
            "a terminated transition (the table holds values at s_next anyway)",
            Q,
            fields(2, 3, s=0, a=2, s_next=1, r=1.0, terminated=True),
        )
        add("a self-loop, s_next == s", table(3, 3), fields(3, 3, s=1, a=0, s_next=1))
        add("a 1x1 table", torch.tensor([[2.0]]), fields(1, 1, s=0, a=0, s_next=0, r=1.0))
        add("alpha = 1 (Q[s, a] becomes the target)", table(3, 2), fields(3, 2, alpha=1.0))
        add("gamma = 0 (the target is the reward)", table(3, 2), fields(3, 2, gamma=0.0))
        f = fields(4, 4, r=-1)
        for key in ("s", "a", "s_next", "a_next"):
            if key in f:
                f[key] = np.int64(f[key])
        add("numpy states and actions, an int reward (as gymnasium returns them)", table(4, 4), f)
        add(
            "a terminated transition into a self-loop",
            table(3, 3),
            fields(3, 3, s=2, a=1, s_next=2, terminated=True),
        )
        add("a float32 table", table(4, 3, torch.float32), fields(4, 3, alpha=0.25))

        # a short episode: each call gets the table the previous call returned
        S, A = 4, 3
        steps = [fields(S, A, alpha=0.5, gamma=0.9) for _ in range(6)]
        add(
            "six transitions in a row, each call given the table the previous one returned",
            table(S, A),
            steps[0],
            then=[self.args(None, f)[1:] for f in steps[1:]],
        )

        gammas = (0.0, 0.5, 0.9, 0.99, 1.0)
        for k in range(16):
            S = 2 + k % 7
            A = 2 + k % 4
            terminated = k % 3 == 2
            alpha = (0.1, 0.5, 0.9, float(torch.rand((), generator=g)) * 0.9 + 0.05)[k % 4]
            f = fields(S, A, terminated=terminated, alpha=alpha, gamma=gammas[k % 5])
            dtype = torch.float32 if k % 4 == 1 else torch.float64
            kind = "terminated" if terminated else "ongoing"
            add(
                f"a random {kind} transition (S={S}, A={A}, alpha={alpha:.3g}, "
                f"gamma={gammas[k % 5]:g}, {str(dtype).removeprefix('torch.')})",
                table(S, A, dtype),
                f,
            )
        return out


@register
class QLearningUpdate(_TDExercise):
    solves = ref.q_learning_update
    parts = {UPDATE: 2, TERMINATED: 1}
    arg_names = ("Q", "s", "a", "r", "s_next", "terminated", "alpha", "gamma")

    @staticmethod
    def future(Q: torch.Tensor, s: Any, a: Any, s_next: Any) -> float:
        return float(Q[s_next].max())

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        q = self.wrong_update
        return {
            BOOTSTRAP_TERMINATED: q(mask_terminated=False),
            WHOLE_ROW: q(where="row"),
            EVERY_ENTRY: q(where="table"),
            MAX_CURRENT: q(future=lambda Q, s, a, s_next: float(Q[s].max())),
            ACTION_IN_Q_LEARNING: q(future=lambda Q, s, a, s_next: float(Q[s_next, a])),
            ALPHA_TARGET_ONLY: q(rule="alpha on target"),
            NO_ALPHA: q(rule="no alpha"),
            SIGN: q(rule="sign"),
            NO_GAMMA: q(gamma=1.0),
            RETURN_TABLE: lambda *args: ref.q_learning_update(*args)[args[1], args[2]].item(),
        }


@register
class SarsaUpdate(_TDExercise):
    solves = ref.sarsa_update
    parts = {UPDATE: 1, TERMINATED: 1}
    arg_names = ("Q", "s", "a", "r", "s_next", "a_next", "terminated", "alpha", "gamma")

    def transition(self, generator: torch.Generator, S: int, A: int) -> dict[str, Any]:
        return {"a_next": int(torch.randint(A, (1,), generator=generator))}

    @staticmethod
    def future(Q: torch.Tensor, s: Any, a: Any, s_next: Any, a_next: Any) -> float:
        return float(Q[s_next, a_next])

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        q = self.wrong_update
        return {
            BOOTSTRAP_TERMINATED: q(mask_terminated=False),
            WHOLE_ROW: q(where="row"),
            MAX_IN_SARSA: q(future=lambda Q, s, a, s_next, a_next: float(Q[s_next].max())),
            CURRENT_IN_SARSA: q(future=lambda Q, s, a, s_next, a_next: float(Q[s, a_next])),
            ALPHA_TARGET_ONLY: q(rule="alpha on target"),
            NO_ALPHA: q(rule="no alpha"),
            SIGN: q(rule="sign"),
            NO_GAMMA: q(gamma=1.0),
            RETURN_TABLE: lambda *args: ref.sarsa_update(*args)[args[1], args[2]].item(),
        }
