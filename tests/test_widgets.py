"""Tests for course/widgets.py: the explorers react to their controls outside a kernel."""

from __future__ import annotations

import matplotlib
import torch

from course.mdp import greedy_policy, gridworld, value_iteration
from course.widgets import GridworldExplorer, gridworld_explorer

matplotlib.use("Agg")

# --- Lesson 01 ----------------------------------------------------------------------------------

LAYOUT = [".......", ".......", "S.....G", ".XXXXX."]


def test_gridworld_explorer_solves_the_initial_settings():
    explorer = gridworld_explorer(LAYOUT, gamma=0.9, slip=0.1)
    assert isinstance(explorer, GridworldExplorer)
    assert explorer.gamma_slider.value == 0.9 and explorer.slip_slider.value == 0.1
    V, Q = value_iteration(gridworld(LAYOUT, slip=0.1, gamma=0.9))
    torch.testing.assert_close(explorer.V, V, atol=1e-5, rtol=0)
    assert torch.equal(explorer.pi, greedy_policy(explorer.Q, atol=1e-9))
    assert explorer.figure.axes[0].get_title().endswith("gamma=0.9, slip=0.1")


def test_moving_the_slip_slider_resolves_and_changes_the_policy():
    explorer = gridworld_explorer(LAYOUT, gamma=0.95, slip=0.0)
    V0, pi0, fig0 = explorer.V, explorer.pi, explorer.figure
    explorer.slip_slider.value = 0.2
    assert explorer.mdp.P[explorer.mdp.state(2, 1), 1].max() < 1.0  # the MDP is rebuilt
    assert not torch.equal(explorer.pi, pi0)
    assert (explorer.V < V0 - 1e-6).any()  # slipping can only cost
    assert explorer.figure is not fig0
    start = explorer.mdp.state(2, 0)
    assert explorer.pi[start].argmax() == 0  # up, away from the pits


def test_moving_the_gamma_slider_resolves():
    explorer = gridworld_explorer(LAYOUT, gamma=0.95, slip=0.2)
    V0, pi0 = explorer.V, explorer.pi
    explorer.gamma_slider.value = 0.6
    assert explorer.mdp.gamma == 0.6
    assert not torch.equal(explorer.pi, pi0)
    assert not torch.allclose(explorer.V, V0)
