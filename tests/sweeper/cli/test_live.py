"""sweeper.cli.live: the study's live table; its columns come from the study's space, its value column from the
objective."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from rich.console import Console

from conftest import TINY, epoch_metrics, invoke
from pipelines.callbacks import EpochMetrics
from sweeper import records
from sweeper.cli.live import LiveStudyView
from sweeper.objective import Objective
from sweeper.space import load_space, parse_space
from sweeper.trials import TrialReporter

SMOOTHING_SPACE = {
    "params": {
        "effective_decay": {"type": "float", "low": 2e-4, "high": 2e-2, "log": True},
        "optim.label_smoothing": {"type": "categorical", "choices": [0.0, 0.2]},
    }
}


def rendered(view: LiveStudyView) -> str:
    console = Console(record=True, width=250)
    console.print(view.table())
    return console.export_text()


def header(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if "#" in line)
    return [cell.strip() for cell in line.split("┃") if cell.strip()]


def metrics(*, val: float, test: float) -> EpochMetrics:
    return epoch_metrics(1, val=val, test=test)


def test_columns_are_the_searched_parameters_with_lr_beside_effective_decay():
    view = LiveStudyView("s", space=parse_space(SMOOTHING_SPACE, source="test"), objective=Objective.val)
    assert header(rendered(view)) == ["#", "λα/(1-ρ)", "λ", "optim.label_smoothing", "val", "test", "state", "time"]


def test_plain_space_shows_its_own_axes_and_a_test_objective_has_one_accuracy_column():
    view = LiveStudyView("s", space=load_space("plain"), objective=Objective.test)
    assert header(rendered(view)) == ["#", "λ", "ρ", "α", "test", "state", "time"]


def started(study: optuna.Study) -> optuna.Trial:
    """A trial of the reparametrised space begun as a study's trial begins: its parameters drawn, its LR recorded."""
    trial = study.ask()
    for name, value in {"effective_decay": 2e-3, "momentum": 0.9, "weight_decay": 5e-4}.items():
        trial.suggest_float(name, value, value)
    trial.set_user_attr(records.LR, 0.4)
    return trial


def test_a_running_trial_shows_the_objective_the_pruner_sees():
    """--objective test with a validation split: the value column is test accuracy, as reported to Optuna."""
    study = optuna.create_study(direction="maximize")
    trial = started(study)
    view = LiveStudyView("s", space=load_space("reparam"), objective=Objective.test)
    view.on_trial(study.trials[0])
    reporter = TrialReporter(trial, Objective.test, view, epochs=3)
    epoch = metrics(val=0.5, test=0.8)
    reporter.on_epoch(epoch)
    assert reporter.should_stop(epoch) is None
    row = next(line for line in rendered(view).splitlines() if "running" in line)
    assert "80.0%" in row and "50.0%" not in row
    assert "0.4" in row  # lr, derived from effective_decay
    assert study.trials[0].intermediate_values == {1: 0.8}


def test_study_run_and_show_tables_have_a_column_for_every_searched_key(image_folder, tmp_path: Path):
    space = tmp_path / "space.yaml"
    space.write_text(json.dumps(SMOOTHING_SPACE))
    args = ["--space", str(space), "--sampler", "random", "--pruner", "none", "--objective", "test"]
    run = invoke(
        "study",
        "run",
        "smooth",
        "--data",
        image_folder,
        "--n-trials",
        2,
        *args,
        "--set",
        *TINY,
        "train.epochs=1",
        env={"COLUMNS": "200"},
    )
    assert run.exit_code == 0, run.output
    assert "optim.label_smoothing" in run.stderr
    shown = invoke("study", "show", "smooth", env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert header(shown.stdout) == ["#", "λα/(1-ρ)", "λ", "optim.label_smoothing", "test", "state", "time"]
    study = optuna.load_study(study_name="smooth", storage="sqlite:///sweeper.db")
    for trial in study.trials:
        row = next(line for line in shown.stdout.splitlines() if line.strip("│ ").startswith(f"{trial.number} "))
        assert f"{100 * trial.value:.1f}%" in row
        assert str(trial.params["optim.label_smoothing"]) in row


def test_a_multi_objective_table_shows_the_cost_and_marks_the_front():
    study = optuna.create_study(directions=["maximize", "minimize"])
    view = LiveStudyView("s", space=load_space("reparam"), objective="val,train_seconds")
    for number, values in enumerate(([0.9, 12.0], [0.8, 20.0])):
        trial = started(study)
        view.on_trial(study.trials[number])
        study.tell(trial, values)
        view.on_trial(study.trials[number], front=records.front_numbers(study))
    text = rendered(view)
    assert header(text)[-6:] == ["val", "test", "train s", "front", "state", "time"]
    rows = {line.strip("│ ")[0]: line for line in text.splitlines() if "complete" in line}
    assert "★" in rows["0"] and "★" not in rows["1"]  # trial 1 is both less accurate and costlier
    assert "12" in rows["0"] and "90.0%" in rows["0"]
