"""`study sync`: what was spooled while MLflow was down, uploaded; the study told which runs the upload made; the
runs of trials that finished meanwhile ended.

The tracking URI is the one given, else $MLFLOW_TRACKING_URI, else the one the study recorded (a local store is
recorded as an absolute path, so a sync from another folder finds it), never a new default store: that would
create a stray ``mlflow.db`` wherever the command happens to run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from pipelines.errors import UserError
from pipelines.paths import check_name
from sweeper import records
from sweeper.queries import load_study
from sweeper.spool import PENDING, sync_spool
from sweeper.tracking import Tracker
from sweeper.urls import MASK, mask_url

log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    """What a sync did: the spool's counts (``sync_spool``), where it went, and what it could not do."""

    spooled: dict[str, Any]
    tracking_uri: str  # masked
    ended_runs: list[str] = field(default_factory=list)  # runs of finished trials that were still RUNNING
    unrecorded: str | None = None  # why the new run ids could not be recorded in the study, if they could not


def sync_study(name: str, *, storage: str | None, tracking_uri: str | None, runs_dir: Path) -> SyncReport:
    """Upload study ``name``'s spool (runs_dir/name/spool) to its tracking URI, record the new run ids in the
    study and end the MLflow runs of its finished trials that are still RUNNING."""
    spool = runs_dir / check_name(name, what="study name") / "spool"  # a name only: it stays in runs_dir
    if not spool.exists():
        raise UserError(f"nothing to sync: no spool at {spool}")
    study, why_not = _study(storage, name)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or _recorded_uri(study, name, why_not)
    tracker = Tracker(uri, name, spool_dir=spool)
    done = sync_spool(tracker.client, spool)
    report = SyncReport(done, mask_url(tracker.uri))
    if study is None:
        report.unrecorded = why_not
        return report
    if done["run_ids"]:
        known = dict(study.user_attrs.get(records.SYNCED_RUN_IDS, {}))
        study.set_user_attr(records.SYNCED_RUN_IDS, {**known, **done["run_ids"]})
    report.ended_runs = end_finished_runs(study, tracker)
    return report


def _study(storage: str | None, name: str) -> tuple[optuna.Study | None, str | None]:
    try:
        return load_study(storage, name), None
    except UserError as err:  # MLflow can still get everything; only the study's side is missing
        return None, str(err)


def _recorded_uri(study: optuna.Study | None, name: str, why_not: str | None) -> str:
    if study is None:
        raise UserError(
            f"cannot tell where study {name!r} logs ({why_not}): pass --tracking-uri (or --storage to read it from "
            "the study)"
        )
    recorded = study.user_attrs.get(records.TRACKING_URI)
    if not recorded:
        raise UserError(f"study {name!r} recorded no tracking URI: pass --tracking-uri")
    if MASK in recorded:
        raise UserError(
            f"study {name!r} logs to {recorded}, whose password is not recorded: pass --tracking-uri with it (or "
            "MLFLOW_TRACKING_URI, or MLFLOW_TRACKING_USERNAME/PASSWORD with the URI without it)"
        )
    return recorded


def end_finished_runs(study: optuna.Study, tracker: Tracker) -> list[str]:
    """End, as their trials ended, the MLflow runs of finished trials that MLflow still shows RUNNING (their
    terminate was lost, or never sent: the process died); the ids of the runs ended."""
    ended = []
    for trial in study.get_trials(deepcopy=False):
        outcome = records.of_trial(trial)
        run_id = records.run_id(trial, study.user_attrs)
        if outcome is None or not run_id or run_id.startswith(PENDING):
            continue
        try:
            status = tracker.client.get_run(run_id).info.status
        except Exception as err:  # noqa: BLE001 - a run MLflow does not know: nothing to end
            log.warning("trial %d's MLflow run %s: %s", trial.number, run_id, err)
            continue
        if status == "RUNNING":
            tracker.end_run(run_id, outcome, reason=trial.user_attrs.get(records.REASON),
                            seconds=records.trial_seconds(trial))  # fmt: skip
            ended.append(run_id)
    return ended
