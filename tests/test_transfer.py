"""Tests for course/transfer.py: metrics, L2-SP, fine-tuning, checkpoints, the comparison."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from course.dqn import DQNConfig, QNetwork, evaluate
from course.envs import CARTPOLE_TASKS, make_cartpole_vec
from course.multitask import MultiHeadQNetwork
from course.population import PopulationQNetwork
from course.transfer import (
    METRIC_NAMES,
    MULTITASK_SOURCE_CONFIG,
    ComparisonResult,
    TransferMetrics,
    _metrics_batch,
    compare_strategies,
    format_comparison,
    l2sp_penalty,
    l2sp_regularizer,
    load_checkpoint,
    multitask_source_state,
    prepare_finetune,
    pretrain_multitask_source,
    save_checkpoint,
    transfer_metrics,
    transfer_metrics_ci,
    zero_shot_returns,
)

# --- transfer_metrics ---------------------------------------------------------------------------


def test_metrics_on_hand_made_curves_with_uneven_steps():
    steps = torch.tensor([0, 10, 30])
    m = transfer_metrics(steps, torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 2.0]), 2.0)
    assert m == TransferMetrics(
        jumpstart=1.0,
        asymptotic_gain=0.0,
        time_to_threshold_scratch=30.0,
        time_to_threshold_transfer=10.0,
        transfer_ratio=pytest.approx((15 + 40) / (5 + 30)),
    )
    # unit spacing would give (1.5 + 2) / (0.5 + 1.5): the steps matter
    assert m.transfer_ratio != pytest.approx(3.5 / 2.0)


def test_threshold_reached_with_equality_and_never():
    steps = np.array([100, 200, 400, 800])
    m = transfer_metrics(steps, [1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], threshold=3.0)
    assert m.time_to_threshold_scratch == 400.0  # equal counts as reached
    assert m.time_to_threshold_transfer == 100.0  # the first step, not index 0
    m = transfer_metrics(steps, [1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], threshold=9.0)
    assert m.time_to_threshold_scratch is None and m.time_to_threshold_transfer is None


def test_negative_transfer_gives_negative_gains_and_ratio_below_one():
    m = transfer_metrics([0, 1, 2], [10.0, 20.0, 30.0], [5.0, 10.0, 15.0], 100.0)
    assert m.jumpstart == -5.0 and m.asymptotic_gain == -15.0
    assert m.transfer_ratio == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("steps", "scratch", "transfer", "match"),
    [
        ([0, 1, 2], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], "area under the scratch curve"),
        ([0, 1, 2], [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], "area under the scratch curve"),
        ([0, 2, 1], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], "strictly increasing"),
        ([0], [1.0], [1.0], "at least two"),
        ([0, 1], [1.0, 1.0, 1.0], [1.0, 1.0], "shapes"),
    ],
)
def test_metrics_reject_what_they_cannot_measure(steps, scratch, transfer, match):
    with pytest.raises(ValueError, match=match):
        transfer_metrics(steps, scratch, transfer, 1.0)


def test_batched_metrics_agree_with_transfer_metrics():
    rng = np.random.default_rng(0)
    steps = np.cumsum(rng.integers(1, 9, size=12)) * 100.0
    scratch = rng.uniform(10, 500, size=(20, 12))
    transfer = rng.uniform(10, 500, size=(20, 12))
    batch = _metrics_batch(steps, scratch, transfer, threshold=400.0)
    for r in range(20):
        m = transfer_metrics(steps, scratch[r], transfer[r], 400.0)
        for name in METRIC_NAMES:
            value = getattr(m, name)
            assert batch[name][r] == pytest.approx(math.inf if value is None else value)


def test_metric_intervals_bracket_the_mean_curve_metrics_and_are_deterministic():
    rng = np.random.default_rng(1)
    steps = np.array([0, 1000, 3000, 6000, 10000])
    scratch = np.clip(np.linspace(20, 300, 5) + rng.normal(0, 30, (6, 5)), 10, 500)
    transfer = np.clip(np.linspace(150, 480, 5) + rng.normal(0, 30, (6, 5)), 10, 500)
    cis = transfer_metrics_ci(steps, scratch, transfer, threshold=400.0, n_resamples=500)
    point = transfer_metrics(steps, scratch.mean(0), transfer.mean(0), 400.0)
    assert set(cis) == set(METRIC_NAMES)
    for name, ci in cis.items():
        value = getattr(point, name)
        assert ci.estimate == (math.inf if value is None else pytest.approx(value))
        assert ci.low <= ci.estimate <= ci.high or math.isinf(ci.estimate)
    assert math.isinf(cis["time_to_threshold_scratch"].estimate)  # scratch never reaches 400
    assert cis == transfer_metrics_ci(steps, scratch, transfer, 400.0, n_resamples=500)
    assert cis != transfer_metrics_ci(steps, scratch, transfer, 400.0, n_resamples=500, seed=1)


# --- l2sp_penalty --------------------------------------------------------------------------------


def _net(seed: int = 0, hidden: tuple[int, ...] = (3,), obs_dim: int = 2) -> QNetwork:
    net = QNetwork(obs_dim, 2, hidden)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return net


def test_penalty_by_hand():
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 2.0]]))
        net.bias.copy_(torch.tensor([3.0]))
    reference = {"weight": torch.tensor([[0.0, 0.0]]), "bias": torch.tensor([1.0])}
    # (1 + 4) + 4 = 9
    assert l2sp_penalty(net, reference, alpha=0.1).item() == pytest.approx(0.9)
    assert l2sp_penalty(net, reference, 0.1, exclude=("bias",)).item() == pytest.approx(0.5)
    assert l2sp_penalty(net, reference, 0.1, exclude=("weight", "bias")).item() == 0.0


def test_penalty_gradient_pulls_toward_the_reference_and_skips_excluded():
    net = _net()
    reference = {k: v.detach() + 0.5 for k, v in net.state_dict().items()}
    l2sp_penalty(net, reference, alpha=2.0, exclude=("head",)).backward()
    for name, p in net.named_parameters():
        if name.startswith("head"):
            assert p.grad is None
        else:  # d/dp 2 * (p - r)^2 = 4 (p - r) = -2
            torch.testing.assert_close(p.grad, torch.full_like(p, -2.0))


def test_penalty_only_covers_names_in_the_reference_and_leaves_it_alone():
    net = _net()
    reference = {"trunk.0.bias": torch.zeros(3)}
    kept = reference["trunk.0.bias"].clone()
    value = l2sp_penalty(net, reference, alpha=1.0)
    assert value.item() == pytest.approx(net.trunk[0].bias.pow(2).sum().item())
    assert torch.equal(reference["trunk.0.bias"], kept)
    with pytest.raises(KeyError, match="does not have"):
        l2sp_penalty(net, {"trunk.9.weight": torch.zeros(1)}, alpha=1.0)


def test_population_regularizer_matches_the_penalty_per_agent():
    population = PopulationQNetwork(
        3, 2, 2, (3,), generators=[torch.Generator().manual_seed(i) for i in range(3)]
    )
    reference = _net(seed=7).state_dict()
    alpha = torch.tensor([0.5, 0.0, 2.0])
    penalties = l2sp_regularizer(reference, alpha, exclude=("head",))(
        population.named_agent_parameters()
    )
    assert penalties.shape == (3,)
    for a in range(3):
        want = l2sp_penalty(population.agent(a), reference, float(alpha[a]), exclude=("head",))
        assert penalties[a].item() == pytest.approx(want.item(), rel=1e-5)


# --- prepare_finetune ----------------------------------------------------------------------------


def _same(a: nn.Module, b: dict[str, torch.Tensor]) -> dict[str, bool]:
    return {k: torch.equal(v, b[k]) for k, v in a.state_dict().items()}


def test_scratch_reinitialises_everything_deterministically():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.trunk.requires_grad_(False)
    out = prepare_finetune(net, "scratch", generator=torch.Generator().manual_seed(3))
    assert out is net
    assert not any(_same(net, before).values())
    assert all(p.requires_grad for p in net.parameters())
    bound = 2**-0.5  # fan_in 2
    assert net.trunk[0].weight.abs().max() <= bound
    again = prepare_finetune(_net(), "scratch", generator=torch.Generator().manual_seed(3))
    assert all(_same(again, net.state_dict()).values())


def test_full_keeps_weights_and_unfreezes():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.trunk.requires_grad_(False)
    prepare_finetune(net, "full")
    assert all(_same(net, before).values())
    assert all(p.requires_grad for p in net.parameters())


def test_freeze_trunk_freezes_the_trunk_and_refreshes_the_head():
    net = _net(hidden=(4, 4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    prepare_finetune(net, "freeze_trunk")
    same = _same(net, before)
    for name, p in net.named_parameters():
        assert p.requires_grad == name.startswith("head")
        assert same[name] == name.startswith("trunk")
    net(torch.randn(5, 2)).sum().backward()
    assert all(p.grad is None for p in net.trunk.parameters())
    assert net.head.weight.grad is not None
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in net.head.parameters()}


def test_freeze_trunk_refreshes_every_head_of_a_multi_head_network():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(2, 4), nn.ReLU())
            self.heads = nn.ModuleList([nn.Linear(4, 2), nn.Linear(4, 2)])

    net = TwoHeads()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(5.0)
    prepare_finetune(net, "freeze_trunk")
    assert all(not p.requires_grad for p in net.trunk.parameters())
    for head in net.heads:
        assert head.weight.requires_grad and head.weight.abs().max() <= 0.5


def test_l2sp_stores_a_copy_of_the_reference():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    prepare_finetune(net, "l2sp")
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    assert all(torch.equal(net.l2sp_reference[k], v) for k, v in before.items())
    penalty = l2sp_penalty(net, net.l2sp_reference, alpha=1.0)
    assert penalty.item() == pytest.approx(sum(v.numel() for v in before.values()))


def test_a_given_reference_is_loaded_and_anchors_the_penalty():
    source = _net(seed=1).state_dict()
    net = prepare_finetune(_net(seed=2), "l2sp", reference=source)
    assert all(_same(net, source).values())
    assert all(torch.equal(net.l2sp_reference[k], v) for k, v in source.items())


def test_unknown_strategy_and_unsplit_model_are_refused():
    with pytest.raises(ValueError, match="unknown strategy 'frozen'"):
        prepare_finetune(_net(), "frozen")
    with pytest.raises(ValueError, match="no `trunk`"):
        prepare_finetune(nn.Linear(2, 2), "full")


# --- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    config = DQNConfig(hidden=(3,), total_steps=123)
    net = _net()
    path = tmp_path / "source.pt"
    save_checkpoint(path, net.state_dict(), config, info={"task": "default", "seed": 0})
    loaded = load_checkpoint(path, expected_config=dataclasses.replace(config, total_steps=9))
    assert loaded.config == config
    assert (loaded.obs_dim, loaded.n_actions) == (2, 2)
    assert loaded.info == {"task": "default", "seed": 0}
    assert all(_same(loaded.network(), net.state_dict()).values())


def test_checkpoint_mismatches_are_clear_errors(tmp_path):
    net = _net()
    with pytest.raises(ValueError, match=r"hidden sizes \(3,\).*config.hidden is \(64, 64\)"):
        save_checkpoint(tmp_path / "a.pt", net.state_dict(), DQNConfig(hidden=(64, 64)))
    save_checkpoint(tmp_path / "b.pt", net.state_dict(), DQNConfig(hidden=(3,)))
    with pytest.raises(ValueError, match=r"use hidden=\(3,\)"):
        load_checkpoint(tmp_path / "b.pt", expected_config=DQNConfig(hidden=(64, 64)))
    torch.save({"weights": 1}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "c.pt")


# --- the comparison ------------------------------------------------------------------------------

TINY = DQNConfig(
    total_steps=200,
    num_envs=4,
    hidden=(8,),
    buffer_size=200,
    batch_size=16,
    learning_starts=100,
    updates_per_step=0.5,
    target_update_interval=20,
    eval_every=100,
    eval_episodes=2,
)
TINY_FT = dataclasses.replace(TINY, eps_start=0.1)
TARGETS = {"near": CARTPOLE_TASKS["long_pole"], "far": CARTPOLE_TASKS["very_long_pole"]}


def _compare(targets=TARGETS, seeds=(0, 1)) -> ComparisonResult:
    source = _net(hidden=(8,), obs_dim=4).state_dict()
    return compare_strategies(
        source, targets, seeds=seeds, config=TINY_FT, scratch_config=TINY, device="cpu"
    )


def test_tiny_comparison_shapes_and_determinism():
    result = _compare()
    assert result.steps.tolist() == [0, 100, 200]
    for target in TARGETS:
        assert list(result.curves[target]) == list(
            ("scratch", "scratch_same_eps", "full", "freeze_trunk", "l2sp")
        )
        for curve in result.curves[target].values():
            assert curve.shape == (2, 3)
    again = _compare()
    for target in TARGETS:
        for strategy, curve in result.curves[target].items():
            assert torch.equal(curve, again.curves[target][strategy])
    # the pretrained arms start from the same weights: equal first evaluations
    start = result.curves["near"]
    assert torch.equal(start["full"][:, 0], start["l2sp"][:, 0])
    assert torch.equal(start["scratch"][:, 0], start["scratch_same_eps"][:, 0])
    text = format_comparison(result, threshold=20.0, n_resamples=100)
    assert "near" in text and "freeze_trunk" in text and "0 source steps not counted" in text


def test_each_agent_trains_on_its_own_target():
    both = _compare(seeds=(0,))
    alone = _compare(targets={"far": TARGETS["far"]}, seeds=(0,))
    for strategy, curve in alone.curves["far"].items():
        assert torch.equal(curve, both.curves["far"][strategy]), strategy
    assert not torch.equal(both.curves["near"]["full"], both.curves["far"]["full"])


def test_comparison_refuses_mismatched_grids_and_unknown_strategies():
    source = QNetwork(4, 2, (8,)).state_dict()
    with pytest.raises(ValueError, match="agree on"):
        compare_strategies(
            source, TARGETS, config=TINY_FT, scratch_config=dataclasses.replace(TINY, eval_every=50)
        )
    with pytest.raises(ValueError, match="unknown strategies"):
        compare_strategies(source, TARGETS, ["full", "frozen"], config=TINY_FT, scratch_config=TINY)


# --- the multi-task starting point ---------------------------------------------------------------


def test_multitask_state_keeps_the_trunk_and_the_chosen_head():
    torch.manual_seed(0)
    net = MultiHeadQNetwork(obs_dim=4, n_actions=2, n_tasks=3, hidden=(8, 8))
    state = multitask_source_state(net, head=2)
    single = QNetwork(4, 2, (8, 8))
    single.load_state_dict(state)  # the names and shapes of a QNetwork
    obs = torch.randn(10, 4)
    expected = net(obs, torch.full((10,), 2))
    torch.testing.assert_close(single(obs), expected)
    assert not torch.allclose(single(obs), net(obs, torch.zeros(10, dtype=torch.long)))
    state["head.weight"].zero_()  # a copy: the multi-task network is untouched
    assert net.heads[2].weight.abs().sum() > 0
    with pytest.raises(ValueError, match="has 3 heads"):
        multitask_source_state(net, head=3)


def test_pretrained_multitask_source_has_one_head_per_task():
    config = dataclasses.replace(
        MULTITASK_SOURCE_CONFIG, steps_per_task=200, learning_starts=100, eval_every=100
    )
    net = pretrain_multitask_source(config, seed=0, device="cpu")
    assert isinstance(net, MultiHeadQNetwork) and net.n_tasks == 2
    assert net.hidden == MULTITASK_SOURCE_CONFIG.hidden
    again = pretrain_multitask_source(config, seed=0, device="cpu")
    for a, b in zip(net.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="needs 'heads'"):
        pretrain_multitask_source(dataclasses.replace(config, architecture="shared"))


def test_multitask_arm_is_full_finetuning_from_its_own_start():
    source = _net(hidden=(8,), obs_dim=4).state_dict()
    run = dict(seeds=(0,), config=TINY_FT, scratch_config=TINY, device="cpu")
    same = compare_strategies(source, TARGETS, ["full", "multitask"], multitask_state=source, **run)
    for target in TARGETS:  # the same start, seeds and config: the same curves as "full"
        assert torch.equal(same.curves[target]["multitask"], same.curves[target]["full"])
    other = _net(seed=1, hidden=(8,), obs_dim=4).state_dict()
    from_other = compare_strategies(source, TARGETS, ["multitask"], multitask_state=other, **run)
    as_source = compare_strategies(other, TARGETS, ["full"], **run)
    for target in TARGETS:  # it starts from multitask_state, not from the source
        assert torch.equal(from_other.curves[target]["multitask"], as_source.curves[target]["full"])


def test_multitask_arm_needs_a_matching_state():
    source = QNetwork(4, 2, (8,)).state_dict()
    run = dict(config=TINY_FT, scratch_config=TINY)
    with pytest.raises(ValueError, match="needs multitask_state"):
        compare_strategies(source, TARGETS, ["multitask"], **run)
    wider = QNetwork(4, 2, (16,)).state_dict()
    with pytest.raises(ValueError, match="same hidden sizes"):
        compare_strategies(source, TARGETS, ["multitask"], multitask_state=wider, **run)


def test_with_arms_adds_arms_run_later_on_the_same_grid():
    source = _net(hidden=(8,), obs_dim=4).state_dict()
    run = dict(seeds=(0,), config=TINY_FT, scratch_config=TINY, device="cpu")
    first = compare_strategies(source, TARGETS, ["scratch", "full"], **run)
    later = compare_strategies(source, TARGETS, ["multitask"], multitask_state=source, **run)
    both = first.with_arms(later)
    for target in TARGETS:
        assert list(both.curves[target]) == ["scratch", "full", "multitask"]
        assert torch.equal(both.curves[target]["multitask"], later.curves[target]["multitask"])
        assert list(first.curves[target]) == ["scratch", "full"]  # a new result, not a mutation
    with pytest.raises(ValueError, match="in both"):
        both.with_arms(later)
    other_seeds = compare_strategies(source, TARGETS, ["l2sp"], **{**run, "seeds": (1,)})
    with pytest.raises(ValueError, match="differ"):
        first.with_arms(other_seeds)


def test_zero_shot_returns_evaluate_the_untrained_network_on_each_task():
    state = _net(hidden=(8,), obs_dim=4).state_dict()
    tasks = {"default": CARTPOLE_TASKS["default"], "far": CARTPOLE_TASKS["very_long_pole"]}
    returns = zero_shot_returns(state, tasks, n_episodes=3, seed=7)
    assert list(returns) == ["default", "far"]
    net = QNetwork(4, 2, (8,))
    net.load_state_dict(state)
    make_env = lambda n: make_cartpole_vec([tasks["far"]], n)  # noqa: E731
    assert returns["far"] == evaluate(net, make_env, 3, seed=7).mean().item()
