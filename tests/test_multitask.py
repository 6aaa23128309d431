"""Tests for course/multitask.py: the Lesson 04 pieces by hand, then the trainers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from course import multitask as mt
from course.envs import CARTPOLE_TASKS, grid_tasks
from course.multitask import (
    MultiHeadQNetwork,
    MultiTaskConfig,
    SupervisedConfig,
    _agent_penalty,
    gradient_conflict,
    mean_regularizer,
    multitask_loss,
    pcgrad,
    per_task_mean,
    sine_data,
    sine_tasks,
    steps_to_threshold,
    task_param_groups,
    train_multitask_dqn,
    train_supervised,
)
from course.population import PopulationQNetwork, Purpose, seeded_generators

# --- MultiHeadQNetwork ------------------------------------------------------------------------


def test_each_row_is_answered_by_its_own_tasks_head():
    torch.manual_seed(0)
    net = MultiHeadQNetwork(obs_dim=3, n_actions=2, n_tasks=3, hidden=(8,))
    obs = torch.randn(6, 3)
    tasks = torch.tensor([2, 0, 1, 1, 2, 0])
    out = net(obs, tasks)
    features = net.trunk(obs)
    for b in range(6):
        expected = net.heads[int(tasks[b])](features[b])
        torch.testing.assert_close(out[b], expected)


def test_changing_one_head_changes_only_its_rows():
    torch.manual_seed(1)
    net = MultiHeadQNetwork(4, 2, 3, hidden=(8,))
    obs, tasks = torch.randn(9, 4), torch.tensor([0, 1, 2] * 3)
    before = net(obs, tasks).detach()
    with torch.no_grad():
        net.heads[1].bias.add_(1.0)
    changed = (net(obs, tasks).detach() != before).any(-1)
    assert changed.tolist() == (tasks == 1).tolist()


def test_task_parameters_are_exactly_one_heads():
    net = MultiHeadQNetwork(4, 2, 3, hidden=(8, 8))
    for k in range(3):
        assert {id(p) for p in net.task_parameters(k)} == {id(p) for p in net.heads[k].parameters()}
    trunk = {id(p) for p in net.trunk.parameters()}
    assert not trunk & {id(p) for k in range(3) for p in net.task_parameters(k)}


# --- losses -----------------------------------------------------------------------------------


def test_multitask_loss_by_hand():
    losses = torch.tensor([1.0, 2.0])
    params = [[torch.tensor([1.0, 2.0])], [torch.tensor([3.0]), torch.tensor([[1.0]])]]
    # 3 + 0.5 * (1 + 4 + 9 + 1)
    assert float(multitask_loss(losses, params, 0.5)) == pytest.approx(10.5)
    assert float(multitask_loss(losses, params, 0.0)) == pytest.approx(3.0)


def test_multitask_loss_gradient_is_weight_decay_on_the_heads():
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    loss = multitask_loss(torch.zeros(1), [[p]], lam=0.1)
    loss.backward()
    torch.testing.assert_close(p.grad, 0.2 * p.detach())


def test_mean_regularizer_by_hand():
    a, b, c = torch.tensor([0.0, 0.0]), torch.tensor([2.0, 0.0]), torch.tensor([4.0, 3.0])
    # mean (2, 1): squared distances 5 + 1 + 8
    assert float(mean_regularizer([[a], [b], [c]])) == pytest.approx(14.0)
    assert float(mean_regularizer([[a]])) == 0.0
    assert float(mean_regularizer([[b], [b.clone()]])) == 0.0


def test_mean_regularizer_is_pairwise_distances_over_2k():
    g = torch.Generator().manual_seed(0)
    params = [[torch.randn(3, 2, generator=g), torch.randn(3, generator=g)] for _ in range(4)]
    pairwise = sum(
        (params[i][n] - params[j][n]).pow(2).sum()
        for i in range(4)
        for j in range(4)
        for n in (0, 1)
    )
    assert float(mean_regularizer(params)) == pytest.approx(float(pairwise) / (2 * 4), rel=1e-5)


def test_population_penalties_match_the_library_per_agent():
    g = torch.Generator().manual_seed(3)
    stacked = [
        [torch.randn(5, 3, 2, generator=g), torch.randn(5, 1, 3, generator=g)] for _ in range(3)
    ]
    for kind, fn in [
        ("l2", lambda tp: multitask_loss(torch.zeros(1), tp, 1.0)),
        ("mean", mean_regularizer),
    ]:
        per_agent = _agent_penalty(stacked, kind)
        for a in range(5):
            expected = fn([[p[a] for p in params] for params in stacked])
            assert float(per_agent[a]) == pytest.approx(float(expected), rel=1e-5)


# --- parameter groups -------------------------------------------------------------------------


def test_task_param_groups_cover_every_parameter_once_with_its_lr():
    net = MultiHeadQNetwork(4, 2, 3, hidden=(8,))
    groups = task_param_groups(net, 1e-3, [1e-2, 2e-2, 3e-2])
    seen = [id(p) for group in groups for p in group["params"]]
    assert sorted(seen) == sorted(id(p) for p in net.parameters())
    lr_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    assert all(lr_of[id(p)] == 1e-3 for p in net.trunk.parameters())
    for k, lr in enumerate([1e-2, 2e-2, 3e-2]):
        assert all(lr_of[id(p)] == lr for p in net.heads[k].parameters())
    torch.optim.Adam(groups)  # accepted by PyTorch


# --- gradient conflict and PCGrad -------------------------------------------------------------


def test_gradient_conflict_is_cosine_similarity():
    grads = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([-3.0, 0.0])]
    expected = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    torch.testing.assert_close(gradient_conflict(grads), expected)


def test_gradient_conflict_of_a_zero_gradient_is_zero():
    sim = gradient_conflict([torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])])
    assert not torch.isnan(sim).any()
    torch.testing.assert_close(sim, torch.tensor([[0.0, 0.0], [0.0, 1.0]]))


def test_pcgrad_without_conflict_is_the_plain_sum():
    grads = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0])]
    torch.testing.assert_close(pcgrad(grads), torch.tensor([2.0, 3.0]))


def test_pcgrad_of_opposite_gradients_cancels():
    g = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(pcgrad([g, -2 * g]), torch.zeros(2))


def test_pcgrad_by_hand_and_inputs_untouched():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # a - (a.b)/|b|^2 b = (0.5, 0.5); b - (b.a)/|a|^2 a = (0, 1)
    torch.testing.assert_close(pcgrad([a, b]), torch.tensor([0.5, 1.5]))
    assert a.tolist() == [1.0, 0.0] and b.tolist() == [-1.0, 1.0]


@pytest.mark.parametrize("seed", range(20))
def test_pcgrad_result_does_not_conflict_with_either_gradient_k2(seed):
    g = torch.Generator().manual_seed(seed)
    a, b = (
        torch.randn(5, generator=g, dtype=torch.float64),
        torch.randn(5, generator=g, dtype=torch.float64),
    )
    out = pcgrad([a, b])
    assert float(out @ a) >= -1e-9 and float(out @ b) >= -1e-9


def test_pcgrad_order_comes_from_the_generator():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(4, generator=g) for _ in range(4)]
    first = pcgrad(grads, torch.Generator().manual_seed(5))
    again = pcgrad(grads, torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, again)


# --- population network and supervised warm-up ------------------------------------------------


def test_population_agent_matches_its_slice():
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    pop = PopulationQNetwork(3, 4, 2, (8, 8), n_heads=3, generators=gens)
    obs = torch.randn(3, 5, 4)
    tasks = torch.randint(0, 3, (3, 5))
    out = pop(obs, tasks)
    for a in range(3):
        torch.testing.assert_close(pop.agent(a)(obs[a], tasks[a]), out[a])


def test_per_task_mean():
    values = torch.tensor([[1.0, 3.0, 5.0, 7.0]])
    tasks = torch.tensor([[0, 0, 2, 2]])
    torch.testing.assert_close(per_task_mean(values, tasks, 3), torch.tensor([[2.0, 0.0, 6.0]]))


def test_sine_data_follows_the_tasks():
    tasks = sine_tasks(3, seed=1)
    x, y, ids = sine_data(tasks, 10, torch.Generator().manual_seed(0))
    assert (
        x.shape == (30, 1) and y.shape == (30,) and ids.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    )
    amp = torch.tensor(tasks.amplitudes, dtype=torch.float32)[ids]
    phase = torch.tensor(tasks.phases, dtype=torch.float32)[ids]
    torch.testing.assert_close(y, amp * torch.sin(x[:, 0] + phase))


def test_supervised_training_learns_and_is_deterministic():
    cfg = SupervisedConfig(steps=60)
    first = train_supervised(cfg, lams=(0.0, 0.1), seeds=(0, 1))
    again = train_supervised(cfg, lams=(0.0, 0.1), seeds=(0, 1))
    torch.testing.assert_close(first.test_mse, again.test_mse)
    assert first.test_mse.shape == (4, cfg.n_tasks)
    assert (first.train_loss[:, -1] < first.train_loss[:, 0]).all()
    assert set(first.history[0]) == {"train_mse", "penalty", "loss"}


def test_mean_regularizer_with_huge_lam_makes_heads_equal():
    cfg = SupervisedConfig(steps=150)
    result = train_supervised(cfg, lams=(1e4,), seeds=(0,), regularizer="mean")
    heads = [result.network.head_parameters(k) for k in range(cfg.n_tasks)]
    spread = max(
        float((heads[k][0] - heads[0][0]).detach().abs().max()) for k in range(cfg.n_tasks)
    )
    assert spread < 1e-2


# --- multi-task DQN ---------------------------------------------------------------------------

TINY = MultiTaskConfig(
    steps_per_task=400, envs_per_task=2, learning_starts=100, eval_every=200, buffer_size=1000
)


def test_multitask_dqn_is_deterministic_and_shaped():
    tasks = grid_tasks(start="uniform")[:2]
    first = train_multitask_dqn([tasks, tasks], seeds=[0, 1], config=TINY, lams=[0.0, 0.1])
    again = train_multitask_dqn([tasks, tasks], seeds=[0, 1], config=TINY, lams=[0.0, 0.1])
    torch.testing.assert_close(first.scores, again.scores)
    for p, q in zip(first.network.parameters(), again.network.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert first.scores.shape == (2, 3, 2)
    assert first.steps.tolist() == [0, 200, 400]
    assert first.total_steps.tolist() == [0, 400, 800]
    assert ((first.scores >= 0) & (first.scores <= 1 + 1e-6)).all()
    conflict = first.conflict[:, -1]
    assert conflict.shape == (2, 2, 2) and not torch.isnan(conflict).any()


def test_an_agent_does_not_depend_on_its_neighbours():
    tasks = grid_tasks(start="uniform")[:2]
    pair = train_multitask_dqn([tasks, tasks], seeds=[3, 4], config=TINY)
    alone = train_multitask_dqn([tasks], seeds=[4], config=TINY)
    torch.testing.assert_close(pair.scores[1], alone.scores[0])


@pytest.mark.parametrize(
    "variant",
    [
        {"architecture": "shared"},
        {"architecture": "task_input"},
        {"use_pcgrad": True, "regularizer": "mean", "lam": 0.1},
    ],
)
def test_multitask_dqn_variants_run(variant):
    tasks = grid_tasks(start="uniform")[:3]
    result = train_multitask_dqn([tasks], [0], dataclasses.replace(TINY, **variant))
    assert result.scores.shape == (1, 3, 3)


def test_multitask_dqn_on_cartpole_tasks():
    tasks = [CARTPOLE_TASKS["default"], CARTPOLE_TASKS["mirrored"]]
    cfg = dataclasses.replace(TINY, gamma=0.99, eval_episodes=2)
    result = train_multitask_dqn([tasks], [0], cfg)
    assert result.scores.shape == (1, 3, 2) and (result.scores >= 1).all()


def test_per_task_learning_rate_of_zero_freezes_that_head():
    tasks = grid_tasks(start="uniform")[:2]
    cfg = dataclasses.replace(TINY, task_lrs=(1e-3, 0.0))
    result = train_multitask_dqn([tasks], [0], cfg)
    fresh = PopulationQNetwork(
        1, 45, 4, cfg.hidden, n_heads=2, generators=seeded_generators([0], Purpose.INIT)
    )
    trained = result.network
    assert torch.equal(trained.head_parameters(1)[0], fresh.head_parameters(1)[0])
    assert not torch.equal(trained.head_parameters(0)[0], fresh.head_parameters(0)[0])


def test_a_typo_in_a_choice_fails_when_the_config_is_built():
    with pytest.raises(ValueError, match="regularizer"):
        dataclasses.replace(TINY, regularizer="mean_")
    with pytest.raises(ValueError, match="architecture"):
        dataclasses.replace(TINY, architecture="multihead")


def test_steps_to_threshold():
    steps = torch.tensor([0, 10, 20, 30])
    scores = torch.tensor([[0.1, 0.5, 0.9, 1.0], [0.0, 0.2, 0.3, 0.4]])
    out = steps_to_threshold(steps, scores, 0.9)
    assert out[0] == 20 and math.isinf(out[1])


# --- summaries, plots and the lam explorer ------------------------------------------------------


def test_summaries_plots_and_lam_explorer():
    from course.plots import (
        plot_conflict,
        plot_lam_sweep,
        plot_multitask_curves,
        plot_task_curves,
    )
    from course.widgets import LamExplorer

    tasks = grid_tasks(start="uniform")[:2]
    sweep = train_multitask_dqn([tasks] * 4, [0, 1, 0, 1], TINY, lams=[0.0, 0.0, 0.1, 0.1])
    lams, (estimate, low, high) = mt.lam_final_bands(sweep)
    assert lams.tolist() == [0.0, 0.1] and ((low <= estimate) & (estimate <= high)).all()
    assert "0.1" in mt.format_lam_sweep({"l2": sweep})
    assert "goal=(0,0)" in mt.format_final_scores({"heads": sweep})
    explorer = LamExplorer({"l2": sweep, "mean": sweep})
    explorer.slider.value = 0.1
    assert explorer.curves_figure.axes[0].get_title() == "lam = 0.1"
    plot_lam_sweep(lams, {"l2": (estimate, low, high)}, "score", selected=0.0)
    plot_multitask_curves(sweep.steps, {"heads": mt.score_band(sweep)}, threshold=0.5)
    fig = plot_task_curves(sweep.steps, {"a": {"heads": mt.score_band(sweep, task=0)}}, 0.5)
    assert fig.axes[0].get_title() == "a"
    plot_conflict(mt.mean_conflict(sweep), ["a", "b"])


def test_compare_with_singles_per_task_and_total_steps():
    tasks = grid_tasks(start="uniform")[:2]
    multi = train_multitask_dqn([tasks, tasks], [0, 1], TINY)
    single_cfg = mt.single_task_config(TINY, 2)
    singles = train_multitask_dqn([[t] for _ in range(2) for t in tasks], [0, 0, 1, 1], single_cfg)
    comparison = mt.compare_with_singles(multi, singles, threshold=0.0)
    assert comparison.steps_multitask.tolist() == [[0.0, 0.0], [0.0, 0.0]]  # at the first eval
    torch.testing.assert_close(comparison.final_singles, singles.final_scores.view(2, 2))
    text = mt.format_singles_comparison(comparison)
    assert "paired seeds" in text and "total steps" in text
    with pytest.raises(ValueError, match="seed"):
        mt.compare_with_singles(
            multi, dataclasses.replace(singles, seeds=torch.tensor([1, 1, 0, 0])), 0.0
        )
    longer = train_multitask_dqn(
        [[t] for _ in range(2) for t in tasks],
        [0, 0, 1, 1],
        dataclasses.replace(single_cfg, steps_per_task=600),
    )
    with pytest.raises(ValueError, match="same steps"):
        mt.compare_with_singles(multi, longer, 0.0)


def test_total_steps_count_never_at_the_budget():
    inf = math.inf
    c = mt.SinglesComparison(
        steps_multitask=torch.tensor([[100.0, 300.0], [inf, 200.0]]),
        steps_singles=torch.tensor([[100.0, 300.0], [inf, inf]]),
        final_multitask=torch.zeros(2, 2),
        final_singles=torch.zeros(2, 2),
        budget=1000,
        task_names=["a", "b"],
    )
    multi, singles = c.total_steps()
    assert multi.tolist() == [600.0, 2000.0]  # K times the slowest task: it steps every task
    assert singles.tolist() == [400.0, 2000.0]  # the sum of the single-task agents' times
    total = mt.singles_verdicts(c)[-1]
    assert "1 of multi-task's seeds, 1 of singles's" in total.note


def test_single_task_config_matches_the_multitask_agent_per_task():
    cfg = mt.single_task_config(mt.LESSON_CONFIG, 4)
    base = mt.LESSON_CONFIG
    assert cfg.steps_per_task == base.steps_per_task
    # updates per step of the task, rows of the task per update, replay per task
    assert cfg.updates_per_step == base.updates_per_step * 4
    assert cfg.batch_size * 4 == base.batch_size and cfg.buffer_size * 4 == base.buffer_size
    assert cfg.learning_starts * 4 == base.learning_starts
    assert cfg.exploration_fraction == base.exploration_fraction
    with pytest.raises(ValueError, match="multiples"):
        mt.single_task_config(dataclasses.replace(base, batch_size=126), 4)


def test_lam_verdicts_pair_seeds_and_name_the_better_arm():
    per_seed = {
        "l2": {0.0: np.array([1.0, 2.0, 3.0]), 0.1: np.array([1.5, 2.4, 3.6])},
        "mean": {0.0: np.array([1.0, 2.0, 3.0]), 0.1: np.array([0.5, 1.6, 2.4])},
    }
    verdicts = [v.verdict for v in mt.lam_verdicts(per_seed, higher_is_better=True)]
    assert verdicts == ["l2 lam=0.1 better", "lam=0 better", "l2 lam=0.1 better"]
    lower = [v.verdict for v in mt.lam_verdicts(per_seed, higher_is_better=False)]
    assert lower[0] == "lam=0 better"


def test_rescaled_trunk_keeps_q_and_divides_the_head_weight_penalty():
    torch.manual_seed(0)
    net = MultiHeadQNetwork(3, 2, 2, hidden=(8, 8))
    obs = torch.randn(10, 3)
    out = mt.dodge(net, obs, c=4.0)
    assert out.max_q_change < 1e-5
    before, after = out.head_weight_penalty
    assert after == pytest.approx(before / 16, rel=1e-5)
    assert out.trunk_penalty[1] > out.trunk_penalty[0]
    twin = mt.rescale_trunk(net, 4.0)
    torch.testing.assert_close(twin.trunk[0].weight, net.trunk[0].weight)  # only the last layer
    assert "largest change" in str(out)
    with pytest.raises(ValueError, match="positive"):
        mt.rescale_trunk(net, -1.0)


def test_penalising_the_trunk_shrinks_it():
    tasks = grid_tasks(start="uniform")[:2]
    cfg = dataclasses.replace(TINY, lam=1.0)
    heads_only = mt.norms_per_lam(train_multitask_dqn([tasks], [0], cfg, lams=[1.0]))
    both = mt.norms_per_lam(
        train_multitask_dqn([tasks], [0], dataclasses.replace(cfg, penalize_trunk=True), lams=[1.0])
    )
    assert both["trunk"][1.0][0] < 0.5 * heads_only["trunk"][1.0][0]


def test_format_norm_change_says_where_the_norm_is_larger():
    tasks = grid_tasks(start="uniform")[:2]
    sweep = train_multitask_dqn([tasks] * 4, [0, 1, 0, 1], TINY, lams=[0.0, 0.0, 1.0, 1.0])
    text = mt.format_norm_change(sweep, 1.0)
    assert text.startswith("trunk ||.||^2, lam=1 - lam=0") and "heads ||.||^2" in text
    assert "better" not in text


def test_noise_baseline_is_measured_without_changing_training():
    tasks = grid_tasks(start="uniform")[:2]
    plain = train_multitask_dqn([tasks, tasks], [0, 1], TINY)
    with pytest.raises(ValueError, match="noise_baseline"):
        mt.conflict_curves(plain)
    noisy = train_multitask_dqn(
        [tasks, tasks], [0, 1], dataclasses.replace(TINY, noise_baseline=True)
    )
    torch.testing.assert_close(noisy.scores, plain.scores)
    torch.testing.assert_close(noisy.conflict, plain.conflict, equal_nan=True)
    assert noisy.same_task.shape == (2, 3, 2)
    assert torch.isnan(noisy.same_task[:, 0]).all()  # no data at step 0
    later = noisy.same_task[:, 1:]
    assert ((later >= -1) & (later <= 1)).all()
    cross, same = mt.conflict_curves(noisy)
    assert cross.shape == same.shape == (2, 3)
    assert "one task, 2 batches" in mt.format_conflict_over_training(noisy)


def test_concat_results_joins_the_agents_of_two_runs():
    tasks = grid_tasks(start="uniform")[:2]
    a = train_multitask_dqn([tasks], [0], TINY)
    b = train_multitask_dqn([tasks, tasks], [1, 2], TINY, lams=[0.1, 0.1])
    both = mt.concat_results([a, b])
    assert both.seeds.tolist() == [0, 1, 2] and both.lams.tolist() == [0.0, 0.1, 0.1]
    torch.testing.assert_close(both.scores, torch.cat([a.scores, b.scores]))
    torch.testing.assert_close(both.network.agent_state_dict(2), b.network.agent_state_dict(1))
    assert mt.lam_per_seed(both)[0.1].shape == (2,)
    with pytest.raises(ValueError, match="steps"):
        longer = dataclasses.replace(TINY, steps_per_task=600)
        mt.concat_results([a, train_multitask_dqn([tasks], [0], longer)])


# --- one population for several variants -------------------------------------------------------


def test_variants_in_one_population_match_their_own_runs():
    tasks = grid_tasks(start="uniform")[:2]
    variants = {
        "plain": {},
        "l2": {"lam": 0.1},
        "mean": {"lam": 0.1, "regularizer": "mean"},
        "trunk": {"lam": 0.1, "penalize_trunk": True},
    }
    together = mt.train_variants(tasks, [0, 1], TINY, variants)
    assert list(together) == list(variants)
    for name, changes in variants.items():
        alone = train_multitask_dqn([tasks, tasks], [0, 1], dataclasses.replace(TINY, **changes))
        part = together[name]
        assert part.config == alone.config and part.seeds.tolist() == [0, 1]
        torch.testing.assert_close(part.scores, alone.scores)
        torch.testing.assert_close(part.conflict, alone.conflict, equal_nan=True)
        for p, q in zip(part.network.parameters(), alone.network.parameters(), strict=True):
            torch.testing.assert_close(p, q)
    assert together["l2"].lams.tolist() == [0.1, 0.1]


def test_variants_refuse_what_cannot_differ_within_a_population():
    tasks = grid_tasks(start="uniform")[:2]
    with pytest.raises(ValueError, match="use_pcgrad"):
        mt.train_variants(tasks, [0], TINY, {"a": {}, "b": {"use_pcgrad": True}})
    with pytest.raises(ValueError, match="'heads' agents need a population of their own"):
        mt.train_variants(tasks, [0], TINY, {"a": {}, "b": {"architecture": "shared"}})
    with pytest.raises(ValueError, match="regularizers"):
        train_multitask_dqn([tasks, tasks], [0, 1], TINY, regularizers=["l2"])
    with pytest.raises(ValueError, match="'l2' or 'mean'"):
        train_multitask_dqn([tasks], [0], TINY, lams=[0.1], regularizers=["l1"])


def test_take_agents_is_the_inverse_of_concat_results():
    tasks = grid_tasks(start="uniform")[:2]
    a = train_multitask_dqn([tasks], [0], TINY)
    b = train_multitask_dqn([tasks, tasks], [1, 2], TINY, lams=[0.1, 0.1])
    both = mt.concat_results([a, b])
    back = mt.take_agents(both, [1, 2])
    assert back.seeds.tolist() == [1, 2] and back.lams.tolist() == [0.1, 0.1]
    torch.testing.assert_close(back.scores, b.scores)
    torch.testing.assert_close(back.network.agent_state_dict(1), b.network.agent_state_dict(1))
    assert back.history[-1]["score"] == pytest.approx(float(b.scores[:, -1].mean()))
    with pytest.raises(ValueError, match="indices"):
        mt.take_agents(both, [3])


def test_grid_scores_are_the_exact_value_of_each_greedy_policy():
    from course.mdp import greedy_policy, policy_evaluation, value_iteration

    tasks = grid_tasks(start="uniform")[:3]
    agent_tasks = [tasks, tasks[::-1]]
    gens = seeded_generators([5, 6], Purpose.INIT)
    net = PopulationQNetwork(2, 45, 4, (16,), n_heads=3, generators=gens)
    obs_table = mt.grid_observations(tasks)
    solved = {t: mt._solve_grid(t) for t in tasks}
    scores = mt._grid_scores(net, agent_tasks, obs_table, solved)
    for a, tasks_a in enumerate(agent_tasks):
        for k, task in enumerate(tasks_a):
            mdp = task.mdp()
            q = net(obs_table.unsqueeze(0).expand(2, -1, -1), torch.full((2, 45), k))[a]
            V = policy_evaluation(mdp, greedy_policy(q.detach().double()))
            optimum = float(mdp.initial @ value_iteration(mdp)[0])
            assert float(scores[a, k]) == pytest.approx(float(mdp.initial @ V) / optimum, abs=1e-5)


def test_supervised_sweep_trains_each_regulariser_as_train_supervised_does():
    cfg = SupervisedConfig(steps=30)
    both = mt.supervised_sweep(cfg, lams=(0.0, 1.0), seeds=(0, 1))
    for name in ("l2", "mean"):
        alone = train_supervised(cfg, lams=(0.0, 1.0), seeds=(0, 1), regularizer=name)
        torch.testing.assert_close(both[name].test_mse, alone.test_mse)
        torch.testing.assert_close(both[name].train_loss, alone.train_loss)
        assert both[name].regularizer == name and both[name].lams.tolist() == [0.0, 0.0, 1.0, 1.0]
        assert both[name].history[-1] == pytest.approx(alone.history[-1])
    with pytest.raises(ValueError, match="regularizers"):
        mt.supervised_sweep(cfg, regularizers=("l1",))


def test_task_input_and_shared_agents_share_a_population():
    tasks = grid_tasks(start="uniform")[:2]
    one_head = {"task_input": {"architecture": "task_input"}, "shared": {"architecture": "shared"}}
    together = mt.train_variants(tasks, [0, 1], TINY, one_head)
    for name, changes in one_head.items():
        alone = train_multitask_dqn([tasks, tasks], [0, 1], dataclasses.replace(TINY, **changes))
        torch.testing.assert_close(together[name].scores, alone.scores)
        assert together[name].config.architecture == name
    # a shared agent's task input is always 0: its first layer's task columns never move
    gens = seeded_generators([0], Purpose.INIT)
    fresh = PopulationQNetwork(1, 47, 4, TINY.hidden, generators=gens).agent_state_dict(0)
    trained = together["shared"].network.agent_state_dict(0)["trunk.0.weight"]
    torch.testing.assert_close(trained[:, 45:], fresh["trunk.0.weight"][:, 45:])
