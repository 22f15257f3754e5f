"""MLflow tracking through ``MlflowClient``: one experiment per study, a parent run, a child run per trial.

Nothing is lost: every logging call after start-up goes through one background ``LogQueue`` (``sweeper.spool``)
that sends in order, retries with back-off and spools what still fails for ``sweeper study sync NAME``. The
trainer never waits for the tracking server; the time our logging costs a trial (enqueueing plus the final
drain) is measured and logged as ``logging_seconds``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Param

from pipelines.callbacks import Callback, EpochMetrics
from pipelines.errors import UserError, one_line
from pipelines.paths import check_writable
from sweeper import records
from sweeper.outcome import Outcome
from sweeper.records import HOST_TAG, PARENT_TAG, ROLE, STUDY_TAG
from sweeper.spool import PENDING, LogQueue
from sweeper.urls import SQLITE_PREFIX, absolute_sqlite, check_password, is_sqlite, mask_url

log = logging.getLogger(__name__)

# MLflow writes "View run ... at: URL" to stdout when a run on a server ends: that would corrupt `--json` output.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# MLflow's own HTTP retries last minutes by default; our queue retries instead, so fail fast underneath it.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # with artifacts in ./mlartifacts: `mlflow ui` shows it, no server
DEFAULT_ARTIFACTS = "mlartifacts"
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
MLFLOW_STATUS = {
    Outcome.COMPLETE: "FINISHED",
    Outcome.PRUNED: "FINISHED",
    Outcome.DIVERGED: "FINISHED",
    Outcome.FAILED: "FAILED",
    Outcome.INTERRUPTED: "KILLED",
}


def resolve_tracking_uri(uri: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db; a relative SQLite path made absolute
    (MLflow caches one store per URI, so the same relative URI must not mean two files)."""
    return absolute_sqlite(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """An MLflow experiment (named after the study) and the runs under it."""

    def __init__(self, uri: str | None, experiment: str, *, spool_dir: Path | None = None) -> None:
        self.uri = resolve_tracking_uri(uri)
        check_password(self.uri, what="tracking URI")
        if self.uri.startswith(SQLITE_PREFIX) and not self.uri.endswith(":memory:"):  # MLflow would retry ~100 s
            check_writable(Path(self.uri[len(SQLITE_PREFIX) :]), what="tracking URI's SQLite file", folder=False)
        self.experiment_name = experiment
        self.spool_dir = spool_dir or Path("runs") / experiment / "spool"
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
        except mlflow.exceptions.MlflowException as err:  # a scheme MLflow has no store for
            raise UserError(
                f"MLflow cannot use the tracking URI {mask_url(self.uri)}: use http(s)://host:port for a server, "
                "sqlite:///file.db or a folder"
            ) from err
        try:
            found = self.client.get_experiment_by_name(experiment)
        except mlflow.exceptions.RestException as err:
            raise UserError(f"MLflow at {mask_url(self.uri)}: {one_line(err, limit=300)}") from err
        except Exception as err:
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
            if is_sqlite(self.uri) or "://" not in self.uri:
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
            filter_string=f"tags.`{ROLE}` = '{records.ROLE_STUDY}' and tags.`{STUDY_TAG}` = '{study}'",
            max_results=1,
        )
        if runs:
            return runs[0].info.run_id
        return self.new_parent_run(study, role=records.ROLE_STUDY, params=params)

    def new_parent_run(self, name: str, *, role: str, params: Mapping[str, Any] | None = None) -> str:
        """A new top-level run tagged ``sweeper.role`` = ``role`` and ``sweeper.study`` = ``name``; its id."""
        run = self.client.create_run(self.experiment_id, tags={ROLE: role, STUDY_TAG: name}, run_name=name)
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
        role: str = records.ROLE_TRIAL,
        run_name: str | None = None,
    ) -> TrialRun:
        """A child run; created right away, or (MLflow down) under a pending id that the spool resolves later."""
        all_tags = {
            **({PARENT_TAG: parent_id} if parent_id else {}),
            ROLE: role,
            STUDY_TAG: study,
            records.TRIAL_NUMBER_TAG: str(number),
            HOST_TAG: socket.gethostname(),  # which machine (container) ran it, with many workers on a study
            **(tags or {}),
        }
        name = run_name or f"{study}-trial-{number}"
        try:
            run_id = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name).info.run_id
        except Exception as err:  # noqa: BLE001 - any transport error: carry on offline
            log.warning("MLflow unreachable (%s) when starting %s: spooling its run", type(err).__name__, name)
            run_id = PENDING + uuid.uuid4().hex
            create = {"op": "create", "experiment_id": self.experiment_id, "tags": all_tags, "run_name": name}
            self.queue.submit({**create, "run_id": run_id})
        tr = TrialRun(self.queue, run_id)
        tr.log_params(params)
        return tr

    def log_study_point(
        self, parent_id: str, *, number: int, value: float | None, best: float | None, cost: float | None = None
    ) -> None:
        """A trial's objective (and cost, in a multi-objective study) and the best so far, at step = its number."""
        ts = _now_ms()
        metrics = [["objective", value, ts, number]] if value is not None else []
        if cost is not None:
            metrics.append(["cost", cost, ts, number])
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

    def reopen(self, run_id: str) -> None:
        """Mark an ended run RUNNING again (a study's parent run, when a new process runs the study)."""
        self.queue.submit({"op": "reopen", "run_id": run_id})

    def end_run(
        self, run_id: str, outcome: Outcome, *, reason: str | None = None, seconds: float | None = None
    ) -> None:
        """End a run this process did not feed (a dead worker's trial, a parent run): its outcome and reason, and
        ``seconds`` as its trial_seconds when known (no logging share: this process logged none of it)."""
        TrialRun(self.queue, run_id, fed_here=False).finish(outcome, reason=reason, trial_seconds=seconds)
        self.flush()


