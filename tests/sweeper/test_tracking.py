"""sweeper.tracking: the study's parent run and the trials' runs in MLflow, and a tracking URI checked before anything."""

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
from conftest import MlflowServer, free_port, start_process, wait_for, write_image_folder


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


def test_unreachable_mlflow_at_start_exits_2_before_training(image_folder):
    uri = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        app, ["study", "run", "nomlflow", "--data", str(image_folder), "--tracking-uri", uri, "--set", *TINY]
    )
    assert result.exit_code == 2
    assert uri in result.stderr and "Traceback" not in result.output
    assert not Path("sweeper.db").exists() and not Path("runs").exists()
