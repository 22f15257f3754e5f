"""sweeper.study_plots: which figures a study gets, and what each shows (panels, axes, points and their data,
colour bars, the Pareto front), on in-memory studies whose trials recorded known configs."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from conftest import TINY, assert_png, invoke
from pipelines.config import Config
from sweeper import study_plots
from sweeper.objective import Objective

VAL, CHEAP = Objective("val"), Objective("val,train_seconds")
# (lr, momentum, weight decay, accuracy, anneal: a categorical choice) of four trials
TRIALS = [
    (0.4, 0.9, 5e-4, 0.80, "linear"),
    (0.1, 0.8, 1e-3, 0.70, "cos"),
    (1.6, 0.95, 2e-4, 0.60, "cos"),
    (0.02, 0.85, 5e-3, 0.50, "linear"),
]


@pytest.fixture(autouse=True)
def _closed() -> Iterator[None]:
    """Optuna draws its figures with pyplot, which keeps them until closed."""
    yield
    plt.close("all")


def study_of(
    trials: Sequence[tuple[float, float, float, float, str]] = TRIALS,
    *,
    costs: Sequence[float] | None = None,
    epochs: Sequence[int] | None = None,
) -> optuna.Study:
    """An in-memory study of ``trials`` told through ask/tell, each with the config it trained recorded as the
    trials of `study run` are; with ``costs``, a multi-objective one (accuracy, train seconds)."""
    directions = ["maximize", "minimize"] if costs is not None else ["maximize"]
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), directions=directions)
    for i, (lr, momentum, decay, accuracy, anneal) in enumerate(trials):
        study.enqueue_trial({"lr": lr, "momentum": momentum, "schedule.anneal": anneal})
        trial = study.ask()
        trial.suggest_float("lr", 0.01, 2.0, log=True)
        trial.suggest_float("momentum", 0.8, 0.95)
        trial.suggest_categorical("schedule.anneal", ["linear", "cos"])
        config = Config().with_overrides(
            {"optim.lr": lr, "optim.momentum": momentum, "optim.weight_decay": decay,
             "schedule.anneal": anneal, "train.epochs": epochs[i] if epochs else 24}
        )  # fmt: skip
        trial.set_user_attr("config", config.to_yaml())
        study.tell(trial, [accuracy, costs[i]] if costs is not None else accuracy)
    return study


def offsets(ax: Axes, index: int = 0) -> np.ndarray:
    """The (x, y) of each point of the ``index``-th scatter of ``ax``."""
    return np.asarray(ax.collections[index].get_offsets())


def colour_bar_labels(fig: Figure) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]


def panels(fig: Figure) -> list[Axes]:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


# -- which figures a study gets -------------------------------------------------------------------------------------


def test_a_single_objective_study_gets_its_history_importances_parameters_and_ridge(tmp_path: Path):
    study = study_of()
    assert list(study_plots.study_figures(study, objective=VAL)) == [
        "optimization_history.png", "param_importances.png", "accuracy_vs_params.png", "ridge.png",
    ]  # fmt: skip
    written = study_plots.write_study_plots(study, tmp_path / "plots", objective=VAL)
    assert set(written) == {"optimization_history.png", "param_importances.png", "accuracy_vs_params.png", "ridge.png"}
    for name, path in written.items():
        assert path == tmp_path / "plots" / name
        assert_png(path)


def test_a_multi_objective_study_gets_its_pareto_front_instead_of_a_history():
    figures = study_plots.study_figures(study_of(costs=[10, 20, 5, 40]), objective=CHEAP)
    assert list(figures) == ["pareto_front.png", "accuracy_vs_params.png", "ridge.png"]


def test_what_too_few_trials_cannot_show_is_left_out_with_a_log_line(caplog):
    one = study_of(TRIALS[:1])
    assert list(study_plots.study_figures(one, objective=VAL)) == ["optimization_history.png", "accuracy_vs_params.png"]
    same = study_of([TRIALS[0], (*TRIALS[0][:3], 0.7, "cos")])  # lr, momentum and weight decay never vary
    with caplog.at_level(logging.WARNING, logger="sweeper.study_plots"):
        figures = study_plots.study_figures(same, objective=VAL)
    assert "ridge.png" not in figures
    assert caplog.messages == ["skipped ridge.png: lr, momentum and weight decay do not vary across the trials"]


def test_single_objective_studies_name_their_metric_and_draw_the_ridge(image_folder):
    run = invoke("study", "run", "ridge", "--data", image_folder, "--n-trials", 2, "--sampler", "random",
                 "--pruner", "none", "--json", "--set", *TINY, "train.epochs=1")  # fmt: skip
    assert run.exit_code == 0, run.output
    assert optuna.load_study(study_name="ridge", storage="sqlite:///sweeper.db").metric_names == ["val_accuracy"]
    plots = json.loads(run.stdout)["plots"]
    assert {"ridge.png", "accuracy_vs_params.png", "optimization_history.png"} <= set(plots)
    assert all(Path(path).stat().st_size > 10_000 for path in plots.values())


# -- what each shows ------------------------------------------------------------------------------------------------


def test_accuracy_vs_params_has_one_panel_per_searched_parameter():
    study = study_of()
    fig = study_plots.accuracy_vs_params_figure(study.trials, objective=VAL)
    shown = panels(fig)
    assert [ax.get_title() for ax in shown[:3]] == ["lr", "momentum", "schedule.anneal"]  # sorted, 3 columns
    lr, momentum, anneal = shown[:3]
    assert offsets(lr)[:, 0] == pytest.approx([t.params["lr"] for t in study.trials])
    assert offsets(lr)[:, 1] == pytest.approx([100 * t.value for t in study.trials])  # accuracy in percent
    assert lr.get_xscale() == "log" and momentum.get_xscale() == "linear"  # log for a range over a decade
    assert [label.get_text() for label in anneal.get_xticklabels()] == ["cos", "linear"]  # categorical: its choices
    assert lr.get_ylabel() == "val accuracy (%)" and momentum.get_ylabel() == ""  # on the first column only
    assert list(lr.collections[0].get_array()) == [0, 1, 2, 3]  # coloured by trial number
    assert colour_bar_labels(fig) == ["trial"]
    assert fig.get_suptitle() == "val accuracy over each searched parameter"


def test_the_ridge_shows_accuracy_over_lambda_and_decay_and_against_the_effective_decay():
    study = study_of()
    fig = study_plots.ridge_figure(study.trials, objective=VAL)
    left, right = panels(fig)
    lam = np.array([t[0] for t in TRIALS])
    decay = np.array([t[2] / (1 - t[1]) for t in TRIALS])  # α / (1 - ρ)
    accuracy = np.array([100 * t[3] for t in TRIALS])
    assert offsets(left) == pytest.approx(np.column_stack([np.log10(decay), np.log10(lam)]))
    assert np.asarray(left.collections[0].get_array()) == pytest.approx(accuracy)  # colour: the accuracy
    assert (left.get_xlabel(), left.get_ylabel()) == ("log10 α/(1-ρ)", "log10 λ")
    dashes = left.get_lines()
    assert dashes and all(line.get_linestyle() == "--" for line in dashes)
    for line in dashes:  # lines of equal λα/(1-ρ): slope -1 in log-log, i.e. at 45°
        (x0, x1), (y0, y1) = line.get_xdata()[[0, -1]], line.get_ydata()[[0, -1]]
        assert math.isclose((y1 - y0) / (x1 - x0), -1)
    assert offsets(right) == pytest.approx(np.column_stack([lam * decay, accuracy]))
    assert np.asarray(right.collections[0].get_array()) == pytest.approx([t[1] for t in TRIALS])  # momentum
    assert right.get_xscale() == "log" and right.get_xlabel() == "effective decay λα/(1-ρ)"
    assert colour_bar_labels(fig) == ["val accuracy (%)", "momentum ρ"]


@pytest.mark.parametrize(("objective", "unit"), [(CHEAP, "training seconds"), (Objective("test,epochs"), "epochs")])
def test_the_pareto_front_is_a_step_line_through_the_trials_no_other_beats(objective, unit):
    study = study_of(costs=[10, 20, 5, 40], epochs=[4, 8, 2, 16])
    fig = study_plots.pareto_front_figure(study, objective=objective)
    (ax,) = fig.axes
    every = offsets(ax, 0)
    assert every == pytest.approx(np.array([[10, 80], [20, 70], [5, 60], [40, 50]]))  # cost, accuracy (%) of each trial
    (front,) = ax.get_lines()
    assert list(front.get_xdata()) == [5, 10] and list(front.get_ydata()) == pytest.approx([60, 80])  # by cost
    assert front.get_drawstyle() == "steps-post"
    assert [text.get_text() for text in ax.texts] == ["4 ep", "8 ep", "2 ep", "16 ep"]  # each point's epochs
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["trials", "Pareto front"]
    split = objective.split
    assert (ax.get_xlabel(), ax.get_ylabel()) == (unit, f"{split} accuracy (%)")
    assert ax.get_title() == f"{split} accuracy against {unit}"


def test_the_history_and_importances_are_optunas_own_figures():
    study = study_of()
    history = study_plots.optimization_history_figure(study)
    assert history.axes[0].get_title() == "Optimization History Plot"
    importances = study_plots.param_importances_figure(study)
    bars = importances.axes[0].get_yticklabels()
    assert {label.get_text() for label in bars} == {"lr", "momentum", "schedule.anneal"}
