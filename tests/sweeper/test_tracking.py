"""sweeper.tracking: the study's parent run and the trials' runs in MLflow; a tracking URI checked before anything."""

from __future__ import annotations

from pathlib import Path

import optuna
from mlflow import MlflowClient

from conftest import TINY, free_port, invoke
from sweeper.urls import absolute_sqlite


def test_the_parent_run_ends_with_each_process_and_reopens_with_the_next(image_folder):
    client = MlflowClient(absolute_sqlite("sqlite:///mlflow.db"))
    assert invoke("study", "init", "parent", "--data", image_folder, "--set", *TINY, "train.epochs=1").exit_code == 0
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
    result = invoke("study", "run", "nomlflow", "--data", image_folder, "--tracking-uri", uri, "--set", *TINY)
    assert result.exit_code == 2
    assert uri in result.stderr and "Traceback" not in result.output
    assert not Path("sweeper.db").exists() and not Path("runs").exists()
