"""The logging queue and its spool."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow import MlflowClient
from typer.testing import CliRunner

from conftest import free_port
from sweeper.cli import app
from sweeper.spool import LogQueue, sync_spool
from sweeper.urls import RunsLink, absolute_sqlite, mask_url, runs_link


def test_rejected_call_is_dropped_not_spooled(tmp_path):
    client = MlflowClient(absolute_sqlite("sqlite:///mlflow.db"))
    queue = LogQueue(client, tmp_path / "spool", delays=(0.01,))
    queue.submit({"op": "batch", "run_id": "0" * 32, "tags": [["a", "b"]]})  # no such run: retrying cannot help
    queue.flush()
    assert queue.spooled == 0 and not (tmp_path / "spool").exists()


def test_unreachable_server_spools_in_order_and_sync_replays_with_pending_ids(tmp_path):
    down = MlflowClient(f"http://127.0.0.1:{free_port()}")
    spool = tmp_path / "spool"
    queue = LogQueue(down, spool, delays=(0.01,))
    plot = tmp_path / "plot.png"
    plot.write_bytes(b"\x89PNG fake")
    live = MlflowClient(absolute_sqlite("sqlite:///mlflow.db"))
    exp = live.create_experiment("spooled")
    pending = "pending-abc"
    queue.submit({"op": "create", "run_id": pending, "experiment_id": exp, "tags": {"sweeper.role": "trial"}})
    queue.submit({"op": "batch", "run_id": pending, "metrics": [["acc", 0.5, 0, 1], ["acc", 0.7, 0, 2]]})
    queue.submit({"op": "artifact", "run_id": pending, "path": str(plot), "artifact_path": "plots"})
    queue.submit({"op": "terminate", "run_id": pending, "status": "FINISHED"})
    queue.flush()
    assert queue.spooled == 4
    plot.unlink()  # the spool kept its own copy
    done = sync_spool(live, spool)
    assert done["operations"] == 4 and not list(spool.glob("*.jsonl*"))
    (run,) = live.search_runs([exp])
    assert run.info.status == "FINISHED"
    assert [m.value for m in live.get_metric_history(run.info.run_id, "acc")] == [0.5, 0.7]
    assert [a.path for a in live.list_artifacts(run.info.run_id, "plots")] == ["plots/plot.png"]


def test_sync_leaves_what_it_could_not_send(tmp_path):
    spool = tmp_path / "x" / "spool"
    spool.mkdir(parents=True)
    (spool / "w.jsonl").write_text(json.dumps({"op": "batch", "run_id": "r1", "tags": [["a", "b"]]}) + "\n")
    result = CliRunner().invoke(
        app, ["study", "sync", "x", "--runs-dir", str(tmp_path), "--tracking-uri", f"http://127.0.0.1:{free_port()}"]
    )
    assert result.exit_code == 2 and "reach MLflow" in result.stderr
    assert [p.name for p in spool.iterdir()] == ["w.jsonl"]  # kept for the next sync


def test_masks_passwords_in_urls():
    assert mask_url("postgresql+psycopg2://u:secret@db:5432/x") == "postgresql+psycopg2://u:***@db:5432/x"
    assert mask_url("http://admin:pw@mlflow:5000") == "http://admin:***@mlflow:5000"
    assert mask_url("sqlite:///sweeper.db") == "sqlite:///sweeper.db"


def test_runs_links_open_the_runs_view_without_a_password():
    """MLflow 3 shows an experiment's GenAI view unless asked for the runs; a browser asks for the credentials."""
    view = "#/experiments/7/runs?workflowType=machine_learning"
    assert runs_link("https://alice:s3cret@example.org/mlflow/", "7") == RunsLink(f"https://example.org/mlflow/{view}")
    assert runs_link("http://mlflow:5000", "7") == RunsLink(f"http://mlflow:5000/{view}")
    local = RunsLink(f"http://127.0.0.1:5000/{view}", serve="mlflow ui --backend-store-uri sqlite:////srv/mlflow.db")
    assert runs_link("sqlite:////srv/mlflow.db", "7") == local
    served = runs_link("postgresql://u:s3cret@db/mlflow", "7")
    assert served is not None and "s3cret" not in served.serve
    assert runs_link("databricks", "7") is None


def test_runs_link_uses_the_browsers_address_of_the_ui_where_one_is_given(monkeypatch):
    """In the compose stack a worker tracks to http://mlflow:5000, a name only the containers know; the link it
    prints must be the published port (SWEEPER_MLFLOW_UI, set by docker-compose.yml)."""
    monkeypatch.setenv("SWEEPER_MLFLOW_UI", "http://127.0.0.1:5001/")
    view = "#/experiments/7/runs?workflowType=machine_learning"
    assert runs_link("http://mlflow:5000", "7") == RunsLink(f"http://127.0.0.1:5001/{view}")
    local = runs_link("sqlite:////srv/mlflow.db", "7")  # a local store is still seen through `mlflow ui`
    assert local is not None and local.serve is not None


def test_study_init_with_bad_data_leaves_nothing(tmp_path):
    result = CliRunner().invoke(app, ["study", "init", "bad", "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "nowhere" in result.stderr
    assert not Path("sweeper.db").exists() and not Path("mlflow.db").exists()
