"""Tests for the Lesson 05 checks (course/grading/exercises/transfer.py).

Every exercise must accept differently written correct answers (loops, numpy, float32, a copy
of the model, other initialisation rules), reject the classic mistakes written as a student
would write them (with the matching hint), report a stub as "not attempted", and fail cleanly
on broken code.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from check_helpers import answer_tests, assert_fails, assert_passes, hint_coverage_test
from torch import nn

from course import transfer as ref
from course.grading import check, exercise_ids
from course.grading.core import NOT_ATTEMPTED, get_exercise
from course.grading.exercises import transfer as checks

IDS = [
    "transfer.transfer_metrics",
    "transfer.l2sp_penalty",
    "transfer.prepare_finetune",
    "transfer.finetune_update",
]
REFERENCES = {
    "transfer.transfer_metrics": ref.transfer_metrics,
    "transfer.l2sp_penalty": ref.l2sp_penalty,
    "transfer.prepare_finetune": ref.prepare_finetune,
    "transfer.finetune_update": ref.finetune_update,
}


# --- transfer_metrics: correct answers ----------------------------------------------------------


def tm_numpy(steps, scratch, transfer, threshold):
    x, s, t = (np.asarray(v, dtype=np.float64) for v in (steps, scratch, transfer))

    def first(curve):
        idx = np.nonzero(curve >= threshold)[0]
        return x[idx[0]] if len(idx) else None

    return ref.TransferMetrics(
        jumpstart=t[0] - s[0],
        asymptotic_gain=t[-1] - s[-1],
        time_to_threshold_scratch=first(s),
        time_to_threshold_transfer=first(t),
        transfer_ratio=np.trapezoid(t, x) / np.trapezoid(s, x),
    )


def tm_loops(steps, scratch, transfer, threshold):
    x, s, t = steps.tolist(), scratch.tolist(), transfer.tolist()

    def first(curve):
        for i in range(len(curve)):
            if curve[i] >= threshold:
                return x[i]
        return None

    def area(curve):
        total = 0.0
        for i in range(1, len(x)):
            total += (x[i] - x[i - 1]) * (curve[i] + curve[i - 1]) / 2
        return total

    return ref.TransferMetrics(t[0] - s[0], t[-1] - s[-1], first(s), first(t), area(t) / area(s))


def tm_torch_float32(steps, scratch, transfer, threshold):
    x, s, t = steps.float(), scratch.float(), transfer.float()

    def first(curve):
        hit = (curve >= threshold).nonzero()
        return steps[hit[0, 0]] if len(hit) else None

    return ref.TransferMetrics(
        jumpstart=t[0] - s[0],
        asymptotic_gain=t[-1] - s[-1],
        time_to_threshold_scratch=first(s),
        time_to_threshold_transfer=first(t),
        transfer_ratio=torch.trapezoid(t, x) / torch.trapezoid(s, x),
    )


# --- transfer_metrics: mistakes -----------------------------------------------------------------


def _metrics(steps, scratch, transfer, first, area, ratio=None, sign=1, last=True):
    s, t = scratch.double(), transfer.double()
    a_t, a_s = area(t), area(s)
    return ref.TransferMetrics(
        sign * float(t[0] - s[0]),
        sign * float(t[-1] - s[-1] if last else t.max() - s.max()),
        first(s),
        first(t),
        a_t / a_s if ratio is None else ratio(a_t, a_s),
    )


def _trap(steps):
    return lambda y: float(torch.trapezoid(y, steps.double()))


def _first(steps, threshold, op=torch.ge, what="step", never=None):
    def first(curve):
        hit = op(curve, threshold).nonzero()
        if not len(hit):
            return never
        k = int(hit[0, 0])
        if what == "index":
            return k
        if what == "after":
            return float(steps[min(k + 1, len(steps) - 1)])
        return float(steps[k])

    return first


def tm_strict(steps, scratch, transfer, threshold):
    return _metrics(steps, scratch, transfer, _first(steps, threshold, torch.gt), _trap(steps))


def tm_index(steps, scratch, transfer, threshold):
    return _metrics(steps, scratch, transfer, _first(steps, threshold, what="index"), _trap(steps))


def tm_step_after(steps, scratch, transfer, threshold):
    return _metrics(steps, scratch, transfer, _first(steps, threshold, what="after"), _trap(steps))


def tm_never_inf(steps, scratch, transfer, threshold):
    return _metrics(
        steps, scratch, transfer, _first(steps, threshold, never=math.inf), _trap(steps)
    )


def tm_unit_spacing(steps, scratch, transfer, threshold):
    return _metrics(
        steps, scratch, transfer, _first(steps, threshold), lambda y: float(torch.trapezoid(y))
    )


def tm_sum(steps, scratch, transfer, threshold):
    return _metrics(steps, scratch, transfer, _first(steps, threshold), lambda y: float(y.sum()))


def tm_inverted(steps, scratch, transfer, threshold):
    return _metrics(
        steps, scratch, transfer, _first(steps, threshold), _trap(steps), ratio=lambda a, b: b / a
    )


def tm_relative(steps, scratch, transfer, threshold):
    return _metrics(
        steps,
        scratch,
        transfer,
        _first(steps, threshold),
        _trap(steps),
        ratio=lambda a, b: (a - b) / b,
    )


def tm_sign(steps, scratch, transfer, threshold):
    return _metrics(steps, scratch, transfer, _first(steps, threshold), _trap(steps), sign=-1)


def tm_max(steps, scratch, transfer, threshold):
    return _metrics(steps, scratch, transfer, _first(steps, threshold), _trap(steps), last=False)


# --- l2sp_penalty -------------------------------------------------------------------------------


def l2sp_loops(model, reference, alpha, exclude=()):
    total = 0.0
    for name, p in model.named_parameters():
        if name not in reference or any(name.startswith(e) for e in exclude):
            continue
        total = total + ((p - reference[name]) ** 2).sum()
    return alpha * total if isinstance(total, torch.Tensor) else torch.tensor(0.0)


def l2sp_float64_vector(model, reference, alpha, exclude=()):
    params = dict(model.named_parameters())
    names = (
        [n for n in reference if not n.startswith(tuple(exclude))] if exclude else list(reference)
    )
    diffs = torch.cat([(params[n] - reference[n]).flatten().double() for n in names])
    return (alpha * diffs.dot(diffs)).reshape(1)


def l2sp_state_dict(model, reference, alpha, exclude=()):
    current = model.state_dict()  # detached copies: no gradient reaches the parameters
    total = sum(
        ((current[n] - r) ** 2).sum() for n, r in reference.items() if not n.startswith(exclude)
    )
    return alpha * total


def l2sp_ignores_exclude(model, reference, alpha, exclude=()):
    params = dict(model.named_parameters())
    return alpha * sum(((params[n] - r) ** 2).sum() for n, r in reference.items())


def l2sp_weight_decay(model, reference, alpha, exclude=()):
    params = dict(model.named_parameters())
    keep = [n for n in reference if not (exclude and n.startswith(tuple(exclude)))]
    return alpha * sum((params[n] ** 2).sum() for n in keep)


def _kept(model, reference, exclude):
    params = dict(model.named_parameters())
    return [(params[n], r) for n, r in reference.items() if not (exclude and n.startswith(exclude))]


def l2sp_no_alpha(model, reference, alpha, exclude=()):
    return sum(((p - r) ** 2).sum() for p, r in _kept(model, reference, tuple(exclude)))


def l2sp_half(model, reference, alpha, exclude=()):
    return 0.5 * alpha * sum(((p - r) ** 2).sum() for p, r in _kept(model, reference, exclude))


def l2sp_norm(model, reference, alpha, exclude=()):
    return alpha * sum(torch.norm(p - r) for p, r in _kept(model, reference, tuple(exclude)))


def l2sp_mean(model, reference, alpha, exclude=()):
    return alpha * sum(((p - r) ** 2).mean() for p, r in _kept(model, reference, tuple(exclude)))


def l2sp_weights_only(model, reference, alpha, exclude=()):
    params = dict(model.named_parameters())
    pairs = [
        (params[n], r)
        for n, r in reference.items()
        if n.endswith("weight") and not (exclude and n.startswith(tuple(exclude)))
    ]
    return alpha * sum(((p - r) ** 2).sum() for p, r in pairs)


# --- prepare_finetune ---------------------------------------------------------------------------


def _heads(model):
    return list(model.heads) if hasattr(model, "heads") else [model.head]


def pf_reset_parameters(model, strategy, reference=None):
    if strategy not in ("scratch", "full", "freeze_trunk", "l2sp"):
        raise ValueError(f"unknown strategy {strategy}")
    for p in model.parameters():
        p.requires_grad = True
    if strategy == "scratch":
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
    elif strategy == "freeze_trunk":
        for p in model.trunk.parameters():
            p.requires_grad = False
        for head in _heads(model):
            head.reset_parameters()
    elif strategy == "l2sp":
        model.l2sp_reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    return model


def pf_new_layers_copy(model, strategy, reference=None):
    """Works on a deep copy; makes new head layers; Kaiming/Xavier with zero biases."""
    if strategy not in ("scratch", "full", "freeze_trunk", "l2sp"):
        raise ValueError("strategy must be scratch, full, freeze_trunk or l2sp")
    model = copy.deepcopy(model)
    if reference is not None:
        model.load_state_dict(reference)
    model.requires_grad_(True)

    def new_like(layer):
        w = layer.weight
        return nn.Linear(layer.in_features, layer.out_features).to(w.device, w.dtype)

    if strategy == "scratch":
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.Linear):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)
    elif strategy == "freeze_trunk":
        model.trunk.requires_grad_(False)
        if hasattr(model, "heads"):
            model.heads = nn.ModuleList(new_like(h) for h in model.heads)
        else:
            model.head = new_like(model.head)
    elif strategy == "l2sp":
        model.l2sp_reference = copy.deepcopy(model.state_dict())
    return model


def pf_xavier(model, strategy, reference=None):
    if strategy not in ("scratch", "full", "freeze_trunk", "l2sp"):
        raise ValueError("unknown strategy")
    model.requires_grad_(True)
    targets = (
        [model] if strategy == "scratch" else _heads(model) if strategy == "freeze_trunk" else []
    )
    for t in targets:
        for m in t.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.uniform_(m.bias, -0.1, 0.1)
    if strategy == "freeze_trunk":
        model.trunk.requires_grad_(False)
    if strategy == "l2sp":
        model.l2sp_reference = {k: v.clone() for k, v in model.state_dict().items()}
    return model


def _pf(mistake):
    def prepare(model, strategy, reference=None):
        if strategy not in ("scratch", "full", "freeze_trunk", "l2sp"):
            raise ValueError(strategy)
        if mistake != "still frozen":
            model.requires_grad_(True)
        if strategy == "scratch" and mistake not in ("keeps", "weird init"):
            for m in _heads(model) if mistake == "head only" else [model]:
                for layer in m.modules():
                    if isinstance(layer, nn.Linear):
                        layer.reset_parameters()
        if strategy == "freeze_trunk":
            if mistake == "weights only":
                for n, p in model.trunk.named_parameters():
                    if "weight" in n:
                        p.requires_grad = False
            elif mistake != "forgot freeze":
                model.trunk.requires_grad_(False)
            if mistake != "stale head":
                for h in _heads(model):
                    h.reset_parameters()
            if mistake == "frozen head":
                model.requires_grad_(False)
        if strategy == "l2sp":
            if mistake == "aliased":
                model.l2sp_reference = model.state_dict()
            elif mistake == "noise anchor":
                model.l2sp_reference = {
                    k: torch.randn_like(v) for k, v in model.state_dict().items()
                }
            elif mistake != "no anchor":
                model.l2sp_reference = {k: v.clone() for k, v in model.state_dict().items()}
        if strategy in ("full", "l2sp") and mistake == "full resets head":
            for h in _heads(model):
                h.reset_parameters()
        if mistake == "weird init" and strategy == "scratch":
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.1)  # shrinks the pretrained weights instead
        return model

    prepare.__name__ = "pf_" + mistake.replace(" ", "_")
    return prepare


def pf_no_value_error(model, strategy, reference=None):
    if strategy == "freeze_trunk":
        model.trunk.requires_grad_(False)
        for h in _heads(model):
            h.reset_parameters()
        return model
    return pf_reset_parameters(model, strategy if strategy in ref.FINETUNE_STRATEGIES else "full")


def pf_key_error(model, strategy, reference=None):
    if strategy not in ref.FINETUNE_STRATEGIES:
        raise KeyError(strategy)
    return pf_reset_parameters(model, strategy, reference)


def pf_returns_none(model, strategy, reference=None):
    pf_reset_parameters(model, strategy, reference)


# --- finetune_update: correct answers and mistakes -----------------------------------------------


def ft_manual(q_net, target_net, optimizer, batch, gamma, alpha=0.0, exclude=("head",)):
    """Huber loss by hand, the penalty as a loop, gradients zeroed in place."""
    with torch.no_grad():
        best = target_net(batch.next_obs).max(dim=1).values
        targets = batch.rewards + gamma * best * (~batch.terminated).float()
    taken = q_net(batch.obs).gather(1, batch.actions.view(-1, 1)).view(-1)
    loss = torch.nn.functional.smooth_l1_loss(taken, targets)
    anchor = getattr(q_net, "l2sp_reference", None)
    if anchor is not None:
        for name, p in q_net.named_parameters():
            if name in anchor and not any(name.startswith(e) for e in exclude):
                loss = loss + alpha * ((p - anchor[name]) ** 2).sum()
    optimizer.zero_grad(set_to_none=False)
    loss.backward()
    optimizer.step()
    return loss.item()


def ft_pieces(q_net, target_net, optimizer, batch, gamma, alpha=0.0, exclude=("head",)):
    """Lesson 03's pieces, the gradients cleared one by one."""
    from course.dqn import dqn_loss, td_target

    with torch.no_grad():
        targets = td_target(batch.rewards, target_net(batch.next_obs), batch.terminated, gamma)
    loss = dqn_loss(q_net(batch.obs), batch.actions, targets)
    if hasattr(q_net, "l2sp_reference"):
        loss = loss + ref.l2sp_penalty(q_net, q_net.l2sp_reference, alpha, exclude)
    for p in q_net.parameters():
        p.grad = None
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _ft(mistake):
    def update(q_net, target_net, optimizer, batch, gamma, alpha=0.0, exclude=("head",)):
        from course.dqn import double_td_target, dqn_loss, td_target

        if mistake == "unfreeze":  # trains the trunk too, with its own optimizer
            q_net.requires_grad_(True)
            optimizer = torch.optim.SGD(q_net.parameters(), lr=0.1)
        with torch.no_grad():
            next_q = target_net(batch.next_obs)
            if mistake == "double":
                online = q_net(batch.next_obs)
                targets = double_td_target(batch.rewards, online, next_q, batch.terminated, gamma)
            else:
                targets = td_target(batch.rewards, next_q, batch.terminated, gamma)
        td = dqn_loss(q_net(batch.obs), batch.actions, targets)
        loss = td
        anchor = getattr(q_net, "l2sp_reference", None)
        if mistake == "state_dict":
            anchor = {k: v.clone() for k, v in q_net.state_dict().items()}
        if mistake == "overwrite":
            q_net.l2sp_reference = {k: v.clone() for k, v in q_net.state_dict().items()}
            anchor = q_net.l2sp_reference
        if anchor is not None and mistake != "ignores anchor":
            penalty = ref.l2sp_penalty(q_net, anchor, alpha, () if mistake == "head" else exclude)
            loss = loss - penalty if mistake == "minus" else loss + penalty
        if mistake != "no zero_grad":
            optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return (td if mistake == "td only" else loss).item()

    update.__name__ = f"ft_{mistake.replace(' ', '_')}"
    return update