class TrialRun(Callback):
    """One trial's MLflow run, fed by the trainer's callbacks; ``finish`` ends it with the trial's state."""

    def __init__(self, log_queue: LogQueue, run_id: str, *, fed_here: bool = True) -> None:
        self.queue = log_queue
        self.run_id = run_id
        self.fed_here = fed_here  # False: ending a run logged elsewhere, whose times are not ours to measure
        self.logging_seconds = 0.0
        self.started = time.perf_counter()
        self.finished = False
        self.keep_weights = False  # log model.pt too (replays keep their weights; trials leave them on disk)
        self._steps: list[tuple[int, float]] | None = None  # LRs as used, when they were not known ahead

    def _submit(self, op: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        self.queue.submit({**op, "run_id": self.run_id})
        self.logging_seconds += time.perf_counter() - t0

    def log_params(self, params: Mapping[str, Any]) -> None:
        if params:
            self._submit({"op": "batch", "params": [[k, _param(v)] for k, v in params.items()]})

    def on_start(self, *, total_steps: int, steps_per_epoch: int, lrs: Sequence[float]) -> None:
        """The LR of every iteration (step = iteration), known before training: sent in batches of 1000. When
        the policy decides as it goes (plateau), the LRs used are collected and sent at each epoch's end."""
        self._send_lrs(list(enumerate(lrs)))
        self._steps = None if lrs else []

    def on_step(self, step: int, lr: float) -> None:
        if self._steps is not None:
            self._steps.append((step, lr))

    def _send_lrs(self, steps: list[tuple[int, float]]) -> None:
        ts = _now_ms()
        metrics = [["lr", float(lr), ts, step] for step, lr in steps]
        for start in range(0, len(metrics), MAX_BATCH):
            self._submit({"op": "batch", "metrics": metrics[start : start + MAX_BATCH]})

    def on_epoch(self, metrics: EpochMetrics) -> None:
        if self._steps:
            self._send_lrs(self._steps)
            self._steps = []
        ts = _now_ms()
        batch = [[name, float(value), ts, metrics.epoch] for name, value in metrics.measured().items()]
        self._submit({"op": "batch", "metrics": batch})

    def log_compile(self, seconds: float) -> None:
        """The compile (and graph capture) a run paid before training: apart, so trial times compare."""
        if seconds > 0:
            self._submit({"op": "batch", "metrics": [["compile_seconds", float(seconds), _now_ms(), 0]]})

    def on_artifact(self, path: Path, name: str) -> None:
        if name == "model.pt" and not self.keep_weights:
            return  # a trial's weights stay in its out_dir
        folder = str(Path(name).parent) if "/" in name else None
        self._submit({"op": "artifact", "path": str(path), "artifact_path": folder})

    def finish(self, outcome: Outcome, *, reason: str | None = None, trial_seconds: float | None = None) -> None:
        """Record the outcome, end the run (FINISHED, FAILED or KILLED), wait until all of it is sent or spooled."""
        if self.finished:
            return
        status = MLFLOW_STATUS[outcome]
        seconds = trial_seconds
        if seconds is None and self.fed_here:
            seconds = time.perf_counter() - self.started
        tags = [[records.STATE_TAG, outcome.value]]
        if reason:
            tags.append([records.REASON_TAG, reason[: records.MAX_TAG_LENGTH]])
        t0 = time.perf_counter()
        self._submit({"op": "batch", "tags": tags})
        self.queue.flush()  # the run's own metrics and files first: the drain is part of the logging cost
        self.logging_seconds += time.perf_counter() - t0
        ts = _now_ms()
        metrics = [["trial_seconds", seconds, ts, 0]] if seconds is not None else []
        if self.fed_here:
            metrics.append(["logging_seconds", self.logging_seconds, ts, 0])
            if seconds:
                metrics.append(["logging_fraction", self.logging_seconds / seconds, ts, 0])
        if metrics:
            self._submit({"op": "batch", "metrics": metrics})
        self._submit({"op": "terminate", "status": status})
        self.queue.flush()
        self.finished = True


def _param(value: Any) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return text[:6000]  # MLflow's param value limit
