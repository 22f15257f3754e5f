"""sweeper.range_test: the accuracy range test's record in MLflow (a parent run, one child per LR)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY_TRAIN, assert_user_error, invoke, strict_json


def test_lr_find_accuracy_logs_a_parent_and_one_child_per_lr(image_folder: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from sweeper.urls import absolute_sqlite

    result = invoke(
        "lr-find", "--metric", "accuracy", "--epochs", "1", "--min-lr", "0.01", "--max-lr", "1", "--points", "3",
        "--tracking-uri", "sqlite:///mlflow.db", "--json", "--data", str(image_folder), "--set", *TINY_TRAIN,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = strict_json(result.stdout)
    assert [p["lr"] for p in payload["points"]] == pytest.approx([0.01, 0.1, 1.0])
    assert payload["split"] == "test"  # no validation split held out
    client = MlflowClient(absolute_sqlite("sqlite:///mlflow.db"))
    experiment = client.get_experiment_by_name("lr-find")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`sweeper.role` = 'lr_range'")
    assert parent.info.run_id == payload["mlflow_parent_run_id"] and parent.info.status == "FINISHED"
    assert float(parent.data.tags["sweeper.suggested_lr"]) == pytest.approx(payload["suggested_lr"])
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["lr_accuracy.png"]
    points = client.get_metric_history(parent.info.run_id, "objective")
    assert [m.value for m in sorted(points, key=lambda m: m.step)] == [p["accuracy"] for p in payload["points"]]
    children = client.search_runs([experiment.experiment_id], "tags.`sweeper.role` = 'lr_point'")
    assert sorted(float(r.data.params["lr"]) for r in children) == pytest.approx([0.01, 0.1, 1.0])
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert run.data.metrics["test_accuracy"] == pytest.approx(
            next(p["accuracy"] for p in payload["points"] if p["lr"] == pytest.approx(float(run.data.params["lr"])))
        )


def test_lr_find_accuracy_mistakes_leave_no_mlflow_record(image_folder: Path, tmp_path: Path) -> None:
    result = invoke(
        "lr-find", "--metric", "accuracy", "--epochs", "3", "--lrs", "0.1,0.2", "--tracking-uri", "sqlite:///m.db",
        "--data", str(image_folder), "--set", *TINY_TRAIN, "schedule.policy=step", "schedule.milestones=[4]",
        "train.epochs=6",
    )  # fmt: skip
    assert_user_error(result, "schedule.milestones")
    assert not (tmp_path / "m.db").exists()
