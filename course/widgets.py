"""Interactive explorers for the lessons: they call the library and plots.py, nothing else."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ipywidgets as widgets
from IPython.display import display

from course.evaluation import mean_ci
from course.mdp import greedy_policy, gridworld, outcome_probabilities, value_iteration
from course.multitask import lam_final_bands, lam_sweep_bands
from course.plots import plot_lam_sweep, plot_multitask_curves, plot_task_bars, plot_values

# =============================================================================================
# Lesson 01: MDPs
# =============================================================================================


class GridworldExplorer(widgets.VBox):
    """Sliders for ``gamma``, ``slip`` and the pit's reward that re-solve a gridworld and redraw it.

    Taught in Lesson 01. Every change of a slider builds the MDP again with
    ``course.mdp.gridworld``, solves it with ``course.mdp.value_iteration``, computes where the
    greedy policy's episodes from ``S`` end with ``course.mdp.outcome_probabilities``, and
    draws ``V*`` with the greedy policy (``course.plots.plot_values``), the probabilities of
    ending at the goal and in a pit in the title. The latest solution is kept in ``mdp``,
    ``V``, ``Q``, ``pi``, ``outcomes`` and ``figure`` so that it can be inspected (or tested).

    Attributes:
        gamma_slider: The discount slider.
        slip_slider: The slip-probability slider.
        pit_slider: The slider of the extra reward of entering a pit (a cost: at most 0).
        output: Where the figure is drawn.
        mdp: The current ``GridMDP``.
        V: Optimal values ``[S]`` of the current MDP.
        Q: Optimal action values ``[S, A]``.
        pi: Greedy one-hot policy ``[S, A]`` (ties within 1e-9 to the lowest action).
        outcomes: ``outcome_probabilities(mdp, pi)``: how episodes from ``S`` end.
        figure: The current figure.
        grid_layout: The rows of the map (``layout`` is the widget's CSS layout).
    """

    def __init__(
        self,
        layout: Sequence[str],
        gamma: float = 0.95,
        slip: float = 0.0,
        step_reward: float = -1.0,
        goal_reward: float = 0.0,
        pit_reward: float = -10.0,
    ) -> None:
        self.grid_layout = list(layout)
        self.rewards = dict(step_reward=step_reward, goal_reward=goal_reward)
        style = {"description_width": "initial"}
        self.gamma_slider = widgets.FloatSlider(
            value=gamma, min=0.5, max=0.99, step=0.01, description="gamma", style=style
        )
        self.slip_slider = widgets.FloatSlider(
            value=slip, min=0.0, max=0.6, step=0.05, description="slip", style=style
        )
        self.pit_slider = widgets.FloatSlider(
            value=pit_reward,
            min=min(-100.0, pit_reward),
            max=max(0.0, pit_reward),
            step=1.0,
            description="pit reward",
            style=style,
        )
        self.output = widgets.Output()
        sliders = widgets.HBox([self.gamma_slider, self.slip_slider, self.pit_slider])
        super().__init__([sliders, self.output])
        for slider in (self.gamma_slider, self.slip_slider, self.pit_slider):
            slider.observe(self._on_change, names="value")
        self.update()

    def _on_change(self, change: dict) -> None:
        self.update()

    def update(self) -> None:
        """Re-solves the gridworld for the sliders' values and redraws the figure."""
        gamma, slip = float(self.gamma_slider.value), float(self.slip_slider.value)
        pit_reward = float(self.pit_slider.value)
        self.mdp = gridworld(
            self.grid_layout, slip=slip, gamma=gamma, pit_reward=pit_reward, **self.rewards
        )
        self.V, self.Q = value_iteration(self.mdp)
        self.pi = greedy_policy(self.Q, atol=1e-9)
        self.outcomes = outcome_probabilities(self.mdp, self.pi)
        ends = ", ".join(
            f"{kind} {p:.2f}" for kind, p in self.outcomes.items() if kind != "never" or p > 1e-9
        )
        self.figure = plot_values(
            self.mdp,
            self.V,
            self.pi,
            title=f"gamma={gamma:g}, slip={slip:g}, pit reward={pit_reward:g}\n"
            f"episodes from S end: {ends}",
        )
        with self.output:
            self.output.clear_output(wait=True)
            display(self.figure)


def gridworld_explorer(
    layout: Sequence[str],
    gamma: float = 0.95,
    slip: float = 0.0,
    step_reward: float = -1.0,
    goal_reward: float = 0.0,
    pit_reward: float = -10.0,
) -> GridworldExplorer:
    """An interactive gridworld: sliders for ``gamma``, ``slip`` and the pit's reward.

    Taught in Lesson 01. See ``GridworldExplorer``; the rewards are those of
    ``course.mdp.gridworld``. Each change re-solves the map and redraws ``V*``, the greedy
    policy, and the probabilities that its episodes end at the goal or in a pit.

    Args:
        layout: Rows of the map (``S`` start, ``G`` goal, ``X`` pit, ``#`` wall, ``.`` floor).
        gamma: Initial discount, in ``[0.5, 0.99]``.
        slip: Initial probability that a move goes sideways, in ``[0, 0.6]``.
        step_reward: Reward of every move.
        goal_reward: Extra reward of entering a goal.
        pit_reward: Initial extra reward of entering a pit (the slider spans -100 to 0).

    Returns:
        The explorer widget; display it (last line of a cell) to use it.
    """
    return GridworldExplorer(layout, gamma, slip, step_reward, goal_reward, pit_reward)


# =============================================================================================
# Lesson 04: multi-task learning
# =============================================================================================


class _SliderExplorer(widgets.VBox):
    """One slider above one output area: moving the slider calls ``redraw``, which subclasses
    write (drawing with `show`)."""

    def __init__(self, options: list[tuple[str, float]], value: float, description: str) -> None:
        self.slider = widgets.SelectionSlider(
            options=options, value=value, description=description, continuous_update=False
        )
        self.output = widgets.Output()
        self.slider.observe(lambda change: self.redraw(), names="value")
        super().__init__([self.slider, self.output])
        self.redraw()

    def redraw(self) -> None:
        raise NotImplementedError

    def show(self, *figures: object) -> None:
        """Replace what the output area shows with ``figures``."""
        with self.output:
            self.output.clear_output(wait=True)
            for figure in figures:
                display(figure)


class LamExplorer(_SliderExplorer):
    """A slider over the lams of precomputed sweeps: learning curves at that lam, and the final
    score against lam with the chosen one marked.

    Taught in Lesson 04. ``results`` maps a regulariser name (``"l2"``, ``"mean"``) to a lam
    sweep of `course.multitask.train_multitask_dqn` (agents trained with several ``lams``); the
    bands come from `course.multitask.lam_sweep_bands` and `course.multitask.lam_final_bands`,
    the figures from `course.plots`. The latest figures are kept in ``curves_figure`` and
    ``sweep_figure``.
    """

    def __init__(self, results: dict, last: int = 1) -> None:
        first = next(iter(results.values()))
        self.steps = first.steps.numpy()
        self.curves = {name: lam_sweep_bands(r) for name, r in results.items()}
        finals = {name: lam_final_bands(r, last) for name, r in results.items()}
        self.lams = finals[next(iter(finals))][0]
        self.finals = {name: bands for name, (_, bands) in finals.items()}
        super().__init__(
            [(f"{lam:g}", float(lam)) for lam in self.lams], float(self.lams[0]), "lam"
        )

    def redraw(self) -> None:
        """Draw both figures for the slider's lam."""
        lam = self.slider.value
        bands = {name: curves[lam] for name, curves in self.curves.items()}
        self.curves_figure = plot_multitask_curves(self.steps, bands, title=f"lam = {lam:g}")
        self.sweep_figure = plot_lam_sweep(
            self.lams, self.finals, "final score (mean over tasks)", selected=lam
        )
        self.show(self.curves_figure, self.sweep_figure)


# =============================================================================================
# Lesson 06: generalising to new tasks
# =============================================================================================


class GeneralisationExplorer(_SliderExplorer):
    """A slider over the pole's half-length: every agent's return on that task, with intervals.

    Taught in Lesson 06. ``result`` is a `course.meta.GeneralisationResult`; moving the slider
    runs each arm's agents on the chosen task (`GeneralisationResult.on_task`) and draws the
    mean over seeds with its t interval (`course.evaluation.mean_ci`) with
    `course.plots.plot_task_bars`. The latest figure is kept in ``figure``.
    """

    def __init__(self, result, lengths: Sequence[float], n_episodes: int = 3) -> None:
        self.result = result
        self.n_episodes = n_episodes
        options = [(f"{x:.2g}", float(x)) for x in lengths]
        super().__init__(options, float(lengths[len(lengths) // 2]), "half-length")

    def redraw(self) -> None:
        """Evaluate every agent on the slider's task and draw the bars."""
        task = dataclasses.replace(self.result.grid[0], length=self.slider.value)
        returns = self.result.on_task(task, self.n_episodes)
        self.values = {arm: tuple(mean_ci(r)) for arm, r in returns.items()}
        self.figure = plot_task_bars(self.values, title=f"pole half-length {task.length:.2g} m")
        self.show(self.figure)
