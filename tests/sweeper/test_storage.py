"""sweeper.storage: reconnecting calls, outages survived or reported in one line, heartbeats that find dead workers'
trials, against the real PostgreSQL (and SQLite as Optuna opens it)."""

from __future__ import annotations

import optuna
import sqlalchemy
from optuna.trial import TrialState
from sweeper.storage import ResilientStorage, make_storage
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
import pytest
from typer.testing import CliRunner
from conftest import PG_ADMIN_URL, start_process, wait_for
from sweeper.cli import app
import json
from mlflow import MlflowClient
from conftest import start_process
import signal
from conftest import MlflowServer, free_port, start_process, wait_for, write_image_folder
from sweeper.urls import absolute_sqlite
from pipelines.callbacks import EpochMetrics
from sweeper.objective import Objective
from sweeper.trials import StudyObserver, TrialReporter


def cut() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))


def test_storage_calls_retry_once_the_connection_is_cut(pg_url, monkeypatch):
    storage = make_storage(pg_url, heartbeat=False)
    study = optuna.create_study(study_name="retry", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    real = optuna.storages.RDBStorage._get_trials
    cuts = {"left": 1}

    def flaky(self, *args, **kwargs):
        if cuts["left"]:
            cuts["left"] -= 1
            raise cut()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, "_get_trials", flaky)
    fresh = optuna.load_study(study_name="retry", storage=make_storage(pg_url, heartbeat=False))
    assert len(fresh.trials) == 2 and cuts["left"] == 0


def test_a_state_change_committed_just_before_the_cut_is_not_an_error(pg_url, monkeypatch):
    storage = make_storage(pg_url, heartbeat=False)
    assert isinstance(storage, ResilientStorage)
    study = optuna.create_study(study_name="commit", storage=storage, direction="maximize")
    trial = study.ask()
    real = optuna.storages.RDBStorage.set_trial_state_values
    cuts = {"left": 1}

    def committed_then_cut(self, *args, **kwargs):
        done = real(self, *args, **kwargs)
        if cuts["left"]:
            cuts["left"] -= 1
            raise cut()  # the commit landed, the reply was lost
        return done

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", committed_then_cut)
    study.tell(trial, 0.5)
    monkeypatch.undo()
    (done,) = optuna.load_study(study_name="commit", storage=pg_url).trials
    assert cuts["left"] == 0 and done.state == TrialState.COMPLETE and done.value == 0.5


def test_sqlite_storage_is_left_as_optuna_opens_it(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 'x.db'}", heartbeat=False)
    assert isinstance(storage, optuna.storages.RDBStorage)


def test_a_bare_postgresql_url_opens_with_the_driver_sqlalchemy_picks(pg_url):
    bare = pg_url.replace("postgresql+psycopg2://", "postgresql://")  # as Optuna's and SQLAlchemy's docs write it
    study = optuna.create_study(study_name="bare", storage=make_storage(bare, heartbeat=False))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="bare", storage=pg_url).trials) == 2


def test_connection_errors_are_told_from_rejected_statements_and_bad_credentials():
    from sweeper.storage import is_connection_error

    def wrapped(message: str, kind: type = sqlalchemy.exc.OperationalError) -> Exception:
        err = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
        err.__cause__ = kind("SELECT 1", {}, Exception(message))  # how Optuna wraps a failed commit
        return err

    assert is_connection_error(wrapped("server closed the connection unexpectedly"))
    assert is_connection_error(wrapped('database "x" is not currently accepting connections'))
    assert is_connection_error(wrapped("connection to server at 127.0.0.1 failed: Connection refused"))
    assert is_connection_error(wrapped("connection already closed", sqlalchemy.exc.InterfaceError))
    assert not is_connection_error(wrapped('password authentication failed for user "u"'))
    assert not is_connection_error(wrapped('relation "trials" does not exist', sqlalchemy.exc.ProgrammingError))
    assert not is_connection_error(ValueError("no database involved"))


