"""Tests for course/widgets.py: the explorers react to their controls outside a kernel."""

from __future__ import annotations

import matplotlib
import pytest
import torch

from course.mdp import greedy_policy, gridworld, outcome_probabilities, value_iteration
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
    assert explorer.outcomes == outcome_probabilities(explorer.mdp, explorer.pi)
    title = explorer.figure.axes[0].get_title()
    assert title.startswith("gamma=0.9, slip=0.1, pit reward=-10\n")
    assert title.endswith(
        f"goal {explorer.outcomes['goal']:.2f}, pit {explorer.outcomes['pit']:.2f}"
    )  # "never" is left out when every episode ends


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


def test_the_explorer_shows_the_pit_probability_rising_with_slip():
    explorer = gridworld_explorer(LAYOUT, gamma=0.95, slip=0.0)
    assert explorer.outcomes["pit"] == 0.0 and explorer.outcomes["goal"] == 1.0
    pits = []
    for slip in (0.2, 0.4, 0.6):
        explorer.slip_slider.value = slip
        pits.append(round(explorer.outcomes["pit"], 2))
        assert f"pit {explorer.outcomes['pit']:.2f}" in explorer.figure.axes[0].get_title()
    assert pits == [0.07, 0.58, 0.85]  # a step costs 1: ending early in a pit pays
    mdp, pi = explorer.mdp, explorer.pi
    # at slip 0.6 the arrows lead from S down, then right into the first pit
    assert pi[mdp.state(2, 0)].argmax() == 2 and pi[mdp.state(3, 0)].argmax() == 1


def test_moving_the_pit_slider_changes_the_reward_and_the_policy():
    explorer = gridworld_explorer(LAYOUT, gamma=0.95, slip=0.6)
    assert explorer.pit_slider.value == -10.0 and explorer.outcomes["pit"] > 0.5
    explorer.pit_slider.value = -100.0
    into_pit = explorer.mdp.R[explorer.mdp.state(2, 1), 2]  # down from above a pit
    assert into_pit.item() == pytest.approx(-1 - 0.4 * 100)  # rebuilt with the new pit reward
    assert explorer.outcomes["pit"] < 1e-9 and explorer.outcomes["goal"] > 1 - 1e-9
    assert "pit reward=-100" in explorer.figure.axes[0].get_title()


def test_the_explorer_says_when_episodes_never_end():
    # no slip and a wall between start and goal: no policy ends the episode
    explorer = gridworld_explorer(["S#G"], gamma=0.9)
    assert explorer.outcomes == {"goal": 0.0, "never": 1.0}
    assert explorer.figure.axes[0].get_title().endswith("goal 0.00, never 1.00")
