"""Tests for course/grading/exercises/dqn.py: the checks of Lesson 03.

Each check must pass the reference and differently written correct answers (loops, numpy,
another order of random draws), fail every classic mistake with its hint, report a stub as not
attempted, and fail broken code without crashing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course import dqn
from course.grading import check, exercise_ids
from course.grading.core import get_exercise
from course.grading.exercises import dqn as ex

IDS = [
    "dqn.linear_schedule",
    "dqn.epsilon_greedy",
    "dqn.td_target",
    "dqn.double_td_target",
    "dqn.dqn_loss",
    "dqn.soft_update",
    "dqn.real_transitions",
    "dqn.dqn_update",
    "dqn.train_loop",
]


def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The reference under a student's name (a check refuses the library's own object)."""

    def student(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return student


def reference(exercise_id: str) -> Callable[..., Any]:
    return wrap(getattr(dqn, exercise_id.split(".")[1]))


def assert_passes(exercise_id: str, fn: Callable[..., Any], seed: int = 0) -> None:
    result = check(exercise_id, fn, seed=seed)
    assert result.passed, str(result)
    assert result.score == result.max_score


def assert_fails_with(exercise_id: str, fn: Callable[..., Any], hint: str | None) -> str:
    result = check(exercise_id, fn)
    assert result.status == "failed", str(result)
    assert result.score < result.max_score
    if hint is not None:
        assert f"hint: {hint}" in result.message, str(result)
    return result.message


# --- every exercise ---------------------------------------------------------------------------


def test_lesson_registers_its_exercises():
    assert exercise_ids("03_dqn") == sorted(IDS)


@pytest.mark.parametrize("exercise_id", IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_passes(exercise_id, seed):
    assert_passes(exercise_id, reference(exercise_id), seed=seed)


@pytest.mark.parametrize("exercise_id", IDS)
def test_every_listed_mistake_fails_with_its_hint(exercise_id):
    for hint, wrong in get_exercise(exercise_id).mistakes().items():
        assert_fails_with(exercise_id, wrap(wrong), hint)


@pytest.mark.parametrize("exercise_id", IDS)
def test_stub_is_not_attempted(exercise_id):
    def stub(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    result = check(exercise_id, stub)
    assert result.status == "not attempted"
    assert result.score == 0
    assert "Not attempted" in result.message


@pytest.mark.parametrize("exercise_id", IDS)
def test_missing_and_library_objects_are_refused(exercise_id):
    assert check(exercise_id, None).status == "not attempted"
    own = getattr(dqn, exercise_id.split(".")[1])
    result = check(exercise_id, own)
    assert result.status == "failed" and "library's own" in result.message


@pytest.mark.parametrize("exercise_id", IDS)
@pytest.mark.parametrize(
    "broken, expected",
    [
        (lambda *a, **k: None, ""),
        (lambda *a, **k: 1 / 0, "ZeroDivisionError"),
        (lambda *a, **k: "a string", ""),
        (lambda *a, **k: torch.zeros(2, 7, 3), ""),
        (lambda *a, **k: [object()], ""),
    ],
)
def test_broken_code_fails_without_crashing(exercise_id, broken, expected):
    result = check(exercise_id, broken)
    if exercise_id == "dqn.soft_update" and expected == "":
        # its return value is ignored: doing nothing leaves the target unchanged, which fails
        assert result.status == "failed" and "target parameter" in result.message
        return
    assert result.status == "failed", str(result)
    assert expected in result.message


@pytest.mark.parametrize("exercise_id", IDS)
def test_endless_loop_is_stopped(exercise_id):
    exercise = copy.copy(get_exercise(exercise_id))
    exercise.time_limit = 0.2

    def endless(*args: Any, **kwargs: Any) -> Any:
        while True:
            pass

    result = exercise.check(endless)
    assert result.status == "failed"
    assert "did not finish" in result.message


def test_cases_are_reproducible_and_edge_cases_come_first():
    for exercise_id in IDS:
        exercise = get_exercise(exercise_id)
        a, b = exercise.build_cases(3), exercise.build_cases(3)
        assert [c.label for c in a] == [c.label for c in b]
        assert [c.shown for c in a] == [c.shown for c in b]
    labels = [c.label for c in get_exercise("dqn.epsilon_greedy").build_cases(0)]
    assert "epsilon = 0" in labels[0]


# --- linear_schedule ----------------------------------------------------------------------------


def schedule_loop(start, end, duration, step):
    value = start
    for t in range(1, min(step, duration) + 1):
        value = start + (end - start) * t / duration
    return end if duration <= 0 else value


def schedule_numpy(start, end, duration, step):
    if duration <= 0:
        return end
    return np.interp(step, [0, duration], [start, end])


def schedule_tensor(start, end, duration, step):
    frac = torch.tensor(step / duration if duration > 0 else 1.0).clamp(0, 1)
    return torch.lerp(torch.tensor(float(start)), torch.tensor(float(end)), frac)


@pytest.mark.parametrize("fn", [schedule_loop, schedule_numpy, schedule_tensor])
def test_linear_schedule_accepts_other_correct_answers(fn):
    assert_passes("dqn.linear_schedule", fn)


def test_linear_schedule_student_mistakes():
    def no_clamp(start, end, duration, step):
        return start + (end - start) * step / duration if duration else end

    def off_by_one(start, end, duration, step):
        return start + (end - start) * min(step / (duration - 1), 1) if duration > 1 else end

    assert_fails_with("dqn.linear_schedule", no_clamp, ex.NO_CLAMP)
    assert_fails_with("dqn.linear_schedule", off_by_one, ex.EARLY_END)

    def zero_division(start, end, duration, step):
        return start + (end - start) * min(step / duration, 1.0)

    message = assert_fails_with("dqn.linear_schedule", zero_division, None)
    assert "ZeroDivisionError" in message and "duration 0" in message


# --- epsilon_greedy -----------------------------------------------------------------------------


def eg_loop(q_values, epsilon, generator=None):
    actions = []
    for row in q_values:
        if torch.rand(1, generator=generator).item() < epsilon:
            actions.append(int(torch.randint(len(row), (1,), generator=generator)))
        else:
            actions.append(int(row.argmax()))
    return torch.tensor(actions, dtype=torch.int64)


def eg_random_first(q_values, epsilon, generator=None):
    n, n_actions = q_values.shape
    random = torch.randint(0, n_actions, (n,), generator=generator)
    explore = torch.rand(n, generator=generator) < epsilon
    return torch.where(explore, random, torch.argmax(q_values, dim=1))


def eg_multinomial(q_values, epsilon, generator=None):
    n_actions = q_values.shape[1]
    greedy = F.one_hot(q_values.argmax(1), n_actions).double()
    probs = epsilon / n_actions + (1 - epsilon) * greedy
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def eg_bernoulli(q_values, epsilon, generator=None):
    n, n_actions = q_values.shape
    explore = torch.bernoulli(torch.full((n,), float(epsilon)), generator=generator).bool()
    random = torch.randint(n_actions, (n,), generator=generator)
    actions = q_values.argmax(-1).clone()
    actions[explore] = random[explore]
    return actions


def eg_numpy(q_values, epsilon, generator=None):
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
    q = q_values.numpy()
    random = rng.integers(q.shape[1], size=q.shape[0])
    return np.where(rng.random(q.shape[0]) < epsilon, random, q.argmax(1)).astype(np.int64)


@pytest.mark.parametrize("fn", [eg_loop, eg_random_first, eg_multinomial, eg_bernoulli, eg_numpy])
@pytest.mark.parametrize("seed", [0, 5])
def test_epsilon_greedy_accepts_other_draw_orders(fn, seed):
    assert_passes("dqn.epsilon_greedy", fn, seed=seed)


def test_epsilon_greedy_student_mistakes():
    def excludes_greedy(q_values, epsilon, generator=None):
        out = []
        for row in q_values:
            best = int(row.argmax())
            if torch.rand(1, generator=generator).item() < epsilon:
                others = [a for a in range(len(row)) if a != best]
                out.append(others[int(torch.randint(len(others), (1,), generator=generator))])
            else:
                out.append(best)
        return torch.tensor(out)

    def one_coin(q_values, epsilon, generator=None):
        if torch.rand(1, generator=generator).item() < epsilon:
            return torch.randint(q_values.shape[1], q_values.shape[:1], generator=generator)
        return q_values.argmax(1)

    def inverted(q_values, epsilon, generator=None):
        greedy = torch.rand(len(q_values), generator=generator) < epsilon
        random = torch.randint(q_values.shape[1], (len(q_values),), generator=generator)
        return torch.where(greedy, q_values.argmax(1), random)

    def float_actions(q_values, epsilon, generator=None):
        return eg_random_first(q_values, epsilon, generator).float()

    def global_rng(q_values, epsilon, generator=None):
        return eg_random_first(q_values, epsilon, None)

    assert_fails_with("dqn.epsilon_greedy", excludes_greedy, ex.EXCLUDES_GREEDY)
    message = assert_fails_with("dqn.epsilon_greedy", one_coin, None)
    assert ex.ALL_GREEDY in message or ex.ALL_RANDOM in message
    assert_fails_with("dqn.epsilon_greedy", inverted, ex.INVERTED_COIN)
    assert_fails_with("dqn.epsilon_greedy", float_actions, ex.FLOAT_ACTIONS)
    assert_fails_with("dqn.epsilon_greedy", global_rng, ex.NO_GENERATOR)


def test_epsilon_greedy_other_wrong_answers():
    def greedy_only(q_values, epsilon, generator=None):
        return q_values.argmax(-1)

    def argmin(q_values, epsilon, generator=None):
        return q_values.argmin(-1)

    def keepdim(q_values, epsilon, generator=None):
        return eg_random_first(q_values, epsilon, generator)[:, None]

    def fixed_seed(q_values, epsilon, generator=None):
        return eg_random_first(q_values, epsilon, torch.Generator().manual_seed(0))

    def int32(q_values, epsilon, generator=None):
        return eg_random_first(q_values, epsilon, generator).int()

    def list_of_ints(q_values, epsilon, generator=None):
        return eg_random_first(q_values, epsilon, generator).tolist()

    assert_fails_with("dqn.epsilon_greedy", greedy_only, ex.ALL_GREEDY)
    assert "argmax" in assert_fails_with("dqn.epsilon_greedy", argmin, None)
    assert "shape" in assert_fails_with("dqn.epsilon_greedy", keepdim, None)
    assert "different seeds" in assert_fails_with("dqn.epsilon_greedy", fixed_seed, None)
    assert "int32" in assert_fails_with("dqn.epsilon_greedy", int32, None)
    assert "torch.int64 tensor" in assert_fails_with("dqn.epsilon_greedy", list_of_ints, None)


def test_epsilon_greedy_does_not_accept_changing_q_values():
    def in_place(q_values, epsilon, generator=None):
        q_values += 1
        return eg_random_first(q_values, epsilon, generator)

    assert "changed its argument" in assert_fails_with("dqn.epsilon_greedy", in_place, None)


# --- td_target and double_td_target ---------------------------------------------------------------


def td_float_mask(rewards, next_q, terminated, gamma):
    return rewards + gamma * (1 - terminated.float()) * next_q.max(1)[0]


def td_loop(rewards, next_q, terminated, gamma):
    out = torch.empty(len(rewards), dtype=torch.float64)
    for i in range(len(rewards)):
        out[i] = float(rewards[i])
        if not terminated[i]:
            out[i] += gamma * float(max(next_q[i]))
    return out


def td_numpy(rewards, next_q, terminated, gamma):
    r, q, t = rewards.numpy(), next_q.numpy(), terminated.numpy()
    return r + gamma * np.where(t, 0.0, q.max(axis=1))


@pytest.mark.parametrize("fn", [td_float_mask, td_loop, td_numpy])
def test_td_target_accepts_other_correct_answers(fn):
    assert_passes("dqn.td_target", fn)


def test_td_target_student_mistakes():
    def with_done_everywhere(rewards, next_q, terminated, gamma):
        return rewards  # as if every row had ended (what storing done=True everywhere does)

    def no_mask(rewards, next_q, terminated, gamma):
        return rewards + gamma * next_q.max(1).values

    def wrong_dim(rewards, next_q, terminated, gamma):
        return rewards + gamma * (~terminated) * next_q.max(0).values

    def mean(rewards, next_q, terminated, gamma):
        return rewards + gamma * (~terminated) * next_q.mean(1)

    assert_fails_with("dqn.td_target", with_done_everywhere, ex.NO_BOOTSTRAP)
    assert_fails_with("dqn.td_target", no_mask, ex.BOOTSTRAP_TERMINAL)
    assert_fails_with("dqn.td_target", wrong_dim, ex.WRONG_DIM)
    assert_fails_with("dqn.td_target", mean, ex.MEAN_NOT_MAX)


def test_td_target_failure_message_names_truncated_rows():
    def no_mask(rewards, next_q, terminated, gamma):
        return rewards + gamma * next_q.max(1).values

    message = assert_fails_with("dqn.td_target", no_mask, None)
    assert "truncated by the time limit" in message
    assert "garbage value 100" in message


def double_index(rewards, next_q_online, next_q_target, terminated, gamma):
    best = next_q_online.argmax(1)
    value = next_q_target[torch.arange(len(best)), best]
    return rewards + gamma * value * (1.0 - terminated.to(value.dtype))


def double_loop(rewards, next_q_online, next_q_target, terminated, gamma):
    out = []
    for r, on, tg, t in zip(rewards, next_q_online, next_q_target, terminated):
        out.append(float(r) + (0.0 if t else gamma * float(tg[int(on.argmax())])))
    return out


@pytest.mark.parametrize("fn", [double_index, double_loop])
def test_double_td_target_accepts_other_correct_answers(fn):
    assert_passes("dqn.double_td_target", fn)


def test_double_td_target_student_mistakes():
    def vanilla(rewards, next_q_online, next_q_target, terminated, gamma):
        return rewards + gamma * (~terminated) * next_q_target.max(1).values

    def swapped(rewards, next_q_online, next_q_target, terminated, gamma):
        best = next_q_target.argmax(1)
        return rewards + gamma * (~terminated) * next_q_online[torch.arange(len(best)), best]

    assert_fails_with("dqn.double_td_target", vanilla, ex.VANILLA)
    assert_fails_with("dqn.double_td_target", swapped, ex.SWAPPED_ROLES)


# --- dqn_loss -----------------------------------------------------------------------------------


def loss_manual(q_values, actions, targets):
    taken = q_values[torch.arange(len(actions)), actions]
    error = taken - targets.detach()
    return torch.where(error.abs() < 1, 0.5 * error**2, error.abs() - 0.5).mean()


def loss_huber(q_values, actions, targets):
    with torch.no_grad():
        y = targets.clone()
    taken = q_values.gather(1, actions.view(-1, 1)).view(-1)
    return F.huber_loss(taken, y, delta=1.0)


def loss_module(q_values, actions, targets):
    return nn.SmoothL1Loss()(q_values.gather(-1, actions[:, None])[:, 0], targets.detach())


@pytest.mark.parametrize("fn", [loss_manual, loss_huber, loss_module])
def test_dqn_loss_accepts_other_correct_answers(fn):
    assert_passes("dqn.dqn_loss", fn)


def test_dqn_loss_student_mistakes():
    def not_detached(q_values, actions, targets):
        taken = q_values[torch.arange(len(actions)), actions]
        return F.smooth_l1_loss(taken, targets)

    def mse(q_values, actions, targets):
        taken = q_values[torch.arange(len(actions)), actions]
        return ((taken - targets.detach()) ** 2).mean()

    def summed(q_values, actions, targets):
        return loss_manual(q_values, actions, targets) * len(actions)

    def best_action(q_values, actions, targets):
        return F.smooth_l1_loss(q_values.max(1).values, targets.detach())

    assert_fails_with("dqn.dqn_loss", not_detached, ex.NOT_DETACHED)
    assert_fails_with("dqn.dqn_loss", mse, ex.MSE)
    assert_fails_with("dqn.dqn_loss", summed, ex.SUM_LOSS)
    assert_fails_with("dqn.dqn_loss", best_action, ex.MAX_NOT_TAKEN)


def test_dqn_loss_other_wrong_answers():
    def as_float(q_values, actions, targets):
        return loss_manual(q_values, actions, targets).item()

    def no_graph(q_values, actions, targets):
        with torch.no_grad():
            return loss_manual(q_values, actions, targets)

    def per_row(q_values, actions, targets):
        taken = q_values.gather(1, actions[:, None]).squeeze(1)
        return F.smooth_l1_loss(taken, targets.detach(), reduction="none")

    assert "scalar torch tensor" in assert_fails_with("dqn.dqn_loss", as_float, None)
    assert "autograd" in assert_fails_with("dqn.dqn_loss", no_graph, None)
    assert "average" in assert_fails_with("dqn.dqn_loss", per_row, None)


# --- soft_update --------------------------------------------------------------------------------


def soft_data(target, online, tau):
    for t, o in zip(target.parameters(), online.parameters()):
        t.data.copy_(tau * o.data + (1 - tau) * t.data)


def soft_state_dict(target, online, tau):
    new = {k: tau * online.state_dict()[k] + (1 - tau) * v for k, v in target.state_dict().items()}
    target.load_state_dict(new)


@torch.no_grad()
def soft_lerp(target, online, tau):
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o, tau)


@pytest.mark.parametrize("fn", [soft_data, soft_state_dict, soft_lerp])
def test_soft_update_accepts_other_correct_answers(fn):
    assert_passes("dqn.soft_update", fn)


def test_soft_update_student_mistakes():
    @torch.no_grad()
    def swapped(target, online, tau):
        for t, o in zip(target.parameters(), online.parameters()):
            t.mul_(tau).add_((1 - tau) * o)

    def rebinding(target, online, tau):
        for t, o in zip(target.parameters(), online.parameters()):
            t = tau * o.detach() + (1 - tau) * t.detach()  # noqa: F841 - the mistake

    def new_parameters(target, online, tau):
        for (name, t), o in zip(list(target.named_parameters()), online.parameters()):
            module_name, _, attr = name.rpartition(".")
            module = target.get_submodule(module_name)
            value = (tau * o + (1 - tau) * t).detach()
            setattr(module, attr, nn.Parameter(value, requires_grad=t.requires_grad))

    @torch.no_grad()
    def argument_order(target, online, tau):
        for t, o in zip(target.parameters(), online.parameters()):
            o.copy_(tau * t + (1 - tau) * o)

    assert_fails_with("dqn.soft_update", swapped, ex_hint("swapped"))
    assert_fails_with("dqn.soft_update", rebinding, ex_hint("did not change"))
    assert_fails_with("dqn.soft_update", new_parameters, ex_hint("new objects"))
    assert_fails_with("dqn.soft_update", argument_order, ex_hint("FIRST argument"))


def ex_hint(words: str) -> str:
    hints = [h for h in get_exercise("dqn.soft_update").mistakes() if words in h]
    assert len(hints) == 1
    return hints[0]


def test_soft_update_other_wrong_answers():
    def with_graph(target, online, tau):
        for t, o in zip(target.parameters(), online.parameters()):
            t.copy_(tau * o + (1 - tau) * t)  # in place on a leaf that requires grad: raises

    def flags(target, online, tau):
        soft_data(target, online, tau)
        target.requires_grad_(False)

    def graph_attached(target, online, tau):
        for module in target.modules():
            for name, p in list(module._parameters.items()):
                if p is not None:
                    module._parameters[name] = p * 1.0

    assert "RuntimeError" in assert_fails_with("dqn.soft_update", with_graph, None)
    assert "requires_grad" in assert_fails_with("dqn.soft_update", flags, None)
    message = assert_fails_with("dqn.soft_update", graph_attached, None)
    assert "new objects" in message or "autograd graph" in message


# --- real_transitions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        lambda prev_done: prev_done == False,  # noqa: E712 - a correct answer students write
        lambda prev_done: torch.logical_not(prev_done),
        lambda prev_done: np.logical_not(prev_done.numpy()),
        lambda prev_done: torch.tensor([not d for d in prev_done.tolist()], dtype=torch.bool),
    ],
)
def test_real_transitions_accepts_other_correct_answers(fn):
    assert_passes("dqn.real_transitions", fn)


