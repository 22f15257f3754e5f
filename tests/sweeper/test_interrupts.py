"""sweeper.interrupts and the CLI's signal handler: Ctrl-C and SIGTERM stop the work once, the clean-up runs to
its end, and the running trial is recorded as interrupted."""

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
from conftest import MlflowServer, free_port, start_process, wait_for, write_image_folder
from sweeper.cli import app
from sweeper.urls import absolute_sqlite
from conftest import start_process


@pytest.mark.slow
def test_ctrl_c_records_the_trial_as_interrupted_and_exits_130(image_folder, tmp_path):
    storage = f"sqlite:///{tmp_path / 'sweeper.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--storage", storage, "--tracking-uri", tracking]
    proc = sweeper_proc(
        "study", "run", "ctrlc", "--data", image_folder, "--n-trials", 2, *common, "--set", *TINY,
        "train.epochs=60",
        log=tmp_path / "run.log",
    )  # fmt: skip
    wait_for(lambda: running_trial_with_epoch(storage, "ctrlc"), 120, "a running trial")
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130, (tmp_path / "run.log").read_text()[-2000:]
    assert time.monotonic() - sent < 10
    trial = optuna.load_study(study_name="ctrlc", storage=storage).trials[0]
    assert trial.state == TrialState.FAIL and trial.user_attrs["reason"] == "interrupted"
    run = MlflowClient(tracking).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["sweeper.state"] == "interrupted"
    # a later run resumes the study
    again = sweeper_proc(
        "study", "run", "ctrlc", "--n-trials", 1, *common, "--set", "train.epochs=1", log=tmp_path / "again.log"
    )
    assert again.wait(timeout=120) == 0, (tmp_path / "again.log").read_text()[-2000:]
    states = [t.state for t in optuna.load_study(study_name="ctrlc", storage=storage).trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]


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
