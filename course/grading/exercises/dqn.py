"""Checks for Lesson 03 (deep Q-learning): the pure functions of ``course/dqn.py``.

- ``linear_schedule``, ``td_target``, ``double_td_target`` and ``real_transitions`` are compared
  value by value with the reference.
- ``epsilon_greedy`` is random, so it is judged by its statistics, never by its exact draws: on
  many rows the share of greedy actions and the frequency of every other action must match what
  the reference does (a two-sample test at five standard errors), ``epsilon = 0`` must give the
  argmax exactly, and the same generator seed must give the same actions (a different seed,
  different ones). Any order of random draws passes.
- ``dqn_loss`` is called on leaf tensors that require gradients, targets included; the probe
  records the loss, the gradient that reaches ``q_values`` and whether any gradient reached
  ``targets`` (none may).
- ``soft_update`` changes its first argument in place: the probe builds two small networks from
  the case, calls the function, and records the target's parameters afterwards, whether the
  online network stayed unchanged, whether the target still holds the *same* ``Parameter``
  objects with their ``requires_grad`` flags, and whether they are still leaf tensors (no
  autograd graph). Buffers are not judged: the test networks have none.
- ``train_loop(envs, q_net, target_net, optimizer, buffer, total_steps, *, gamma,
  epsilon_schedule, learning_starts, train_every, target_sync_every, batch_size, generator,
  seed=0) -> [(step, return), ...]`` (the contract is :func:`course.dqn.train_loop`'s: ``step =
  t * num_envs`` before vector step ``t``; epsilon ``epsilon_schedule(step)``; only real
  transitions stored, flagged ``terminated``; one ``dqn_update`` when ``step >= learning_starts``
  and ``t % train_every == 0``; a hard in-place copy into ``target_net`` after every
  ``target_sync_every``-th update) is judged by behaviour on a chain the check builds, with its
  own networks (a linear Q-table), buffer, SGD optimizer and generator: the stored rows against
  the env's record of real transitions and reset rows, the returned episode returns against the
  episodes played, the number and timing of the updates (an optimizer hook) and of the syncs
  (the target watched after every update and env step; a sync is a change that makes it a copy
  of ``q_net``), the share of non-greedy actions early and late against the schedule's, and the
  learned values against the chain's exact Q* (within ``TrainLoop.q_tol``). The reference half
  is computed from the case alone (:func:`_expected_run`), so no random draw is compared.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.vector import VectorEnv
from torch import nn

from course import dqn as ref
from course.grading import plain
from course.grading.core import (
    Case,
    Exercise,
    _changed_argument,
    compare,
    register,
    switched_mistakes,
)
from course.grading.plain import show_tensor
from course.replay import ReplayBuffer

LESSON = "03_dqn"


class _DQNExercise(Exercise):
    lesson = LESSON
    atol = 1e-5
    rtol = 1e-4


def _garbage_terminal(next_q: torch.Tensor, terminated: torch.Tensor) -> torch.Tensor:
    """Large values on terminated rows: they must never reach a target."""
    next_q = next_q.clone()
    next_q[terminated] = 100.0
    return next_q


# --- linear_schedule ---------------------------------------------------------------------------

NO_CLAMP = (
    "after `duration` steps the value must stay at `end`: clamp the fraction, e.g. "
    "`min(step / duration, 1.0)`"
)
EARLY_END = (
    "the ramp must reach `end` exactly at step == duration (not one step earlier): divide by "
    "`duration`, not `duration - 1`"
)
LATE_END = (
    "the ramp must reach `end` exactly at step == duration (not one step later): divide by "
    "`duration`, not `duration + 1`"
)
SWAPPED_ENDS = "start at `start` and move toward `end` (the two are swapped)"


@register
class LinearSchedule(_DQNExercise):
    solves = ref.linear_schedule

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def ramp(start: float, end: float, duration: float, step: int, clamp: bool = True) -> float:
            if duration <= 0:
                return float(end)
            frac = step / duration
            return float(start + (min(frac, 1.0) if clamp else frac) * (end - start))

        return {
            NO_CLAMP: lambda s, e, d, t: ramp(s, e, d, t, clamp=False),
            EARLY_END: lambda s, e, d, t: ramp(s, e, d - 1, t),
            LATE_END: lambda s, e, d, t: ramp(s, e, d + 1, t),
            SWAPPED_ENDS: lambda s, e, d, t: ramp(e, s, d, t),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        fixed = [
            ("step 0 gives start", (1.0, 0.05, 100, 0)),
            ("halfway", (1.0, 0.0, 10, 5)),
            ("step == duration gives end", (1.0, 0.05, 100, 100)),
            ("one step before the end", (1.0, 0.0, 10, 9)),
            ("long after the end: stay at end", (1.0, 0.05, 100, 250)),
            ("an increasing schedule", (0.0, 2.0, 4, 1)),
            ("an increasing schedule after its end", (0.0, 2.0, 4, 9)),
            ("duration 0: end from the start", (1.0, 0.1, 0, 0)),
            ("duration 0, later step", (1.0, 0.1, 0, 7)),
            ("duration 1", (0.5, 0.25, 1, 1)),
        ]
        out = [Case(label, args, shown=_show_schedule(*args)) for label, args in fixed]
        for k in range(16):
            start, end = (torch.rand(2, generator=generator) * 4 - 2).tolist()
            start, end = round(start, 3), round(end, 3)
            duration = int(torch.randint(1, 2000, (1,), generator=generator))
            step = int(torch.randint(0, 2 * duration + 2, (1,), generator=generator))
            if k % 4 == 0:
                step = duration + 1
            args = (start, end, duration, step)
            out.append(Case(f"random schedule #{k}", args, shown=_show_schedule(*args)))
        return out


def _show_schedule(start: float, end: float, duration: int, step: int) -> str:
    return f"linear_schedule(start={start}, end={end}, duration={duration}, step={step})"


# --- epsilon_greedy ----------------------------------------------------------------------------

_Z = 5.0  # standard errors a statistic may stray before the check calls it different

EXCLUDES_GREEDY = (
    "a random action is drawn uniformly from ALL actions, the greedy one included (so the "
    "greedy action is taken with probability 1 - epsilon + epsilon / A)"
)
ALL_GREEDY = (
    "every row took the greedy action: each row must explore with probability epsilon, with its "
    "own coin (one coin for the whole batch explores all rows or none)"
)
ALL_RANDOM = (
    "every row took a random action: each row must explore with probability epsilon, with its "
    "own coin (one coin for the whole batch explores all rows or none)"
)
INVERTED_COIN = (
    "explore when the uniform draw is BELOW epsilon (`torch.rand(B) < epsilon`); the comparison "
    "is inverted"
)
FLOAT_ACTIONS = (
    "return integer actions (torch.int64, e.g. from torch.argmax or torch.randint), not floats"
)
NO_GENERATOR = (
    "pass `generator=generator` to every random call (torch.rand, torch.randint): without it "
    "the actions cannot be reproduced"
)


@register
class EpsilonGreedy(_DQNExercise):
    solves = ref.epsilon_greedy

    def probe(self, obj: Any, case: Case) -> Any:
        """Three calls: two with generators seeded alike, one with another seed.

        Returns the statistics the judge needs (how often the greedy action was taken, and
        how often each action was taken where it is not greedy), not the draws themselves.
        """
        q_values, epsilon = case.args
        seed = case.data["seed"]
        q_in = q_values.clone()
        first = obj(q_in, epsilon, generator=torch.Generator().manual_seed(seed))
        if not torch.equal(q_in, q_values):
            return {"type": "mutated", "argument": "q_values"}
        summary = _action_summary(first, q_values)
        if summary.get("type") != "actions":
            return summary
        again = obj(q_values.clone(), epsilon, generator=torch.Generator().manual_seed(seed))
        other = obj(q_values.clone(), epsilon, generator=torch.Generator().manual_seed(seed + 1))
        summary["same_seed_same"] = _same_actions(first, again)
        summary["other_seed_same"] = _same_actions(first, other)
        return summary

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        if not (isinstance(got, dict) and got.get("type") == "actions"):
            if isinstance(got, dict) and got.get("type") == "not actions":
                return got["reason"]
            return f"returned {plain.describe(got)}; expected a tensor of {want['n']} actions"
        if got["dtype"] != want["dtype"]:
            return (
                f"returned actions of dtype {got['dtype']}; expected {want['dtype']} "
                "(integer indices, as torch.argmax returns them)"
            )
        if got["shape"] != want["shape"]:
            return f"returned shape {tuple(got['shape'])}; expected shape {tuple(want['shape'])}"
        if got["out_of_range"]:
            return f"returned actions outside 0..{len(want['per_action']) - 1}"
        n = want["n"]
        if want["greedy"] == n and got["greedy"] != n:
            return (
                f"with epsilon = 0 every action must be the argmax; {n - got['greedy']} of {n} "
                "were not"
            )
        reason = _differs(got["greedy"], want["greedy"], n, n)
        if reason:
            return "the greedy action was chosen in " + reason
        for a, (g, w, rows) in enumerate(
            zip(got["per_action"], want["per_action"], want["rows_not_greedy"])
        ):
            reason = _differs(g, w, rows, rows)
            if reason:
                return f"among rows where action {a} is not greedy, action {a} was chosen in " + (
                    reason
                )
        if got["same_seed_same"] != want["same_seed_same"]:
            return (
                "two calls with generators seeded alike returned different actions: draw every "
                "random number from `generator` (e.g. `torch.rand(B, generator=generator)`)"
            )
        if got["other_seed_same"] != want["other_seed_same"]:
            return (
                "generators with different seeds gave the same actions: the randomness must "
                "come from `generator`"
            )
        return None

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def eg(
            q: torch.Tensor,
            eps: float,
            generator: torch.Generator | None = None,
            *,
            exclude_greedy: bool = False,
            coin: str = "per row",
            inverted: bool = False,
            as_float: bool = False,
            own_rng: bool = False,
        ) -> torch.Tensor:
            if own_rng:
                generator = torch.Generator()
                generator.seed()  # fresh entropy: what ignoring the argument amounts to
            n, n_actions = q.shape
            greedy = q.argmax(-1)
            u = torch.rand(n, generator=generator)
            explore = u < (1 - eps) if inverted else u < eps
            if coin != "per row":  # one coin for the batch, whichever way it fell
                explore = torch.full((n,), coin == "random" and eps > 0)
            if exclude_greedy:
                shift = torch.randint(1, max(n_actions, 2), (n,), generator=generator)
                random = (greedy + shift) % n_actions
            else:
                random = torch.randint(n_actions, (n,), generator=generator)
            actions = torch.where(explore, random, greedy)
            return actions.float() if as_float else actions

        def variant(**mistake: Any) -> Callable[..., torch.Tensor]:
            return lambda q, e, generator=None: eg(q, e, generator, **mistake)

        return {
            EXCLUDES_GREEDY: variant(exclude_greedy=True),
            INVERTED_COIN: variant(inverted=True),
            ALL_GREEDY: variant(coin="greedy"),
            ALL_RANDOM: variant(coin="random"),
            FLOAT_ACTIONS: variant(as_float=True),
            NO_GENERATOR: variant(own_rng=True),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        out = []
        hand = torch.tensor([[0.0, 5.0, 1.0], [2.0, -1.0, 1.0], [0.0, 0.5, 9.0]])
        out.append(
            self._case("a small batch with epsilon = 0 (always the argmax)", hand, 0.0, generator)
        )
        out.append(
            self._case(
                "a bigger batch with epsilon = 0", _random_q(50, 5, generator), 0.0, generator
            )
        )
        settings = [
            (4000, 2, 0.3, torch.float32),
            (4000, 4, 1.0, torch.float32),
            (4000, 3, 0.6, torch.float64),
            (4000, 5, 0.15, torch.float32),
            (4000, 2, 1.0, torch.float32),
            (3000, 6, 0.8, torch.float32),
        ]
        for n, n_actions, eps, dtype in settings:
            q = _random_q(n, n_actions, generator).to(dtype)
            label = (
                f"{n} rows, A={n_actions}, epsilon={eps:g}, {str(dtype)[6:]} "
                "(judged by its statistics)"
            )
            out.append(self._case(label, q, eps, generator))
        return out

    def _case(self, label: str, q: torch.Tensor, eps: float, generator: torch.Generator) -> Case:
        seed = int(torch.randint(0, 2**31 - 2, (1,), generator=generator))
        shown = f"q_values = {show_tensor(q)}, epsilon = {eps:g}, generator seeded {seed}"
        return Case(label, (q, eps), shown=shown, data={"seed": seed})


def _random_q(n: int, n_actions: int, generator: torch.Generator) -> torch.Tensor:
    # continuous values: no ties, so the greedy action is unambiguous
    return torch.randn(n, n_actions, generator=generator)


def _as_actions(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return torch.Tensor.detach(value).cpu()
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(value.copy())
    return None


def _action_summary(value: Any, q_values: torch.Tensor) -> dict:
    actions = _as_actions(value)
    n, n_actions = q_values.shape
    if actions is None:
        try:
            what = plain.describe(plain.encode(value))
        except plain.EncodeError:
            what = f"a {type(value).__name__}"
        return {
            "type": "not actions",
            "reason": f"returned {what}; expected a torch.int64 tensor of shape ({n},)",
        }
    dtype = str(actions.dtype).removeprefix("torch.")
    summary: dict[str, Any] = {
        "type": "actions",
        "dtype": dtype,
        "shape": list(actions.shape),
        "n": n,
        "out_of_range": False,
        "greedy": 0,
        "per_action": [0] * n_actions,
        "rows_not_greedy": [0] * n_actions,
    }
    if tuple(actions.shape) != (n,) or actions.is_complex():
        return summary
    greedy = q_values.argmax(-1)
    a = actions.double()
    if not bool(((a >= 0) & (a < n_actions) & (a == a.round())).all()):
        summary["out_of_range"] = True
        return summary
    a = a.long()
    not_greedy = a != greedy
    summary["greedy"] = int((~not_greedy).sum())
    summary["per_action"] = torch.bincount(a[not_greedy], minlength=n_actions).tolist()
    summary["rows_not_greedy"] = (n - torch.bincount(greedy, minlength=n_actions)).tolist()
    return summary


def _same_actions(a: Any, b: Any) -> bool:
    x, y = _as_actions(a), _as_actions(b)
    return x is not None and y is not None and x.shape == y.shape and bool(torch.equal(x, y))


def _differs(got: int, want: int, n_got: int, n_want: int) -> str | None:
    """A two-sample test of two counts; None when they are compatible."""
    if n_got == 0:
        return None
    p_got, p_want = got / n_got, want / n_want
    pooled = (got + want) / (n_got + n_want)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_got + 1 / n_want))
    if abs(p_got - p_want) <= _Z * se + 1e-12:
        return None
    return f"{p_got:.1%} of the rows; expected about {p_want:.1%}"


# --- td_target and double_td_target -------------------------------------------------------------

BOOTSTRAP_TERMINAL = (
    "a terminated row has no future: drop the bootstrap term there (e.g. "
    "`torch.where(terminated, 0.0, next_value)` or multiply by `1 - terminated.float()`)"
)
NO_GAMMA = "the future is discounted: multiply the bootstrap term by gamma"
INVERTED_MASK = (
    "the mask is inverted: rows that did NOT terminate bootstrap, terminated rows do not"
)
NO_BOOTSTRAP = (
    "only a *terminated* row drops the bootstrap term; every other row, including a row "
    "truncated by the time limit (terminated False), still adds gamma * max_a next_q"
)
MEAN_NOT_MAX = "Q-learning bootstraps from the BEST next action (max over actions), not the mean"
SUM_NOT_MAX = "Q-learning bootstraps from the BEST next action (max over actions), not the sum"
VANILLA = (
    "this is the vanilla DQN target (the target network both picks and evaluates): in Double "
    "DQN the ONLINE network picks the action (argmax of next_q_online) and the target network "
    "evaluates it"
)
ONLINE_EVALUATES = (
    "the online network must only PICK the action; its value comes from the target network "
    "(`next_q_target.gather(-1, best.unsqueeze(-1))`)"
)
SWAPPED_ROLES = (
    "the roles are swapped: the online network picks (argmax of next_q_online), the target "
    "network evaluates"
)
WRONG_DIM = (
    "take the max over actions, the LAST dimension (`next_q.max(dim=-1).values`), one value per row"
)


def _target(
    rewards: torch.Tensor,
    bootstrap: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
    mask: str = "terminated",
) -> torch.Tensor:
    keep = {
        "terminated": ~terminated.bool(),
        "none": torch.ones_like(terminated, dtype=torch.bool),
        "inverted": terminated.bool(),
        "all": torch.zeros_like(terminated, dtype=torch.bool),
    }[mask]
    return rewards + gamma * torch.where(keep, bootstrap, torch.zeros_like(bootstrap))


def _td_cases(generator: torch.Generator, double: bool) -> list[Case]:
    """Hand-made batches first (terminated and truncated rows side by side), then random ones."""
    out = []
    # a square batch (B == A), where a max over the wrong dimension still has shape [B], and
    # where the two networks disagree on the best next action in every row that bootstraps
    sq_t = torch.tensor([False, True, False])
    sq_q = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 0.0], [1.5, 0.0, -2.0]])
    sq_o = torch.tensor([[1.0, 3.0, 2.0], [1.0, 0.0, 0.0], [0.5, -1.0, 2.5]])
    out.append(
        _td_case(
            "a square batch (B = A = 3)",
            torch.tensor([0.5, 1.0, -0.5]),
            _garbage_terminal(sq_q, sq_t),
            _garbage_terminal(sq_o, sq_t),
            sq_t,
            0.5,
            double,
            [2],
        )
    )
    rewards = torch.tensor([1.0, 1.0, 0.0, -1.0])
    next_q = torch.tensor([[2.0, 3.0], [2.0, 3.0], [0.5, -4.0], [1.0, 1.5]])
    next_q_other = torch.tensor([[3.0, 2.0], [1.0, 0.0], [-1.0, 2.0], [4.0, -2.0]])
    scripted = [
        (
            "nothing terminated; rows 1 and 3 were truncated by the time limit",
            torch.tensor([False, False, False, False]),
            [1, 3],
        ),
        (
            "row 1 terminated, row 3 was truncated by the time limit",
            torch.tensor([False, True, False, False]),
            [3],
        ),
        ("every row terminated", torch.tensor([True, True, True, True]), []),
    ]
    for label, terminated, truncated in scripted:
        nq = _garbage_terminal(next_q, terminated)
        no = _garbage_terminal(next_q_other, terminated)
        out.append(_td_case(label, rewards, nq, no, terminated, 0.9, double, truncated))
    gammas = (0.0, 0.5, 0.9, 0.99, 1.0)
    for k in range(12):
        n = 2 + 3 * k
        n_actions = 2 + k % 4
        dtype = (torch.float32, torch.float64)[k % 2]
        r = torch.randn(n, generator=generator, dtype=dtype)
        nq = 3 * torch.randn(n, n_actions, generator=generator, dtype=dtype)
        no = 3 * torch.randn(n, n_actions, generator=generator, dtype=dtype)
        terminated = torch.rand(n, generator=generator) < 0.3
        truncated_mask = (~terminated) & (torch.rand(n, generator=generator) < 0.2)
        truncated = truncated_mask.nonzero().flatten().tolist()
        gamma = gammas[k % len(gammas)]
        label = f"random batch #{k} (B={n}, A={n_actions}, gamma={gamma:g}, {str(dtype)[6:]})"
        out.append(
            _td_case(
                label,
                r,
                _garbage_terminal(nq, terminated),
                _garbage_terminal(no, terminated),
                terminated,
                gamma,
                double,
                truncated,
            )
        )
    return out


def _td_case(
    label: str,
    rewards: torch.Tensor,
    next_q: torch.Tensor,
    next_q_other: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
    double: bool,
    truncated: list[int],
) -> Case:
    if double:
        args = (rewards, next_q_other, next_q, terminated, gamma)
        names = ("rewards", "next_q_online", "next_q_target", "terminated")
    else:
        args = (rewards, next_q, terminated, gamma)
        names = ("rewards", "next_q", "terminated")
    lines = [f"{name} = {show_tensor(t)}" for name, t in zip(names, args)]
    lines.append(f"gamma = {gamma:g}")
    ended = terminated.nonzero().flatten().tolist()
    lines.append(
        f"terminated rows: {ended or 'none'}; truncated by the time limit (terminated False, "
        f"so they bootstrap): {truncated or 'none'}"
    )
    if ended:
        lines.append("terminated rows hold the garbage value 100 in the next values on purpose")
    return Case(label, args, shown="\n".join(lines))


@register
class TDTarget(_DQNExercise):
    solves = ref.td_target

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def best(q: torch.Tensor) -> torch.Tensor:
            return q.max(-1).values

        return {
            BOOTSTRAP_TERMINAL: lambda r, q, t, g: _target(r, best(q), t, g, "none"),
            NO_GAMMA: lambda r, q, t, g: _target(r, best(q), t, 1.0),
            INVERTED_MASK: lambda r, q, t, g: _target(r, best(q), t, g, "inverted"),
            NO_BOOTSTRAP: lambda r, q, t, g: _target(r, best(q), t, g, "all"),
            MEAN_NOT_MAX: lambda r, q, t, g: _target(r, q.mean(-1), t, g),
            SUM_NOT_MAX: lambda r, q, t, g: _target(r, q.sum(-1), t, g),
            WRONG_DIM: lambda r, q, t, g: _target(r, q.max(0).values, t, g),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        return _td_cases(generator, double=False)


@register
class DoubleTDTarget(_DQNExercise):
    solves = ref.double_td_target

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def pick(chooser: torch.Tensor, evaluator: torch.Tensor) -> torch.Tensor:
            return evaluator.gather(-1, chooser.argmax(-1, keepdim=True)).squeeze(-1)

        def double(
            r: torch.Tensor,
            on: torch.Tensor,
            tg: torch.Tensor,
            t: torch.Tensor,
            g: float,
            mask: str = "terminated",
        ) -> torch.Tensor:
            return _target(r, pick(on, tg), t, g, mask)

        return {
            VANILLA: lambda r, on, tg, t, g: _target(r, tg.max(-1).values, t, g),
            ONLINE_EVALUATES: lambda r, on, tg, t, g: _target(r, on.max(-1).values, t, g),
            SWAPPED_ROLES: lambda r, on, tg, t, g: _target(r, pick(tg, on), t, g),
            BOOTSTRAP_TERMINAL: lambda r, on, tg, t, g: double(r, on, tg, t, g, "none"),
            NO_GAMMA: lambda r, on, tg, t, g: double(r, on, tg, t, 1.0),
            INVERTED_MASK: lambda r, on, tg, t, g: double(r, on, tg, t, g, "inverted"),
            NO_BOOTSTRAP: lambda r, on, tg, t, g: double(r, on, tg, t, g, "all"),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        return _td_cases(generator, double=True)


# --- dqn_loss ---------------------------------------------------------------------------------

MSE = (
    "use the Huber loss (`F.smooth_l1_loss`, delta 1), not the squared error: it keeps large TD "
    "errors from producing huge gradients"
)
SUM_LOSS = (
    "average over the batch (mean), not sum: the step size should not grow with the batch size"
)
NOT_DETACHED = (
    "the targets must be constants: use `targets.detach()` so no gradient flows into them"
)
MAX_NOT_TAKEN = (
    "use the value of the action TAKEN (`q_values.gather(-1, actions.unsqueeze(-1))`), not the "
    "best action's value"
)
NOT_SQUEEZED = (
    "`q_values.gather(1, actions.unsqueeze(1))` has shape [B, 1]; squeeze it to [B] before "
    "comparing with targets [B], or broadcasting compares every pair of rows"
)
EVERY_PAIR = (
    "`q_values[:, actions]` picks every row's value of every row's action, a [B, B] matrix; "
    "pick one value per row: `q_values[torch.arange(B), actions]` or "
    "`q_values.gather(-1, actions.unsqueeze(-1)).squeeze(-1)`"
)


@register
class DQNLoss(_DQNExercise):
    solves = ref.dqn_loss

    def probe(self, obj: Any, case: Case) -> Any:
        """Call with leaf tensors that require grad, then backpropagate from the loss.

        Returns the loss, the gradient that reached ``q_values`` and whether any (non-zero)
        gradient reached ``targets``.
        """
        q_values, actions, targets = (t.clone() for t in case.args)
        q_values.requires_grad_(True)
        targets.requires_grad_(True)
        loss = obj(q_values, actions, targets)
        changed = _changed_argument(case, (q_values.detach(), actions, targets.detach()), {})
        if changed is not None:
            return {
                "type": "mutated",
                "argument": ("q_values", "actions", "targets")[int(changed.split()[-1]) - 1],
            }
        out: dict[str, Any] = {"type": "loss", "loss": plain.encode(loss)}
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return out
        if not loss.requires_grad:
            out["backward"] = "the loss does not depend on q_values through autograd"
            return out
        loss.reshape(()).backward()
        out["q_grad"] = plain.encode(
            q_values.grad if q_values.grad is not None else torch.zeros_like(q_values)
        )
        out["targets_grad"] = targets.grad is not None and bool((targets.grad != 0).any())
        return out

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        if not (isinstance(got, dict) and got.get("type") == "loss"):
            return f"returned {plain.describe(got)}; expected a scalar loss tensor"
        loss = got["loss"]
        if not (plain.is_array(loss) and loss.get("type") == "tensor"):
            return f"returned {plain.describe(loss)}; expected a scalar torch tensor (the loss)"
        if loss["shape"] != []:
            return (
                f"returned a tensor of shape {tuple(loss['shape'])}; expected a scalar (shape "
                "()): average the per-row losses"
            )
        reason = compare(loss, want["loss"], self.atol, self.rtol)
        if reason is not None:
            return "the loss value: " + reason
        if "backward" in got and "backward" not in want:
            return (
                f"{got['backward']}: compute it with torch operations on q_values (no .item(), "
                "numpy or torch.no_grad()) so that it can be minimised"
            )
        if "backward" in got:
            return None
        reason = compare(got["q_grad"], want["q_grad"], self.atol, self.rtol)
        if reason is not None:
            return "the gradient of the loss with respect to q_values: " + reason
        if got["targets_grad"] != want["targets_grad"]:
            return (
                "gradient flowed into `targets`: the targets must be constants (`targets.detach()`)"
            )
        return None

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def taken(q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return q.gather(-1, a.unsqueeze(-1)).squeeze(-1)

        def huber(x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
            x, y = torch.broadcast_tensors(x, y)  # the same numbers, without the size warning
            return F.smooth_l1_loss(x, y, reduction=reduction)

        return {
            MSE: lambda q, a, y: F.mse_loss(taken(q, a), y.detach()),
            SUM_LOSS: lambda q, a, y: huber(taken(q, a), y.detach(), "sum"),
            NOT_DETACHED: lambda q, a, y: huber(taken(q, a), y),
            MAX_NOT_TAKEN: lambda q, a, y: huber(q.max(-1).values, y.detach()),
            NOT_SQUEEZED: lambda q, a, y: huber(q.gather(1, a.unsqueeze(1)), y.detach()),
            EVERY_PAIR: lambda q, a, y: huber(q[:, a], y.detach()),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        out = []
        q = torch.tensor([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]])
        a = torch.tensor([0, 1, 0])
        y = torch.tensor([1.5, 1.5, 0.0])
        out.append(self._case("a hand-made batch: errors 0.5, 2.5 and 3", q, a, y))
        q = torch.tensor([[0.0, 4.0, 1.0]])
        out.append(
            self._case(
                "one row, the taken action is not the best one",
                q,
                torch.tensor([2]),
                torch.tensor([1.2]),
            )
        )
        for k in range(10):
            n, n_actions = 2 + 3 * k, 2 + k % 4
            dtype = (torch.float32, torch.float64)[k % 2]
            q = 2 * torch.randn(n, n_actions, generator=generator, dtype=dtype)
            a = torch.randint(n_actions, (n,), generator=generator)
            # spread so that some errors are below 1 (quadratic) and some above (linear)
            y = 3 * torch.randn(n, generator=generator, dtype=dtype)
            out.append(
                self._case(f"random batch #{k} (B={n}, A={n_actions}, {str(dtype)[6:]})", q, a, y)
            )
        return out

    def _case(self, label: str, q: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> Case:
        shown = (
            f"q_values = {show_tensor(q)}\nactions = {show_tensor(a)}\n"
            f"targets = {show_tensor(y)} (a tensor that requires grad)"
        )
        return Case(label, (q, a, y), shown=shown)


# --- soft_update ------------------------------------------------------------------------------


def _network(sizes: tuple[int, ...], seed: int, requires_grad: bool) -> nn.Module:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return net.requires_grad_(requires_grad)


@register
class SoftUpdate(_DQNExercise):
    solves = ref.soft_update
    mutates_args = True

    def probe(self, obj: Any, case: Case) -> Any:
        """Build the two networks, call ``obj(target, online, tau)``, inspect both after."""
        sizes, tau = case.data["sizes"], case.data["tau"]
        target = _network(sizes, case.data["target_seed"], case.data["target_requires_grad"])
        online = _network(sizes, case.data["online_seed"], True)
        online_before = copy.deepcopy(online.state_dict())
        params_before = list(target.parameters())
        flags_before = [p.requires_grad for p in params_before]
        obj(target, online, tau)
        params_after = list(target.parameters())
        return {
            "type": "soft_update",
            "target": [plain.encode(p) for p in params_after],
            "online_unchanged": all(
                torch.equal(v, online.state_dict()[k]) for k, v in online_before.items()
            ),
            "same_objects": len(params_after) == len(params_before)
            and all(a is b for a, b in zip(params_after, params_before)),
            "flags_unchanged": [p.requires_grad for p in params_after] == flags_before,
            "leaf": all(p.is_leaf and p.grad_fn is None for p in params_after),
        }

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        if not (isinstance(got, dict) and got.get("type") == "soft_update"):
            return f"could not inspect the networks ({plain.describe(got)})"
        # flags are compared with the expected ones (not with True) so that a hint's wrong
        # implementation can be recognised by the same judge
        if got["online_unchanged"] != want["online_unchanged"]:
            return (
                "the online network changed: soft_update(target, online, tau) writes into its "
                "FIRST argument and only reads the second"
            )
        if got["same_objects"] != want["same_objects"]:
            return (
                "the target's parameters were replaced by new objects; update the existing ones "
                "in place (e.g. `t.mul_(1 - tau).add_(o, alpha=tau)` under `torch.no_grad()`), "
                "so that anything holding them (an optimizer) still sees them"
            )
        if got["leaf"] != want["leaf"]:
            return (
                "the target's parameters now carry an autograd graph: update them under "
                "`torch.no_grad()` (or through `.data`)"
            )
        if got["flags_unchanged"] != want["flags_unchanged"]:
            return "the target's parameters changed their requires_grad flag; leave it as it was"
        tensors = got["target"]
        if len(tensors) != len(want["target"]):
            return f"the target has {len(tensors)} parameters; expected {len(want['target'])}"
        names = [name for name, _ in _network(case.data["sizes"], 0, False).named_parameters()]
        for name, g, w in zip(names, tensors, want["target"]):
            reason = compare(g, w, self.atol, self.rtol)
            if reason is not None:
                return f"target parameter `{name}` after the update: " + reason
        return None

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def pairs(target: nn.Module, online: nn.Module) -> Any:
            return zip(target.parameters(), online.parameters())

        @torch.no_grad()
        def swapped(target: nn.Module, online: nn.Module, tau: float) -> None:
            for t, o in pairs(target, online):
                t.copy_((1 - tau) * o + tau * t)

        @torch.no_grad()
        def no_op(target: nn.Module, online: nn.Module, tau: float) -> None:
            for t, o in pairs(target, online):
                t = tau * o + (1 - tau) * t  # the mistake: this only rebinds the name

        @torch.no_grad()
        def hard(target: nn.Module, online: nn.Module, tau: float) -> None:
            for t, o in pairs(target, online):
                t.copy_(o)

        @torch.no_grad()
        def into_online(target: nn.Module, online: nn.Module, tau: float) -> None:
            ref.soft_update(online, target, 1 - tau)

        @torch.no_grad()
        def replace(target: nn.Module, online: nn.Module, tau: float) -> None:
            for module, other in zip(target.modules(), online.modules()):
                for name, p in list(module.named_parameters(recurse=False)):
                    new = tau * getattr(other, name) + (1 - tau) * p
                    setattr(module, name, nn.Parameter(new, requires_grad=p.requires_grad))

        return {
            "tau weighs the ONLINE network: target <- tau * online + (1 - tau) * target "
            "(the weights are swapped)": swapped,
            "the target did not change: assigning to the loop variable (`t = ...`) only "
            "rebinds a name; write into the tensor in place (`t.copy_(...)`, `t.mul_(...)`)": no_op,
            "this copies the online network whatever tau is; blend the two with weight tau": hard,
            "soft_update(target, online, tau) writes into its FIRST argument and only reads "
            "the second": into_online,
            "the target's parameters were replaced by new objects; update the existing ones in "
            "place so that an optimizer holding them still sees them": replace,
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        settings = [
            ("tau = 0.25", (2, 3), 0.25, True),
            ("tau = 1 is a hard copy", (2, 3), 1.0, True),
            ("tau = 0 leaves the target unchanged", (2, 3), 0.0, True),
            ("tau = 0.5, a target without gradients", (3, 4, 2), 0.5, False),
            ("tau = 0.005 (a typical soft update)", (4, 8, 2), 0.005, True),
            ("tau = 0.9", (3, 5, 5, 2), 0.9, False),
        ]
        for k in range(6):
            depth = 1 + k % 3
            sizes = tuple(int(x) for x in torch.randint(1, 7, (depth + 1,), generator=generator))
            tau = round(float(torch.rand(1, generator=generator)), 3)
            settings.append((f"random network #{k}", sizes, tau, k % 2 == 0))
        out = []
        for label, sizes, tau, requires_grad in settings:
            seeds = torch.randint(0, 2**31 - 1, (2,), generator=generator).tolist()
            grad = "requires_grad=True" if requires_grad else "requires_grad=False"
            shown = (
                f"two MLPs with layer sizes {list(sizes)} (target parameters {grad}), tau = {tau:g}"
            )
            out.append(
                Case(
                    label,
                    shown=shown,
                    data={
                        "sizes": sizes,
                        "tau": tau,
                        "target_seed": seeds[0],
                        "online_seed": seeds[1],
                        "target_requires_grad": requires_grad,
                    },
                )
            )
        return out


# --- real_transitions ---------------------------------------------------------------------------


@register
class RealTransitions(_DQNExercise):
    solves = ref.real_transitions
    atol = rtol = 0.0

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        return {
            "the mask is inverted: a row is a real transition unless its sub-env ended on the "
            "PREVIOUS step (that step's row is the autoreset)": lambda d: d.clone(),
            "not every row is a transition: the step right after an episode ended only "
            "resets that sub-env (reward 0, the action ignored); drop those rows": lambda d: (
                torch.ones_like(d)
            ),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        fixed = [
            ("right after reset (nothing ended yet)", [False, False, False]),
            ("sub-env 1 ended on the previous step", [False, True, False]),
            ("every sub-env ended on the previous step", [True, True]),
            ("a single sub-env that just ended", [True]),
        ]
        out = [self._case(label, torch.tensor(done)) for label, done in fixed]
        for k in range(8):
            n = 2 + 3 * k
            done = torch.rand(n, generator=generator) < 0.3
            out.append(self._case(f"random step #{k} ({n} sub-envs)", done))
        return out

    def _case(self, label: str, prev_done: torch.Tensor) -> Case:
        ended = prev_done.nonzero().flatten().tolist()
        shown = (
            f"prev_done = {show_tensor(prev_done)} (sub-envs that ended on the previous "
            f"step: {ended or 'none'})"
        )
        return Case(label, (prev_done,), shown=shown)


# --- dqn_update -----------------------------------------------------------------------------

NO_ZERO_GRAD = (
    "the first update is right but later ones drift: PyTorch ADDS each backward's gradients to "
    "the old ones, so call `optimizer.zero_grad()` before `loss.backward()` in every update"
)
TARGET_GRAD = (
    "gradient reached `target_net`: compute the targets under `torch.no_grad()` (or detach "
    "them); the target network is a constant of the update"
)
ONLINE_TARGETS = (
    "the targets come from `q_net`: evaluate the next states with `target_net`, the slowly "
    "updated copy (Double DQN: `q_net` only PICKS the next action)"
)
SEMI_GRADIENT = (
    "the gradient also flowed through the targets, computed with `q_net`: targets must come "
    "from `target_net` without gradient (a TD update moves Q(s, a), not the target)"
)
NO_TERMINAL_MASK = (
    "rows with `terminated` must not bootstrap: their target is the reward alone (use "
    "`td_target`, or multiply the bootstrap term by `~terminated`)"
)
MSE_UPDATE = (
    "the loss is the mean HUBER loss (`F.smooth_l1_loss`, delta 1), not the mean squared error: "
    "large TD errors must not dominate the step"
)
SUM_UPDATE = "the loss is the MEAN over the batch, not the sum (the step size would scale with B)"
NO_CLIP = (
    "the step ignored `max_grad_norm`: clip with "
    "`torch.nn.utils.clip_grad_norm_(q_net.parameters(), max_grad_norm)` after `backward()` and "
    "BEFORE `optimizer.step()` (clipping after the step changes nothing)"
)
CLIP_VALUE = (
    "clip the global gradient NORM (`clip_grad_norm_`), not each gradient entry "
    "(`clip_grad_value_`): the direction of the step must not change"
)
LOSS_AFTER_STEP = (
    "return the loss of the batch BEFORE the step (the one you called `backward` on), not a "
    "loss recomputed after `optimizer.step()`"
)
DOUBLE_IGNORED = (
    "with `double=True` the target is Double DQN's: `q_net` picks the next action "
    "(argmax), `target_net` evaluates it (`double_td_target`)"
)
DOUBLE_SWAPPED = (
    "Double DQN's roles are swapped: `q_net` (online) picks the next action, `target_net` "
    "evaluates it"
)


def _update_variant(
    q_net: nn.Module,
    target_net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Any,
    gamma: float,
    double: bool = False,
    max_grad_norm: float | None = None,
    *,
    mistake: str = "",
) -> float:
    """The reference update with one classic mistake switched on (for the hints)."""
    evaluator = q_net if mistake in ("online_targets", "semi_gradient") else target_net
    with torch.set_grad_enabled(mistake in ("target_grad", "semi_gradient")):
        next_eval = evaluator(batch.next_obs)
        terminated = (
            torch.zeros_like(batch.terminated) if mistake == "no_mask" else batch.terminated
        )
        if double and mistake != "double_ignored":
            picker, judge_net = (
                (target_net, q_net) if mistake == "double_swapped" else (q_net, None)
            )
            next_pick = picker(batch.next_obs)
            values = judge_net(batch.next_obs) if judge_net is not None else next_eval
            best = next_pick.argmax(-1, keepdim=True)
            bootstrap = values.gather(-1, best).squeeze(-1)
        else:
            bootstrap = next_eval.max(-1).values
        targets = batch.rewards + gamma * torch.where(
            terminated, torch.zeros_like(bootstrap), bootstrap
        )
    taken = q_net(batch.obs).gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
    if mistake == "mse":
        loss = F.mse_loss(taken, targets)
    elif mistake == "sum":
        loss = F.smooth_l1_loss(taken, targets, reduction="sum")
    else:
        loss = F.smooth_l1_loss(taken, targets)
    if mistake != "no_zero_grad":
        optimizer.zero_grad()
    loss.backward()
    if max_grad_norm is not None:
        if mistake == "clip_value":
            nn.utils.clip_grad_value_(q_net.parameters(), max_grad_norm)
        elif mistake != "no_clip":
            nn.utils.clip_grad_norm_(q_net.parameters(), max_grad_norm)
    optimizer.step()
    if mistake == "loss_after_step":
        with torch.no_grad():
            again = q_net(batch.obs).gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
            return float(F.smooth_l1_loss(again, targets))
    return float(loss.detach())


def _update_batch(n: int, obs_dim: int, n_actions: int, seed: int, terminal_share: float) -> Any:
    from course.replay import Batch

    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, obs_dim, generator=g)
    next_obs = torch.randn(n, obs_dim, generator=g)
    actions = torch.randint(0, n_actions, (n,), generator=g)
    rewards = torch.randn(n, generator=g) * 2.0  # TD errors on both sides of Huber's delta 1
    terminated = torch.rand(n, generator=g) < terminal_share
    tasks = torch.zeros(n, dtype=torch.int64)
    return Batch(obs, actions, rewards, next_obs, terminated, tasks)


@register
class DQNUpdate(_DQNExercise):
    """``dqn_update`` is judged by what it does to copies of the same networks and optimizer.

    The probe builds the online and target networks, the optimizer and the batches from the
    case, calls the answer ``calls`` times in a row (a new batch each call) and records the
    losses it returned, the online parameters after the last call, whether the target network
    changed and whether any gradient reached it. Adam for most cases; plain SGD where the
    clipping is tested (Adam is nearly blind to a uniform rescaling of the gradient).
    """

    solves = ref.dqn_update
    mutates_args = True
    uses_optimizer = True
    parts = {"update": 2, "Double DQN": 1, "clipping": 1}
    atol = 1e-5
    rtol = 1e-4

    def probe(self, obj: Any, case: Case) -> Any:
        d = case.data
        sizes = (d["obs_dim"], *d["hidden"], d["n_actions"])
        q_net = _network(sizes, d["q_seed"], True)
        with torch.no_grad():
            for p in q_net.parameters():
                p.mul_(0.5)
        target_net = _network(sizes, d["target_seed"], True)
        with torch.no_grad():
            for p in target_net.parameters():
                p.mul_(0.5)
        target_before = [p.detach().clone() for p in target_net.parameters()]
        if d["optimizer"] == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(q_net.parameters(), lr=d["lr"])
        else:
            optimizer = torch.optim.Adam(q_net.parameters(), lr=d["lr"])
        losses = []
        for call in range(d["calls"]):
            batch = _update_batch(
                d["batch_size"], d["obs_dim"], d["n_actions"], d["batch_seed"] + call, d["terminal"]
            )
            losses.append(
                plain.encode(
                    obj(q_net, target_net, optimizer, batch, d["gamma"], d["double"], d["clip"])
                )
            )
        return {
            "type": "dqn_update",
            "losses": losses,
            "q_net": [plain.encode(p.detach()) for p in q_net.parameters()],
            "target_unchanged": all(
                torch.equal(p.detach(), b) for p, b in zip(target_net.parameters(), target_before)
            ),
            "target_grad": any(
                p.grad is not None and bool(p.grad.abs().sum() > 0) for p in target_net.parameters()
            ),
        }

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        if not (isinstance(got, dict) and got.get("type") == "dqn_update"):
            return f"could not inspect the update ({plain.describe(got)})"
        if got["target_grad"] != want["target_grad"]:
            return "a gradient reached `target_net`; the targets must carry no gradient"
        if got["target_unchanged"] != want["target_unchanged"]:
            return "`target_net` changed: dqn_update only reads it (the target is synced elsewhere)"
        for i, (g, w) in enumerate(zip(got["losses"], want["losses"])):
            if not plain.is_number(g):
                return (
                    f"call {i + 1} returned {plain.describe(g)}; return the loss as a Python "
                    "float (`loss.item()`)"
                )
            reason = compare(g, w, self.atol, self.rtol)
            if reason is not None:
                return f"the loss returned by call {i + 1} of {len(want['losses'])}: {reason}"
        names = [
            f"{i // 2 * 2}.{'weight' if i % 2 == 0 else 'bias'}" for i in range(len(want["q_net"]))
        ]
        for name, g, w in zip(names, got["q_net"], want["q_net"]):
            reason = compare(g, w, self.atol, self.rtol)
            if reason is not None:
                calls = case.data["calls"]
                after = "one call" if calls == 1 else f"{calls} calls in a row"
                return f"q_net parameter `{name}` after {after}: {reason}"
        return None

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        return switched_mistakes(
            _update_variant,
            [
                (TARGET_GRAD, "target_grad"),
                (SEMI_GRADIENT, "semi_gradient"),
                (ONLINE_TARGETS, "online_targets"),
                (NO_TERMINAL_MASK, "no_mask"),
                (MSE_UPDATE, "mse"),
                (SUM_UPDATE, "sum"),
                (LOSS_AFTER_STEP, "loss_after_step"),
                (NO_ZERO_GRAD, "no_zero_grad"),
                (DOUBLE_IGNORED, "double_ignored"),
                (DOUBLE_SWAPPED, "double_swapped"),
                (NO_CLIP, "no_clip"),
                (CLIP_VALUE, "clip_value"),
            ],
        )

    def cases(self, generator: torch.Generator) -> list[Case]:
        # (label, part, calls, double, clip, optimizer, terminal share)
        fixed = [
            ("one update", "update", 1, False, None, "adam", 0.25),
            ("one update, no terminal rows", "update", 1, False, None, "adam", 0.0),
            ("one update, half the rows terminal", "update", 1, False, None, "sgd", 0.5),
            ("three updates in a row", "update", 3, False, None, "adam", 0.25),
            ("three updates in a row (SGD)", "update", 3, False, None, "sgd", 0.25),
            ("Double DQN, one update", "Double DQN", 1, True, None, "adam", 0.25),
            ("Double DQN, three updates", "Double DQN", 3, True, None, "adam", 0.25),
            ("clipped to norm 0.05 (SGD)", "clipping", 1, False, 0.05, "sgd", 0.25),
            ("clipped, two updates (SGD)", "clipping", 2, False, 0.05, "sgd", 0.25),
            ("a clip too loose to act", "clipping", 2, False, 1e6, "sgd", 0.25),
        ]
        out = [self._case(generator, *row) for row in fixed]
        for k in range(6):
            part = ("update", "Double DQN", "clipping")[k % 3]
            double, clip = part == "Double DQN", (0.1 if part == "clipping" else None)
            optimizer = "sgd" if clip else "adam"
            label = f"random update #{k}"
            out.append(
                self._case(generator, label, part, 1 + k % 2 * 2, double, clip, optimizer, 0.3)
            )
        return out

    def _case(
        self,
        generator: torch.Generator,
        label: str,
        part: str,
        calls: int,
        double: bool,
        clip: float | None,
        optimizer: str,
        terminal: float,
    ) -> Case:
        seeds = torch.randint(0, 2**31 - 1, (3,), generator=generator).tolist()
        obs_dim = int(torch.randint(2, 6, (1,), generator=generator))
        n_actions = int(torch.randint(2, 5, (1,), generator=generator))
        hidden = (int(torch.randint(3, 9, (1,), generator=generator)),)
        batch_size = int(torch.randint(8, 33, (1,), generator=generator))
        gamma = round(0.5 + 0.49 * float(torch.rand(1, generator=generator)), 3)
        lr = 0.05 if optimizer == "sgd" else 0.01
        opt = "torch.optim.SGD(lr=0.05)" if optimizer == "sgd" else "torch.optim.Adam(lr=0.01)"
        shown = (
            f"MLPs {[obs_dim, *hidden, n_actions]}, {opt}, batch of {batch_size}, gamma={gamma}, "
            f"double={double}, max_grad_norm={clip}, {calls} call(s)"
        )
        return Case(
            label,
            shown=shown,
            part=part,
            data={
                "obs_dim": obs_dim,
                "n_actions": n_actions,
                "hidden": hidden,
                "batch_size": batch_size,
                "gamma": gamma,
                "lr": lr,
                "optimizer": optimizer,
                "calls": calls,
                "double": double,
                "clip": clip,
                "terminal": terminal,
                "q_seed": seeds[0],
                "target_seed": seeds[1],
                "batch_seed": seeds[2],
            },
        )


# --- train_loop --------------------------------------------------------------------------------
#
# The loop is judged by behaviour, on a chain the check controls: its env records every real
# transition and every reset row, its buffer records what was stored, a hook on its optimizer
# counts the updates, and the target network is watched after every update and every env step
# (a sync is a change of the target that makes it a copy of q_net). The learned values are
# compared with the chain's exact Q*. Nothing depends on the order of the student's random draws.

FAKE_STORED = (
    "keep only the real transitions: the row of the step after an episode ended (old episode's "
    "last observation -> new episode's first, reward 0) is a reset, not a transition; mask the "
    "rows with `real_transitions(prev_done)`"
)
DONE_STORED = (
    "store `terminated` as the end flag, not `terminated | truncated`: a time limit is not a "
    "terminal state, so a truncated transition must still bootstrap"
)
OBS_SHIFTED = (
    "store `(obs, action, reward, next_obs)` of the SAME step, with `obs` the observation the "
    "action was taken in: update `obs = next_obs` only after storing"
)
NEVER_SYNCED = (
    "sync the target network in place every `target_sync_every` updates "
    "(`soft_update(target_net, q_net, 1.0)` or `target_net.load_state_dict(q_net.state_dict())`); "
    "`target_net = copy.deepcopy(q_net)` only rebinds a local name"
)
SYNC_EVERY_UPDATE = (
    "the target network was synced after every update: copy it only after every "
    "`target_sync_every`-th update, so that the targets stay fixed in between"
)
SYNC_BY_STEPS = (
    "count `target_sync_every` in UPDATES (gradient steps), not in vector steps: with "
    "`train_every > 1` the two differ"
)
EARLY_UPDATES = (
    "no update before `learning_starts` environment steps: test `step >= learning_starts` "
    "with `step = t * num_envs`"
)
UPDATE_EVERY_STEP = (
    "one update every `train_every` vector steps (`t % train_every == 0`), not one every step"
)
LOOP_NO_MASK = (
    "the move into the terminal cell bootstraps from the terminal observation: pass "
    "`terminated` to the target (your `dqn_update` / `td_target`), so that it is the reward alone"
)
ALWAYS_GREEDY = (
    "the agent never explored: act with `epsilon_greedy(q_values, epsilon_schedule(step), "
    "generator)`"
)
NO_DECAY = (
    "epsilon never decayed: call `epsilon_schedule(step)` at every vector step with the current "
    "`step`, not once before the loop"
)
EPS_VECTOR_STEPS = (
    "call `epsilon_schedule` with ENVIRONMENT steps summed over the copies (`t * num_envs`), "
    "not with the vector-step counter `t`"
)


class _ChainEnv(VectorEnv):
    """``E`` copies of a chain of ``n`` cells with next-step autoreset, recording what happens.

    Cell ``n - 1`` is terminal; action 1 moves right, action 0 left (cell 0 stays put); entering
    the terminal cell pays 1, every other move 0. Episodes start in a random non-terminal cell
    and are truncated after ``time_limit`` moves. Observations are one-hot rows ``[E, n]``.
    """

    def __init__(self, n_envs: int, n_cells: int, time_limit: int, seed: int) -> None:
        from gymnasium import spaces
        from gymnasium.vector import AutoresetMode
        from gymnasium.vector.utils import batch_space

        self.num_envs, self.n_cells, self.time_limit = n_envs, n_cells, time_limit
        self.single_observation_space = spaces.Box(0.0, 1.0, (n_cells,), np.float32)
        self.single_action_space = spaces.Discrete(2)
        self.observation_space = batch_space(self.single_observation_space, n_envs)
        self.action_space = batch_space(self.single_action_space, n_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}
        self.rng = np.random.default_rng(seed)
        self.steps_taken = 0  # environment steps, summed over the copies
        self.real: list[tuple[int, int, float, int, bool]] = []
        self.resets: list[tuple[int, int, float, int]] = []
        self.returns: list[float] = []
        self.actions: list[tuple[int, bool]] = []  # (step, was the action non-greedy)
        self.watch: _Watch | None = None
        self.cell = np.zeros(n_envs, dtype=np.int64)

    def _starts(self, k: int) -> np.ndarray:
        return self.rng.integers(0, self.n_cells - 1, k)

    def _obs(self) -> np.ndarray:
        return np.eye(self.n_cells, dtype=np.float32)[self.cell]

    def reset(self, *, seed: Any = None, options: Any = None) -> tuple[np.ndarray, dict]:
        self.cell = self._starts(self.num_envs)
        self.moves = np.zeros(self.num_envs, dtype=np.int64)
        self.pending = np.zeros(self.num_envs, dtype=bool)
        self.running = np.zeros(self.num_envs)
        return self._obs(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        actions = np.asarray(torch.as_tensor(np.asarray(actions))).reshape(-1)
        if actions.shape != (self.num_envs,) or not np.isin(actions, (0, 1)).all():
            raise ValueError(f"step expects {self.num_envs} actions in {{0, 1}}, got {actions}")
        actions = actions.astype(np.int64)
        if self.watch is not None:
            greedy = self.watch.greedy(self._obs())
            self.actions += [(self.steps_taken, bool(g != a)) for g, a in zip(greedy, actions)]
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        for i, (s, a) in enumerate(zip(self.cell.tolist(), actions.tolist())):
            if self.pending[i]:  # the reset row: not a transition
                new = int(self._starts(1)[0])
                self.resets.append((s, a, 0.0, new))
                self.cell[i], self.moves[i], self.pending[i], self.running[i] = new, 0, False, 0
                continue
            s2 = s + 1 if a == 1 else max(s - 1, 0)
            rewards[i] = 1.0 if s2 == self.n_cells - 1 else 0.0
            self.moves[i] += 1
            terminated[i] = s2 == self.n_cells - 1
            truncated[i] = not terminated[i] and self.moves[i] >= self.time_limit
            self.real.append((s, a, float(rewards[i]), s2, bool(terminated[i])))
            self.cell[i] = s2
            self.running[i] += rewards[i]
            if terminated[i] or truncated[i]:
                self.returns.append(float(self.running[i]))
                self.pending[i] = True
        self.steps_taken += self.num_envs
        if self.watch is not None:
            self.watch.look()
        return self._obs(), rewards, terminated, truncated, {}


class _Watch:
    """Counts the updates (an optimizer hook) and the target syncs of one run."""

    def __init__(self, env: _ChainEnv, q_net: nn.Module, target_net: nn.Module) -> None:
        self.env, self.q_net, self.target_net = env, q_net, target_net
        self.n_updates, self.first_update, self.syncs, self.not_copies = 0, None, [], 0
        self.q_prev, self.t_prev = self._flat(q_net), self._flat(target_net)
        self.t_stamp = self._stamp(target_net)

    @staticmethod
    def _flat(net: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).clone() for p in net.parameters()])

    @staticmethod
    def _stamp(net: nn.Module) -> list[tuple[int, int]]:
        """Version counters and storages: a copy of equal values still counts as a sync."""
        return [(p._version, p.data_ptr()) for p in net.parameters()]

    def greedy(self, obs: np.ndarray) -> list[int]:
        with torch.no_grad():
            return self.q_net(torch.as_tensor(obs)).argmax(-1).tolist()

    def on_update(self, *args: Any) -> None:
        self.n_updates += 1
        if self.first_update is None:
            self.first_update = self.env.steps_taken
        self.look()

    def look(self) -> None:
        q_now, t_now = self._flat(self.q_net), self._flat(self.target_net)
        stamp = self._stamp(self.target_net)
        if stamp != self.t_stamp or not torch.equal(t_now, self.t_prev):
            if torch.equal(t_now, q_now) or torch.equal(t_now, self.q_prev):
                self.syncs.append(self.n_updates)
            else:
                self.not_copies += 1
        self.q_prev, self.t_prev, self.t_stamp = q_now, t_now, stamp


class _RecordingBuffer(ReplayBuffer):
    """A replay buffer that also keeps every row it was given, as the buffer stored it."""

    def __init__(self, capacity: int, obs_dim: int) -> None:
        super().__init__(capacity, (obs_dim,))
        self.rows: list[tuple[int, int, float, int, bool]] = []

    def add(self, *args: Any, **kwargs: Any) -> None:
        before = self.n_added
        super().add(*args, **kwargs)
        slots = torch.arange(before, self.n_added) % self.capacity
        s = self.storage
        self.rows += zip(
            s.obs[slots].argmax(-1).tolist(),
            s.actions[slots].tolist(),
            [round(r, 6) for r in s.rewards[slots].tolist()],
            s.next_obs[slots].argmax(-1).tolist(),
            s.terminated[slots].tolist(),
        )


def _chain_q_star(n_cells: int, gamma: float) -> np.ndarray:
    """Exact Q* ``[n, 2]`` of the chain (terminal row 0)."""
    q = np.zeros((n_cells, 2))
    for _ in range(500):
        v = q.max(1)
        v[-1] = 0.0
        for s in range(n_cells - 1):
            for a, s2 in ((0, max(s - 1, 0)), (1, s + 1)):
                q[s, a] = (1.0 if s2 == n_cells - 1 else 0.0) + gamma * v[s2]
    return q


def _multiset_minus(a: list, b: list) -> list:
    """Items of ``a`` left after removing those of ``b`` (with multiplicity)."""
    from collections import Counter

    return list((Counter(a) - Counter(b)).elements())


def _loop_variant(
    envs: Any,
    q_net: nn.Module,
    target_net: nn.Module,
    optimizer: torch.optim.Optimizer,
    buffer: ReplayBuffer,
    total_steps: int,
    *,
    gamma: float,
    epsilon_schedule: Callable[[int], float],
    learning_starts: int,
    train_every: int,
    target_sync_every: int,
    batch_size: int,
    generator: torch.Generator,
    seed: int = 0,
    mistake: str = "",
) -> list[tuple[int, float]]:
    """The reference loop with one classic mistake switched on (for the hints).

    Written from the check's own pieces: the library's are hidden while Lesson 03 is graded.
    """
    n_envs = envs.num_envs
    obs, _ = envs.reset(seed=seed)
    prev_done = np.zeros(n_envs, dtype=bool)
    running, episodes, n_updates = np.zeros(n_envs), [], 0
    for t in range(total_steps // n_envs):
        step = t * n_envs
        eps = {"greedy": 0.0, "no_decay": epsilon_schedule(0), "vector": epsilon_schedule(t)}
        with torch.no_grad():
            q_values = q_net(torch.as_tensor(obs))
        epsilon = eps.get(mistake, epsilon_schedule(step))
        explore = torch.rand(n_envs, generator=generator) < epsilon
        random_actions = torch.randint(q_values.shape[1], (n_envs,), generator=generator)
        actions = torch.where(explore, random_actions, q_values.argmax(-1))
        next_obs, rewards, terminated, truncated, _ = envs.step(actions.numpy())
        real = np.ones(n_envs, dtype=bool) if mistake == "fake" else ~prev_done
        flag = terminated | truncated if mistake == "done_flag" else terminated
        first = next_obs if mistake == "obs_shifted" else obs
        buffer.add(first[real], actions.numpy()[real], rewards[real], next_obs[real], flag[real])
        done = terminated | truncated
        running += rewards * ~prev_done
        for i in np.flatnonzero(done):
            episodes.append((step + n_envs, float(running[i])))
            running[i] = 0.0
        prev_done, obs = done, next_obs
        starts = mistake == "early" or step >= learning_starts
        if starts and (mistake == "every_step" or t % train_every == 0):
            batch = buffer.sample(batch_size, generator)
            update = "no_mask" if mistake == "no_mask" else ""
            _update_variant(q_net, target_net, optimizer, batch, gamma, mistake=update)
            n_updates += 1
            if mistake == "sync_every" or (
                mistake not in ("no_sync", "sync_steps") and n_updates % target_sync_every == 0
            ):
                target_net.load_state_dict(q_net.state_dict())
        if mistake == "sync_steps" and (t + 1) % target_sync_every == 0:
            target_net.load_state_dict(q_net.state_dict())
    return episodes


@register
class TrainLoop(_DQNExercise):
    """``train_loop`` is judged by what it does on a chain the check builds (see above).

    Parts: ``replay`` (what reaches the buffer, and the returned episode returns), ``updates and
    target`` (when the updates happen, how often the target is synced, how epsilon decays) and
    ``learning`` (the learned values against the chain's exact Q*).
    """

    solves = ref.train_loop
    mutates_args = True
    uses_optimizer = True
    parts = {"replay": 1, "updates and target": 1, "learning": 1}
    time_limit = 10.0  # wall seconds per case; a case takes about 0.3 s of CPU
    q_tol = 0.15  # the reference reaches max |Q - Q*| < 0.01 on these cases (seeds 0-9)
    # share of non-greedy actions, early (epsilon near 1) and late (epsilon 0.1) in training:
    # standard errors about 0.05 and 0.015 here
    eps_tol = {"early_explore": 0.2, "late_explore": 0.1}

    def probe(self, obj: Any, case: Case) -> Any:
        if getattr(obj, "__func__", None) is TrainLoop.reference:
            return _expected_run(case.data)  # what a correct loop does, from the case alone
        d = case.data
        n, n_envs = d["n_cells"], d["n_envs"]
        env = _ChainEnv(n_envs, n, d["time_limit"], d["env_seed"])
        init = torch.Generator().manual_seed(d["net_seed"])
        q_net = nn.Linear(n, 2, bias=False)  # one-hot inputs: a table of Q-values
        with torch.no_grad():
            q_net.weight.copy_(0.1 * torch.randn(2, n, generator=init))
            q_net.weight[:, n - 1] = 3.0  # never a training input: only a missing mask reads it
        target_net = copy.deepcopy(q_net)
        optimizer = torch.optim.SGD(q_net.parameters(), lr=d["lr"])
        watch = _Watch(env, q_net, target_net)
        env.watch = watch
        optimizer.register_step_post_hook(watch.on_update)
        buffer = _RecordingBuffer(d["total_steps"] + n_envs, n)
        total = d["total_steps"]
        schedule = _EpsilonSchedule(1.0, 0.1, total // 2)
        result = obj(
            env,
            q_net,
            target_net,
            optimizer,
            buffer,
            total,
            gamma=d["gamma"],
            epsilon_schedule=schedule,
            learning_starts=d["learning_starts"],
            train_every=d["train_every"],
            target_sync_every=d["sync_every"],
            batch_size=d["batch_size"],
            generator=torch.Generator().manual_seed(d["generator_seed"]),
        )
        watch.look()
        resets = [(s, a, r, s2) for s, a, r, s2 in env.resets]
        stored_plain = [row[:4] for row in buffer.rows]
        real_plain = [row[:4] for row in env.real]
        extra = _multiset_minus(stored_plain, real_plain)
        early = [bad for step, bad in env.actions if step < 0.2 * total]
        late = [bad for step, bad in env.actions if step >= 0.6 * total]
        with torch.no_grad():
            q = q_net(torch.eye(n)).tolist()
        return {
            "type": "train_loop",
            "reset_rows": len(_multiset_minus(extra, _multiset_minus(extra, resets))),
            "other_fake": len(_multiset_minus(extra, resets)),
            "missing": len(_multiset_minus(real_plain, stored_plain)),
            "flags_wrong": len(_multiset_minus(buffer.rows, env.real)) - len(extra),
            "returns": _episode_returns(result),
            "env_returns": sorted(env.returns),
            "env_steps": env.steps_taken,
            "n_updates": watch.n_updates,
            "first_update": watch.first_update,
            "syncs": list(watch.syncs),
            "not_copies": watch.not_copies,
            "early_explore": float(np.mean(early)) if early else None,
            "late_explore": float(np.mean(late)) if late else None,
            "q": q,
        }

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        if not (isinstance(got, dict) and got.get("type") == "train_loop"):
            return f"could not inspect the run ({plain.describe(got)})"
        judge = {
            "replay": _judge_replay,
            "updates and target": _judge_updates,
            "learning": _judge_learning,
        }[case.part]
        return judge(case.data, got, want, self)

    def _hint(self, case: Case, outcome: Any) -> str | None:
        """Only the mistakes that can show in the failing part are rerun (each costs a run)."""
        got = outcome.value
        if not (isinstance(got, dict) and got.get("type") == "train_loop"):
            return None
        mistakes = self.mistakes()
        for hint in _HINTS_BY_PART[case.part]:
            try:
                if self.judge(case, got, self.probe(mistakes[hint], case)) is None:
                    return hint
            except Exception:
                continue
        return None

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        return switched_mistakes(
            _loop_variant,
            [
                (FAKE_STORED, "fake"),
                (DONE_STORED, "done_flag"),
                (OBS_SHIFTED, "obs_shifted"),
                (NEVER_SYNCED, "no_sync"),
                (SYNC_EVERY_UPDATE, "sync_every"),
                (SYNC_BY_STEPS, "sync_steps"),
                (EARLY_UPDATES, "early"),
                (UPDATE_EVERY_STEP, "every_step"),
                (LOOP_NO_MASK, "no_mask"),
                (ALWAYS_GREEDY, "greedy"),
                (NO_DECAY, "no_decay"),
                (EPS_VECTOR_STEPS, "vector"),
            ],
        )

    def cases(self, generator: torch.Generator) -> list[Case]:
        # (label, part, copies, cells, time limit, steps, learning_starts, train_every, sync)
        fixed = [
            ("2 copies, short episodes", "replay", 2, 4, 3, 200, 50, 1, 10),
            ("4 copies, time limit 5", "replay", 4, 5, 5, 240, 40, 2, 5),
            ("an update every vector step", "updates and target", 4, 5, 6, 400, 120, 1, 10),
            ("an update every 3 vector steps", "updates and target", 3, 5, 6, 420, 90, 3, 4),
            ("learning Q*, 4 copies", "learning", 4, 5, 6, 400, 80, 1, 10),
            ("learning Q*, 3 copies, a longer chain", "learning", 3, 6, 8, 450, 90, 1, 10),
        ]
        out = []
        for label, part, copies, cells, limit, steps, starts, every, sync in fixed:
            seeds = torch.randint(0, 2**31 - 1, (3,), generator=generator).tolist()
            data = {
                "n_envs": copies,
                "n_cells": cells,
                "time_limit": limit,
                "total_steps": steps,
                "learning_starts": starts,
                "train_every": every,
                "sync_every": sync,
                "batch_size": 32,
                "gamma": 0.9,
                "lr": 4.0,
                "env_seed": seeds[0],
                "net_seed": seeds[1],
                "generator_seed": seeds[2],
            }
            shown = (
                f"a chain of {cells} cells (the last terminal, reward 1 for entering it, time "
                f"limit {limit}), {copies} copies, total_steps={steps}, gamma=0.9, "
                f"learning_starts={starts}, train_every={every}, target_sync_every={sync}, "
                "batch_size=32, epsilon from 1.0 to 0.1 over total_steps // 2, "
                "a linear Q-table (torch.optim.SGD(lr=4.0))"
            )
            out.append(Case(label, shown=shown, part=part, data=data))
        return out


def _expected_run(d: dict) -> dict:
    """The summary a correct loop produces on case ``d`` (its random parts at their means)."""
    n_envs, total = d["n_envs"], d["total_steps"]
    steps = [t * n_envs for t in range(total // n_envs)]
    updates = [
        s + n_envs
        for t, s in enumerate(steps)
        if s >= d["learning_starts"] and t % d["train_every"] == 0
    ]
    schedule = _EpsilonSchedule(1.0, 0.1, total // 2)

    def explore(window: list[int]) -> float:
        return float(np.mean([schedule(s) / 2 for s in window]))  # half the random actions

    return {
        "type": "train_loop",
        "reset_rows": 0,
        "other_fake": 0,
        "flags_wrong": 0,
        "missing": 0,
        "returns": [],
        "env_returns": [],
        "env_steps": len(steps) * n_envs,
        "n_updates": len(updates),
        "first_update": updates[0] if updates else None,
        "syncs": list(range(d["sync_every"], len(updates) + 1, d["sync_every"])),
        "not_copies": 0,
        "early_explore": explore([s for s in steps if s < 0.2 * total]),
        "late_explore": explore([s for s in steps if s >= 0.6 * total]),
        "q": _chain_q_star(d["n_cells"], d["gamma"]).tolist(),
    }


_HINTS_BY_PART = {
    "replay": [FAKE_STORED, DONE_STORED, OBS_SHIFTED],
    "updates and target": [
        NEVER_SYNCED,
        SYNC_EVERY_UPDATE,
        SYNC_BY_STEPS,
        EARLY_UPDATES,
        UPDATE_EVERY_STEP,
        ALWAYS_GREEDY,
        NO_DECAY,
        EPS_VECTOR_STEPS,
    ],
    "learning": [LOOP_NO_MASK, DONE_STORED, FAKE_STORED, OBS_SHIFTED],
}


class _EpsilonSchedule:
    """The check's epsilon schedule (a plain callable: ``schedule(step) -> float``)."""

    def __init__(self, start: float, end: float, duration: int) -> None:
        self.start, self.end, self.duration = start, end, duration

    def __call__(self, step: int) -> float:
        # not ref.linear_schedule: the library's is hidden while Lesson 03 is graded
        frac = min(max(float(step), 0.0) / self.duration, 1.0)
        return self.start + frac * (self.end - self.start)


def _episode_returns(result: Any) -> list[float] | str:
    """The returns of the returned ``(step, return)`` pairs, sorted; a string if unreadable."""
    if not isinstance(result, (list, tuple)):
        return f"returned {type(result).__name__}"
    try:
        return sorted(round(float(pair[1]), 6) for pair in result)
    except Exception:
        return "returned a list whose items are not (step, return) pairs"


def _judge_replay(d: dict, got: dict, want: dict, exercise: TrainLoop) -> str | None:
    for key, reason in [
        ("reset_rows", "{n} stored rows are reset rows (the step after an episode ended)"),
        ("other_fake", "{n} stored rows are not transitions the environment made"),
        ("flags_wrong", "{n} stored transitions carry the wrong `terminated` flag"),
        ("missing", "{n} real transitions never reached the buffer"),
    ]:
        if bool(got[key]) != bool(want[key]):
            return reason.format(n=got[key]) + f" (out of {got['env_steps']} environment steps)"
    if isinstance(got["returns"], str):
        return f"{got['returns']}; return a list of (step, return) pairs, one per finished episode"
    if got["returns"] != got["env_returns"]:
        return (
            f"the returned episode returns (sorted: {got['returns'][:8]}...) differ from those "
            f"of the {len(got['env_returns'])} episodes the copies finished "
            f"({got['env_returns'][:8]}...)"
        )
    return None


def _judge_updates(d: dict, got: dict, want: dict, exercise: TrainLoop) -> str | None:
    if got["n_updates"] == 0:
        return "`optimizer.step()` was never called: the loop made no update"
    span = d["n_envs"] * (d["train_every"] + 1)
    if want["first_update"] is not None and (
        (got["first_update"] < d["learning_starts"])
        != (want["first_update"] < d["learning_starts"])
        or abs(got["first_update"] - want["first_update"]) > span
    ):
        return (
            f"the first update came after {got['first_update']} environment steps; expected "
            f"after {want['first_update']} (learning_starts={d['learning_starts']})"
        )
    if abs(got["n_updates"] - want["n_updates"]) > max(2, 0.05 * want["n_updates"]):
        return (
            f"the loop made {got['n_updates']} updates; expected about {want['n_updates']} (one "
            f"every train_every={d['train_every']} vector steps once learning has started)"
        )
    if bool(got["not_copies"]) != bool(want["not_copies"]):
        return (
            f"the target network changed {got['not_copies']} times without becoming a copy of "
            "q_net: a sync is a hard copy (tau = 1)"
        )
    n_got, n_want = len(got["syncs"]), len(want["syncs"])
    if abs(n_got - n_want) > 1:
        return (
            f"the target network was synced {n_got} times over {got['n_updates']} updates; "
            f"expected about {n_want} (one every target_sync_every={d['sync_every']} updates)"
        )
    for key, phase in [("early_explore", "early"), ("late_explore", "late")]:
        g, w = got[key], want[key]
        if g is None or w is None or abs(g - w) > exercise.eps_tol[key]:
            shown = "none" if g is None else f"{g:.0%}"
            wanted = "none" if w is None else f"about {w:.0%}"
            return (
                f"{shown} of the actions were not greedy {phase} in training; expected {wanted} "
                "(epsilon from 1.0 down to 0.1 over the first half of total_steps)"
            )
    return None


def _judge_learning(d: dict, got: dict, want: dict, exercise: TrainLoop) -> str | None:
    n = d["n_cells"]
    q_star = _chain_q_star(n, d["gamma"])
    table, expected = np.asarray(got["q"], dtype=float), np.asarray(want["q"], dtype=float)
    if table.shape != (n, 2) or expected.shape != (n, 2):
        return "the Q-table could not be read after the run"
    off = np.abs(table[: n - 1] - expected[: n - 1])  # the terminal row is never learned
    if off.max() <= exercise.q_tol:
        return None
    if abs(table[n - 2, 1] - q_star[n - 2, 1]) > exercise.q_tol:
        return (
            f"Q(cell {n - 2}, right), the move into the terminal cell, is {table[n - 2, 1]:.3f}; "
            f"Q* is {q_star[n - 2, 1]:.3f} (the reward alone)"
        )
    s, a = np.unravel_index(int(np.abs(table[: n - 1] - q_star[: n - 1]).argmax()), (n - 1, 2))
    return (
        f"the learned values are off Q* by up to {abs(table[s, a] - q_star[s, a]):.3f} (at cell "
        f"{s}, action {'right' if a else 'left'}: {table[s, a]:.3f} against "
        f"{q_star[s, a]:.3f}); a correct loop gets within {exercise.q_tol}"
    )