CORRECT = [
    ("transfer.transfer_metrics", tm_numpy),
    ("transfer.transfer_metrics", tm_loops),
    ("transfer.transfer_metrics", tm_torch_float32),
    ("transfer.l2sp_penalty", l2sp_loops),
    ("transfer.l2sp_penalty", l2sp_float64_vector),
    ("transfer.prepare_finetune", pf_reset_parameters),
    ("transfer.prepare_finetune", pf_new_layers_copy),
    ("transfer.prepare_finetune", pf_xavier),
    ("transfer.finetune_update", ft_manual),
    ("transfer.finetune_update", ft_pieces),
]

WRONG = [
    ("transfer.transfer_metrics", tm_strict, checks.STRICT),
    ("transfer.transfer_metrics", tm_index, checks.INDEX_NOT_STEP),
    ("transfer.transfer_metrics", tm_step_after, checks.STEP_AFTER),
    ("transfer.transfer_metrics", tm_never_inf, checks.NEVER_NONE),
    ("transfer.transfer_metrics", tm_unit_spacing, checks.UNIT_SPACING),
    ("transfer.transfer_metrics", tm_sum, checks.SUM_AREA),
    ("transfer.transfer_metrics", tm_inverted, checks.INVERTED_RATIO),
    ("transfer.transfer_metrics", tm_relative, checks.RELATIVE_RATIO),
    ("transfer.transfer_metrics", tm_sign, checks.SIGN),
    ("transfer.transfer_metrics", tm_max, checks.MAX_NOT_LAST),
    ("transfer.l2sp_penalty", l2sp_ignores_exclude, checks.INCLUDES_EXCLUDED),
    ("transfer.l2sp_penalty", l2sp_weight_decay, checks.NO_REFERENCE),
    ("transfer.l2sp_penalty", l2sp_no_alpha, checks.NO_ALPHA),
    ("transfer.l2sp_penalty", l2sp_half, checks.HALF_ALPHA),
    ("transfer.l2sp_penalty", l2sp_norm, checks.NOT_SQUARED),
    ("transfer.l2sp_penalty", l2sp_mean, checks.MEAN_NOT_SUM),
    ("transfer.l2sp_penalty", l2sp_weights_only, checks.ONLY_WEIGHTS),
    ("transfer.l2sp_penalty", l2sp_state_dict, None),
    ("transfer.prepare_finetune", _pf("keeps"), checks.SCRATCH_KEEPS),
    ("transfer.prepare_finetune", _pf("head only"), checks.SCRATCH_HEAD_ONLY),
    ("transfer.prepare_finetune", _pf("still frozen"), checks.STILL_FROZEN),
    ("transfer.prepare_finetune", _pf("forgot freeze"), checks.FREEZE_NOT_APPLIED),
    ("transfer.prepare_finetune", _pf("stale head"), checks.STALE_HEAD),
    ("transfer.prepare_finetune", _pf("frozen head"), checks.FROZEN_HEAD),
    ("transfer.prepare_finetune", _pf("weights only"), checks.WEIGHTS_ONLY),
    ("transfer.prepare_finetune", _pf("aliased"), checks.ALIASED),
    ("transfer.prepare_finetune", _pf("no anchor"), checks.NO_ANCHOR),
    ("transfer.prepare_finetune", _pf("full resets head"), checks.FULL_CHANGES),
    ("transfer.prepare_finetune", _pf("noise anchor"), None),
    ("transfer.prepare_finetune", _pf("weird init"), None),
    ("transfer.prepare_finetune", pf_no_value_error, None),
    ("transfer.prepare_finetune", pf_key_error, None),
    ("transfer.finetune_update", _ft("no zero_grad"), checks.FT_NO_ZERO_GRAD),
    ("transfer.finetune_update", _ft("double"), checks.FT_DOUBLE),
    ("transfer.finetune_update", _ft("minus"), checks.FT_PENALTY_SIGN),
    ("transfer.finetune_update", _ft("head"), checks.FT_HEAD_PENALISED),
    ("transfer.finetune_update", _ft("state_dict"), checks.FT_NO_PULL),
    ("transfer.finetune_update", _ft("ignores anchor"), checks.FT_NO_PULL),
    ("transfer.finetune_update", _ft("td only"), checks.FT_TD_ONLY),
    ("transfer.finetune_update", _ft("overwrite"), None),
    ("transfer.finetune_update", _ft("unfreeze"), None),
]


