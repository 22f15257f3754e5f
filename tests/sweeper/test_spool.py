"""sweeper.spool: MLflow operations sent in order, retried, spooled while MLflow is down, and synced later."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import TINY, MlflowServer, drop_database, free_port, invoke, reported_epoch, wait_for
from pipelines.errors import UserError
from sweeper.spool import LogQueue, sync_spool
from sweeper.urls import absolute_sqlite


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


@pytest.mark.slow
def test_mlflow_outage_mid_study_is_spooled_and_synced(image_folder, tmp_path):
    server = MlflowServer(tmp_path / "outage-server")
    server.start()
    storage = f"sqlite:///{tmp_path / 'sweeper.db'}"
    common = ["--storage", storage, "--tracking-uri", server.uri]

    def stop_the_server_mid_trial() -> None:
        wait_for(lambda: reported_epoch(storage, "outage"), 120, "the first trial")
        server.stop()

    outage = threading.Thread(target=stop_the_server_mid_trial, daemon=True)
    try:
        outage.start()
        run = invoke("study", "run", "outage", "--data", image_folder, "--n-trials", 3, "--pruner", "none", *common,
                     "--set", *TINY, "train.epochs=3")  # fmt: skip
        outage.join()
        assert run.exit_code == 0, run.output
        assert server.proc is None, "the server was never stopped"
        study = optuna.load_study(study_name="outage", storage=storage)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3  # training went on
        spool = Path("runs/outage/spool")
        assert list(spool.glob("*.jsonl")), "nothing was spooled"

        server.start()
        synced = invoke("study", "sync", "outage", "--tracking-uri", server.uri, "--storage", storage, "--json")
        assert synced.exit_code == 0, synced.output
        done = json.loads(synced.stdout)
        assert done["operations"] > 0 and done["run_ids"] and done["run_ids_recorded"]
        assert not list(spool.glob("*.jsonl"))
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("outage")
        children = client.search_runs([exp.experiment_id], "tags.`sweeper.role` = 'trial'")
        assert sorted(int(r.data.tags["sweeper.trial_number"]) for r in children) == [0, 1, 2]
        for run in children:
            assert run.info.status == "FINISHED" and run.data.tags["sweeper.state"] == "complete"
            assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 3  # every epoch, synced
            assert [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")] == [3]  # at the end
            names = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
            assert names == {"plots/lr_schedule.png", "plots/curves.png", "plots/misclassified.png"}
        shown = invoke("study", "show", "outage", "--storage", storage, "--json")
        recorded = sorted(t["mlflow_run_id"] for t in json.loads(shown.stdout)["trials"])
        assert recorded == sorted(r.info.run_id for r in children)  # the real ids, no pending- placeholder
    finally:
        server.stop()
        drop_database(server.backend)  # the server's own database, made for this test


class _Down:
    """An MLflow client whose every call fails as an unreachable server does."""

    def __getattr__(self, name: str) -> object:
        def fail(*args: object, **kwargs: object) -> None:
            raise ConnectionError("MLflow is down")

        return fail


class _Recording:
    """An MLflow client that takes every batch."""

    def __init__(self) -> None:
        self.batches: list[tuple] = []

    def log_batch(self, run_id: str, **kwargs: object) -> None:
        self.batches.append((run_id, kwargs))


def _op(i: int) -> dict:
    return {"op": "batch", "run_id": "r1", "metrics": [["m", float(i), 0, i]] * 5}


def test_a_full_disk_cuts_no_spool_line_and_stops_at_the_next_flush_once(small_disk):
    queue = LogQueue(_Down(), small_disk / "spool", delays=())
    for i in range(3000):  # ~400 kB of lines: more than the disk holds
        queue.submit(_op(i))
    with pytest.raises(UserError, match=r"cannot write the MLflow spool .*: No space left on device"):
        queue.flush()
    queue.flush()  # said once: the way out (ending runs, the parent's) flushes again
    assert queue.spooled > 0 and queue.lost > 0 and queue.spooled + queue.lost == 3000
    lines = Path(queue.spool_file).read_text().splitlines()
    assert len(lines) == queue.spooled
    assert [json.loads(line)["metrics"][0][1] for line in lines] == [float(i) for i in range(queue.spooled)]


def test_sync_sends_every_whole_operation_and_keeps_a_damaged_line_aside(tmp_path, caplog):
    spool = tmp_path / "spool"
    spool.mkdir()
    whole = [json.dumps(_op(i)) for i in range(3)]
    (spool / "w.jsonl").write_text("\n".join([whole[0], whole[1], '{"op": "batch", "run_id": "r1", "metr', whole[2]]))
    client = _Recording()
    done = sync_spool(client, spool)
    assert done["operations"] == 3 and done["damaged"] == 1
    assert [kwargs["metrics"][0].value for _, kwargs in client.batches] == [0.0, 1.0, 2.0]
    assert (spool / "damaged.jsonl").read_text() == '{"op": "batch", "run_id": "r1", "metr\n'
    assert sorted(p.name for p in spool.iterdir()) == ["damaged.jsonl"]
    assert sum("damaged line" in r.getMessage() for r in caplog.records) == 1
    assert sync_spool(client, spool)["operations"] == 0  # the damaged line is not sent again
