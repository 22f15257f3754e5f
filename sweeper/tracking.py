"""MLflow tracking through ``MlflowClient``: one experiment per study, a parent run, a child run per trial.

Metrics are sent with ``log_batch(..., synchronous=False)`` (MLflow's async queue), so a trial never waits for
the tracking server between epochs; the queue is flushed when the trial ends. The time spent in our logging
calls is measured per trial and logged as ``logging_seconds``.
"""

from __future__ import annotations

import logging
import os
import time
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

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # with artifacts in ./mlartifacts: `mlflow ui` shows it, no server
DEFAULT_ARTIFACTS = "mlartifacts"
ROLE = "sweeper.role"
STUDY_TAG = "sweeper.study"
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
STATES = ("complete", "pruned", "failed", "diverged", "interrupted")
MLFLOW_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def resolve_tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***: safe to log, print or store as a tag."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """An MLflow experiment (named after the study) and the runs under it."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        self.uri = resolve_tracking_uri(uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_name = experiment
        try:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                location = None
                if self.uri.startswith("sqlite:") or "://" not in self.uri:
                    location = Path(DEFAULT_ARTIFACTS).absolute().as_uri()
                try:
                    self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
                except mlflow.exceptions.MlflowException:
                    # another worker created it between our look-up and our create
                    found = self.client.get_experiment_by_name(experiment)
                    if found is None:
                        raise
                    self.experiment_id = found.experiment_id
            else:
                self.experiment_id = found.experiment_id
        except mlflow.exceptions.MlflowException as err:
            raise UserError(f"MLflow at {mask_url(self.uri)}: {' '.join(str(err).split())[:300]}") from err
        except Exception as err:  # connection refused, DNS, timeouts: the server is unreachable
            raise UserError(
                f"cannot reach MLflow at {mask_url(self.uri)} ({type(err).__name__}); start it or pass --tracking-uri"
            ) from err

    # -- the study's parent run -------------------------------------------------------------------------------
    def parent_run(self, study: str, *, run_id: str | None = None, params: Mapping[str, Any] | None = None) -> str:
        """The study's parent run id: ``run_id`` if given and alive, else the tagged one, else a new one."""
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
        all_tags = {
            **({"mlflow.parentRunId": parent_id} if parent_id else {}),
            ROLE: role,
            STUDY_TAG: study,
            "sweeper.trial_number": str(number),
            **(tags or {}),
        }
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=run_name or f"{study}-trial-{number}")
        tr = TrialRun(self.client, run.info.run_id)
        tr.log_params(params)
        return tr

    def log_study_point(self, parent_id: str, *, number: int, value: float | None, best: float | None) -> None:
        metrics = []
        ts = _now_ms()
        if value is not None:
            metrics.append(Metric("objective", float(value), ts, number))
        if best is not None:
            metrics.append(Metric("best_objective", float(best), ts, number))
        if metrics:
            self.client.log_batch(parent_id, metrics=metrics, synchronous=False)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifact_text(self, run_id: str, name: str, text: str) -> None:
        self.client.log_text(run_id, text, name)

    def runs(self, *, role: str | None = None) -> list[Any]:
        filt = f"tags.`{ROLE}` = '{role}'" if role else ""
        return self.client.search_runs([self.experiment_id], filter_string=filt, max_results=5000)


class TrialRun(Callback):
    """One trial's MLflow run, fed by the trainer's callbacks; ``finish`` ends it with the trial's state."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.logging_seconds = 0.0
        self.started = time.perf_counter()
        self.finished = False
        self.keep_weights = False  # log model.pt too (replays keep their weights; trials leave them on disk)

    def _timed(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            self.logging_seconds += time.perf_counter() - t0

    def log_params(self, params: Mapping[str, Any]) -> None:
        if params:
            self._timed(self.client.log_batch, self.run_id, params=[Param(k, _param(v)) for k, v in params.items()])

    def on_start(self, *, total_steps: int, steps_per_epoch: int, lrs: Sequence[float]) -> None:
        """The LR of every iteration (step = iteration), known before training: sent in batches of 1000."""
        ts = _now_ms()
        metrics = [Metric("lr", float(lr), ts, step) for step, lr in enumerate(lrs)]
        for start in range(0, len(metrics), MAX_BATCH):
            self._timed(self.client.log_batch, self.run_id, metrics=metrics[start : start + MAX_BATCH], synchronous=False)

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
        batch = [Metric(k, float(v), ts, metrics.epoch) for k, v in values.items() if v is not None]
        self._timed(self.client.log_batch, self.run_id, metrics=batch, synchronous=False)

    def on_artifact(self, path: Path, name: str) -> None:
        if name == "model.pt" and not self.keep_weights:
            return  # a trial's weights stay in its out_dir
        folder = str(Path(name).parent) if "/" in name else None
        self._timed(self.client.log_artifact, self.run_id, str(path), folder)

    def finish(self, state: str, *, reason: str | None = None, trial_seconds: float | None = None) -> None:
        """Flush what is queued, record the state and end the run (FINISHED, FAILED or KILLED)."""
        if self.finished:
            return
        assert state in STATES, state
        t0 = time.perf_counter()
        mlflow.flush_async_logging()
        seconds = trial_seconds if trial_seconds is not None else time.perf_counter() - self.started
        self.logging_seconds += time.perf_counter() - t0
        ts = _now_ms()
        tags = [RunTag("sweeper.state", state)]
        if reason:
            tags.append(RunTag("sweeper.reason", reason[:500]))
        self.client.log_batch(
            self.run_id,
            metrics=[Metric("trial_seconds", seconds, ts, 0), Metric("logging_seconds", self.logging_seconds, ts, 0)],
            tags=tags,
        )
        self.client.set_terminated(self.run_id, status=MLFLOW_STATUS[state])
        self.finished = True


def _param(value: Any) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return text[:6000]  # MLflow's param value limit
