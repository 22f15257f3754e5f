"""What the records say after the fact: recorded settings kept, parent runs ended, dead trials recovered, syncs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from conftest import start_process
from pipelines.callbacks import EpochMetrics
from sweeper.cli import app
from sweeper.objective import Objective
from sweeper.trials import StudyObserver, TrialReporter
from sweeper.urls import absolute_sqlite

TINY = ["model.width=0.125", "train.batch_size=32", "data.val_size=60", "train.device=cpu", "train.epochs=1"]


def invoke(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_init_again_keeps_the_recorded_settings_unless_forced(image_folder):
    first = invoke("study", "init", "kept", "--data", image_folder, "--set", *TINY)
    assert first.exit_code == 0, first.output
    assert invoke("study", "init", "kept", "--data", image_folder, "--set", *TINY).exit_code == 0  # idempotent
    changed = invoke("study", "init", "kept", "--data", image_folder, "--sampler", "random", "--set", *TINY,
                     "optim.lr=0.2")  # fmt: skip
    assert changed.exit_code == 2
    assert "sampler tpe -> random" in changed.stderr and "optim.lr 0.4 -> 0.2" in changed.stderr
    assert "--force" in changed.stderr
    forced = invoke("study", "init", "kept", "--data", image_folder, "--sampler", "random", "--force", "--set", *TINY,
                    "optim.lr=0.2")  # fmt: skip
    assert forced.exit_code == 0, forced.output
    study = optuna.load_study(study_name="kept", storage="sqlite:///sweeper.db")
    assert study.user_attrs["sampler"] == "random" and "lr: 0.2" in study.user_attrs["config"]


def test_the_parent_run_ends_with_each_process_and_reopens_with_the_next(image_folder):
    client = MlflowClient(absolute_sqlite("sqlite:///mlflow.db"))
    assert invoke("study", "init", "parent", "--data", image_folder, "--set", *TINY).exit_code == 0
    study = optuna.load_study(study_name="parent", storage="sqlite:///sweeper.db")
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert client.get_run(parent).info.status == "FINISHED"
    for _ in range(2):
        result = invoke("study", "run", "parent", "--n-trials", 1, "--json")
        assert result.exit_code == 0, result.output
        run = client.get_run(parent)
        assert run.info.status == "FINISHED" and run.data.tags["sweeper.state"] == "complete"
    history = client.get_metric_history(parent, "objective")
    assert sorted(m.step for m in history) == [0, 1]  # both processes logged to the same parent


def test_a_trial_is_not_pruned_at_its_last_epoch():
    class Always(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            return True

    trial = optuna.create_study(direction="maximize", pruner=Always()).ask()
    reporter = TrialReporter(trial, Objective.val, StudyObserver(), epochs=2)

    def epoch(n: int) -> EpochMetrics:
        return EpochMetrics(
            epoch=n, train_loss=1, train_accuracy=0.5, test_loss=1, test_accuracy=0.5, val_loss=1,
            val_accuracy=0.6, lr=0.1, seconds=1, eval_seconds=0.1,
        )  # fmt: skip

    assert reporter.should_stop(epoch(1)) == "pruned"
    assert reporter.should_stop(epoch(2)) is None  # complete: nothing left to save by stopping
    assert trial.study.trials[0].intermediate_values == {1: 0.6, 2: 0.6}


def test_sync_says_how_many_operations_mlflow_rejected(tmp_path):
    spool = Path("runs") / "x" / "spool"
    spool.mkdir(parents=True)
    (spool / "w.jsonl").write_text(json.dumps({"op": "batch", "run_id": "0" * 32, "tags": [["a", "b"]]}) + "\n")
    result = invoke("study", "sync", "x", "--tracking-uri", "sqlite:///mlflow.db")
    assert result.exit_code == 0, result.output
    assert "1 operations were rejected by MLflow" in result.stdout


@pytest.mark.slow
def test_on_sqlite_a_killed_process_trial_is_failed_and_retried_by_the_next(image_folder, tmp_path):
    storage = f"sqlite:///{tmp_path / 'sweeper.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "SWEEPER_HEARTBEAT_SECONDS": "1", "SWEEPER_GRACE_SECONDS": "3"}
    common = ["--storage", storage, "--tracking-uri", tracking]
    victim = start_process(
        [sys.executable, "-m", "sweeper", "study", "run", "lite", "--data", str(image_folder), "--n-trials", "1",
         "--pruner", "none", *common, "--set", *TINY[:-1], "train.epochs=40"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name="lite", storage=storage).trials
        except KeyError:  # the study is not made yet (Optuna creates the file first)
            trials = []
        if trials and trials[0].intermediate_values:
            break
        time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    time.sleep(4)  # past the grace period
    again = subprocess.run(
        [sys.executable, "-m", "sweeper", "study", "run", "lite", "--n-trials", "1", *common,
         "--set", "train.epochs=1"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    trials = optuna.load_study(study_name="lite", storage=storage).trials
    assert trials[0].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    run = MlflowClient(tracking).get_run(trials[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["sweeper.reason"] == "worker lost (no heartbeat)"
    assert "trial_seconds" not in run.data.metrics and "logging_fraction" not in run.data.metrics


def test_a_study_held_open_has_its_parent_run_running_and_ended_as_it_ends(image_folder):
    from pipelines.data import SplitsCache
    from sweeper.study import StudyOptions, holding, open_study, plan_study

    assert invoke("study", "init", "held", "--data", image_folder, "--set", *TINY).exit_code == 0
    client = MlflowClient(absolute_sqlite("sqlite:///mlflow.db"))
    plan = plan_study(StudyOptions(name="held"), space=None, config=None, data=SplitsCache())
    ctx = open_study(plan)
    assert client.get_run(ctx.parent_run_id).info.status == "FINISHED"  # init ended it
    with pytest.raises(KeyboardInterrupt), holding(ctx):
        ctx.tracker.flush()
        assert client.get_run(ctx.parent_run_id).info.status == "RUNNING"
        raise KeyboardInterrupt
    run = client.get_run(ctx.parent_run_id)
    assert run.info.status == "KILLED" and run.data.tags["sweeper.state"] == "interrupted"
