"""Tests for course/transfer.py: metrics, L2-SP, fine-tuning, checkpoints, the comparison."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from course.dqn import DQNConfig, QNetwork
from course.envs import GRID_LAYOUT, GridTask, make_grid_vec
from course.mdp import greedy_policy, policy_evaluation, value_iteration
from course.multitask import MultiHeadQNetwork
from course.population import PopulationQNetwork
from course.transfer import (
    BENCHMARK_RESULTS,
    METRIC_NAMES,
    MULTITASK_SOURCE_CONFIG,
    SOURCE_CONFIG,
    ComparisonResult,
    TransferMetrics,
    _metrics_batch,
    benchmark_config,
    compare_strategies,
    exact_scores,
    format_arms,
    format_benchmark,
    format_l2sp_sweep,
    l2sp_penalty,
    l2sp_regularizer,
    load_benchmark,
    load_checkpoint,
    multitask_source_state,
    per_source,
    prepare_finetune,
    pretrain_multitask_sources,
    pretrain_sources,
    save_benchmark,
    save_checkpoint,
    transfer_metrics,
    zero_shot_scores,
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


# --- exact scores --------------------------------------------------------------------------------


def _task(goal) -> GridTask:
    return GridTask(GRID_LAYOUT, goal, start="uniform")


def test_exact_scores_are_the_normalised_value_of_the_greedy_policy():
    near, far = _task((1, 6)), _task((6, 0))
    mdp = near.mdp()
    _, q_star = value_iteration(mdp)
    rng = torch.Generator().manual_seed(0)
    noisy = q_star + 0.3 * torch.rand(q_star.shape, generator=rng, dtype=torch.float64)
    scores = exact_scores(torch.stack([q_star, noisy, q_star]).float(), [near, near, far])
    optimum = float(mdp.initial @ policy_evaluation(mdp, greedy_policy(q_star)))
    expected = float(mdp.initial @ policy_evaluation(mdp, greedy_policy(noisy))) / optimum
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] == pytest.approx(expected, abs=1e-5) and scores[1] < 0.99
    assert scores[2] < 0.1  # the near goal's optimal policy walks away from the far goal
    with pytest.raises(ValueError, match="one task per row"):
        exact_scores(q_star[None].float(), [near, far])


def test_zero_shot_scores_score_each_network_on_each_task():
    obs = torch.from_numpy(make_grid_vec([_task((0, 6))]).observations())
    net = QNetwork(obs.shape[1], 4, (8,))
    scores = zero_shot_scores([net.state_dict()] * 2, {"a": _task((0, 6)), "b": _task((6, 0))})
    with torch.no_grad():
        q = net(obs)
    assert list(scores) == ["a", "b"]
    assert torch.equal(scores["b"], exact_scores(torch.stack([q, q]), [_task((6, 0))] * 2))


# --- the comparison ------------------------------------------------------------------------------

TINY = dataclasses.replace(SOURCE_CONFIG, total_steps=200, learning_starts=100, eval_every=100)
TINY_FT = dataclasses.replace(TINY, eps_start=0.2)
TARGETS = {"near": _task((1, 6)), "far": _task((6, 0))}


@pytest.fixture(scope="module")
def sources():
    return pretrain_sources([0, 1], TINY, device="cpu")


def _compare(sources, targets=TARGETS, seeds=(0, 1), **kwargs) -> ComparisonResult:
    return compare_strategies(
        sources.states,
        targets,
        seeds=seeds,
        config=TINY_FT,
        scratch_config=TINY,
        l2sp_alphas=(0.1, 10.0),
        device="cpu",
        **kwargs,
    )


def test_sources_are_deterministic_and_scored_on_the_source_task(sources):
    again = pretrain_sources([0, 1], TINY, device="cpu")
    assert sources.steps == 200 and sources.scores.shape == (2,)
    for a, b in zip(sources.states, again.states, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    zero = zero_shot_scores(sources.states, {"source": _task((0, 6))})["source"]
    assert torch.allclose(zero, sources.scores)


def test_comparison_shapes_determinism_and_shared_starts(sources):
    result = _compare(sources)
    arms = ["scratch", "scratch_same_eps", "full", "freeze_trunk", "l2sp_0.1", "l2sp_10"]
    assert result.steps.tolist() == [0, 100, 200]
    assert result.source_of_seed == (0, 1) and result.alphas == {"l2sp_0.1": 0.1, "l2sp_10": 10.0}
    again = _compare(sources)
    for target in TARGETS:
        assert list(result.curves[target]) == arms
        for arm in arms:
            assert result.curves[target][arm].shape == (2, 3)
            assert torch.equal(result.curves[target][arm], again.curves[target][arm])
            assert torch.equal(result.source_curves[target][arm], again.source_curves[target][arm])
    near = result.curves["near"]
    assert torch.equal(near["full"][:, 0], near["l2sp_0.1"][:, 0])  # the same pretrained start
    assert torch.equal(near["scratch"][:, 0], near["scratch_same_eps"][:, 0])
    # a pretrained start scores on the source task what its source network scores
    src = result.source_curves["far"]["full"][:, 0]
    assert torch.allclose(src, sources.scores)
    assert torch.allclose(near["full"][:, 0], zero_shot_scores(sources.states, TARGETS)["near"])


def test_frozen_trunk_does_not_move_and_l2sp_keeps_the_trunk_closer(sources):
    result = _compare(sources)
    for target in TARGETS:
        assert np.all(result.measure(target, "freeze_trunk", "distance") == 0)
        full = result.measure(target, "full", "distance")
        assert np.all(full > 0)
        assert np.all(result.measure(target, "l2sp_10", "distance") < full)


def test_each_agent_trains_on_its_own_target(sources):
    both = _compare(sources, seeds=(0,), strategies=["full"])
    alone = _compare(sources, targets={"far": TARGETS["far"]}, seeds=(0,), strategies=["full"])
    assert torch.equal(alone.curves["far"]["full"], both.curves["far"]["full"])


def test_measures_and_paired_comparisons(sources):
    result = _compare(sources)
    curve = result.curves["near"]["full"].double().numpy()
    x = result.steps.double().numpy()
    assert np.allclose(result.measure("near", "full", "final"), curve[:, -1])
    area = np.trapezoid(curve, x, axis=1) / x[-1]
    assert np.allclose(result.measure("near", "full", "area"), area)
    steps = result.measure("near", "full", "steps_to_threshold", threshold=-1.0)
    assert np.all(steps == 0)
    assert np.all(np.isinf(result.measure("near", "full", "steps_to_threshold", threshold=2.0)))
    assert result.reached("near", "full", threshold=-1.0) == 2
    same = result.compare("near", "full", "full", "final", "start")
    assert same.names == ("full final", "full start")
    assert same.paired and same.n == 2
    censored = result.compare("near", "full", "scratch", "steps_to_threshold", threshold=2.0)
    assert "never = 200 steps: 2 run(s) of full, 2 of scratch" in str(censored)
    with pytest.raises(ValueError, match="unknown measure"):
        result.measure("near", "full", "best")
    text = format_arms(result)
    assert "freeze_trunk" in text and "200 source steps" not in text
    assert "0.1" in format_l2sp_sweep(result, "near")


def test_comparison_refuses_mismatched_grids_unknown_strategies_and_sources(sources):
    with pytest.raises(ValueError, match="agree on"):
        compare_strategies(
            sources.states, config=TINY_FT, scratch_config=dataclasses.replace(TINY, eval_every=50)
        )
    with pytest.raises(ValueError, match="unknown strategy"):
        _compare(sources, strategies=["full", "frozen"])
    wider = QNetwork(45, 4, (16,)).state_dict()
    with pytest.raises(ValueError, match="same sizes"):
        _compare(type(sources)([sources.states[0], wider], sources.scores, 1))


def test_per_source_averages_the_seeds_of_each_source():
    assert per_source([1.0, 2.0, 3.0, 5.0], [0, 1, 0, 1]).tolist() == [2.0, 3.5]


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


def test_multitask_sources_cost_the_same_source_steps():
    config = dataclasses.replace(
        MULTITASK_SOURCE_CONFIG, steps_per_task=100, learning_starts=100, eval_every=50
    )
    multi = pretrain_multitask_sources([0, 1], config, device="cpu")
    assert multi.steps == 200 and len(multi.states) == 2
    assert set(multi.states[0]) == set(QNetwork(45, 4, config.hidden).state_dict())
    assert MULTITASK_SOURCE_CONFIG.steps_per_task * 2 == SOURCE_CONFIG.total_steps
    with pytest.raises(ValueError, match="needs 'heads'"):
        pretrain_multitask_sources([0], dataclasses.replace(config, architecture="shared"))


# --- the benchmark's stored results ---------------------------------------------------------------


def test_stored_benchmark_matches_the_current_configuration():
    data = load_benchmark()  # raises if the file was made with another configuration
    config = data["config"]
    assert config == benchmark_config(
        config["seeds"], config["n_sources"], config["scratch_config"]["total_steps"]
    )
    assert config == benchmark_config()  # the benchmark's defaults made it
    n = config["seeds"]
    for kind, targets in data["runs"].items():
        for arms in targets.values():
            for measures in arms.values():
                assert all(len(values) == n for values in measures.values()), kind
    assert "area per source network" in format_benchmark(data)


def test_a_stale_results_file_is_refused(tmp_path):
    data = json.loads(BENCHMARK_RESULTS.read_text())
    data["config"]["l2sp_alphas"] = [123.0]
    save_benchmark(data, tmp_path / "transfer.json")
    with pytest.raises(ValueError, match="rerun benchmarks/bench_transfer.py"):
        load_benchmark(tmp_path / "transfer.json")


def test_regenerating_one_seed_reproduces_the_stored_numbers():
    data = load_benchmark()
    config = data["config"]
    source_cfg, finetune, scratch = (
        DQNConfig(**{**config[key], "hidden": tuple(config[key]["hidden"])})
        for key in ("source_config", "finetune_config", "scratch_config")
    )
    source = pretrain_sources(config["source_seeds"][:1], source_cfg, device="cpu")
    assert source.scores[0].item() == pytest.approx(data["source_scores"]["single"][0])
    result = compare_strategies(
        source.states, strategies=["full"], seeds=[0], config=finetune, scratch_config=scratch
    )
    for target, arms in data["runs"]["single"].items():
        for measure in ("start", "final", "area"):
            stored = arms["full"][measure][0]
            assert result.measure(target, "full", measure)[0] == pytest.approx(stored, abs=1e-6)


# --- finetune_update ----------------------------------------------------------------------------


def _batch(seed: int = 0, n: int = 16, obs_dim: int = 2):
    from course.replay import Batch

    g = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randn(n, obs_dim, generator=g),
        actions=torch.randint(0, 2, (n,), generator=g),
        rewards=torch.randn(n, generator=g),
        next_obs=torch.randn(n, obs_dim, generator=g),
        terminated=torch.rand(n, generator=g) < 0.3,
        tasks=torch.zeros(n, dtype=torch.int64),
    )


def _trainable_sgd(net: nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr)


def test_finetune_update_without_anchor_is_the_dqn_update():
    from course.dqn import dqn_update
    from course.transfer import finetune_update

    a, b, target = _net(0), _net(0), _net(1)
    loss_a = finetune_update(a, target, _trainable_sgd(a), _batch(), 0.9, alpha=5.0)
    loss_b = dqn_update(b, target, _trainable_sgd(b), _batch(), 0.9)
    assert loss_a == pytest.approx(loss_b)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_finetune_update_leaves_a_frozen_trunk_and_trains_the_fresh_head():
    from course.transfer import finetune_update

    net, target = _net(0), _net(1)
    prepare_finetune(net, "freeze_trunk", generator=torch.Generator().manual_seed(0))
    trunk = [p.detach().clone() for p in net.trunk.parameters()]
    head = [p.detach().clone() for p in net.head.parameters()]
    finetune_update(net, target, _trainable_sgd(net), _batch(), 0.9)
    assert all(torch.equal(p, q) for p, q in zip(net.trunk.parameters(), trunk, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(net.head.parameters(), head, strict=True))


def test_finetune_update_pulls_the_trunk_back_toward_the_pretrained_weights():
    from course.transfer import finetune_update

    net, target = _net(0), _net(1)
    prepare_finetune(net, "l2sp")
    anchor = {k: v.clone() for k, v in net.l2sp_reference.items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5)  # moved away from the anchor

    def distance(model):
        return sum(
            float((p.detach() - anchor[n]).pow(2).sum())
            for n, p in model.named_parameters()
            if n.startswith("trunk")
        )

    before = distance(net)
    free = copy.deepcopy(net)
    del free.l2sp_reference
    finetune_update(net, target, _trainable_sgd(net, lr=0.05), _batch(), 0.9, alpha=10.0)
    finetune_update(free, target, _trainable_sgd(free, lr=0.05), _batch(), 0.9, alpha=10.0)
    assert distance(net) < before and distance(net) < distance(free)
    assert all(torch.equal(net.l2sp_reference[k], v) for k, v in anchor.items())
