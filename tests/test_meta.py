"""Tests for course/meta.py (Lesson 06): Reptile, task splits, and the sine experiment."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from course import meta
from course.dqn import DQNConfig
from course.envs import CartPoleTask
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


@pytest.mark.parametrize("hidden", [1, 7])
def test_mse_grads_are_autograds(hidden):
    """The hand-written backward pass of the sine networks against autograd, in float64."""
    init = meta._init_mlp(3, hidden, [torch.Generator().manual_seed(s) for s in range(3)])
    params = [p.double().requires_grad_(True) for p in init]
    x = torch.randn(3, 5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    loss = (meta._mlp(params, x) - y).pow(2).mean(dim=1).sum()
    want = torch.autograd.grad(loss, params)
    got = meta._mse_grads([p.detach() for p in params], x, y)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


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


def test_lr_sweep_and_choice(small_run):
    split = sine_split()
    sweep = meta.adaptation_lr_sweep(small_run, split.validation, (0.001, 0.02), steps=4)
    assert set(sweep) == set(small_run.mse) and sweep["reptile"].shape == (2, 3)
    chosen = meta.choose_lr(sweep, (0.001, 0.02))
    assert chosen["scratch"] == 0.02  # a tiny rate barely moves an untrained network
    # the sweep at the trained rate reproduces the result's own errors on those tasks
    cfg = dataclasses.replace(small_run.config, eval_steps=4)
    direct = meta.adapt_sine(small_run.inits["reptile"], split.validation, cfg, 10**6)
    torch.testing.assert_close(sweep["reptile"][1], direct[:, :, 4].mean(1))


def test_sine_comparisons_are_paired_and_lower_is_better(small_run):
    reptile, mixture, zero = meta.sine_comparisons(small_run.mse, steps=4)
    assert reptile.names == ("reptile", "pretrained") and reptile.paired
    assert not reptile.higher_is_better and reptile.n == 3
    diff = (small_run.after("reptile", 4) - small_run.after("pretrained", 4)).mean()
    assert reptile.difference.estimate == pytest.approx(float(diff), rel=1e-5)
    assert "before adapting" in zero.names[0]


# --- CartPole -----------------------------------------------------------------------------------


TINY = DQNConfig(
    total_steps=400,
    num_envs=4,
    hidden=(8,),
    buffer_size=400,
    batch_size=16,
    learning_starts=100,
    eval_every=200,
    eval_episodes=4,
)


def test_cartpole_split_is_stratified_sorted_and_reproducible():
    split = meta.cartpole_split(meta.LENGTH_FAMILY, 4, 4, 8, seed=3)
    assert (len(split.train), len(split.validation), len(split.test)) == (4, 4, 8)
    for part in (split.train, split.validation, split.test):
        lengths = [t.length for t in part]
        assert lengths == sorted(lengths)
        # log-uniform on [0.25, 2], one task per equal-probability slice
        u = torch.log(torch.tensor(lengths) / 0.25) / torch.log(torch.tensor(8.0))
        slices = (u * len(lengths)).floor().long().tolist()
        assert slices == list(range(len(lengths)))
    assert meta.cartpole_split(meta.LENGTH_FAMILY, 4, 4, 8, seed=3) == split
    assert meta.cartpole_split(meta.LENGTH_FAMILY, 4, 4, 8, seed=4) != split
    with pytest.raises(ValueError, match="at least one task"):
        meta.cartpole_split(meta.LENGTH_FAMILY, 0, 4, 8)


def test_task_returns_match_evaluate_per_task():
    from course.dqn import QNetwork, evaluate
    from course.envs import make_cartpole_vec

    torch.manual_seed(0)
    net = QNetwork(4, 2, (8,))
    tasks = [CartPoleTask(length=0.3), CartPoleTask(length=1.5)]
    got = meta.task_returns([net], tasks, n_episodes=3, seed=7)
    assert got.shape == (1, 2)
    # a constant policy's episodes do not depend on the other sub-envs: compare with one task
    for k, task in enumerate(tasks):
        alone = evaluate(net, lambda n, task=task: make_cartpole_vec([task], n), 3, seed=7 + 3 * k)
        assert got[0, k].item() == pytest.approx(alone.mean().item())


def test_parts_returns_match_task_returns_part_by_part():
    from course.dqn import QNetwork

    torch.manual_seed(1)
    nets = [QNetwork(4, 2, (8,)) for _ in range(3)]
    parts = [[CartPoleTask(length=0.3)], [CartPoleTask(length=1.0), CartPoleTask(length=2.5)]]
    together = meta.parts_returns(nets, parts, n_episodes=3, seed=11)
    assert [r.shape for r in together] == [(3, 1), (3, 2)]
    for tasks, got in zip(parts, together):
        torch.testing.assert_close(got, meta.task_returns(nets, tasks, n_episodes=3, seed=11))
    with pytest.raises(ValueError, match="at least one network"):
        meta.parts_returns(nets, [[]], n_episodes=3)


def test_parts_returns_of_any_modules_match_the_stacked_q_networks():
    """Q-networks of one size run stacked; other modules (and mixed sizes) one by one, alike."""
    from torch import nn

    from course.dqn import QNetwork

    torch.manual_seed(2)
    nets = [QNetwork(4, 2, (8,)) for _ in range(2)] + [QNetwork(4, 2, (6, 5))]
    parts = [[CartPoleTask(length=0.4), CartPoleTask(length=1.5)]]
    plain = [nn.Sequential(net.trunk, net.head) for net in nets]
    mixed = meta.parts_returns(nets, parts, n_episodes=2)[0]
    torch.testing.assert_close(meta.parts_returns(plain, parts, n_episodes=2)[0], mixed)
    torch.testing.assert_close(meta.parts_returns(nets[:2], parts, n_episodes=2)[0], mixed[:2])


@pytest.fixture(scope="module")
def generalists():
    split = meta.cartpole_split(meta.LENGTH_FAMILY, 4, 2, 3, seed=0)
    grid = [CartPoleTask(length=x) for x in (0.3, 1.0, 3.0)]
    beyond = [CartPoleTask(length=x) for x in (2.5, 4.0)]
    return meta.train_generalists(
        split, seeds=[0, 1], config=TINY, grid=grid, beyond=beyond, n_episodes=2
    )


def test_generalists_shapes_and_parts(generalists):
    r = generalists
    assert r.arms == meta.ARMS and r.seeds == (0, 1)
    for arm in r.arms:
        assert r.returns["train"][arm].shape == (2, 1 if arm == "default" else 4)
        assert r.returns["validation"][arm].shape == (2, 2)
        assert r.returns["test"][arm].shape == (2, 3)
        assert r.returns["grid"][arm].shape == (2, 3)
        assert r.returns["beyond"][arm].shape == (2, 2)
        assert r.curves[arm].shape == (2, 3) and len(r.states[arm]) == 2
        assert r.gap(arm).shape == (2,)
    assert r.select("validation") in r.arms
    chosen, comparisons = r.chosen_comparisons()
    assert chosen == r.select("validation") and len(comparisons) == 2
    assert all(c.names[0] == chosen and c.paired for c in comparisons)
    assert len(r.table().splitlines()) == 3 and "gap" in r.table()
    assert "beyond" in r.table("worst") and "gap" not in r.table("worst")


def test_generalists_measures_and_verdicts(generalists):
    r = generalists
    for arm in r.arms:
        test = r.returns["test"][arm]
        torch.testing.assert_close(r.score("test", arm, "worst"), test.min(dim=1).values)
        torch.testing.assert_close(r.score("test", arm), test.mean(dim=1))
        assert (r.score("test", arm, "worst") <= r.score("test", arm)).all()
    worst = {arm: float(r.score("validation", arm, "worst").mean()) for arm in r.arms}
    chosen, comparisons = r.chosen_comparisons("worst")
    assert chosen == max(worst, key=worst.get)
    want = r.score("test", chosen, "worst") - r.score("test", comparisons[0].names[1], "worst")
    assert comparisons[0].difference.estimate == pytest.approx(float(want.mean()))
    gaps = r.gap_comparisons("default")
    assert [c.names for c in gaps] == [("multitask", "default"), ("randomised", "default")]
    assert gaps[0].difference.estimate == pytest.approx(
        float((r.gap("multitask") - r.gap("default")).mean())
    )
    assert [c.names[0] for c in r.versus("randomised", "beyond")] == ["randomised"] * 2
    with pytest.raises(ValueError, match="unknown measure"):
        r.score("test", "default", "median")
    with pytest.raises(ValueError, match="unknown part"):
        r.score("holdout", "default")


def test_breaks_lists_the_grid_tasks_below_the_fraction(generalists):
    r = generalists
    lengths = [t.length for t in r.grid]
    everywhere, nowhere = r.breaks(fraction=1e9), r.breaks(fraction=0.0)
    for arm in r.arms:
        assert everywhere[arm] == tuple(lengths) and nowhere[arm] == ()
        own = float(r.mean_return("train", arm).mean())
        curve = r.returns["grid"][arm].mean(dim=0)
        want = tuple(x for x, v in zip(lengths, curve.tolist()) if v < 0.5 * own)
        assert r.breaks()[arm] == want


def test_generalists_scores_are_the_networks_returns(generalists):
    r = generalists
    nets = [meta._network(s) for s in r.states["multitask"]]
    again = meta.task_returns(nets, r.split.test, n_episodes=2)
    torch.testing.assert_close(again, r.returns["test"]["multitask"])
    on = r.on_task(r.split.test[0], n_episodes=2)
    torch.testing.assert_close(on["multitask"], again[:, 0])


def test_arms_get_their_own_tasks(monkeypatch):
    """Each agent trains on its arm's env: record what every env factory call built."""
    built = []
    original = meta._arm_env

    def spy(arm, split, distribution):
        builder = original(arm, split, distribution)

        def build(agents, n):
            envs = builder(agents, n)
            lengths = envs.env.length.reshape(agents, n)
            kind = type(envs.env).__name__
            built.append((arm, kind, envs.tasks.shape, [sorted(set(row)) for row in lengths]))
            return envs

        return build

    monkeypatch.setattr(meta, "_arm_env", spy)
    split = meta.cartpole_split(meta.LENGTH_FAMILY, 4, 1, 1, seed=0)
    meta.train_generalists(split, seeds=[0, 1], config=TINY, grid=[CartPoleTask()], n_episodes=1)
    training = built[: len(meta.ARMS)]
    by_arm = {arm: (kind, shape, lengths) for arm, kind, shape, lengths in training}
    assert by_arm["default"] == ("CartPoleFamilyVectorEnv", (2, 4), [[0.5], [0.5]])
    assert by_arm["multitask"][2] == [sorted(t.length for t in split.train)] * 2
    assert by_arm["randomised"][:2] == ("CartPoleRandomisedVectorEnv", (2, 4))
    evaluation = built[len(meta.ARMS) :]
    assert [(arm, shape) for arm, _, shape, _ in evaluation] == [(a, (2, 4)) for a in meta.ARMS]


