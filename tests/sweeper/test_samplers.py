"""sweeper.samplers: the sampler choices on a conditional space."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
import optuna
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner
from pipelines.config import Config
from sweeper.cli import app
from sweeper.space import load_space
from sweeper.urls import absolute_sqlite


def test_the_default_sampler_searches_a_conditional_space(image_folder, tmp_path):
    space = tmp_path / "policies.yaml"
    space.write_text(yaml.safe_dump(POLICIES))
    result = invoke(
        "study", "run", "tpe", "--data", image_folder, "--space", space, "--n-trials", 3, "--json", "--set", *TINY
    )
    assert result.exit_code == 0, result.output
    assert [row["state"] for row in json.loads(result.stdout)["trials"]] == ["complete"] * 3


def test_the_grid_sampler_refuses_a_conditional_space_before_anything_is_made(image_folder, tmp_path):
    space = tmp_path / "policies.yaml"
    space.write_text(yaml.safe_dump(POLICIES))
    work = tmp_path / "work"
    work.mkdir()
    result = CliRunner().invoke(
        app,
        [
            "study",
            "run",
            "grid",
            "--data",
            str(image_folder),
            "--space",
            str(space),
            "--sampler",
            "grid",
            "--set",
            *TINY,
        ],
    )
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "grid" in lines[0] and "conditional" in lines[0]
    assert not Path("sweeper.db").exists() and not Path("mlflow.db").exists()
