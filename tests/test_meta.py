"""Tests for course/meta.py (Lesson 06): Reptile, task splits, and the sine experiment."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from course import meta
from course.meta import SINE_META_CONFIG, reptile_step, sine_split, train_sine_meta

# --- reptile_step -------------------------------------------------------------------------------


def test_reptile_step_moves_toward_the_mean_of_the_adapted_parameters():
    theta = [torch.tensor([0.0, 1.0]), torch.tensor([[2.0]])]
    adapted = [
        [torch.tensor([2.0, 1.0]), torch.tensor([[0.0]])],
        [torch.tensor([4.0, 3.0]), torch.tensor([[6.0]])],
    ]
    new = reptile_step(theta, adapted, 0.5)
    torch.testing.assert_close(new[0], torch.tensor([1.5, 1.5]))
    torch.testing.assert_close(new[1], torch.tensor([[2.5]]))


def test_reptile_step_limits():
    g = torch.Generator().manual_seed(0)
    theta = [torch.randn(3, 2, generator=g), torch.randn(2, generator=g)]
    adapted = [[torch.randn(p.shape, generator=g) for p in theta] for _ in range(3)]
    mean = [torch.stack([a[i] for a in adapted]).mean(0) for i in range(2)]
    for got, want in zip(reptile_step(theta, adapted, 0.0), theta):
        torch.testing.assert_close(got, want)
    for got, want in zip(reptile_step(theta, adapted, 1.0), mean):
        torch.testing.assert_close(got, want)
    one = reptile_step(theta, adapted[:1], 1.0)
    for got, want in zip(one, adapted[0]):
        torch.testing.assert_close(got, want)


def test_reptile_step_modifies_no_input_and_returns_new_tensors():
    theta = [torch.ones(3, requires_grad=True)]
    adapted = [[torch.zeros(3)], [torch.full((3,), 2.0)]]
    before = [theta[0].detach().clone(), adapted[0][0].clone(), adapted[1][0].clone()]
    new = reptile_step(theta, adapted, 0.3)
    assert new[0] is not theta[0] and not new[0].requires_grad
    new[0].add_(1.0)
    for t, b in zip([theta[0].detach(), adapted[0][0], adapted[1][0]], before):
        assert torch.equal(t, b)


def test_reptile_step_keeps_the_dtype():
    theta = [torch.zeros(2, dtype=torch.float64)]
    new = reptile_step(theta, [[torch.ones(2, dtype=torch.float64)]], 0.25)
    assert new[0].dtype == torch.float64


@pytest.mark.parametrize(
    ("adapted", "message"),
    [
        ([], "adapted is empty"),
        ([[torch.zeros(2)]], "adapted\\[0\\] has 1 tensors but meta_params has 2"),
        ([[torch.zeros(2), torch.zeros(3)]], "adapted\\[0\\]\\[1\\] has shape \\(3,\\)"),
    ],
)
def test_reptile_step_refuses_mismatched_parameters(adapted, message):
    with pytest.raises(ValueError, match=message):
        reptile_step([torch.zeros(2), torch.zeros(1)], adapted, 0.5)


# --- the sine experiment ------------------------------------------------------------------------


def test_sine_split_parts_are_disjoint_and_sized():
    split = sine_split(10, 3, 4, seed=1)
    assert (split.train.n_tasks, split.validation.n_tasks, split.test.n_tasks) == (10, 3, 4)
    pairs = [set(zip(p.amplitudes, p.phases)) for p in (split.train, split.validation, split.test)]
    assert not (pairs[0] & pairs[1]) and not (pairs[0] & pairs[2]) and not (pairs[1] & pairs[2])
    assert all(0.1 <= a <= 5.0 for a in split.train.amplitudes)
    assert sine_split(10, 3, 4, seed=1) == split
    with pytest.raises(ValueError, match="at least one task"):
        sine_split(10, 0, 4)


def test_adapt_sine_scores_step_zero_without_training_and_improves():
    split = sine_split(5, 2, 3, seed=0)
    cfg = dataclasses.replace(SINE_META_CONFIG, eval_steps=20, shots=10, inner_lr=0.02)
    init = meta._init_mlp(2, 16, [torch.Generator().manual_seed(s) for s in (0, 1)])
    mse = meta.adapt_sine(init, split.test, cfg, seed=3)
    assert mse.shape == (2, 3, 21)
    # step 0 is the untrained network's query error: compute it directly
    amps, phases = torch.tensor(split.test.amplitudes), torch.tensor(split.test.phases)
    g = torch.Generator().manual_seed(3)
    meta._draw(amps, phases, cfg.shots, split.test.x_range, g)  # the support points come first
    qx, qy = meta._draw(amps, phases, cfg.n_query, split.test.x_range, g)
    for a in range(2):
        one = [p[a : a + 1].expand(3, *p.shape[1:]) for p in init]
        want = (meta._mlp(one, qx) - qy).pow(2).mean(1)
        torch.testing.assert_close(mse[a, :, 0], want)
    assert (mse[:, :, -1].mean() < mse[:, :, 0].mean()).item()


@pytest.fixture(scope="module")
def small_run():
    cfg = dataclasses.replace(SINE_META_CONFIG, outer_steps=60, eval_steps=8)
    return train_sine_meta(sine_split(), seeds=[0, 1, 2], config=cfg)


def test_sine_meta_result_shapes(small_run):
    assert set(small_run.mse) == {"reptile", "pretrained", "scratch"}
    for mse in small_run.mse.values():
        assert mse.shape == (3, 20, 9)
    assert small_run.curves("reptile").shape == (3, 9)
    assert small_run.after("pretrained", 4).shape == (3,)


def test_reptile_adapts_faster_than_the_mixture_and_scratch(small_run):
    reptile, pretrained, scratch = (small_run.after(m, 4) for m in small_run.mse)
    assert (reptile < pretrained).all() and (pretrained < scratch).all()


def test_training_moves_both_initialisations_but_scratch_stays_put(small_run):
    """Step 0 of scratch is the untrained initialisation: the worst of the three there."""
    zero = {m: small_run.after(m, 0) for m in small_run.mse}
    assert (zero["scratch"] > zero["pretrained"]).all()


def test_sine_meta_is_deterministic_and_seeds_are_independent(small_run):
    cfg = dataclasses.replace(SINE_META_CONFIG, outer_steps=60, eval_steps=8)
    again = train_sine_meta(sine_split(), seeds=[2], config=cfg)
    for m in again.mse:
        torch.testing.assert_close(again.mse[m][0], small_run.mse[m][2])


def test_sine_meta_validates_its_arguments():
    with pytest.raises(ValueError, match="evaluate_on"):
        train_sine_meta(sine_split(), [0], evaluate_on="train")
    with pytest.raises(ValueError, match="at least one seed"):
        train_sine_meta(sine_split(), [])