def test_an_agent_does_not_depend_on_the_other_arms_or_seeds():
    """Every arm's envs run in one vector env; agent ``(arm, seed)`` must still be the same
    agent when trained alone."""
    split = meta.cartpole_split(meta.LENGTH_FAMILY, 4, 1, 1, seed=0)
    beyond = [CartPoleTask(length=3.0)]
    options = {"config": TINY, "grid": [CartPoleTask()], "beyond": beyond, "n_episodes": 2}
    together = meta.train_generalists(split, seeds=[0, 1], **options)
    alone = meta.train_generalists(split, seeds=[1], arms=["randomised"], **options)
    for key, value in alone.states["randomised"][0].items():
        torch.testing.assert_close(value, together.states["randomised"][1][key])
    torch.testing.assert_close(alone.curves["randomised"][0], together.curves["randomised"][1])


def test_generalists_refuse_bad_arguments():
    split = meta.cartpole_split(meta.LENGTH_FAMILY, 3, 1, 1)
    with pytest.raises(ValueError, match="multiples of the 3 training tasks"):
        meta.train_generalists(split, config=TINY)
    with pytest.raises(ValueError, match="unknown arm"):
        meta.train_generalists(split, config=TINY, arms=["oracle"])


def test_fresh_state_is_seeded_and_default_scaled():
    a, b = meta.fresh_state((16,), 0), meta.fresh_state((16,), 0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["trunk.0.weight"], meta.fresh_state((16,), 1)["trunk.0.weight"])
    assert a["trunk.0.weight"].abs().max() <= 0.5 and a["head.weight"].abs().max() <= 0.25