def test_every_exercise_is_registered():
    assert exercise_ids("05_transfer") == sorted(IDS)


@pytest.mark.parametrize("exercise_id", IDS)
def test_reference_passes(exercise_id):
    fn = REFERENCES[exercise_id]
    assert_passes(exercise_id, lambda *args, **kwargs: fn(*args, **kwargs))


@pytest.mark.parametrize("exercise_id", IDS)
def test_library_reference_itself_is_refused(exercise_id):
    result = check(exercise_id, REFERENCES[exercise_id])
    assert not result.passed and "library's own" in result.message


(
    test_correct_answers_pass,
    test_correct_answers_pass_with_other_seeds,
    test_student_mistakes_fail,
    test_every_listed_mistake_fails_with_its_hint,
) = answer_tests(IDS, CORRECT, WRONG)
test_every_listed_hint_is_reached_by_a_student_written_mistake = hint_coverage_test(IDS, WRONG)


def test_metric_parts_score_separately():
    result = assert_fails("transfer.transfer_metrics", tm_unit_spacing)
    assert result.score == 2 and "[transfer ratio]" in result.message


def test_detached_penalty_is_explained():
    result = assert_fails("transfer.l2sp_penalty", l2sp_state_dict)
    assert "autograd" in result.message


def test_unknown_strategy_must_raise_value_error():
    result = assert_fails("transfer.prepare_finetune", pf_no_value_error)
    assert "accepted the unknown strategy" in result.message and result.score == 4
    result = assert_fails("transfer.prepare_finetune", pf_key_error)
    assert "raised KeyError" in result.message


