"""Tests for the Lesson 04 checks (course/grading/exercises/multitask.py).

Every exercise must accept differently written correct answers, reject the classic mistakes
written as a student would write them (with the matching hint), report a stub as "not
attempted", and fail cleanly on broken code.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from check_helpers import answer_tests, assert_fails, assert_passes
from torch import nn

from course import multitask as ref
from course.grading import check, exercise_ids
from course.grading.core import FAIL, NOT_ATTEMPTED, get_exercise
from course.grading.exercises import multitask as checks

FUNCTIONS = [
    "multitask.multitask_loss",
    "multitask.mean_regularizer",
    "multitask.task_param_groups",
    "multitask.gradient_conflict",
    "multitask.pcgrad",
    "multitask.multitask_update",
]
IDS = ["multitask.MultiHeadQNetwork", *FUNCTIONS]


# --- correct answers, written in other ways ---------------------------------------------------


class MultiHeadQNetwork(nn.Module):
    """A loop-and-mask version."""

    def __init__(self, obs_dim, n_actions, n_tasks, hidden=(64,)):
        super().__init__()
        layers, width = [], obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList([nn.Linear(width, n_actions) for _ in range(n_tasks)])
        self.n_actions = n_actions

    def forward(self, obs, tasks):
        features = self.trunk(obs)
        out = torch.zeros(len(obs), self.n_actions)
        for k, head in enumerate(self.heads):
            rows = tasks == k
            if rows.any():
                out[rows] = head(features[rows])
        return out

    def task_parameters(self, k):
        return self.heads[k].parameters()  # a generator is fine


class MultiHeadIndexed(MultiHeadQNetwork):
    """Stacks every head and indexes."""

    def forward(self, obs, tasks):
        features = self.trunk(obs)
        every = torch.stack([head(features) for head in self.heads])  # [K, B, A]
        return every[tasks, torch.arange(len(tasks))]


def loss_loops(task_losses, task_params, lam):
    total = 0.0
    for loss in task_losses:
        total = total + loss
    for params in task_params:
        for p in params:
            total = total + lam * (p**2).sum()
    return total


def loss_float64(task_losses, task_params, lam):
    penalty = sum(torch.sum(p.double() * p.double()) for ps in task_params for p in ps)
    return torch.sum(task_losses.double()) + lam * penalty


def mean_reg_loops(task_params):
    K = len(task_params)
    total = 0.0
    for i in range(len(task_params[0])):
        mean = sum(task_params[k][i] for k in range(K)) / K
        for k in range(K):
            total = total + ((task_params[k][i] - mean) ** 2).sum()
    return torch.as_tensor(total)


def groups_by_names(model, shared_lr, task_lrs):
    groups = [{"params": list(model.task_parameters(k)), "lr": lr} for k, lr in enumerate(task_lrs)]
    taken = {id(p) for g in groups for p in g["params"]}
    return groups + [
        {"params": [p for p in model.parameters() if id(p) not in taken], "lr": shared_lr}
    ]


def conflict_numpy(grads):
    G = np.stack([np.asarray(g, dtype=np.float64).ravel() for g in grads])
    norms = np.linalg.norm(G, axis=1)
    out = np.zeros((len(G), len(G)))
    for i in range(len(G)):
        for j in range(len(G)):
            if norms[i] > 0 and norms[j] > 0:
                out[i, j] = G[i] @ G[j] / (norms[i] * norms[j])
    return out


def conflict_functional(grads):
    G = torch.stack([g.flatten() for g in grads])
    return torch.nn.functional.cosine_similarity(G[:, None], G[None], dim=-1)


def pcgrad_python_random(grads, generator=None):
    rng = random.Random(7)  # another source and order of randomness: any order is correct
    originals = [g.clone() for g in grads]
    out = []
    for i, g in enumerate(originals):
        g = g.clone()
        others = [j for j in range(len(grads)) if j != i]
        rng.shuffle(others)
        for j in others:
            dot = torch.dot(g, originals[j])
            if dot < 0:
                g -= dot / originals[j].norm() ** 2 * originals[j]
        out.append(g)
    return torch.stack(out).sum(0)


def pcgrad_one_shared_order(grads, generator=None):
    order = torch.randperm(len(grads), generator=generator).tolist()
    total = torch.zeros_like(grads[0], dtype=torch.float64)
    for i in range(len(grads)):
        g = grads[i].double().clone()
        for j in order:
            if j != i and g @ grads[j].double() < 0:
                g = (
                    g
                    - (g @ grads[j].double())
                    / (grads[j].double() @ grads[j].double())
                    * grads[j].double()
                )
        total += g
    return total.numpy()


def update_loop(
    q_net,
    target_net,
    optimizer,
    batch,
    gamma,
    lam=0.0,
    regularizer="l2",
    use_pcgrad=False,
    generator=None,
):
    with torch.no_grad():
        next_q = target_net(batch.next_obs, batch.tasks).max(1).values
        y = batch.rewards + gamma * next_q * (~batch.terminated).float()
    q = q_net(batch.obs, batch.tasks)
    losses = []
    for k in range(q_net.n_tasks):
        rows = (batch.tasks == k).nonzero().flatten()
        if len(rows) == 0:
            continue
        taken = q[rows, batch.actions[rows]]
        losses.append(torch.nn.functional.huber_loss(taken, y[rows]))
    heads = [q_net.task_parameters(k) for k in range(q_net.n_tasks)]
    if regularizer == "mean":
        penalty = ref.mean_regularizer(heads)
    else:
        penalty = sum((p**2).sum() for ps in heads for p in ps)
    task_loss = sum(losses)
    optimizer.zero_grad()
    if not use_pcgrad:
        (task_loss + lam * penalty).backward()
    else:
        trunk = list(q_net.trunk.parameters())
        flat = []
        for loss in losses:
            grads = torch.autograd.grad(loss, trunk, retain_graph=True)
            flat.append(torch.cat([g.reshape(-1) for g in grads]))
        combined = ref.pcgrad(flat, generator)
        (task_loss + lam * penalty).backward()
        start = 0
        for p in trunk:
            p.grad.copy_(combined[start : start + p.numel()].reshape(p.shape))
            start += p.numel()
    optimizer.step()
    return task_loss.item()


def update_one_hot_mask(
    q_net,
    target_net,
    optimizer,
    batch,
    gamma,
    lam=0.0,
    regularizer="l2",
    use_pcgrad=False,
    generator=None,
):
    with torch.no_grad():
        y = ref.td_target(
            batch.rewards, target_net(batch.next_obs, batch.tasks), batch.terminated, gamma
        )
    taken = q_net(batch.obs, batch.tasks).gather(1, batch.actions[:, None])[:, 0]
    errors = torch.nn.functional.smooth_l1_loss(taken, y, reduction="none")
    onehot = torch.nn.functional.one_hot(batch.tasks, q_net.n_tasks).float()  # [B, K]
    counts = onehot.sum(0)
    present = counts > 0
    task_losses = (errors @ onehot)[present] / counts[present]
    heads = [q_net.task_parameters(k) for k in range(q_net.n_tasks)]
    reg = (
        ref.mean_regularizer(heads)
        if regularizer == "mean"
        else ref.multitask_loss(torch.zeros(1), heads, 1.0)
    )
    optimizer.zero_grad()
    if use_pcgrad:
        trunk = list(q_net.trunk.parameters())
        flat = [
            torch.cat([g.flatten() for g in torch.autograd.grad(lk, trunk, retain_graph=True)])
            for lk in task_losses
        ]
        combined = ref.pcgrad(flat, generator)
    (task_losses.sum() + lam * reg).backward()
    if use_pcgrad:
        for p, g in zip(trunk, torch.split(combined, [p.numel() for p in trunk])):
            p.grad = g.view_as(p)
    optimizer.step()
    return float(task_losses.sum())


CORRECT = [
    ("multitask.multitask_update", update_loop),
    ("multitask.multitask_update", update_one_hot_mask),
    ("multitask.MultiHeadQNetwork", MultiHeadQNetwork),
    ("multitask.MultiHeadQNetwork", MultiHeadIndexed),
    ("multitask.multitask_loss", loss_loops),
    ("multitask.multitask_loss", loss_float64),
    ("multitask.mean_regularizer", mean_reg_loops),
    ("multitask.task_param_groups", groups_by_names),
    ("multitask.gradient_conflict", conflict_numpy),
    ("multitask.pcgrad", pcgrad_python_random),
    ("multitask.pcgrad", pcgrad_one_shared_order),
]


# --- mistakes, as a student would write them ----------------------------------------------------


class FirstTaskNet(MultiHeadQNetwork):
    def forward(self, obs, tasks):
        return self.heads[tasks[0]](self.trunk(obs))


class RowIndexedNet(MultiHeadQNetwork):
    def forward(self, obs, tasks):
        every = torch.stack([head(self.trunk(obs)) for head in self.heads])
        return every[torch.arange(len(tasks)), tasks]


class TrunkInTaskParams(MultiHeadIndexed):
    def task_parameters(self, k):
        return list(self.trunk.parameters()) + list(self.heads[k].parameters())


class ModuleAsTaskParams(MultiHeadIndexed):
    def task_parameters(self, k):
        return self.heads[k]


def loss_norm(task_losses, task_params, lam):
    return task_losses.sum() + lam * sum(p.norm() for ps in task_params for p in ps)


def loss_lam_per_group(task_losses, task_params, lam):
    K = len(task_params)
    return task_losses.sum() + sum(lam * K * sum((p**2).sum() for p in ps) for ps in task_params)


def loss_item(task_losses, task_params, lam):
    return task_losses.sum().detach() + lam * sum(
        float((p.detach() ** 2).sum()) for ps in task_params for p in ps
    )


def mean_reg_decay(task_params):
    return sum((p**2).sum() for ps in task_params for p in ps)


def mean_reg_pairs(task_params):
    K, total = len(task_params), torch.zeros(())
    for i, j in itertools.combinations(range(K), 2):
        for a, b in zip(task_params[i], task_params[j]):
            total = total + ((a - b) ** 2).sum()
    return total


def groups_duplicate(model, shared_lr, task_lrs):
    return [{"params": list(model.parameters()), "lr": shared_lr}] + [
        {"params": list(model.task_parameters(k)), "lr": lr} for k, lr in enumerate(task_lrs)
    ]


def groups_trunk_only(model, shared_lr, task_lrs):
    return [{"params": model.trunk.parameters(), "lr": shared_lr}] + [
        {"params": model.heads[k].parameters(), "lr": lr} for k, lr in enumerate(task_lrs)
    ]


def groups_wrong_lrs(model, shared_lr, task_lrs):
    return [{"params": model.trunk.parameters(), "lr": shared_lr}] + [
        {"params": model.heads[k].parameters(), "lr": shared_lr} for k in range(len(task_lrs))
    ]


def conflict_dots(grads):
    G = torch.stack(grads)
    return G @ G.T


def conflict_nan(grads):
    G = torch.stack(grads)
    G = G / G.norm(dim=1, keepdim=True)
    return G @ G.T


def pcgrad_always(grads, generator=None):
    out = []
    for i, g in enumerate(grads):
        g = g.clone()
        for j, h in enumerate(grads):
            if j != i:
                g = g - (g @ h) / (h @ h) * h
        out.append(g)
    return sum(out)


def pcgrad_in_place(grads, generator=None):
    gs = [g.clone() for g in grads]
    for i in range(len(gs)):
        for j in torch.randperm(len(gs), generator=generator).tolist():
            if j != i and gs[i] @ gs[j] < 0:
                gs[i] = gs[i] - (gs[i] @ gs[j]) / (gs[j] @ gs[j]) * gs[j]
    return sum(gs)


def pcgrad_modifies_inputs(grads, generator=None):
    for i in range(len(grads)):
        for j in range(len(grads)):
            if j != i and grads[i] @ grads[j] < 0:
                grads[i] -= (grads[i] @ grads[j]) / (grads[j] @ grads[j]) * grads[j]
    return sum(grads)


def update_one_mean(
    q_net,
    target_net,
    optimizer,
    batch,
    gamma,
    lam=0.0,
    regularizer="l2",
    use_pcgrad=False,
    generator=None,
):
    with torch.no_grad():
        y = ref.td_target(
            batch.rewards, target_net(batch.next_obs, batch.tasks), batch.terminated, gamma
        )
    taken = q_net(batch.obs, batch.tasks).gather(1, batch.actions[:, None])[:, 0]
    loss = torch.nn.functional.smooth_l1_loss(taken, y)
    penalty = sum((p**2).sum() for k in range(q_net.n_tasks) for p in q_net.task_parameters(k))
    optimizer.zero_grad()
    (loss + lam * penalty).backward()
    optimizer.step()
    return loss.item()


def update_decay_everything(
    q_net,
    target_net,
    optimizer,
    batch,
    gamma,
    lam=0.0,
    regularizer="l2",
    use_pcgrad=False,
    generator=None,
):
    # right task losses, but weight decay on every parameter of the network
    with torch.no_grad():
        y = ref.td_target(
            batch.rewards, target_net(batch.next_obs, batch.tasks), batch.terminated, gamma
        )
    taken = q_net(batch.obs, batch.tasks).gather(1, batch.actions[:, None])[:, 0]
    errors = torch.nn.functional.smooth_l1_loss(taken, y, reduction="none")
    loss = sum(errors[batch.tasks == k].mean() for k in batch.tasks.unique())
    optimizer.zero_grad()
    (loss + lam * sum((p**2).sum() for p in q_net.parameters())).backward()
    optimizer.step()
    return float(loss)


WRONG = [
    ("multitask.multitask_update", update_one_mean, checks.ONE_MEAN),
    ("multitask.multitask_update", update_decay_everything, checks.TRUNK_PENALTY),
    ("multitask.MultiHeadQNetwork", FirstTaskNet, checks.WRONG_ROW_TASK),
    ("multitask.MultiHeadQNetwork", RowIndexedNet, checks.HEAD_BY_ROW),
    ("multitask.MultiHeadQNetwork", TrunkInTaskParams, checks.TRUNK_IN_TASK_PARAMS),
    ("multitask.MultiHeadQNetwork", ModuleAsTaskParams, None),
    ("multitask.multitask_loss", loss_norm, checks.NOT_SQUARED),
    ("multitask.multitask_loss", loss_lam_per_group, checks.LAM_TIMES_K),
    ("multitask.multitask_loss", loss_item, None),
    ("multitask.mean_regularizer", mean_reg_decay, checks.MR_WEIGHT_DECAY),
    ("multitask.mean_regularizer", mean_reg_pairs, checks.MR_PAIRWISE),
    ("multitask.task_param_groups", groups_duplicate, checks.IN_TWO_GROUPS),
    ("multitask.task_param_groups", groups_trunk_only, checks.ONLY_TRUNK),
    ("multitask.task_param_groups", groups_wrong_lrs, checks.HEADS_AT_SHARED_LR),
    ("multitask.gradient_conflict", conflict_dots, checks.NOT_NORMALISED),
    ("multitask.gradient_conflict", conflict_nan, checks.ZERO_NAN),
    ("multitask.pcgrad", pcgrad_always, checks.ALWAYS_PROJECTS),
    ("multitask.pcgrad", pcgrad_in_place, checks.PROJECTED_OTHER),
    ("multitask.pcgrad", pcgrad_modifies_inputs, None),
]


def test_every_exercise_is_registered():
    assert exercise_ids("04_multitask") == sorted(IDS)


@pytest.mark.parametrize("exercise_id", FUNCTIONS)
def test_reference_passes(exercise_id):
    fn = getattr(ref, exercise_id.split(".")[1])
    assert_passes(exercise_id, lambda *args, **kwargs: fn(*args, **kwargs))


def test_reference_class_passes():
    class Mine(ref.MultiHeadQNetwork):
        pass

    assert_passes("multitask.MultiHeadQNetwork", Mine)


@pytest.mark.parametrize("exercise_id", IDS)
def test_library_reference_itself_is_refused(exercise_id):
    result = check(exercise_id, getattr(ref, exercise_id.split(".")[1]))
    assert not result.passed and "library's own" in result.message


def _as_student(exercise_id, mistake):
    if exercise_id == "multitask.pcgrad":  # the listed mistakes return every order's result
        return lambda grads, generator=None: mistake(grads, generator)[0]
    return mistake


(
    test_correct_answers_pass,
    test_correct_answers_pass_with_other_seeds,
    test_student_mistakes_fail,
    test_every_listed_mistake_fails_with_its_hint,
) = answer_tests(IDS, CORRECT, WRONG, as_student=_as_student)


def test_parts_of_the_class_score_separately():
    result = assert_fails("multitask.MultiHeadQNetwork", TrunkInTaskParams)
    assert result.score == 2 and "[task_parameters]" in result.message
    result = assert_fails("multitask.MultiHeadQNetwork", FirstTaskNet)
    assert "[routing]" in result.message and "Parts that pass: task_parameters" in result.message


def test_zero_gradient_part_scores_separately():
    result = assert_fails("multitask.gradient_conflict", conflict_nan)
    assert result.score == 1 and "[zero gradients]" in result.message


def test_detached_loss_is_explained():
    result = assert_fails("multitask.multitask_loss", loss_item)
    assert "differentiable" in result.message


def test_modifying_the_gradients_fails():
    result = assert_fails("multitask.pcgrad", pcgrad_modifies_inputs)
    assert "in place" in result.message


def test_returning_a_module_from_task_parameters_is_explained():
    result = assert_fails("multitask.MultiHeadQNetwork", ModuleAsTaskParams)
    assert "returned a module" in result.message


# --- not attempted and broken code --------------------------------------------------------------


def stub(*args, **kwargs):
    raise NotImplementedError


class StubNet(nn.Module):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError


@pytest.mark.parametrize("exercise_id", IDS)
def test_stub_is_not_attempted(exercise_id):
    obj = StubNet if exercise_id == "multitask.MultiHeadQNetwork" else stub
    result = check(exercise_id, obj)
    assert result.status == NOT_ATTEMPTED and result.score == 0
    assert "Not attempted" in result.message and "Traceback" not in result.message


@pytest.mark.parametrize("exercise_id", IDS)
def test_missing_is_not_attempted(exercise_id):
    assert check(exercise_id, None).status == NOT_ATTEMPTED


def raises(*args, **kwargs):
    return [1, 2][5]


class RaisingNet(MultiHeadQNetwork):
    def forward(self, obs, tasks):
        return [1, 2][5]

    def task_parameters(self, k):
        return [1, 2][5]


@pytest.mark.parametrize("exercise_id", IDS)
def test_code_that_raises_fails_with_the_error_and_line(exercise_id):
    obj = RaisingNet if exercise_id == "multitask.MultiHeadQNetwork" else raises
    result = assert_fails(exercise_id, obj)
    assert "raised IndexError" in result.message and "return [1, 2][5]" in result.message
    assert result.score == 0


@pytest.mark.parametrize("exercise_id", FUNCTIONS)
def test_returning_none_fails(exercise_id):
    result = assert_fails(exercise_id, lambda *args, **kwargs: None)
    assert "None" in result.message


@pytest.mark.parametrize("exercise_id", FUNCTIONS)
def test_wrong_shape_fails(exercise_id):
    result = assert_fails(exercise_id, lambda *args, **kwargs: torch.zeros(7, 3))
    assert result.score == 0


def test_a_function_instead_of_a_class_is_refused():
    result = check("multitask.MultiHeadQNetwork", raises)
    assert result.status == FAIL and "should be a class" in result.message


def test_infinite_loop_times_out(monkeypatch):
    exercise = get_exercise("multitask.pcgrad")
    monkeypatch.setattr(exercise, "time_limit", 0.3)

    def forever(grads, generator=None):
        i = 0
        while i < len(grads):  # forgets to advance i
            pass
        return grads[0]

    result = assert_fails("multitask.pcgrad", forever)
    assert "did not finish within 0.3 s" in result.message