def init(name: str, data: Path, storage: str, *extra: str) -> None:
    result = CliRunner().invoke(
        app,
        ["study", "init", name, "--data", str(data), "--storage", storage, "--tracking-uri", "sqlite:///mlflow.db",
         "--sampler", "random", "--pruner", "none", "--set", *TINY, *extra],
    )  # fmt: skip
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_connections_refused_for_seconds_mid_trial_do_not_end_the_worker(image_folder, pg_url, tmp_path):
    init("refused", image_folder, pg_url, "train.epochs=8")
    log = tmp_path / "worker.log"
    proc = worker("refused", pg_url, log, "--n-trials", 2, env={"SWEEPER_DB_OUTAGE_SECONDS": "60"})
    try:
        wait_for(lambda: running_with_an_epoch(pg_url, "refused"), 120, "a trial to report an epoch")
        outage = Outage(pg_url).start()
        time.sleep(6)  # several storage calls and heartbeats fall into it
        outage.end()
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        proc.kill()
    assert outage.cuts >= 1, "the outage never caught the worker's connection open"
    study = optuna.load_study(study_name="refused", storage=pg_url)
    assert len(study.trials) == 2  # recorded, none failed or left running (a random λ may diverge: pruned)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_an_outage_past_the_limit_stops_the_worker_with_one_line_and_the_next_recovers(image_folder, pg_url, tmp_path):
    init("gone", image_folder, pg_url, "train.epochs=40")
    log = tmp_path / "worker.log"
    # the grace period must outlast the outage a worker waits out (else live trials are failed): 14 >= 1 + 3 + 9
    env = {"SWEEPER_DB_OUTAGE_SECONDS": "3", "SWEEPER_HEARTBEAT_SECONDS": "1", "SWEEPER_GRACE_SECONDS": "14"}
    proc = worker("gone", pg_url, log, "--n-trials", 1, env=env)
    try:
        wait_for(lambda: running_with_an_epoch(pg_url, "gone"), 120, "a trial to report an epoch")
        outage = Outage(pg_url).start()
        try:
            rc = proc.wait(timeout=120)
        finally:
            outage.end()
    finally:
        proc.kill()
    err = log.read_text()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err[-3000:]
    assert len(lines) == 1 and "did not answer for 3 s" in lines[0], err[-3000:]
    assert "SWEEPER_DB_OUTAGE_SECONDS" in lines[0]
    assert "Traceback" not in err and "UnboundLocalError" not in err
    time.sleep(15)  # past the grace period: the stranded trial is stale
    again = worker("gone", pg_url, tmp_path / "again.log", "--n-trials", 1, "--set", "train.epochs=1", env=env)
    assert again.wait(timeout=180) == 0, (tmp_path / "again.log").read_text()[-3000:]
    trials = optuna.load_study(study_name="gone", storage=pg_url).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # nothing RUNNING forever
    assert trials[0].state == TrialState.FAIL and trials[-1].state == TrialState.COMPLETE


