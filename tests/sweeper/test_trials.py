"""sweeper.trials: one trial's config, its reports to the pruner, and how it ends (diverged, invalid draws)."""

from __future__ import annotations

import json

import optuna
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import TINY, epoch_metrics, grow, invoke, run_sweeper
from pipelines.callbacks import EpochMetrics
from pipelines.config import Config
from sweeper import records
from sweeper.objective import Objective
from sweeper.space import run_params
from sweeper.trials import StudyObserver, TrialReporter, trial_config
from sweeper.urls import absolute_sqlite


def test_a_study_trial_evaluates_the_test_set_once_at_the_end():
    config = Config().with_overrides({"data.val_size": 500, "train.epochs": 12})
    assert trial_config(config, Objective("val")).train.test_every == 12
    assert trial_config(config, Objective("val,train_seconds")).train.test_every == 12
    assert trial_config(config, Objective("test")).train.test_every is None  # the pruner reads it every epoch
    explicit = config.with_overrides({"train.test_every": 3})
    assert trial_config(explicit, Objective("val")).train.test_every == 3


def test_a_trial_is_not_pruned_at_its_last_epoch():
    class Always(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            return True

    trial = optuna.create_study(direction="maximize", pruner=Always()).ask()
    reporter = TrialReporter(trial, Objective.val, StudyObserver(), epochs=2)

    def epoch(n: int) -> EpochMetrics:
        return epoch_metrics(n, val=0.6, test=0.5)

    for n in (1, 2):  # as the loop calls it: each epoch recorded, then the pruner asked
        reporter.on_epoch(epoch(n))
        stop = reporter.should_stop(epoch(n))
        assert stop == ("pruned" if n == 1 else None)  # at the last epoch: complete, nothing left to save
    assert trial.study.trials[0].intermediate_values == {1: 0.6, 2: 0.6}


def test_diverging_trial_is_pruned_as_diverged_and_the_study_goes_on(image_folder, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  lr: {type: categorical, choices: [1000000.0, 0.1]}\n")
    result = invoke(
        "study", "run", "div", "--data", image_folder, "--space", space, "--sampler", "grid", "--n-trials", 2,
        "--pruner", "none", "--json", "--set", *TINY, "train.epochs=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    trials = {t["params"]["lr"]: t for t in json.loads(result.stdout)["trials"]}
    assert trials[1000000.0]["state"] == "diverged"
    assert trials[0.1]["state"] == "complete"
    study = optuna.load_study(study_name="div", storage="sqlite:///sweeper.db")
    diverged = next(t for t in study.trials if t.params["lr"] == 1000000.0)
    assert diverged.state == TrialState.PRUNED and diverged.user_attrs["reason"] == "diverged"
    run = MlflowClient(absolute_sqlite("sqlite:///mlflow.db")).get_run(diverged.user_attrs["mlflow_run_id"])
    assert run.data.tags["sweeper.state"] == "diverged"


def test_a_drawn_combination_the_config_rejects_fails_that_trial_in_one_line(image_folder, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "params": {
                    "train.epochs": {"type": "int", "low": 2, "high": 4},
                    "schedule.policy": {"type": "categorical", "choices": ["step"]},
                    "schedule.milestones": {
                        "type": "categorical",
                        "choices": [[3], [1]],
                        "when": {"schedule.policy": "step"},
                    },
                }
            },
            sort_keys=False,
        )
    )
    done = run_sweeper(
        "study", "run", "combo", "--data", image_folder, "--space", space, "--n-trials", 6, "--sampler", "random",
        "--seed", 0, "--json", "--set", *TINY, "train.epochs=2",
    )  # fmt: skip  # its own process: Optuna's log lines about the failed trials are part of what it prints
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    trials = optuna.load_study(study_name="combo", storage=f"sqlite:///{tmp_path / 'sweeper.db'}").trials
    invalid = [t for t in trials if t.params["train.epochs"] <= 3 and t.params["schedule.milestones"] == "[3]"]
    assert invalid, "seed 0 draws no invalid combination"  # else the test proves nothing
    for trial in trials:
        assert (trial.state == optuna.trial.TrialState.FAIL) == (trial in invalid)
    assert all("schedule.milestones must lie before the last epoch" in t.user_attrs["reason"] for t in invalid)


TRICKS = {
    "params": {
        "model.whiten": {"type": "categorical", "choices": ["none", "patch2"]},
        "train.ema": {"type": "categorical", "choices": [0, 0.9]},
        "train.ema_every": {"type": "categorical", "choices": [1, 5], "when": {"train.ema": 0.9}},
    }
}


def test_run_params_add_the_switches_set_away_from_their_defaults() -> None:
    recipe = Config()
    assert set(run_params(recipe)) == {"effective_decay", "momentum", "weight_decay", "lr"}  # as before
    tricked = recipe.with_overrides({"model.activation": "gelu", "train.tta": "flip", "model.ghost_batch": 0})
    assert run_params(tricked) == {**run_params(recipe), "model.activation": "gelu", "train.tta": "flip"}


def test_a_trial_records_the_switches_it_searched_and_those_the_config_set(image_folder, tmp_path) -> None:
    space = tmp_path / "tricks.yaml"
    space.write_text(yaml.safe_dump(TRICKS))
    result = invoke(
        "study", "run", "tricks", "--data", image_folder, "--space", space, "--sampler", "random", "--seed", "3",
        "--n-trials", 3, "--pruner", "none", "--json", "--set", *TINY, "train.epochs=1", "model.activation=celu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tricks", storage="sqlite:///sweeper.db")
    client = MlflowClient(absolute_sqlite("sqlite:///mlflow.db"))
    for trial in study.trials:
        params = client.get_run(trial.user_attrs["mlflow_run_id"]).data.params
        assert params["model.activation"] == "celu"  # set by the study's config, not searched
        assert params["model.whiten"] == trial.params["model.whiten"]  # searched: logged whatever it drew
        assert float(params["train.ema"]) == trial.params["train.ema"]
        assert ("train.ema_every" in params) == (trial.params["train.ema"] == 0.9)  # searched only with an EMA
        assert "model.ghost_batch" not in params  # neither searched nor set: off
        config = Config.from_yaml(trial.user_attrs["config"])
        assert config.model.whiten == trial.params["model.whiten"] and config.model.activation == "celu"


def test_a_full_disk_stops_the_study_in_one_line_and_it_resumes_once_space_is_freed(image_folder, small_disk):
    """The trials' folder on a 256 KiB disk: the first trial's weights do not fit. The trial is recorded failed
    with the reason, the study stops at once (not after three failures) with one line naming the file, nothing
    half-written is left; with space freed, `study run` goes on."""
    storage, runs = "sqlite:///sweeper.db", small_disk / "runs"
    args = ["study", "run", "full", "--data", image_folder, "--storage", storage, "--runs-dir", runs, "--sampler",
            "random", "--pruner", "none", "--set", *TINY, "train.epochs=1"]  # fmt: skip
    result = invoke(*args, "--n-trials", 3)
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]  # below the live table
    assert last.startswith("error: cannot write ") and "trial-0000/model.pt: No space left on device" in last
    assert last.count("free space") == 1 and "Traceback" not in result.output
    (trial,) = optuna.load_study(study_name="full", storage=storage).trials
    assert trial.state == TrialState.FAIL and "No space left on device" in trial.user_attrs[records.REASON]
    left = [p for p in runs.rglob("*") if p.is_file()]
    assert not any(p.name.startswith(".") for p in left)  # no temporary file
    for path in left:  # what is there is whole
        if path.suffix == ".json":
            json.loads(path.read_text())
    grow(small_disk)
    again = invoke(*args, "--n-trials", 1, "--json")
    assert again.exit_code == 0, again.output
    states = [t.state for t in optuna.load_study(study_name="full", storage=storage).trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]
