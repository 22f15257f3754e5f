"""Ctrl-C and SIGTERM, sent for real at several moments of a trial: exit 130, one line, the trial recorded."""

from __future__ import annotations

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

from conftest import start_process

TINY = ["model.width=0.125", "train.batch_size=32", "data.val_size=60", "train.device=cpu", "train.epochs=40"]


def first_trial(storage: str) -> optuna.trial.FrozenTrial | None:
    try:
        trials = optuna.load_study(study_name="stop", storage=storage).trials
    except (KeyError, RuntimeError, optuna.exceptions.StorageInternalError):
        return None
    return trials[0] if trials else None


def wait_until(storage: str, moment: str, timeout: float = 120) -> None:
    """started: the trial has its MLflow run; epoch: its first epoch was reported (evaluated, logged)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        trial = first_trial(storage)
        if (
            trial is not None
            and "mlflow_run_id" in trial.user_attrs
            and (moment == "started" or trial.intermediate_values)
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for the trial to be {moment}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("moment", "delay", "signals"),
    [
        ("started", 0.0, [signal.SIGINT]),  # while the trial sets up and takes its first steps
        ("epoch", 0.0, [signal.SIGINT]),  # right after an evaluation: reporting, logging, pruning
        ("epoch", 0.3, [signal.SIGINT]),  # mid-epoch
        ("epoch", 0.3, [signal.SIGINT, signal.SIGINT]),  # a second Ctrl-C while the first is handled
        ("epoch", 0.0, [signal.SIGINT, signal.SIGINT, signal.SIGINT]),
        ("epoch", 0.3, [signal.SIGTERM, signal.SIGINT]),  # docker stop, then an impatient Ctrl-C
    ],
)
def test_a_stop_signal_at_any_moment_exits_130_with_one_line_and_records_the_trial(
    image_folder: Path, tmp_path: Path, moment: str, delay: float, signals: list[int]
) -> None:
    storage = f"sqlite:///{tmp_path / 'sweeper.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "stderr.log"
    with open(log, "wb") as err:
        proc = start_process(
            [sys.executable, "-m", "sweeper", "study", "run", "stop", "--data", str(image_folder), "--n-trials", "2",
             "--storage", storage, "--tracking-uri", tracking, "--pruner", "none", "--json", "--set", *TINY],
            stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ),
        )  # fmt: skip
        try:
            wait_until(storage, moment)
            time.sleep(delay)
            for sig in signals:
                proc.send_signal(sig)
                time.sleep(0.05)
            rc = proc.wait(timeout=60)
        finally:
            proc.kill()
    stderr = log.read_text()
    assert rc == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "UnboundLocalError" not in stderr and "Exception ignored" not in stderr
    notes = ("already stopping", "stopping at the next step")  # what later signals (or one during Optuna's calls) say
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(notes)]
    assert lines == ["interrupted"], stderr[-3000:]
    trials = optuna.load_study(study_name="stop", storage=storage).trials
    assert len(trials) == 1  # no trial started after the stop
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["reason"] == "interrupted"
    client = MlflowClient(tracking)
    run = client.get_run(trials[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["sweeper.state"] == "interrupted"
    experiment = client.get_experiment_by_name("stop")
    trial_runs = client.search_runs([experiment.experiment_id], "tags.`sweeper.role` = 'trial'")
    assert [r.info.status for r in trial_runs] == ["KILLED"]
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`sweeper.role` = 'study'")
    assert parent.info.status == "KILLED"  # the study's run ends with its process, not left RUNNING