def test_reptile_dqn_applies_reptile_step_to_the_inner_loops(monkeypatch):
    calls = []
    real = meta.reptile_step

    def spy(meta_params, adapted, step_size):
        calls.append((len(adapted), step_size))
        return real(meta_params, adapted, step_size)

    monkeypatch.setattr(meta, "reptile_step", spy)
    result = meta.reptile_dqn(iterations=2, tasks_per_iteration=3, inner_config=TINY, seed=0)
    assert calls == [(3, 1.0), (3, 0.5)]
    assert result.env_steps == 2 * 3 * TINY.total_steps
    assert result.inner_returns.shape == (2, 3)
    assert len(result.tasks) == 2 and all(0.25 <= t.length < 2.0 for t in result.tasks[0])
    start = meta.fresh_state(TINY.hidden, 0)
    assert set(result.state) == set(start)
    assert not torch.equal(result.state["head.weight"], start["head.weight"])


def test_reptile_dqn_with_a_zero_step_size_keeps_the_initialisation():
    start = meta.fresh_state(TINY.hidden, 5)
    result = meta.reptile_dqn(iterations=1, inner_config=TINY, step_size=0.0, init_state=start)
    assert all(torch.equal(result.state[k], start[k]) for k in start)


def test_finetune_from_pairs_starts_by_seed():
    start = meta.fresh_state(TINY.hidden, 0)
    steps, curves = meta.finetune_from(
        {"a": start, "b": start}, CartPoleTask(length=1.5), seeds=[0, 1], config=TINY
    )
    assert steps.tolist() == [0, 200, 400]
    # the same start and seed give the same run: the starts share every random stream
    torch.testing.assert_close(curves["a"], curves["b"])
    (comparison,) = meta.finetune_comparisons(curves, reference="a")
    assert comparison.names == ("a", "b") and comparison.difference.estimate == 0.0


