"""Tests for course/plots.py: each figure draws what it is given."""

from __future__ import annotations

import gymnasium as gym
import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from course.mdp import from_gymnasium, greedy_policy, gridworld, uniform_policy, value_iteration
from course.plots import FROZEN_LAKE_ACTION_DELTAS, plot_values

matplotlib.use("Agg")

# --- Lesson 01 ----------------------------------------------------------------------------------

LAYOUT = ["S..#", ".#.X", "...G"]


@pytest.fixture(scope="module")
def solved():
    mdp = gridworld(LAYOUT, slip=0.1, gamma=0.9)
    V, Q = value_iteration(mdp)
    return mdp, V, greedy_policy(Q, atol=1e-9)


def test_plot_values_draws_the_grid_with_walls_as_nan(solved):
    mdp, V, pi = solved
    fig = plot_values(mdp, V, pi, title="V*")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_title() == "V*"
    grid = ax.images[0].get_array()
    assert grid.shape == (3, 4)
    assert grid.mask[0, 3] and grid.mask[1, 1]  # walls
    s = mdp.state(2, 1)
    assert grid[2, 1] == pytest.approx(V[s].item())


def test_plot_values_marks_terminal_cells_and_the_start(solved):
    mdp, V, pi = solved
    texts = [t.get_text() for t in plot_values(mdp, V, pi).axes[0].texts]
    assert {"G", "X", "S"} <= set(texts)
    assert f"{V[mdp.state(0, 1)].item():.2f}" in texts


def test_plot_values_draws_one_arrow_per_action_with_probability(solved):
    mdp, V, pi = solved
    n_live = int((~mdp.terminal).sum())
    assert len(plot_values(mdp, V, pi).axes[0].patches) == n_live + 2  # + goal and pit cells
    uniform = plot_values(mdp, V, uniform_policy(mdp))
    assert len(uniform.axes[0].patches) == 4 * n_live + 2
    assert len(plot_values(mdp, V).axes[0].patches) == 2


def test_plot_values_arrow_points_along_the_action(solved):
    mdp, V, _ = solved
    right = torch.zeros(mdp.n_states, 4, dtype=torch.float64)
    right[:, 1] = 1.0
    arrows = plot_values(mdp, V, right).axes[0].patches[:1]
    xy = arrows[0].get_xy()
    assert xy[:, 0].max() - xy[:, 0].min() > xy[:, 1].max() - xy[:, 1].min()


def test_plot_values_draws_on_given_axes(solved):
    mdp, V, pi = solved
    fig = Figure()
    ax = fig.add_subplot()
    assert plot_values(mdp, V, pi, ax=ax) is fig
    assert len(fig.axes) == 1  # no colorbar added to a caller's figure


def test_plot_values_on_frozen_lake():
    mdp = from_gymnasium(gym.make("FrozenLake-v1"), gamma=1.0)
    V, Q = value_iteration(mdp, tol=1e-6)
    fig = plot_values(mdp, V, greedy_policy(Q), action_deltas=FROZEN_LAKE_ACTION_DELTAS)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("H") == 4 and texts.count("G") == 1


# --- Lesson 02 ----------------------------------------------------------------------------------


def test_plot_replay_curves_draws_one_line_and_band_per_learner():
    from course.plots import plot_replay_curves

    steps = np.array([50, 100, 150])
    online, replay = np.array([0.3, 0.3, 0.2]), np.array([0.3, 0.1, 0.05])
    bands = {
        "online": (online, online - 0.1, online + 0.1),
        "replay": (replay, replay / 2, replay * 2),
    }
    fig = plot_replay_curves(steps, bands, ylabel="error", title="t")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["online", "replay"]
    assert np.array_equal(ax.get_lines()[1].get_ydata(), bands["replay"][0])
    assert len(ax.collections) == 2  # the two bands
    assert ax.get_ylabel() == "error" and ax.get_xlabel() == "updates"
    other = Figure()
    assert plot_replay_curves(steps, bands, ylabel="e", ax=other.add_subplot()) is other
