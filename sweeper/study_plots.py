"""The study's own figures, for its parent MLflow run; every one legible at 100 %.

- optimization_history.png, param_importances.png: Optuna's (single-objective studies; importances from 2 trials);
- accuracy_vs_params.png: the accuracy over each searched parameter, one panel each, one colour bar beside them;
- ridge.png (Myrtle.ai part 5): the accuracy over log lambda and log alpha/(1-rho), where lines of equal
  effective decay lambda*alpha/(1-rho) run at 45 degrees, and the accuracy against the effective decay coloured by
  momentum; drawn from each trial's recorded config, so for any space that moves lr, momentum or weight decay;
- pareto_front.png (multi-objective studies): the accuracy against the cost, the front as a step line, each point
  labelled with its epochs.
A figure that cannot be drawn (too few trials) is skipped with a log line.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.ticker
import numpy as np
import optuna
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from pipelines.plots import save_figure  # bound at import: the tests' `drawn` fixture records pipelines' figures only
from sweeper import records
from sweeper.objective import Objective

log = logging.getLogger(__name__)

PANEL_INCHES = (3.6, 3.0)  # width, height of one panel: 9-point labels stay apart at 100 %


def write_study_plots(study: optuna.Study, out_dir: Path, *, objective: Objective) -> dict[str, Path]:
    """The figures for ``study`` (:func:`study_figures`) into ``out_dir``; name -> path of each written."""
    return {name: save_figure(fig, out_dir / name) for name, fig in study_figures(study, objective=objective).items()}


def study_figures(study: optuna.Study, *, objective: Objective) -> dict[str, Figure]:
    """Every figure ``study`` can show, by file name; one that cannot be drawn (too few trials, nothing varies)
    is left out with a log line."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    draw: dict[str, Callable[[], Figure]] = {}
    if objective.multi:
        draw["pareto_front.png"] = functools.partial(pareto_front_figure, study, objective=objective)
    else:
        draw["optimization_history.png"] = functools.partial(optimization_history_figure, study)
        if len(complete) >= 2 and any(t.params for t in complete):
            draw["param_importances.png"] = functools.partial(param_importances_figure, study)
    if any(t.params for t in complete):
        draw["accuracy_vs_params.png"] = functools.partial(accuracy_vs_params_figure, complete, objective=objective)
    if len(complete) >= 2:
        draw["ridge.png"] = functools.partial(ridge_figure, complete, objective=objective)
    figures: dict[str, Figure] = {}
    for name, figure in draw.items():
        try:
            figures[name] = figure()
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            log.warning("skipped %s: %s", name, err)
    return figures


def optimization_history_figure(study: optuna.Study) -> Figure:
    """Optuna's optimization history (single-objective studies)."""
    return _optuna(optuna.visualization.matplotlib.plot_optimization_history, study)


def param_importances_figure(study: optuna.Study) -> Figure:
    """Optuna's parameter importances (single-objective studies, at least 2 complete trials)."""
    return _optuna(optuna.visualization.matplotlib.plot_param_importances, study)


def _optuna(plot: Callable[[optuna.Study], object], study: optuna.Study) -> Figure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's matplotlib backend is marked experimental
        ax = plot(study)
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
    fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 4))
    fig.tight_layout()
    return fig


def _accuracy(trial: FrozenTrial) -> float:
    return trial.values[0]


