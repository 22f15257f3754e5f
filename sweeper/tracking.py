"""MLflow tracking through ``MlflowClient``: one experiment per study, a parent run, a child run per trial.

Nothing is lost: every logging call after start-up goes through one background ``LogQueue`` that sends in order,
retries with back-off, and writes what still fails to a local spool (JSON lines plus copies of the files) that
``sweeper study sync NAME`` uploads later. The trainer never waits for the tracking server; the time our logging
costs a trial (enqueueing plus the final drain) is measured and logged as ``logging_seconds``.
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
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from pipelines.callbacks import Callback, EpochMetrics
from pipelines.errors import UserError

log = logging.getLogger(__name__)

# MLflow writes "View run ... at: URL" to stdout when a run on a server ends: that would corrupt `--json` output.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# MLflow's own HTTP retries last minutes by default; our queue retries instead, so fail fast underneath it.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # with artifacts in ./mlartifacts: `mlflow ui` shows it, no server
DEFAULT_ARTIFACTS = "mlartifacts"
ROLE = "sweeper.role"
STUDY_TAG = "sweeper.study"
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)  # seconds between tries of one call before it is spooled
OFFLINE_SECONDS = 30.0  # after a call is spooled, spool everything for this long before trying the server again
PENDING = "pending-"  # run ids made up locally while MLflow was down; sync replaces them
STATES = ("complete", "pruned", "failed", "diverged", "interrupted")
MLFLOW_STATUS = {
    "complete": "FINISHED",
    "pruned": "FINISHED",
    "diverged": "FINISHED",
    "failed": "FAILED",
    "interrupted": "KILLED",
}


def resolve_tracking_uri(uri: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db; a relative SQLite path made absolute
    (MLflow caches one store per URI, so the same relative URI must not mean two files)."""
    return absolute_sqlite(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


def absolute_sqlite(url: str) -> str:
    """sqlite:///relative.db -> sqlite:////abs/dir/relative.db; other URLs unchanged."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(Path(url[len(prefix) :]).absolute())
    return url


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***: safe to log, print or store as a tag."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- operations: plain dicts, so they can be spooled as JSON and replayed by `study sync` -----------------------


def apply_op(client: MlflowClient, op: Mapping[str, Any], run_ids: Mapping[str, str] | None = None) -> str | None:
    """Send one operation; returns the new run id for a ``create``. ``run_ids`` maps pending ids to real ones."""
    ids = run_ids or {}
    run_id = ids.get(op["run_id"], op["run_id"])
    kind = op["op"]
    if kind == "create":
        tags = {k: ids.get(v, v) if k == "mlflow.parentRunId" else v for k, v in op["tags"].items()}
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
    else:
        raise ValueError(f"unknown spooled operation {kind!r}")
    return None


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
            except Exception:  # noqa: BLE001 - the queue must survive anything; the op is already spooled
                log.exception("MLflow logging thread")
            finally:
                self._queue.task_done()

    def _send(self, op: dict[str, Any]) -> None:
        run_id = op["run_id"]
        if run_id in self._spooled_runs or run_id.startswith(PENDING) or time.monotonic() < self._offline_until:
            self._spool(op)
            return
        error: Exception | None = None
        for delay in (*self.delays, None):
            try:
                apply_op(self.client, op)
                return
            except Exception as err:  # noqa: BLE001 - sorted below
                if not is_transient(err):
                    log.error("MLflow rejected %s for run %s (dropped, retrying cannot help): %s", op["op"], run_id, err)
                    return
                error = err
            if delay is not None:
                time.sleep(delay)
        log.warning("MLflow unreachable (%s): spooling to %s", type(error).__name__, self.spool_dir)
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


SYNCING = ".syncing"  # a spool file being uploaded: renamed first, so a live writer starts a fresh file


def sync_spool(client: MlflowClient, spool_dir: Path) -> dict[str, int]:
    """Replay every spooled operation in order; remove what was sent. Raises UserError if MLflow is still down.

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
            except Exception as err:  # noqa: BLE001 - sorted by is_transient
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
    return {"operations": sent, "skipped": skipped, "files": files}


def _mapped_create(op: Mapping[str, Any], run_ids: Mapping[str, str]) -> dict[str, Any]:
    if op["op"] != "create":
        return {}
    parent = op["tags"].get("mlflow.parentRunId")
    return {"tags": {**op["tags"], "mlflow.parentRunId": run_ids.get(parent, parent)}} if parent else {}


class Tracker:
    """An MLflow experiment (named after the study) and the runs under it."""

    def __init__(self, uri: str | None, experiment: str, *, spool_dir: Path | None = None) -> None:
        self.uri = resolve_tracking_uri(uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_name = experiment
        self.spool_dir = spool_dir or Path("runs") / experiment / "spool"
        try:
            found = self.client.get_experiment_by_name(experiment)
        except mlflow.exceptions.RestException as err:
            raise UserError(f"MLflow at {mask_url(self.uri)}: {' '.join(str(err).split())[:300]}") from err
        except Exception as err:  # noqa: BLE001 - connection refused, DNS, timeouts: unreachable
            raise UserError(
                f"cannot reach MLflow at {mask_url(self.uri)} ({type(err).__name__}); start it or pass --tracking-uri"
            ) from err
        self._experiment_id: str | None = found.experiment_id if found is not None else None
        self._queue: LogQueue | None = None

    @property
    def experiment_id(self) -> str:
        """The experiment's id, creating it on first use (so a failed start-up check leaves no experiment)."""
        if self._experiment_id is None:
            location = None
            if self.uri.startswith("sqlite:") or "://" not in self.uri:
                location = Path(DEFAULT_ARTIFACTS).absolute().as_uri()
            try:
                self._experiment_id = self.client.create_experiment(self.experiment_name, artifact_location=location)
            except mlflow.exceptions.MlflowException:
                found = self.client.get_experiment_by_name(self.experiment_name)  # another worker made it first
                if found is None:
                    raise
                self._experiment_id = found.experiment_id
        return self._experiment_id

    @property
    def queue(self) -> LogQueue:
        if self._queue is None:
            self._queue = LogQueue(self.client, self.spool_dir)
        return self._queue

    def flush(self) -> None:
        if self._queue is not None:
            self._queue.flush()

    # -- synchronous at start-up: the study cannot go on without them ----------------------------------------
    def parent_run(self, study: str, *, run_id: str | None = None, params: Mapping[str, Any] | None = None) -> str:
        """The study's parent run id: ``run_id`` if given, else the tagged one, else a new one."""
        if run_id:
            return run_id
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{ROLE}` = 'study' and tags.`{STUDY_TAG}` = '{study}'",
            max_results=1,
        )
        if runs:
            return runs[0].info.run_id
        run = self.client.create_run(self.experiment_id, tags={ROLE: "study", STUDY_TAG: study}, run_name=study)
        if params:
            self.client.log_batch(run.info.run_id, params=[Param(k, _param(v)) for k, v in params.items()])
        return run.info.run_id

    # -- through the queue ---------------------------------------------------------------------------------------
    def trial_run(
        self,
        parent_id: str,
        *,
        study: str,
        number: int,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        role: str = "trial",
        run_name: str | None = None,
    ) -> TrialRun:
        """A child run; created right away, or (MLflow down) under a pending id that the spool resolves later."""
        all_tags = {
            **({"mlflow.parentRunId": parent_id} if parent_id else {}),
            ROLE: role,
            STUDY_TAG: study,
            "sweeper.trial_number": str(number),
            **(tags or {}),
        }
        name = run_name or f"{study}-trial-{number}"
        try:
            run_id = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name).info.run_id
        except Exception as err:  # noqa: BLE001 - any transport error: carry on offline
            log.warning("MLflow unreachable (%s) when starting %s: spooling its run", type(err).__name__, name)
            run_id = PENDING + uuid.uuid4().hex
            self.queue.submit(
                {"op": "create", "run_id": run_id, "experiment_id": self.experiment_id, "tags": all_tags, "run_name": name}
            )
        tr = TrialRun(self.queue, run_id)
        tr.log_params(params)
        return tr

    def log_study_point(self, parent_id: str, *, number: int, value: float | None, best: float | None) -> None:
        ts = _now_ms()
        metrics = [["objective", value, ts, number]] if value is not None else []
        if best is not None:
            metrics.append(["best_objective", best, ts, number])
        if metrics:
            self.queue.submit({"op": "batch", "run_id": parent_id, "metrics": metrics})

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.queue.submit({"op": "batch", "run_id": run_id, "tags": [[k, str(v)] for k, v in tags.items()]})

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.queue.submit({"op": "artifact", "run_id": run_id, "path": str(path), "artifact_path": artifact_path})

    def log_artifact_text(self, run_id: str, name: str, text: str) -> None:
        self.queue.submit({"op": "text", "run_id": run_id, "text": text, "name": name})

    def end_run(self, run_id: str, state: str, *, reason: str | None = None) -> None:
        """End a run we did not start here (a dead worker's trial)."""
        TrialRun(self.queue, run_id).finish(state, reason=reason)
        self.flush()


class TrialRun(Callback):
    """One trial's MLflow run, fed by the trainer's callbacks; ``finish`` ends it with the trial's state."""

    def __init__(self, log_queue: LogQueue, run_id: str) -> None:
        self.queue = log_queue
        self.run_id = run_id
        self.logging_seconds = 0.0
        self.started = time.perf_counter()
        self.finished = False
        self.keep_weights = False  # log model.pt too (replays keep their weights; trials leave them on disk)

    def _submit(self, op: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        self.queue.submit({**op, "run_id": self.run_id})
        self.logging_seconds += time.perf_counter() - t0

    def log_params(self, params: Mapping[str, Any]) -> None:
        if params:
            self._submit({"op": "batch", "params": [[k, _param(v)] for k, v in params.items()]})

    def on_start(self, *, total_steps: int, steps_per_epoch: int, lrs: Sequence[float]) -> None:
        """The LR of every iteration (step = iteration), known before training: sent in batches of 1000."""
        ts = _now_ms()
        metrics = [["lr", float(lr), ts, step] for step, lr in enumerate(lrs)]
        for start in range(0, len(metrics), MAX_BATCH):
            self._submit({"op": "batch", "metrics": metrics[start : start + MAX_BATCH]})

    def on_epoch(self, metrics: EpochMetrics) -> None:
        ts = _now_ms()
        values = {
            "train_loss": metrics.train_loss,
            "train_accuracy": metrics.train_accuracy,
            "test_loss": metrics.test_loss,
            "test_accuracy": metrics.test_accuracy,
            "val_loss": metrics.val_loss,
            "val_accuracy": metrics.val_accuracy,
            "epoch_seconds": metrics.seconds,
        }
        batch = [[k, float(v), ts, metrics.epoch] for k, v in values.items() if v is not None]
        self._submit({"op": "batch", "metrics": batch})

    def on_artifact(self, path: Path, name: str) -> None:
        if name == "model.pt" and not self.keep_weights:
            return  # a trial's weights stay in its out_dir
        folder = str(Path(name).parent) if "/" in name else None
        self._submit({"op": "artifact", "path": str(path), "artifact_path": folder})

    def finish(self, state: str, *, reason: str | None = None, trial_seconds: float | None = None) -> None:
        """Record the state, end the run (FINISHED, FAILED or KILLED) and wait until all of it is sent or spooled."""
        if self.finished:
            return
        assert state in STATES, state
        seconds = trial_seconds if trial_seconds is not None else time.perf_counter() - self.started
        tags = [["sweeper.state", state]]
        if reason:
            tags.append(["sweeper.reason", reason[:500]])
        t0 = time.perf_counter()
        self._submit({"op": "batch", "tags": tags})
        self.queue.flush()  # the run's own metrics and files first: the drain is part of the logging cost
        self.logging_seconds += time.perf_counter() - t0
        ts = _now_ms()
        metrics = [["trial_seconds", seconds, ts, 0], ["logging_seconds", self.logging_seconds, ts, 0]]
        if seconds > 0:
            metrics.append(["logging_fraction", self.logging_seconds / seconds, ts, 0])
        self._submit({"op": "batch", "metrics": metrics})
        self._submit({"op": "terminate", "status": MLFLOW_STATUS[state]})
        self.queue.flush()
        self.finished = True


def _param(value: Any) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return text[:6000]  # MLflow's param value limit

