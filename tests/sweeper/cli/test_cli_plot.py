"""`sweeper plot schedule`: the config's policy, every policy, or what a finished run used."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
import pytest
import yaml
from typer.testing import CliRunner
from pipelines.config import Config
from sweeper.cli import app


def test_plot_schedule_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "figs" / "f.png"
    result = invoke("plot", "schedule", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout
    assert_png(out)


def test_plot_schedule_draws_the_triangular_policy(tmp_path: Path) -> None:
    out = tmp_path / "tri.png"
    result = invoke("plot", "schedule", "--out", str(out), "--set", "schedule.policy=triangular", "train.epochs=8")
    assert result.exit_code == 0, result.output
    assert_png(out)


def test_plot_schedule_with_a_batch_bigger_than_the_data_exits_2(tmp_path: Path) -> None:
    result = invoke("plot", "schedule", "--out", str(tmp_path / "f.png"), "--train-size", "100")
    assert_user_error(result, "train.batch_size (512)", "100 images")
    assert not (tmp_path / "f.png").exists()


POLICIES = ("one_cycle", "triangular", "constant", "step", "exponential", "cosine", "plateau")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("warmup", ["none", "constant", "linear", "exponential"])
def test_plot_schedule_draws_every_policy_with_and_without_warmup(tmp_path: Path, policy: str, warmup: str) -> None:
    out = tmp_path / f"{policy}-{warmup}.png"
    sets = [f"schedule.policy={policy}", "schedule.milestones=[12, 18]"]
    if warmup != "none":
        sets += [f"schedule.warmup={warmup}", "schedule.warmup_epochs=2"]
    result = invoke("plot", "schedule", "--out", str(out), "--set", *sets)
    assert result.exit_code == 0, result.output
    assert_png(out)


def test_plot_schedule_from_a_run_draws_the_lrs_it_used(image_folder: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    trained = invoke(
        "train", "--data", str(image_folder), "--out", str(run_dir), "--set", *TINY, "train.epochs=2",
        "schedule.policy=plateau", "schedule.patience=0",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "used.png"
    result = invoke("plot", "schedule", "--run", str(run_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert_png(out)
    recorded = json.loads((run_dir / "metrics.json").read_text())
    assert len(recorded["lrs"]) == 2 * recorded["steps_per_epoch"]


def test_plot_schedule_from_a_folder_without_a_run_exits_2(tmp_path: Path) -> None:
    result = invoke("plot", "schedule", "--run", str(tmp_path), "--out", str(tmp_path / "f.png"))
    assert_user_error(result, "metrics.json", "--run")
    assert not (tmp_path / "f.png").exists()


def test_plot_schedule_all_draws_every_policy_with_and_without_warmup(tmp_path: Path) -> None:
    out = tmp_path / "all.png"
    result = invoke("plot", "schedule", "--all", "--out", str(out), "--set", "train.epochs=10")
    assert result.exit_code == 0, result.output
    assert_png(out)


@pytest.mark.parametrize(
    ("metrics", "args", "fragment"),
    [
        ({"lrs": "abc", "steps_per_epoch": 2}, [], "lrs must be a list of numbers"),
        ({"lrs": [0.1, 0.2], "steps_per_epoch": "x"}, [], "steps_per_epoch"),
        ({"lrs": [0.1, 0.2], "steps_per_epoch": 1}, ["--set", "optim.lr=0.2"], "--run draws what a finished run used"),
    ],
)
def test_plot_schedule_run_with_a_broken_record_or_plan_options_exits_2(
    tmp_path: Path, metrics: dict, args: list[str], fragment: str
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    result = invoke("plot", "schedule", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "f.png"), *args)
    assert_user_error(result, fragment)
