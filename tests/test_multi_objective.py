"""Accuracy against cost: multi-objective studies, their Pareto front where users look, and the spaces benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from benchmarks import spaces
from pipelines.config import Config
from sweeper.cli import app

TINY = ["model.width=0.125", "train.batch_size=32", "data.val_size=60", "train.device=cpu"]
EPOCHS_SPACE = {
    "params": {
        "lr": {"type": "float", "low": 0.05, "high": 0.5, "log": True},
        "train.epochs": {"type": "int", "low": 1, "high": 3},
    }
}


def invoke(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for info in client.list_artifacts(run_id, path):
        out |= artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return out


@pytest.mark.slow
def test_a_multi_objective_study_has_a_front_users_can_pick_from(image_folder, mlflow_server, pg_url, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(EPOCHS_SPACE))
    common = ["--storage", pg_url, "--tracking-uri", mlflow_server.uri]
    run = invoke(
        "study", "run", "cheap", "--data", image_folder, "--space", space, "--objective", "val,train_seconds",
        "--n-trials", 3, "--sampler", "random", "--seed", "0", *common, "--json", "--set", *TINY,
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "below the median of the complete trials of its own epoch budget" in run.stderr  # --pruner median
    study = optuna.load_study(study_name="cheap", storage=pg_url)
    assert study.metric_names == ["val_accuracy", "train_seconds"]  # what optuna-dashboard shows
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and all(len(t.values) == 2 for t in complete)

    shown = invoke("study", "best", "cheap", "--storage", pg_url, "--json")
    assert shown.exit_code == 0, shown.output
    front = json.loads(shown.stdout)["pareto"]
    assert {r["number"] for r in front} == {t.number for t in study.best_trials}
    for row in front:
        assert set(row["values"]) == {"val", "train_seconds"} and set(row["params"]) == {"lr", "train.epochs"}
    costs = [r["values"]["train_seconds"] for r in front]
    assert costs == sorted(costs)

    target = min(t.values[0] for t in complete)  # every trial reaches it: the cheapest of all is picked
    picked = invoke("study", "best", "cheap", "--storage", pg_url, "--min-accuracy", target, "--json",
                    "--export", tmp_path / "picked.yaml")  # fmt: skip
    assert picked.exit_code == 0, picked.output
    choice = json.loads(picked.stdout)
    cheapest = min(complete, key=lambda t: (t.values[1], -t.values[0]))
    assert choice["number"] == cheapest.number and set(choice) - {"exported"} == set(front[0])  # the front's keys
    assert Config.load(tmp_path / "picked.yaml").train.epochs == cheapest.params["train.epochs"]

    client = MlflowClient(mlflow_server.uri)
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert {"pareto.json", "study_plots/pareto_front.png"} <= artifacts(client, parent)
    assert client.get_run(parent).data.tags["pareto.trials"] == ",".join(str(r["number"]) for r in front)


def test_min_accuracy_answers_in_one_line_when_no_trial_reaches_it():
    """A front with known values (tiny data reaches 100 % too easily to test this with training)."""
    storage = "sqlite:///known.db"
    study = optuna.create_study(study_name="known", storage=storage, directions=["maximize", "minimize"])
    study.set_user_attr("objective", "val,train_seconds")
    for accuracy, seconds in ((0.80, 10.0), (0.90, 30.0), (0.85, 40.0)):
        study.add_trial(optuna.trial.create_trial(values=[accuracy, seconds], params={}, distributions={}))
    picked = invoke("study", "best", "known", "--storage", storage, "--min-accuracy", 0.85, "--json")
    assert picked.exit_code == 0 and json.loads(picked.stdout)["number"] == 1  # 30 s beats 40 s at >= 85 %
    none = invoke("study", "best", "known", "--storage", storage, "--min-accuracy", 0.95)
    assert none.exit_code == 2 and len(none.stderr.strip().splitlines()) == 1
    assert "no trial of 'known' reaches val accuracy 0.95 (the best reached 0.9)" in none.stderr
    percent = invoke("study", "best", "known", "--storage", storage, "--min-accuracy", 60)
    assert percent.exit_code == 2 and "for 60 % write 0.6" in percent.stderr  # a percentage: the fraction named
    listed = json.loads(invoke("study", "list", "--storage", storage, "--json").stdout)
    assert listed == [{**listed[0], "name": "known", "best_value": None, "best_trial": None, "pareto_trials": 2}]


def test_val_against_epochs_records_the_epochs_run_and_no_single_best(image_folder, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(EPOCHS_SPACE))
    run = invoke("study", "run", "epochs", "--data", image_folder, "--space", space, "--objective", "val,epochs",
                 "--n-trials", 2, "--sampler", "random", "--json", "--set", *TINY)  # fmt: skip
    assert run.exit_code == 0, run.output
    for trial in optuna.load_study(study_name="epochs", storage="sqlite:///sweeper.db").trials:
        assert trial.values[1] == trial.params["train.epochs"]
    single = invoke("replay", "--study", "epochs", "--seeds", 1)
    assert single.exit_code == 2 and "--trial" in single.stderr
    for other in ("val", "val,train_seconds"):  # another arity, or the same arity with another cost
        changed = invoke("study", "run", "epochs", "--objective", other, "--n-trials", 1)
        assert changed.exit_code == 2 and "objectives cannot change" in changed.stderr, other
    cmaes = invoke("study", "run", "cma", "--data", image_folder, "--objective", "val,epochs", "--sampler", "cmaes",
                   "--n-trials", 1, "--set", *TINY)  # fmt: skip
    assert cmaes.exit_code == 2 and "cannot optimize two objectives" in cmaes.stderr


@pytest.mark.parametrize(
    ("objective", "names"),
    [
        ("val", ["val_accuracy"]),
        ("test", ["test_accuracy"]),
        ("val,train_seconds", ["val_accuracy", "train_seconds"]),
        ("test,epochs", ["test_accuracy", "epochs"]),
    ],
)
def test_study_init_names_the_metrics_so_the_dashboard_shows_no_objective_0(image_folder, objective, names):
    """The stack's `init` makes the study before any worker runs a trial: optuna-dashboard reads these names."""
    made = invoke("study", "init", "named", "--data", image_folder, "--objective", objective, "--set", *TINY)
    assert made.exit_code == 0, made.output
    assert optuna.load_study(study_name="named", storage="sqlite:///sweeper.db").metric_names == names