def test_a_fresh_init_of_another_scale_is_not_a_fresh_init():
    result = assert_fails("transfer.prepare_finetune", _pf("weird init"))
    assert "does not look like a fresh initialisation" in result.message


def test_wrong_anchor_values_fail():
    result = assert_fails("transfer.prepare_finetune", _pf("noise anchor"))
    assert "does not hold the pretrained weights" in result.message


def test_a_new_layer_of_the_wrong_dtype_is_reported():
    def new_head_float32(model, strategy, reference=None):
        pf_reset_parameters(model, strategy, reference)
        if strategy == "freeze_trunk" and not hasattr(model, "heads"):
            model.head = nn.Linear(model.head.in_features, model.head.out_features)
        return model

    result = assert_fails("transfer.prepare_finetune", new_head_float32)
    assert "calling the returned model failed" in result.message


def test_modifying_the_reference_in_place_fails():
    def penalty_in_place(model, reference, alpha, exclude=()):
        params = dict(model.named_parameters())
        total = 0.0
        for n, r in reference.items():
            if not (exclude and n.startswith(tuple(exclude))):
                r.sub_(params[n].detach())  # reference now holds -(p - r)
                total = total + (params[n] - params[n].detach() + r).pow(2).sum()
        return alpha * total

    result = assert_fails("transfer.l2sp_penalty", penalty_in_place)
    assert "in place" in result.message


