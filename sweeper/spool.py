"""Delivery of MLflow operations: sent in order by one thread, retried with back-off, spooled when MLflow is down.

An operation is a plain dict (``create``, ``batch``, ``artifact``, ``text``, ``terminate``, ``reopen``), so what
cannot be sent is written as JSON lines (plus copies of the files) to a local spool, and ``sweeper study sync NAME``
replays it later with :func:`sync_spool`. Runs created while MLflow was down get a ``pending-`` id that the
sync maps to the real one.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from pipelines.errors import UserError
from sweeper.records import PARENT_TAG
from sweeper.retry import RETRY_DELAYS, retrying

log = logging.getLogger(__name__)

OFFLINE_SECONDS = 30.0  # after a call is spooled, spool everything for this long before trying the server again
PENDING = "pending-"  # run ids made up locally while MLflow was down; sync replaces them
SYNCING = ".syncing"  # a spool file being uploaded: renamed first, so a live writer starts a fresh file


def apply_op(client: MlflowClient, op: Mapping[str, Any], run_ids: Mapping[str, str] | None = None) -> str | None:
    """Send one operation; returns the new run id for a ``create``. ``run_ids`` maps pending ids to real ones."""
    ids = run_ids or {}
    run_id = ids.get(op["run_id"], op["run_id"])
    kind = op["op"]
    if kind == "create":
        tags = {k: ids.get(v, v) if k == PARENT_TAG else v for k, v in op["tags"].items()}
        return client.create_run(op["experiment_id"], tags=tags, run_name=op.get("run_name")).info.run_id
    if run_id.startswith(PENDING):
        raise RuntimeError(f"run {run_id} was never created")
    if kind == "batch":
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in op.get("metrics", ())],
            params=[Param(k, v) for k, v in op.get("params", ())],
            tags=[RunTag(k, v) for k, v in op.get("tags", ())],
        )
    elif kind == "artifact":
        client.log_artifact(run_id, op["path"], op.get("artifact_path"))
    elif kind == "text":
        client.log_text(run_id, op["text"], op["name"])
    elif kind == "terminate":
        client.set_terminated(run_id, status=op["status"])
    elif kind == "reopen":
        client.update_run(run_id, status="RUNNING")
    else:
        raise ValueError(f"unknown spooled operation {kind!r}")
    return None


def is_transient(err: BaseException) -> bool:
    """A failure that may pass (server down, timeout, 5xx, rate limit), as opposed to a rejected request."""
    if isinstance(err, mlflow.exceptions.RestException):
        status = err.get_http_status_code() or 500
        return status >= 500 or status in (408, 429)
    if isinstance(err, mlflow.exceptions.MlflowException):
        # the REST client reports connection failures as "API request to ... failed with exception ..."
        return err.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED") and (
            "API request" in str(err) or "Max retries" in str(err) or err.error_code != "INTERNAL_ERROR"
        )
    return isinstance(err, (OSError, TimeoutError)) or "Connection" in type(err).__name__


class LogQueue:
    """Sends operations in order on one background thread; retries with back-off; spools what still fails."""

    def __init__(self, client: MlflowClient, spool_dir: Path, *, delays: Sequence[float] = RETRY_DELAYS) -> None:
        self.client = client
        self.spool_dir = spool_dir
        self.delays = tuple(delays)
        self.spool_file = spool_dir / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"
        self.spooled = 0
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._spooled_runs: set[str] = set()
        self._offline_until = 0.0
        self._thread = threading.Thread(target=self._loop, name="mlflow-log-queue", daemon=True)
        self._thread.start()

    def submit(self, op: dict[str, Any]) -> None:
        self._queue.put(op)

    def flush(self) -> None:
        """Block until every submitted operation was sent or spooled."""
        self._queue.join()

    def _loop(self) -> None:
        while True:
            op = self._queue.get()
            try:
                self._send(op)
            except Exception:
                log.exception("MLflow logging thread")
            finally:
                self._queue.task_done()

    def _send(self, op: dict[str, Any]) -> None:
        run_id = op["run_id"]
        if run_id in self._spooled_runs or run_id.startswith(PENDING) or time.monotonic() < self._offline_until:
            self._spool(op)
            return
        try:
            retrying(when=is_transient, delays=self.delays)(apply_op, self.client, op)
        except Exception as err:  # noqa: BLE001 - sorted by is_transient
            if not is_transient(err):
                log.error("MLflow rejected %s for run %s (dropped, retrying cannot help): %s", op["op"], run_id, err)
                return
            log.warning("MLflow unreachable (%s): spooling to %s", type(err).__name__, self.spool_dir)
            self._offline_until = time.monotonic() + OFFLINE_SECONDS
            self._spool(op)

    def _spool(self, op: dict[str, Any]) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        if op["op"] == "artifact":
            keep = self.spool_dir / "files" / uuid.uuid4().hex
            keep.mkdir(parents=True)
            op = {**op, "path": str(shutil.copy2(op["path"], keep / Path(op["path"]).name))}
        with open(self.spool_file, "a") as f:
            f.write(json.dumps(op) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._spooled_runs.add(op["run_id"])
        self.spooled += 1


def sync_spool(client: MlflowClient, spool_dir: Path) -> dict[str, Any]:
    """Replay every spooled operation in order; remove what was sent. Raises UserError if MLflow is still down.
    Returns the operations sent, those MLflow rejected (``skipped``), the files, and the runs created (``run_ids``:
    pending id -> real id).

    Each file is renamed before it is read, so a study still running (appending to its spool) loses nothing;
    pending run ids made while offline are mapped to the runs created here, across files and across syncs
    (ops left behind are rewritten with the real ids). Ops MLflow rejects outright are skipped and counted.
    """
    sent = skipped = files = 0
    run_ids: dict[str, str] = {}
    for path in sorted(spool_dir.glob("*.jsonl")):
        path.rename(path.with_name(path.name + SYNCING))
    for path in sorted(spool_dir.glob("*" + SYNCING)):
        ops = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for i, op in enumerate(ops):
            try:
                created = apply_op(client, op, run_ids)
            except Exception as err:
                if not is_transient(err):
                    log.error("MLflow rejected spooled %s for run %s; skipped: %s", op["op"], op["run_id"], err)
                    skipped += 1
                    continue
                remaining = [
                    {**o, "run_id": run_ids.get(o["run_id"], o["run_id"])} | _mapped_create(o, run_ids) for o in ops[i:]
                ]
                tmp = path.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(o) + "\n" for o in remaining))
                tmp.replace(path)
                raise UserError(
                    f"MLflow still unreachable ({type(err).__name__}); {sent} operations sent, "
                    f"{len(remaining)} left in {path}"
                ) from err
            if created is not None:
                run_ids[op["run_id"]] = created
            sent += 1
        path.unlink()
        files += 1
    if (spool_dir / "files").exists() and not any(spool_dir.glob("*.jsonl")) and not any(spool_dir.glob("*" + SYNCING)):
        shutil.rmtree(spool_dir / "files")
    created = {pending: real for pending, real in run_ids.items() if pending.startswith(PENDING)}
    return {"operations": sent, "skipped": skipped, "files": files, "run_ids": created}


def _mapped_create(op: Mapping[str, Any], run_ids: Mapping[str, str]) -> dict[str, Any]:
    if op["op"] != "create":
        return {}
    parent = op["tags"].get(PARENT_TAG)
    return {"tags": {**op["tags"], PARENT_TAG: run_ids.get(parent, parent)}} if parent else {}