def test_single_objective_studies_name_their_metric_and_draw_the_ridge(image_folder):
    run = invoke("study", "run", "ridge", "--data", image_folder, "--n-trials", 2, "--sampler", "random",
                 "--pruner", "none", "--json", "--set", *TINY, "train.epochs=1")  # fmt: skip
    assert run.exit_code == 0, run.output
    assert optuna.load_study(study_name="ridge", storage="sqlite:///sweeper.db").metric_names == ["val_accuracy"]
    plots = json.loads(run.stdout)["plots"]
    assert {"ridge.png", "accuracy_vs_params.png", "optimization_history.png"} <= set(plots)
    assert all(Path(path).stat().st_size > 10_000 for path in plots.values())


def test_the_spaces_benchmark_writes_its_table_plot_and_protocol(image_folder, tmp_path, capsys):
    rc = spaces.main(
        ["--data", str(image_folder), "--train-limit", "300", "--val-size", "60", "--test-limit", "90",
         "--width", "0.125", "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--trials", "2",
         "--seeds", "1", "--out-dir", str(tmp_path)]
    )  # fmt: skip
    assert rc == 0
    (record_path,) = tmp_path.glob("spaces-*.json")
    record = json.loads(record_path.read_text())
    assert set(record["runs"]) == {"reparam", "plain"}
    for runs in record["runs"].values():
        assert len(runs) == 1 and len(runs[0]["scores"]) == 2
        assert runs[0]["best_so_far"] == sorted(runs[0]["best_so_far"])
    assert set(record["table"]["plain"]) >= {"N/4", "N/2", "N", "trials_to_within_0.5pt"}
    assert record["protocol"]["region"]["lr"] == [0.02, 4.0]
    assert Path(record["plot"]).is_file()
    assert "best @N=2" in capsys.readouterr().out