def test_real_transitions_student_mistakes():
    def same_as_done(prev_done):
        return prev_done.clone()

    def as_int(prev_done):
        return (~prev_done).long()

    assert_fails_with("dqn.real_transitions", same_as_done, ex_rt_hint("inverted"))
    assert "bool" in assert_fails_with("dqn.real_transitions", as_int, None)


def ex_rt_hint(words: str) -> str:
    hints = [h for h in get_exercise("dqn.real_transitions").mistakes() if words in h]
    assert len(hints) == 1
    return hints[0]


# --- dqn_update -----------------------------------------------------------------------------


def update_tutorial(q_net, target_net, optimizer, batch, gamma, double=False, max_grad_norm=None):
    q = q_net(batch.obs).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        if double:
            best = q_net(batch.next_obs).argmax(1)
            next_q = target_net(batch.next_obs).gather(1, best[:, None]).squeeze(1)
        else:
            next_q = target_net(batch.next_obs).max(1)[0]
        y = batch.rewards + gamma * next_q * (1 - batch.terminated.float())
    loss = F.smooth_l1_loss(q, y)
    optimizer.zero_grad()
    loss.backward()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(q_net.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()


def update_zero_after_step(
    q_net, target_net, optimizer, batch, gamma, double=False, max_grad_norm=None
):
    obs, actions, rewards, next_obs, terminated, _tasks = batch
    next_online = q_net(next_obs).detach()
    next_target = target_net(next_obs).detach()
    if double:
        bootstrap = next_target[torch.arange(len(actions)), next_online.argmax(-1)]
    else:
        bootstrap = next_target.max(-1).values
    targets = torch.where(terminated, rewards, rewards + gamma * bootstrap)
    taken = q_net(obs)[torch.arange(len(actions)), actions]
    loss = F.huber_loss(taken, targets, delta=1.0)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(list(q_net.parameters()), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()  # zeroing after the step leaves the next backward a clean slate too
    return float(loss)


def update_loop_float64(
    q_net, target_net, optimizer, batch, gamma, double=False, max_grad_norm=None
):
    with torch.no_grad():
        nt, no = target_net(batch.next_obs).double(), q_net(batch.next_obs).double()
        targets = []
        for i in range(len(batch.rewards)):
            a = int(no[i].argmax()) if double else int(nt[i].argmax())
            boot = 0.0 if bool(batch.terminated[i]) else float(nt[i, a])
            targets.append(float(batch.rewards[i]) + gamma * boot)
    q = q_net(batch.obs)
    taken = torch.stack([q[i, int(a)] for i, a in enumerate(batch.actions)])
    loss = torch.nn.SmoothL1Loss()(taken, torch.tensor(targets, dtype=torch.float32))
    q_net.zero_grad()
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(q_net.parameters(), max_norm=max_grad_norm)
    optimizer.step()
    return loss.item()


@pytest.mark.parametrize("fn", [update_tutorial, update_zero_after_step, update_loop_float64])
@pytest.mark.parametrize("seed", [0, 3])
def test_dqn_update_accepts_other_correct_answers(fn, seed):
    assert_passes("dqn.dqn_update", fn, seed=seed)


def test_dqn_update_student_mistakes():
    def no_zero_grad(q_net, target_net, optimizer, batch, gamma, double=False, max_grad_norm=None):
        with torch.no_grad():
            y = dqn.td_target(batch.rewards, target_net(batch.next_obs), batch.terminated, gamma)
        loss = dqn.dqn_loss(q_net(batch.obs), batch.actions, y)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(q_net.parameters(), max_grad_norm)
        optimizer.step()
        return loss.item()

    def clip_after_step(
        q_net, target_net, optimizer, batch, gamma, double=False, max_grad_norm=None
    ):
        with torch.no_grad():
            next_q, done = target_net(batch.next_obs), batch.terminated
            if double:
                picks = q_net(batch.next_obs)
                y = dqn.double_td_target(batch.rewards, picks, next_q, done, gamma)
            else:
                y = dqn.td_target(batch.rewards, next_q, done, gamma)
        loss = dqn.dqn_loss(q_net(batch.obs), batch.actions, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(q_net.parameters(), max_grad_norm)
        return loss.item()

    def returns_tensor(
        q_net, target_net, optimizer, batch, gamma, double=False, max_grad_norm=None
    ):
        update_tutorial(q_net, target_net, optimizer, batch, gamma, double, max_grad_norm)
        return torch.tensor(0.5)

    def online_targets(
        q_net, target_net, optimizer, batch, gamma, double=False, max_grad_norm=None
    ):
        return update_tutorial(q_net, q_net, optimizer, batch, gamma, double, max_grad_norm)

    assert_fails_with("dqn.dqn_update", no_zero_grad, ex.NO_ZERO_GRAD)
    assert_fails_with("dqn.dqn_update", online_targets, ex.ONLINE_TARGETS)
    message = assert_fails_with("dqn.dqn_update", returns_tensor, None)
    assert "loss.item()" in message
    result = check("dqn.dqn_update", clip_after_step)
    assert result.status == "failed" and result.score == 3  # the other parts still pass
    assert f"hint: {ex.NO_CLIP}" in result.message


# --- train_loop ---------------------------------------------------------------------------------


def student_loop(
    envs,
    q_net,
    target_net,
    optimizer,
    buffer,
    total_steps,
    *,
    gamma,
    epsilon_schedule,
    learning_starts,
    train_every,
    target_sync_every,
    batch_size,
    generator,
    seed=0,
    bug=None,
):
    """A correct loop written unlike the reference: one copy at a time, its own sampling and
    draw order, the step counted after stepping, a sync by load_state_dict before the update;
    ``bug`` switches on one hand-written mistake."""
    n = envs.num_envs
    obs, _ = envs.reset(seed=seed)
    ended = [False] * n
    returns, episodes = [0.0] * n, []
    updates, step = 0, 0
    epsilon = epsilon_schedule(0)
    for t in range(total_steps // n):
        if bug != "eps_once":
            epsilon = epsilon_schedule(step)
        random = torch.randint(0, 2, (n,), generator=generator)  # draws in another order
        coins = torch.rand(n, generator=generator)
        with torch.no_grad():
            greedy = q_net(torch.tensor(obs)).argmax(1)
        actions = torch.where(coins < epsilon, random, greedy)
        next_obs, rewards, terminated, truncated, _ = envs.step(actions.tolist())
        step += n
        for i in range(n):
            if not ended[i] or bug == "store_all":
                flag = terminated[i] or truncated[i] if bug == "done_flag" else terminated[i]
                buffer.add(obs[i], int(actions[i]), float(rewards[i]), next_obs[i], bool(flag))
                returns[i] += float(rewards[i])
            ended[i] = bool(terminated[i] or truncated[i])
            if ended[i]:
                episodes.append((step, returns[i]))
                returns[i] = 0.0
        obs = next_obs
        if (bug == "no_start" or step - n >= learning_starts) and t % train_every == 0:
            if updates % target_sync_every == 0 and updates > 0:
                if bug == "rebind":
                    target_net = copy.deepcopy(q_net)
                else:
                    target_net.load_state_dict(q_net.state_dict())
            rows = torch.randint(len(buffer), (batch_size,), generator=generator)
            s = buffer.storage
            with torch.no_grad():
                nxt = target_net(s.next_obs[rows]).max(1).values
                alive = torch.ones_like(nxt) if bug == "no_mask" else (~s.terminated[rows]).float()
                y = s.rewards[rows] + gamma * alive * nxt
            q = q_net(s.obs[rows]).gather(1, s.actions[rows, None])[:, 0]
            loss = F.smooth_l1_loss(q, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            updates += 1
    if updates % target_sync_every == 0 and updates > 0 and bug != "rebind":
        target_net.load_state_dict(q_net.state_dict())
    return episodes


def loop_with(bug):
    def loop(*args, **kwargs):
        return student_loop(*args, **kwargs, bug=bug)

    loop.__name__ = f"loop_{bug}"
    return loop


@pytest.mark.parametrize("seed", [0, 3])
def test_train_loop_accepts_a_loop_written_differently(seed):
    assert_passes("dqn.train_loop", student_loop, seed=seed)


@pytest.mark.parametrize(
    ("bug", "hint"),
    [
        ("store_all", ex.FAKE_STORED),
        ("done_flag", ex.DONE_STORED),
        ("rebind", ex.NEVER_SYNCED),
        ("no_start", ex.EARLY_UPDATES),
        ("no_mask", ex.LOOP_NO_MASK),
        ("eps_once", ex.NO_DECAY),
    ],
)
def test_train_loop_student_mistakes(bug, hint):
    assert_fails_with("dqn.train_loop", loop_with(bug), hint)


def test_train_loop_check_is_fast():
    import time

    check("dqn.train_loop", student_loop)  # warm up
    start = time.process_time()
    assert check("dqn.train_loop", student_loop).passed
    assert time.process_time() - start < 3.0