@pytest.mark.slow
def test_dropped_database_connection_does_not_kill_the_worker(image_folder, pg_url, tmp_path):
    """pg_terminate_backend on every connection of the worker, repeatedly, mid-study: pre-ping reconnects."""
    name = pg_url.rsplit("/", 1)[1]
    init("drops", image_folder, pg_url, "sqlite:///mlflow.db")
    log = tmp_path / "worker.log"
    proc = sweeper_proc(
        "study", "run", "drops", "--n-trials", 4, "--storage", pg_url, "--tracking-uri",
        "sqlite:///mlflow.db", "--set", "train.epochs=3",
        log=log,
    )  # fmt: skip
    admin = sqlalchemy.create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT")
    killed = 0
    stop = threading.Event()

    def terminate() -> None:
        nonlocal killed
        while not stop.is_set():
            with admin.connect() as conn:
                rows = conn.execute(
                    sqlalchemy.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": name},
                ).fetchall()
                killed += sum(1 for (ok,) in rows if ok)
            stop.wait(0.5)

    thread = threading.Thread(target=terminate, daemon=True)
    thread.start()
    try:
        rc = proc.wait(timeout=300)
    finally:
        stop.set()
        thread.join()
        admin.dispose()
    assert rc == 0, log.read_text()[-3000:]
    assert killed >= 2, "the test never caught the worker's connection open"
    study = optuna.load_study(study_name="drops", storage=pg_url)
    # every trial ran to its end: complete, or diverged (recorded as pruned; the random sampler can draw an LR
    # that blows up in 3 epochs), none failed or left running by a dropped connection
    states = [t.state for t in study.trials]
    assert len(states) == 4 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, states
    assert TrialState.COMPLETE in states
    assert all(t.user_attrs.get("reason") == "diverged" for t in study.trials if t.state == TrialState.PRUNED)


@pytest.mark.slow
def test_killed_worker_trial_is_failed_retried_and_its_run_ended(image_folder, mlflow_server, pg_url, tmp_path):
    common = ["--storage", pg_url, "--tracking-uri", mlflow_server.uri]
    victim = sweeper_proc(
        "study", "run", "killed", "--data", image_folder, "--n-trials", 1, "--pruner", "none", *common,
        "--set", *TINY, "train.epochs=40",
        log=tmp_path / "victim.log",
    )  # fmt: skip
    wait_for(lambda: running_trial_with_epoch(pg_url, "killed"), 120, "the victim's trial to report an epoch")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    dead = optuna.load_study(study_name="killed", storage=pg_url).trials[0]
    assert dead.state == TrialState.RUNNING  # nobody told the storage: only the heartbeat can notice
    time.sleep(5)  # past the 4 s grace period
    survivor = sweeper_proc(
        "study", "run", "killed", "--n-trials", 1, *common, "--set", "train.epochs=2", log=tmp_path / "survivor.log"
    )
    assert survivor.wait(timeout=180) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
    trials = optuna.load_study(study_name="killed", storage=pg_url).trials
    assert trials[0].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == trials[0].number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == trials[0].params  # the same point, tried again
    run = MlflowClient(mlflow_server.uri).get_run(dead.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["sweeper.state"] == "failed"
    assert run.data.tags["sweeper.reason"] == "worker lost (no heartbeat)"
    assert "trial_seconds" not in run.data.metrics  # its worker's last moment is unknown: no made-up time
    assert "logging_fraction" not in run.data.metrics


@pytest.mark.slow
def test_on_sqlite_a_killed_process_trial_is_failed_and_retried_by_the_next(image_folder, tmp_path):
    storage = f"sqlite:///{tmp_path / 'sweeper.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "SWEEPER_HEARTBEAT_SECONDS": "1", "SWEEPER_GRACE_SECONDS": "3"}
    common = ["--storage", storage, "--tracking-uri", tracking]
    victim = start_process(
        [sys.executable, "-m", "sweeper", "study", "run", "lite", "--data", str(image_folder), "--n-trials", "1",
         "--pruner", "none", *common, "--set", *TINY[:-1], "train.epochs=40"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name="lite", storage=storage).trials
        except KeyError:  # the study is not made yet (Optuna creates the file first)
            trials = []
        if trials and trials[0].intermediate_values:
            break
        time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    time.sleep(4)  # past the grace period
    again = subprocess.run(
        [sys.executable, "-m", "sweeper", "study", "run", "lite", "--n-trials", "1", *common,
         "--set", "train.epochs=1"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    trials = optuna.load_study(study_name="lite", storage=storage).trials
    assert trials[0].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    run = MlflowClient(tracking).get_run(trials[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["sweeper.reason"] == "worker lost (no heartbeat)"
    assert "trial_seconds" not in run.data.metrics and "logging_fraction" not in run.data.metrics
