"""`sweeper study sync`: what was spooled while MLflow was down, uploaded, or kept for the next try."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import free_port, invoke


def test_sync_leaves_what_it_could_not_send(tmp_path):
    spool = tmp_path / "x" / "spool"
    spool.mkdir(parents=True)
    (spool / "w.jsonl").write_text(json.dumps({"op": "batch", "run_id": "r1", "tags": [["a", "b"]]}) + "\n")
    result = invoke("study", "sync", "x", "--runs-dir", tmp_path, "--tracking-uri", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 2 and "reach MLflow" in result.stderr
    assert [p.name for p in spool.iterdir()] == ["w.jsonl"]  # kept for the next sync


def test_sync_says_how_many_operations_mlflow_rejected(tmp_path):
    spool = Path("runs") / "x" / "spool"
    spool.mkdir(parents=True)
    (spool / "w.jsonl").write_text(json.dumps({"op": "batch", "run_id": "0" * 32, "tags": [["a", "b"]]}) + "\n")
    result = invoke("study", "sync", "x", "--tracking-uri", "sqlite:///mlflow.db")
    assert result.exit_code == 0, result.output
    assert "1 operations were rejected by MLflow" in result.stdout
