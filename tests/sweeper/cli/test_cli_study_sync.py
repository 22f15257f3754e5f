"""`sweeper study sync`: what was spooled while MLflow was down, uploaded, or kept for the next try."""

from __future__ import annotations

import json
from pathlib import Path
from mlflow import MlflowClient
from typer.testing import CliRunner
from conftest import free_port
from sweeper.cli import app
from sweeper.spool import LogQueue, sync_spool
from sweeper.urls import RunsLink, absolute_sqlite, mask_url, runs_link
import os
import signal
import subprocess
import sys
import time
import optuna
import pytest
from optuna.trial import TrialState
from conftest import start_process
from pipelines.callbacks import EpochMetrics
from sweeper.objective import Objective
from sweeper.trials import StudyObserver, TrialReporter
from sweeper.urls import absolute_sqlite


def test_sync_leaves_what_it_could_not_send(tmp_path):
    spool = tmp_path / "x" / "spool"
    spool.mkdir(parents=True)
    (spool / "w.jsonl").write_text(json.dumps({"op": "batch", "run_id": "r1", "tags": [["a", "b"]]}) + "\n")
    result = CliRunner().invoke(
        app, ["study", "sync", "x", "--runs-dir", str(tmp_path), "--tracking-uri", f"http://127.0.0.1:{free_port()}"]
    )
    assert result.exit_code == 2 and "reach MLflow" in result.stderr
    assert [p.name for p in spool.iterdir()] == ["w.jsonl"]  # kept for the next sync


def test_sync_says_how_many_operations_mlflow_rejected(tmp_path):
    spool = Path("runs") / "x" / "spool"
    spool.mkdir(parents=True)
    (spool / "w.jsonl").write_text(json.dumps({"op": "batch", "run_id": "0" * 32, "tags": [["a", "b"]]}) + "\n")
    result = invoke("study", "sync", "x", "--tracking-uri", "sqlite:///mlflow.db")
    assert result.exit_code == 0, result.output
    assert "1 operations were rejected by MLflow" in result.stdout
