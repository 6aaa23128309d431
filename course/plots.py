"""Figures for the lessons: data in, figure out. The numbers come from tested library code."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from course.mdp import ACTION_DELTAS, GridMDP

# =============================================================================================
# Lesson 01: MDPs
# =============================================================================================

#: ``(d_row, d_col)`` of FrozenLake's actions: 0 left, 1 down, 2 right, 3 up.
FROZEN_LAKE_ACTION_DELTAS: tuple[tuple[int, int], ...] = ((0, -1), (1, 0), (0, 1), (-1, 0))

#: Letter and colour of terminal cells: ``gridworld`` goals and pits, FrozenLake goals and holes.
_TERMINAL_LABELS = {"G": ("G", "#1a7f37"), "X": ("X", "#cf222e"), "H": ("H", "#cf222e")}


def plot_values(
    mdp: GridMDP,
    V: torch.Tensor,
    pi: torch.Tensor | None = None,
    ax: Axes | None = None,
    title: str = "V(s)",
    action_deltas: Sequence[tuple[int, int]] = ACTION_DELTAS,
    annotate: bool = True,
    figsize: tuple[float, float] = (6.0, 3.5),
) -> Figure:
    """Heatmap of state values on a grid, with the policy's actions as arrows.

    Taught in Lesson 01. Walls are drawn dark; terminal cells show their letter (``G`` goal,
    ``X`` pit, ``H`` FrozenLake hole) and no arrow; ``S`` marks the start. Each arrow's length
    is the probability the policy gives its action, so a deterministic policy shows one arrow
    per cell and a uniform one a small cross.

    Args:
        mdp: The gridworld (from ``gridworld`` or ``from_gymnasium`` on FrozenLake).
        V: State values, shape ``[S]``.
        pi: Optional policy, shape ``[S, A]``, to draw as arrows.
        ax: Axes to draw on; a new figure (not registered with pyplot) when None.
        title: Title of the axes.
        action_deltas: ``(d_row, d_col)`` of each action: ``ACTION_DELTAS`` for ``gridworld``,
            ``FROZEN_LAKE_ACTION_DELTAS`` for FrozenLake.
        annotate: Whether to write each state's value in its cell.
        figsize: Size of a new figure.

    Returns:
        The figure drawn on.
    """
    V = torch.as_tensor(V).detach().cpu().double()
    grid = mdp.to_grid(V).numpy()
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        ax = fig.add_subplot()
        new_figure = True
    else:
        fig, new_figure = ax.figure, False
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#2b2b2b")  # walls
    image = ax.imshow(grid, cmap=cmap)
    if new_figure:
        fig.colorbar(image, ax=ax, shrink=0.85)
    finite = grid[~np.isnan(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0

    for s, (row, col) in enumerate(mdp.cells):
        letter = mdp.layout[row][col]
        if bool(mdp.terminal[s]):
            # terminal values are 0 by definition; colour the cell by kind instead
            label, face = _TERMINAL_LABELS.get(letter, ("T", "#57606a"))
            ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, facecolor=face))
            ax.text(col, row, label, ha="center", va="center", fontsize=14, color="white")
            continue
        colour = "white" if grid[row, col] < middle else "black"
        if letter == "S":
            ax.text(col - 0.45, row - 0.45, "S", ha="left", va="top", fontsize=8, color=colour)
        if annotate:
            ax.text(
                col,
                row + 0.36,
                f"{V[s].item():.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color=colour,
            )
        if pi is None:
            continue
        probs = torch.as_tensor(pi).detach().cpu().double()[s]
        for a, p in enumerate(probs.tolist()):
            if p <= 1e-9:
                continue
            d_row, d_col = action_deltas[a]
            ax.arrow(
                col,
                row - 0.12,
                0.38 * p * d_col,
                0.38 * p * d_row,
                width=0.015 + 0.01 * p,
                head_width=0.04 + 0.1 * p,
                head_length=0.17 * p,
                length_includes_head=True,
                color=colour,
            )

    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    return fig


# =============================================================================================
# Lesson 02: experience replay
# =============================================================================================

#: Colours of the two learners of the replay experiment.
_REPLAY_COLOURS = {"online": "#cf222e", "replay": "#0969da"}


def plot_replay_curves(
    steps: np.ndarray,
    bands: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    ylabel: str,
    title: str = "",
    ax: Axes | None = None,
    figsize: tuple[float, float] = (6.0, 3.5),
) -> Figure:
    """Curves with their confidence bands, one per learner, against the number of updates.

    Taught in Lesson 02. The bands come from `course.evaluation.curve_ci`.

    Args:
        steps: Update counts of the measurements, ``[E]``.
        bands: Learner name -> ``(estimate, low, high)``, each ``[E]``.
        ylabel: Label of the vertical axis.
        title: Title of the axes.
        ax: Axes to draw on; a new figure (not registered with pyplot) when None.
        figsize: Size of a new figure.

    Returns:
        The figure drawn on.
    """
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    for name, (estimate, low, high) in bands.items():
        colour = _REPLAY_COLOURS.get(name)
        ax.plot(steps, estimate, color=colour, label=name)
        ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
    ax.set_xlabel("updates")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return fig
