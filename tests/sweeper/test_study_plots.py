"""sweeper.study_plots: what each of a study's figures shows, and which a study gets."""

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


def test_single_objective_studies_name_their_metric_and_draw_the_ridge(image_folder):
    run = invoke("study", "run", "ridge", "--data", image_folder, "--n-trials", 2, "--sampler", "random",
                 "--pruner", "none", "--json", "--set", *TINY, "train.epochs=1")  # fmt: skip
    assert run.exit_code == 0, run.output
    assert optuna.load_study(study_name="ridge", storage="sqlite:///sweeper.db").metric_names == ["val_accuracy"]
    plots = json.loads(run.stdout)["plots"]
    assert {"ridge.png", "accuracy_vs_params.png", "optimization_history.png"} <= set(plots)
    assert all(Path(path).stat().st_size > 10_000 for path in plots.values())