# --- not attempted and broken code ---------------------------------------------------------------


def stub(*args, **kwargs):
    raise NotImplementedError


@pytest.mark.parametrize("exercise_id", IDS)
def test_stub_is_not_attempted(exercise_id):
    result = check(exercise_id, stub)
    assert result.status == NOT_ATTEMPTED and result.score == 0
    assert "Not attempted" in result.message and "Traceback" not in result.message


@pytest.mark.parametrize("exercise_id", IDS)
def test_missing_function_is_not_attempted(exercise_id):
    assert check(exercise_id, None).status == NOT_ATTEMPTED


def raises(*args, **kwargs):
    return [1, 2][5]


@pytest.mark.parametrize("exercise_id", IDS)
def test_code_that_raises_fails_with_the_error_and_line(exercise_id):
    result = assert_fails(exercise_id, raises)
    assert "raised IndexError" in result.message and "return [1, 2][5]" in result.message


@pytest.mark.parametrize("exercise_id", IDS)
def test_returning_none_fails(exercise_id):
    result = assert_fails(exercise_id, lambda *args, **kwargs: None)
    assert "None" in result.message


@pytest.mark.parametrize("exercise_id", IDS)
def test_wrong_type_fails(exercise_id):
    result = assert_fails(exercise_id, lambda *args, **kwargs: torch.zeros(7, 3))
    assert result.score == 0 or exercise_id == "transfer.prepare_finetune"