# --- the lesson's figures and widget ------------------------------------------------------------


def test_plots_draw_one_band_per_method():
    import numpy as np

    from course.plots import plot_adaptation_curves, plot_generalisation_curve, plot_task_bars

    band = (np.array([3.0, 2.0, 1.0]), np.array([2.5, 1.5, 0.5]), np.array([3.5, 2.5, 1.5]))
    fig = plot_adaptation_curves([0, 1, 2], {"reptile": band, "scratch": band})
    assert [line.get_label() for line in fig.axes[0].lines] == ["reptile", "scratch"]
    fig = plot_generalisation_curve(
        [0.3, 1.0, 3.0], {"default": band}, marks={"test": [0.5, 1.5]}, family=(0.25, 2.0)
    )
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [line.get_label() for line in ax.lines] == ["default", "test tasks"]
    fig = plot_task_bars({"default": (100.0, 80.0, 120.0), "randomised": (50.0, 40.0, 60.0)})
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [100.0, 50.0]


def test_explorer_runs_every_arm_on_the_chosen_task(generalists):
    from course.widgets import GeneralisationExplorer

    explorer = GeneralisationExplorer(generalists, lengths=[0.3, 1.0, 3.0], n_episodes=2)
    assert explorer.slider.value == 1.0 and set(explorer.values) == set(generalists.arms)
    explorer.slider.value = 3.0
    want = generalists.on_task(CartPoleTask(length=3.0), n_episodes=2)
    for arm, (estimate, low, high) in explorer.values.items():
        assert estimate == pytest.approx(want[arm].mean().item())
        assert low <= estimate <= high
    assert explorer.figure.axes[0].get_title() == "pole half-length 3 m"
