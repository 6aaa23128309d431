"""Figures for the lessons: data in, figure out. The numbers come from tested library code."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from course.mdp import ACTION_DELTAS, GridMDP, greedy_policy


def _figure_and_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """The given axes and their figure, or new ones (a figure not registered with pyplot)."""
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, fig.add_subplot()
    return ax.figure, ax


def _band(
    ax: Axes, x: np.ndarray, band: tuple, colour: str | None, label: str, alpha: float, **line
) -> None:
    """One curve ``(estimate, low, high)``: the estimate as a line, its interval shaded."""
    estimate, low, high = band
    ax.plot(x, estimate, color=colour, label=label, **line)
    ax.fill_between(x, low, high, color=colour, alpha=alpha, linewidth=0)


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

    Taught in Lesson 02. The bands come from `course.evaluation.curve_band`.

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
    fig, ax = _figure_and_axes(ax, figsize)
    for name, band in bands.items():
        _band(ax, steps, band, _REPLAY_COLOURS.get(name), name, alpha=0.2)
    ax.set_xlabel("updates")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return fig


# =============================================================================================
# Lesson 03: DQN
# =============================================================================================

#: Colours of the agents compared in Lesson 03.
_DQN_COLOURS = {
    "DQN": "#cf222e",
    "Double DQN": "#0969da",
    "your loop": "#1a7f37",
    "train_dqn": "#8250df",
}


def plot_dqn_curves(
    steps: np.ndarray | torch.Tensor,
    bands: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    ylabel: str = "greedy return",
    title: str = "",
    threshold: float | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (6.0, 3.5),
) -> Figure:
    """Learning curves with their confidence bands, one per agent, against environment steps.

    Taught in Lesson 03. The bands come from `course.evaluation.curve_band` over seeds.

    Args:
        steps: Environment steps of the measurements, ``[T]``.
        bands: Agent name -> ``(estimate, low, high)``, each ``[T]``.
        ylabel: Label of the vertical axis.
        title: Title of the axes.
        threshold: Optional level drawn as a dashed line (e.g. 475, CartPole "solved").
        ax: Axes to draw on; a new figure (not registered with pyplot) when None.
        figsize: Size of a new figure.

    Returns:
        The figure drawn on.
    """
    fig, ax = _figure_and_axes(ax, figsize)
    steps = np.asarray(steps)
    for name, band in bands.items():
        _band(ax, steps, band, _DQN_COLOURS.get(name), name, alpha=0.2)
    if threshold is not None:
        ax.axhline(threshold, color="#57606a", linestyle="--", linewidth=1)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return fig


def plot_q_comparison(
    mdp: GridMDP,
    q: torch.Tensor,
    q_star: torch.Tensor,
    figsize: tuple[float, float] = (10.0, 3.2),
    terminal: torch.Tensor | None = None,
) -> Figure:
    """Three grids: ``max_a Q*`` with the optimal policy, ``max_a Q`` with its greedy policy,
    and the largest error ``max_a |Q - Q*|`` per state.

    Taught in Lesson 03.

    Args:
        mdp: The gridworld both Q-functions belong to.
        q: Learned action values ``[S, A]``.
        q_star: Exact optimal action values ``[S, A]``.
        figsize: Size of the figure.
        terminal: ``[S]`` bool: states left blank in the error map (nothing is learned there,
            so their error would only set the colour scale).

    Returns:
        The figure.
    """
    q = torch.as_tensor(q).detach().cpu().double()
    q_star = torch.as_tensor(q_star).detach().cpu().double()
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, 3)
    plot_values(
        mdp,
        q_star.max(-1).values,
        greedy_policy(q_star, atol=1e-9),
        ax=axes[0],
        title="exact: max_a Q*(s, a)",
        annotate=False,
    )
    plot_values(
        mdp,
        q.max(-1).values,
        greedy_policy(q),
        ax=axes[1],
        title="learned: max_a Q(s, a)",
        annotate=False,
    )
    error = (q - q_star).abs().max(-1).values
    if terminal is not None:
        error[torch.as_tensor(terminal).cpu().bool()] = float("nan")
    plot_values(
        mdp,
        error,
        ax=axes[2],
        title="error: max_a |Q - Q*|",
        annotate=False,
    )
    # one colour scale for the two value maps, so that equal colours mean equal values
    exact, learned, error = (ax.images[0] for ax in axes)
    learned.set_clim(*exact.get_clim())
    fig.colorbar(exact, ax=axes[:2], shrink=0.85)
    fig.colorbar(error, ax=axes[2], shrink=0.85)
    return fig


# =============================================================================================
# Lesson 05: transfer by fine-tuning
# =============================================================================================

#: Colours of the fine-tuning strategies compared in Lesson 05.
_TRANSFER_COLOURS = {
    "scratch": "#57606a",
    "scratch_same_eps": "#8c959f",
    "full": "#0969da",
    "freeze_trunk": "#cf222e",
    "l2sp": "#1a7f37",
    "multitask": "#8250df",
}


def plot_transfer_curves(
    steps: np.ndarray | torch.Tensor,
    bands_by_target: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]],
    threshold: float | None = None,
    figsize: tuple[float, float] | None = None,
    ylabel: str = "greedy return",
) -> Figure:
    """Learning curves of every strategy on every target task, one panel per target.

    Taught in Lesson 05. The bands come from `course.evaluation.curve_band` over seeds (e.g.
    ``ComparisonResult.band``).

    Args:
        steps: Target-task environment steps of the evaluations, ``[T]``.
        bands_by_target: Target name -> strategy name -> ``(estimate, low, high)``, each ``[T]``.
        threshold: Optional level drawn as a dashed line (the metrics' threshold).
        figsize: Size of the figure (default: 3.3 inches per panel, 3.2 high).
        ylabel: Label of the y axis.

    Returns:
        The figure (not registered with pyplot).
    """
    n = len(bands_by_target)
    fig = Figure(figsize=figsize or (3.3 * n, 3.2), layout="constrained")
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    steps = np.asarray(steps)
    for ax, (target, bands) in zip(axes, bands_by_target.items(), strict=True):
        for name, band in bands.items():
            colour = _TRANSFER_COLOURS.get(name.split("_")[0] if name.startswith("l2sp") else name)
            _band(ax, steps, band, colour, name, alpha=0.15, linewidth=1.5)
        if threshold is not None:
            ax.axhline(threshold, color="#57606a", linestyle="--", linewidth=1)
        ax.set_title(target, fontsize=10)
        ax.set_xlabel("target-task steps")
    axes[0].set_ylabel(ylabel)
    axes[-1].legend(fontsize=7, loc="best")
    return fig


# =============================================================================================
# Lesson 04: multi-task learning
# =============================================================================================

_MULTITASK_COLOURS = {
    "heads": "#0969da",
    "task_input": "#1a7f37",
    "shared": "#cf222e",
    "singles": "#57606a",
    "matched": "#bc4c00",
    "noise": "#57606a",
    "pcgrad": "#8250df",
    "l2": "#bf8700",
    "mean": "#8250df",
}


def plot_lam_sweep(
    lams: np.ndarray | Sequence[float],
    bands: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    ylabel: str,
    selected: float | None = None,
    figsize: tuple[float, float] = (5.5, 3.2),
) -> Figure:
    """A quantity against lam (log axis, lam = 0 drawn at the left edge), one line per
    regulariser, with its confidence band.

    Taught in Lesson 04 (the effect of lam). ``bands`` come from
    `course.multitask.supervised_sweep_bands` or a final-score summary of a lam sweep.
    """
    lams = np.asarray(lams, dtype=np.float64)
    positive = lams[lams > 0]
    zero_at = positive.min() / 10 if positive.size else 1e-3
    x = np.where(lams > 0, lams, zero_at)
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    for name, band in bands.items():
        colour = _MULTITASK_COLOURS.get(name)
        _band(ax, x, band, colour, name, alpha=0.15, marker="o", linewidth=1.5)
    if selected is not None:
        ax.axvline(selected if selected > 0 else zero_at, color="#57606a", linestyle="--")
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:g}" for v in lams])
    ax.set_xlabel("lam")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return fig


def plot_multitask_curves(
    steps: np.ndarray | torch.Tensor | dict[str, np.ndarray | torch.Tensor],
    bands: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    threshold: float | None = None,
    xlabel: str = "environment steps per task",
    ylabel: str = "score (mean over tasks)",
    title: str | None = None,
    figsize: tuple[float, float] = (5.5, 3.2),
) -> Figure:
    """Learning curves of several arms with their bands (`course.multitask.score_band`).

    Taught in Lesson 04. ``steps`` is one ``[T]`` array for every arm, or one per arm (by name).
    """
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    for name, band in bands.items():
        x = np.asarray(steps[name] if isinstance(steps, dict) else steps)
        colour = _MULTITASK_COLOURS.get(name.split(" ")[0])
        _band(ax, x, band, colour, name, alpha=0.15, linewidth=1.5)
    if threshold is not None:
        ax.axhline(threshold, color="#57606a", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_task_curves(
    steps: np.ndarray | torch.Tensor,
    bands: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]],
    threshold: float | None = None,
    xlabel: str = "environment steps per task",
    ylabel: str = "score",
    figsize: tuple[float, float] = (9.0, 2.6),
) -> Figure:
    """One panel per task, each with the learning curves of several arms and their bands.

    Taught in Lesson 04 (multi-task against single-task agents, task by task). ``bands[task]``
    maps an arm's name to its ``(estimate, low, high)`` (`course.multitask.score_band` with
    ``task=k``, `course.multitask.singles_band`); ``steps`` is the common ``[T]`` grid.
    """
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, len(bands), sharey=True, squeeze=False)[0]
    x = np.asarray(steps)
    for ax, (task, arms) in zip(axes, bands.items(), strict=True):
        for name, band in arms.items():
            colour = _MULTITASK_COLOURS.get(name.split(" ")[0])
            _band(ax, x, band, colour, name, alpha=0.15, linewidth=1.5)
        if threshold is not None:
            ax.axhline(threshold, color="#57606a", linestyle="--", linewidth=1)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=7, loc="lower right")
    return fig


def plot_conflict(
    similarity: np.ndarray | torch.Tensor,
    task_names: Sequence[str],
    title: str = "gradient cosine similarity",
    figsize: tuple[float, float] = (3.6, 3.0),
) -> Figure:
    """A ``[K, K]`` similarity matrix (`course.multitask.gradient_conflict`) as a heat map."""
    similarity = np.asarray(similarity, dtype=np.float64)
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(similarity, cmap="RdBu", vmin=-1, vmax=1)
    for i in range(similarity.shape[0]):
        for j in range(similarity.shape[1]):
            ax.text(j, i, f"{similarity[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ticks = range(len(task_names))
    ax.set_xticks(ticks, task_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(ticks, task_names, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


# =============================================================================================
# Lesson 06: generalising to new tasks
# =============================================================================================

_GENERALISATION_COLOURS = {
    "reptile": "#8250df",
    "pretrained": "#bf8700",
    "scratch": "#57606a",
    "default": "#0969da",
    "multitask": "#1a7f37",
    "randomised": "#cf222e",
}


def plot_adaptation_curves(
    steps: np.ndarray | torch.Tensor,
    bands: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    ylabel: str = "query MSE on held-out tasks",
    xlabel: str = "adaptation steps",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """One band per initialisation: the error (or return) along adaptation or fine-tuning.

    Taught in Lesson 06. The bands come from `course.evaluation.curve_band` over seeds.

    Args:
        steps: ``[T]`` adaptation steps (or environment steps).
        bands: Method name -> ``(estimate, low, high)``, each ``[T]``.
        ylabel: Label of the y axis.
        xlabel: Label of the x axis.
        title: Optional title.
        ax: Axes to draw on (default: a new figure).

    Returns:
        The figure (not registered with pyplot).
    """
    fig, ax = _figure_and_axes(ax, (4.6, 3.2))
    x = np.asarray(steps)
    for name, band in bands.items():
        _band(ax, x, band, _GENERALISATION_COLOURS.get(name), name, alpha=0.2, linewidth=1.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


def plot_generalisation_curve(
    values: np.ndarray | torch.Tensor | Sequence[float],
    bands: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    marks: dict[str, Sequence[float]] | None = None,
    family: tuple[float, float] | None = None,
    xlabel: str = "pole half-length (m)",
    ylabel: str = "greedy return",
    ax: Axes | None = None,
) -> Figure:
    """Return against a physics parameter for each agent, with bands over seeds.

    Taught in Lesson 06. The x axis is logarithmic (the family is log-uniform).

    Args:
        values: ``[G]`` parameter values of the grid tasks.
        bands: Agent name -> ``(estimate, low, high)``, each ``[G]``.
        marks: Part name (``"train"``, ``"validation"``, ``"test"``) -> parameter values of its
            tasks, drawn as ticks along the bottom.
        family: ``(low, high)`` of the training family, shaded.
        xlabel: Label of the x axis.
        ylabel: Label of the y axis.
        ax: Axes to draw on (default: a new figure).

    Returns:
        The figure (not registered with pyplot).
    """
    fig, ax = _figure_and_axes(ax, (6.0, 3.6))
    x = np.asarray(values, dtype=float)
    if family is not None:
        ax.axvspan(*family, color="#d0d7de", alpha=0.35, linewidth=0, label="training family")
    for name, band in bands.items():
        _band(ax, x, band, _GENERALISATION_COLOURS.get(name), name, alpha=0.15, marker="o", ms=3)
    styles = {"train": ("#1a7f37", "^"), "validation": ("#bf8700", "s"), "test": ("#8250df", "v")}
    for part, where in (marks or {}).items():
        colour, marker = styles.get(part, ("#57606a", "|"))
        ax.plot(
            np.asarray(where, dtype=float),
            np.zeros(len(where)),
            linestyle="none",
            marker=marker,
            color=colour,
            label=f"{part} tasks",
            clip_on=False,
        )
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:.2g}" for v in x], fontsize=7)
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=2)
    return fig


def plot_task_bars(
    values: dict[str, tuple[float, float, float]],
    title: str = "",
    ylabel: str = "greedy return",
    ymax: float = 500.0,
    ax: Axes | None = None,
) -> Figure:
    """One bar per agent with its interval: how each agent does on a single task.

    Taught in Lesson 06 (the widget).

    Args:
        values: Agent name -> ``(estimate, low, high)``.
        title: Title (e.g. the task).
        ylabel: Label of the y axis.
        ymax: Upper limit of the y axis.
        ax: Axes to draw on (default: a new figure).

    Returns:
        The figure (not registered with pyplot).
    """
    fig, ax = _figure_and_axes(ax, (4.0, 3.0))
    names = list(values)
    est = np.array([values[n][0] for n in names])
    low = np.array([values[n][1] for n in names])
    high = np.array([values[n][2] for n in names])
    colours = [_GENERALISATION_COLOURS.get(n, "#57606a") for n in names]
    ax.bar(names, est, color=colours, alpha=0.8)
    ax.errorbar(names, est, yerr=[est - low, high - est], fmt="none", color="black", capsize=4)
    ax.set_ylim(0, ymax)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


# =============================================================================================
# Lesson 07: many agents, one network
# =============================================================================================

_MARL_COLOURS = {
    "independent": "#57606a",
    "shared": "#cf222e",
    "shared + id": "#1a7f37",
    "VDN": "#0969da",
    "VDN, no id": "#bf8700",
}


def plot_marl_curves(
    steps: np.ndarray | Sequence[int],
    bands: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    title: str | None = None,
    figsize: tuple[float, float] = (5.5, 3.2),
) -> Figure:
    """Exact team scores along training, one band per arm (`course.marl.score_bands`).

    Taught in Lesson 07.
    """
    fig, ax = _figure_and_axes(None, figsize)
    x = np.asarray(steps)
    for name, band in bands.items():
        _band(ax, x, band, _MARL_COLOURS.get(name), name, alpha=0.15, linewidth=1.5)
    ax.set_xlabel("joint transitions per run")
    ax.set_ylabel("team score (1 = optimal)")
    ax.set_ylim(-0.02, 1.05)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_marl_scaling(
    n_agents: Sequence[int],
    bands: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    title: str | None = None,
    figsize: tuple[float, float] = (5.0, 3.2),
) -> Figure:
    """Final team score against the number of agents, one line per arm with its interval.

    Taught in Lesson 07. ``bands[arm]`` holds ``(estimate, low, high)``, one entry per team size
    (`course.marl.scaling_bands`).
    """
    fig, ax = _figure_and_axes(None, figsize)
    x = np.asarray(n_agents)
    for name, band in bands.items():
        _band(ax, x, band, _MARL_COLOURS.get(name), name, alpha=0.15, marker="o", linewidth=1.5)
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(n) for n in x])
    ax.set_xlabel("agents")
    ax.set_ylabel("final team score (1 = optimal)")
    ax.set_ylim(-0.02, 1.05)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig
