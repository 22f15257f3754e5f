"""sweeper.sync (`study sync`): the spool uploaded where the study logs, its new run ids recorded, and the runs of
trials that finished meanwhile ended."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from conftest import TINY, assert_user_error, invoke
from sweeper import records
from sweeper.urls import absolute_sqlite


@pytest.fixture()
def finished_study(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A one-trial study made in its own folder, whose trial's MLflow run was left RUNNING (its terminate lost) and
    one operation for it spooled; then the test moves to another folder."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    result = invoke(
        "study", "run", "s", "--data", image_folder, "--n-trials", 1, "--sampler", "random", "--pruner", "none",
        "--json", "--set", *TINY, "train.epochs=1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    storage, tracking = absolute_sqlite("sqlite:///sweeper.db"), absolute_sqlite("sqlite:///mlflow.db")
    trial = optuna.load_study(study_name="s", storage=storage).trials[0]
    run_id = trial.user_attrs[records.RUN_ID]
    MlflowClient(tracking).update_run(run_id, status="RUNNING")
    spool = home / "runs" / "s" / "spool"
    spool.mkdir(parents=True)
    (spool / "w.jsonl").write_text(json.dumps({"op": "batch", "run_id": run_id, "tags": [["late", "yes"]]}) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return {"storage": storage, "tracking": tracking, "runs": home / "runs", "run_id": run_id, "here": elsewhere}


def test_sync_from_another_folder_goes_where_the_study_logs_and_ends_its_finished_runs(finished_study):
    result = invoke("study", "sync", "s", "--storage", finished_study["storage"], "--runs-dir", finished_study["runs"])
    assert result.exit_code == 0, result.output
    assert f"to {finished_study['tracking']}" in result.stdout
    assert "ended 1 runs of finished trials" in result.stdout
    run = MlflowClient(finished_study["tracking"]).get_run(finished_study["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["late"] == "yes"
    assert run.data.tags[records.STATE_TAG] == "complete"
    assert list(finished_study["here"].iterdir()) == []  # no stray mlflow.db (or anything) where it ran


def test_sync_without_the_study_or_a_tracking_uri_asks_for_one_and_creates_nothing(finished_study):
    result = invoke("study", "sync", "s", "--runs-dir", finished_study["runs"])  # the default storage: not here
    assert_user_error(result, "cannot tell where study 's' logs", "--tracking-uri")
    assert list(finished_study["here"].iterdir()) == []


def test_a_recorded_uri_whose_password_was_masked_is_not_used(finished_study):
    study = optuna.load_study(study_name="s", storage=finished_study["storage"])
    study.set_user_attr(records.TRACKING_URI, "http://admin:***@mlflow.example:5000")
    result = invoke("study", "sync", "s", "--storage", finished_study["storage"], "--runs-dir", finished_study["runs"])
    assert_user_error(result, "whose password is not recorded", "--tracking-uri")