def test_returning_none_from_prepare_finetune_asks_for_the_model():
    result = assert_fails("transfer.prepare_finetune", pf_returns_none)
    assert "return the model" in result.message


def test_a_tuple_of_metrics_without_names_fails_clearly():
    def as_tuple(steps, scratch, transfer, threshold):
        m = ref.transfer_metrics(steps, scratch, transfer, threshold)
        return (m.jumpstart, m.asymptotic_gain)

    result = assert_fails("transfer.transfer_metrics", as_tuple)
    assert "without a field `jumpstart`" in result.message


def test_infinite_loop_times_out(monkeypatch):
    exercise = get_exercise("transfer.transfer_metrics")
    monkeypatch.setattr(exercise, "time_limit", 0.3)

    def search_forever(steps, scratch, transfer, threshold):
        t = 0
        while scratch[t] < threshold:  # forgets to advance t
            pass
        return None

    result = assert_fails("transfer.transfer_metrics", search_forever)
    assert "did not finish within 0.3 s" in result.message


def test_a_frozen_trunk_that_moves_is_named():
    result = assert_fails("transfer.finetune_update", _ft("unfreeze"))
    assert "the frozen trunk moved" in result.message


def test_an_overwritten_anchor_is_named():
    result = assert_fails("transfer.finetune_update", _ft("overwrite"))
    assert "l2sp_reference` changed" in result.message