def accuracy_vs_params_figure(trials: list[FrozenTrial], *, objective: Objective) -> Figure:
    """One panel per searched parameter (log x for positive ranges over a decade), coloured by trial number."""
    names = sorted({name for t in trials for name in t.params})
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig = Figure(figsize=(PANEL_INCHES[0] * columns + 1.2, PANEL_INCHES[1] * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    scatter = None
    for ax, name in zip(axes.flat, names, strict=False):
        drawn = [t for t in trials if name in t.params]
        xs = [t.params[name] for t in drawn]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if not numeric:  # categorical: one position per choice, labelled
            labels = sorted({str(x) for x in xs})
            xs = [labels.index(str(x)) for x in xs]
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        scatter = ax.scatter(xs, [_accuracy(t) * 100 for t in drawn], c=[t.number for t in drawn], cmap="viridis",
                             s=28, edgecolors="none")  # fmt: skip
        integers = numeric and all(float(x).is_integer() for x in xs)  # e.g. train.epochs: linear, legible
        if numeric and not integers and min(xs) > 0 and max(xs) / min(xs) > 10:
            ax.set_xscale("log")
            # labelled minor ticks overprint on short decades: major ticks only, plainly written
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_title(name, fontsize=9)  # above its own panel: an x label under rotated ticks reads as the next's
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for row in axes:
        row[0].set_ylabel(f"{objective.split} accuracy (%)", fontsize=9)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes, label="trial", shrink=0.9)
    fig.suptitle(f"{objective.split} accuracy over each searched parameter", fontsize=10)
    return fig


def _optim(trial: FrozenTrial) -> tuple[float, float, float] | None:
    """(lambda, rho, alpha) the trial trained with, from its recorded config (lambda at the reference batch)."""
    config = records.recorded_config(trial)
    if config is None:
        return None
    return config.optim.lr, config.optim.momentum, config.optim.weight_decay


def ridge_figure(trials: list[FrozenTrial], *, objective: Objective) -> Figure:
    """Myrtle's picture: accuracy over log λ and log α/(1-ρ) (equal λα/(1-ρ) at 45°), and accuracy against
    λα/(1-ρ) coloured by ρ. Raises ValueError when fewer than 2 trials recorded a config or nothing varies."""
    points = [(t, p) for t in trials if (p := _optim(t)) is not None and p[2] > 0]
    lam = np.array([p[0] for _, p in points])
    decay = np.array([p[2] / (1 - p[1]) for _, p in points])  # alpha / (1 - rho)
    if len(points) < 2 or (np.ptp(np.log10(lam)) == 0 and np.ptp(np.log10(decay)) == 0):
        raise ValueError("lr, momentum and weight decay do not vary across the trials")
    accuracy = np.array([_accuracy(t) * 100 for t, _ in points])
    momentum = np.array([p[1] for _, p in points])
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    dots = left.scatter(np.log10(decay), np.log10(lam), c=accuracy, cmap="viridis", s=36, edgecolors="none")
    xs, ys = np.array(_span(np.log10(decay))), np.array(_span(np.log10(lam)))
    for level in np.arange(math.floor(xs[0] + ys[0]), math.ceil(xs[1] + ys[1]) + 0.5, 0.5):  # equal λα/(1-ρ): 45°
        left.plot(xs, level - xs, color="0.75", lw=0.8, ls="--", zorder=0)
    left.set_xlim(*_span(np.log10(decay)))
    left.set_ylim(*_span(np.log10(lam)))
    left.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
    left.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
    left.set(xlabel="log10 α/(1-ρ)", ylabel="log10 λ", title="accuracy over λ and α/(1-ρ); dashes: equal λα/(1-ρ)")
    fig.colorbar(dots, ax=left, label=f"{objective.split} accuracy (%)")
    effective = lam * decay
    colours = right.scatter(effective, accuracy, c=momentum, cmap="plasma", s=36, edgecolors="none")
    right.set_xscale("log")
    right.set(xlabel="effective decay λα/(1-ρ)", ylabel=f"{objective.split} accuracy (%)",
              title="accuracy against effective decay")  # fmt: skip
    fig.colorbar(colours, ax=right, label="momentum ρ")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(10)
    return fig


def _span(values: np.ndarray) -> tuple[float, float]:
    """Axis limits around ``values`` (log10 units): a margin, and at least one decade when they barely vary."""
    low, high = float(values.min()), float(values.max())
    half = max((high - low) / 2 + 0.1, 0.5)
    middle = (low + high) / 2
    return middle - half, middle + half


def pareto_front_figure(study: optuna.Study, *, objective: Objective) -> Figure:
    """A multi-objective study's complete trials, accuracy against cost, the front as a step line, each point
    labelled with its epochs. Raises ValueError without a complete trial."""
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not trials:
        raise ValueError("no complete trial")
    front = sorted(study.best_trials, key=lambda t: records.cost(t, objective))
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.scatter([t.values[1] for t in trials], [t.values[0] * 100 for t in trials], color="0.6", s=26, label="trials")
    costs, accs = [t.values[1] for t in front], [t.values[0] * 100 for t in front]
    ax.step(costs, accs, where="post", color="tab:red", lw=1.5, label="Pareto front")
    ax.scatter(costs, accs, color="tab:red", s=36, zorder=3)
    for t in trials:
        epochs = _epochs(t)
        if epochs is not None:
            ax.annotate(f"{epochs} ep", (t.values[1], t.values[0] * 100), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)  # fmt: skip
    unit = "training seconds" if objective.cost == "train_seconds" else "epochs"
    ax.set(xlabel=unit, ylabel=f"{objective.split} accuracy (%)", title=f"{objective.split} accuracy against {unit}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _epochs(trial: FrozenTrial) -> int | None:
    config = records.recorded_config(trial)
    return config.train.epochs if config is not None else None
