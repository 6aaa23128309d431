"""Checks for Lesson 07 (many agents, one network): the graded pieces of ``course/marl.py``.

- ``with_agent_id`` is compared value by value with the reference, and its dtype must be the
  observation's (float32 stays float32, float64 stays float64). Batches whose largest id is
  below ``n_agents - 1`` catch a one-hot sized by the batch instead of by ``n_agents``.
- ``vdn_td_target`` is compared value by value. The hand-made batches are square
  (``B = N = A``), so a sum or max over the wrong dimension still has the right shape, and
  every agent's best next action differs from the others', so the max of the summed values
  differs from the sum of the maxes; terminated rows hold a garbage value that must never
  reach a target, and truncated rows (terminated False) must bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from course import marl as ref
from course.grading.core import Case, Exercise, compare, register
from course.grading.plain import show_tensor

LESSON = "07_multiagent"


class _MARLExercise(Exercise):
    lesson = LESSON
    atol = 1e-5
    rtol = 1e-4


# --- with_agent_id -----------------------------------------------------------------------------

PREPENDED = "append the one-hot AFTER the observation (`torch.cat([obs, one_hot], dim=-1)`)"
SHORT_ONE_HOT = (
    "the one-hot must have n_agents columns whatever ids this batch holds: "
    "`F.one_hot(agent, n_agents)` (without num_classes it has max(agent) + 1 columns)"
)
RAW_INDEX = (
    "append the id as a one-hot vector of length n_agents, not as one number: a single input "
    "that grows with the id tells the network that agent 2 is 'twice' agent 1"
)
FIXED_DTYPE = (
    "the result must keep obs's dtype: convert the one-hot with `.to(obs.dtype)` (`.float()` "
    "turns float64 observations into float32)"
)
ONE_BASED = "agent ids start at 0: agent 0's one-hot has its 1 in the first id column"


def _with_id(obs: torch.Tensor, one_hot: torch.Tensor, first: bool = False) -> torch.Tensor:
    parts = [one_hot.to(obs.dtype), obs] if first else [obs, one_hot.to(obs.dtype)]
    return torch.cat(parts, dim=-1)


@register
class WithAgentId(_MARLExercise):
    solves = ref.with_agent_id

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        return compare(got, want, self.atol, self.rtol, exact_dtype=True)

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        return {
            PREPENDED: lambda o, a, n: _with_id(o, F.one_hot(a, n), first=True),
            SHORT_ONE_HOT: lambda o, a, n: _with_id(o, F.one_hot(a)),
            RAW_INDEX: lambda o, a, n: _with_id(o, a.unsqueeze(-1)),
            FIXED_DTYPE: lambda o, a, n: torch.cat([o.float(), F.one_hot(a, n).float()], -1),
            ONE_BASED: lambda o, a, n: _with_id(o, F.one_hot((a + 1) % n, n)),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        out = [
            self._case(
                "three agents, ids out of order",
                torch.tensor([[0.5, -1.0]] * 3),
                torch.tensor([2, 0, 1]),
                3,
            ),
            self._case(
                "four agents, only agent 0 in the batch", torch.ones(2, 3), torch.tensor([0, 0]), 4
            ),
            self._case(
                "one row, float64",
                torch.tensor([[1.0, 2.0]], dtype=torch.float64),
                torch.tensor([1]),
                2,
            ),
            self._case("one agent", torch.tensor([[0.0], [3.0]]), torch.tensor([0, 0]), 1),
        ]
        for k in range(10):
            b, d, n = 1 + 3 * k, 1 + k % 5, 2 + k % 7
            dtype = (torch.float32, torch.float64)[k % 2]
            obs = torch.randn(b, d, generator=generator, dtype=torch.float64).to(dtype)
            # every other batch leaves out the highest ids
            high = n if k % 3 else max(1, n - 2)
            agent = torch.randint(0, high, (b,), generator=generator)
            label = f"random batch #{k} (B={b}, D={d}, n_agents={n}, {str(dtype)[6:]})"
            out.append(self._case(label, obs, agent, n))
        return out

    def _case(self, label: str, obs: torch.Tensor, agent: torch.Tensor, n: int) -> Case:
        shown = (
            f"obs = {show_tensor(obs)} ({str(obs.dtype)[6:]})\nagent = {agent.tolist()}\n"
            f"n_agents = {n}"
        )
        return Case(label, (obs, agent, n), shown=shown)


# --- vdn_td_target -----------------------------------------------------------------------------

MAX_OF_SUM = (
    "VDN bootstraps from the SUM OF THE MAXES, sum_i max_a next_q[:, i, a]: each agent picks its "
    "own best action. Summing over agents first and then taking the max pairs action a of "
    "every agent with action a of every other (`next_q.max(-1).values.sum(-1)`)"
)
BOOTSTRAP_TERMINAL = (
    "a terminated row has no future: drop the bootstrap term there (e.g. "
    "`torch.where(terminated, 0.0, bootstrap)`)"
)
INVERTED_MASK = (
    "the mask is inverted: rows that did NOT terminate bootstrap, terminated rows do not"
)
NO_BOOTSTRAP = (
    "only a *terminated* row drops the bootstrap term; every other row, including a row "
    "truncated by the time limit (terminated False), still adds gamma * sum_i max_a next_q"
)
ONE_AGENT = (
    "the team's value is the sum over EVERY agent (dimension 1 of next_q), not the value of "
    "agent 0 alone"
)
MEAN_OVER_AGENTS = (
    "sum the agents' best values (the team's Q is their sum), do not average them over agents"
)
WRONG_DIMS = (
    "next_q is [B, N, A]: the max is over the actions (the LAST dimension), the sum over the "
    "agents (dimension 1)"
)
PER_AGENT = (
    "return one team target per row, shape [B]: these are per-agent targets (independent "
    "learners); VDN sums the agents' best values into one"
)
NO_GAMMA = "the future is discounted: multiply the bootstrap term by gamma"


def _vdn(
    r: torch.Tensor,
    bootstrap: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
    mask: str = "terminated",
) -> torch.Tensor:
    if bootstrap.ndim > r.ndim:
        r, terminated = r.unsqueeze(-1), terminated.unsqueeze(-1)
    keep = {
        "terminated": ~terminated,
        "none": torch.ones_like(terminated),
        "inverted": terminated,
        "all": torch.zeros_like(terminated),
    }[mask]
    return r + gamma * torch.where(keep, bootstrap, torch.zeros_like(bootstrap))


def _garbage(next_q: torch.Tensor, terminated: torch.Tensor) -> torch.Tensor:
    """Large values on terminated rows: they must never reach a target."""
    next_q = next_q.clone()
    next_q[terminated] = 100.0
    return next_q


@register
class VDNTDTarget(_MARLExercise):
    solves = ref.vdn_td_target
    parts = {"": 2}

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        def best(q: torch.Tensor) -> torch.Tensor:
            return q.max(-1).values.sum(-1)

        return {
            MAX_OF_SUM: lambda r, q, t, g: _vdn(r, q.sum(1).max(-1).values, t, g),
            BOOTSTRAP_TERMINAL: lambda r, q, t, g: _vdn(r, best(q), t, g, "none"),
            INVERTED_MASK: lambda r, q, t, g: _vdn(r, best(q), t, g, "inverted"),
            NO_BOOTSTRAP: lambda r, q, t, g: _vdn(r, best(q), t, g, "all"),
            ONE_AGENT: lambda r, q, t, g: _vdn(r, q[:, 0].max(-1).values, t, g),
            MEAN_OVER_AGENTS: lambda r, q, t, g: _vdn(r, q.max(-1).values.mean(-1), t, g),
            WRONG_DIMS: lambda r, q, t, g: _vdn(r, q.max(1).values.sum(-1), t, g),
            PER_AGENT: lambda r, q, t, g: _vdn(r, q.max(-1).values, t, g),
            NO_GAMMA: lambda r, q, t, g: _vdn(r, best(q), t, 1.0),
        }

    def cases(self, generator: torch.Generator) -> list[Case]:
        # B = N = A = 3; in every row each agent's best action differs from the others'
        square = torch.tensor(
            [
                [[2.0, 0.0, -1.0], [0.0, 1.5, 0.0], [-1.0, 0.0, 1.0]],
                [[0.0, 0.5, 3.0], [1.0, -2.0, 0.0], [0.0, 2.0, -1.0]],
                [[-0.5, 1.0, 0.0], [0.5, 0.0, -1.0], [0.0, -3.0, 2.5]],
            ]
        )
        rewards = torch.tensor([1.0, 0.0, 2.0])
        out = []
        scripted = [
            (
                "a square batch (B = N = A = 3); row 1 terminated, row 2 was truncated by the "
                "time limit",
                torch.tensor([False, True, False]),
                [2],
            ),
            ("a square batch; nothing terminated", torch.tensor([False, False, False]), [0]),
            ("a square batch; every row terminated", torch.tensor([True, True, True]), []),
        ]
        for label, terminated, truncated in scripted:
            out.append(
                self._case(label, rewards, _garbage(square, terminated), terminated, 0.9, truncated)
            )
        one = torch.tensor([[[1.0, 3.0]], [[-1.0, -2.0]]])
        out.append(
            self._case(
                "one agent (VDN is then DQN's target)",
                torch.tensor([0.0, 1.0]),
                one,
                torch.tensor([False, False]),
                0.5,
                [],
            )
        )
        gammas = (0.0, 0.5, 0.9, 0.99, 1.0)
        for k in range(10):
            b, n, a = 2 + 3 * k, 2 + k % 4, 2 + (k + 1) % 4
            dtype = (torch.float32, torch.float64)[k % 2]
            r = torch.randn(b, generator=generator, dtype=torch.float64).to(dtype)
            q = 3 * torch.randn(b, n, a, generator=generator, dtype=torch.float64).to(dtype)
            terminated = torch.rand(b, generator=generator) < 0.3
            truncated = ((~terminated) & (torch.rand(b, generator=generator) < 0.2)).nonzero()
            gamma = gammas[k % len(gammas)]
            label = f"random batch #{k} (B={b}, N={n}, A={a}, gamma={gamma:g}, {str(dtype)[6:]})"
            out.append(
                self._case(
                    label,
                    r,
                    _garbage(q, terminated),
                    terminated,
                    gamma,
                    truncated.flatten().tolist(),
                )
            )
        return out

    def _case(
        self,
        label: str,
        rewards: torch.Tensor,
        next_q: torch.Tensor,
        terminated: torch.Tensor,
        gamma: float,
        truncated: list[int],
    ) -> Case:
        ended = terminated.nonzero().flatten().tolist()
        lines = [
            f"team_reward = {show_tensor(rewards)}",
            f"next_q [B, N, A] = {show_tensor(next_q)}",
            f"terminated = {show_tensor(terminated)}",
            f"gamma = {gamma:g}",
            f"terminated rows: {ended or 'none'}; truncated by the time limit (terminated False, "
            f"so they bootstrap): {truncated or 'none'}",
        ]
        if ended:
            lines.append("terminated rows hold the garbage value 100 in next_q on purpose")
        return Case(label, (rewards, next_q, terminated, gamma), shown="\n".join(lines))
