"""sweeper.storage: reconnecting calls, outages survived or reported in one line, heartbeats that find dead workers'
trials, against the real PostgreSQL (and SQLite as Optuna opens it)."""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import (
    Outage,
    count_lines,
    heartbeat_env,
    kill_a_worker_mid_trial,
    reported_epoch,
    run_sweeper,
    start_sweeper,
    study_init,
    wait_for,
    wait_until_stale,
)
from pipelines.errors import UserError
from sweeper.retry import FIRST_DELAY, MAX_DELAY
from sweeper.storage import ResilientStorage, StorageUnavailable, make_storage, outage_seconds, retry_delays


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


# -- how long a worker waits, and how it backs off: parameters, and the environment for worker processes ------------


def test_the_back_off_comes_from_the_environment_in_seconds_with_fractions(monkeypatch):
    monkeypatch.delenv("SWEEPER_RETRY_DELAY")
    monkeypatch.delenv("SWEEPER_RETRY_MAX_DELAY")
    assert retry_delays() == (FIRST_DELAY, MAX_DELAY)
    monkeypatch.setenv("SWEEPER_RETRY_DELAY", "0.1")
    monkeypatch.setenv("SWEEPER_RETRY_MAX_DELAY", "0.5")
    assert retry_delays() == (0.1, 0.5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SWEEPER_RETRY_MAX_DELAY": "fast"}, "SWEEPER_RETRY_MAX_DELAY must be a number of seconds, got 'fast'"),
        ({"SWEEPER_RETRY_DELAY": "0"}, "SWEEPER_RETRY_DELAY must be a number of seconds > 0, got '0'"),
        ({"SWEEPER_RETRY_MAX_DELAY": "inf"}, "SWEEPER_RETRY_MAX_DELAY must be a number of seconds > 0, got 'inf'"),
        (
            {"SWEEPER_RETRY_DELAY": "2", "SWEEPER_RETRY_MAX_DELAY": "1"},
            "SWEEPER_RETRY_MAX_DELAY (1) must be at least SWEEPER_RETRY_DELAY (2)",
        ),
    ],
)
def test_a_back_off_that_cannot_work_is_a_user_error_naming_the_variable(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as info:
        retry_delays()
    assert str(info.value) == message


def test_the_outage_a_worker_waits_out_leaves_the_heartbeat_its_last_back_off(monkeypatch):
    """grace > heartbeat + outage + the longest back-off sleep: the trial of a worker that comes back is not failed."""
    for name in ("SWEEPER_DB_OUTAGE_SECONDS", "SWEEPER_RETRY_DELAY", "SWEEPER_RETRY_MAX_DELAY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("SWEEPER_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("SWEEPER_GRACE_SECONDS", "14")
    assert outage_seconds() == 14 - 1 - 8 - 1  # the default longest sleep, 8 s
    monkeypatch.setenv("SWEEPER_RETRY_MAX_DELAY", "0.5")
    assert outage_seconds() == 14 - 1 - 1 - 1  # half a second, rounded up
    monkeypatch.setenv("SWEEPER_DB_OUTAGE_SECONDS", "12")
    with pytest.raises(UserError, match=r"at most SWEEPER_GRACE_SECONDS - SWEEPER_HEARTBEAT_SECONDS - 2 = 11"):
        outage_seconds()
    monkeypatch.setenv("SWEEPER_DB_OUTAGE_SECONDS", "11")
    assert outage_seconds() == 11


def test_a_storage_in_an_outage_retries_with_the_back_off_it_was_given_then_stops(tmp_path, monkeypatch):
    backend = optuna.storages.get_storage(
        optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'x.db'}", heartbeat_interval=60)
    )
    storage = ResilientStorage(backend, url="db", outage_seconds=1.0, first_delay=0.1, max_delay=0.2)
    tries: list[float] = []

    def refused(self, *args, **kwargs):
        tries.append(time.monotonic())
        raise cut()

    monkeypatch.setattr(optuna.storages.RDBStorage, "get_all_studies", refused)
    with pytest.raises(StorageUnavailable, match="the database at db did not answer for 1 s"):
        storage.get_all_studies()
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert len(tries) >= 5 and gaps[0] == pytest.approx(0.1, abs=0.05)  # 0.1, 0.2, 0.2, ... within the second
    assert max(gaps) < 0.3
    tried = len(tries)
    with pytest.raises(StorageUnavailable):  # and every later call, at once
        storage.get_all_studies()
    assert len(tries) == tried


# -- outages, for real: a worker process against a database that refuses or drops its connections -----------------

# The back-off during an outage: its first and longest sleep (seconds), small, so that seconds of outage cost seconds
FAST_RETRY = {"retry_delay": 0.1, "retry_max_delay": 0.5}


def study_run(name: str, storage: str, log: Path, *args: object, env: dict[str, str]) -> subprocess.Popen:
    return start_sweeper(
        "study", "run", name, "--storage", storage, "--tracking-uri", "sqlite:///mlflow.db", *args, log=log, env=env
    )


def worker_mid_trial(
    name: str, data: Path, storage: str, log: Path, *, epochs: int, n_trials: int, env: dict[str, str]
) -> subprocess.Popen:
    """A study of ``n_trials`` trials of ``epochs`` epochs made, and a worker running it, once its first trial
    has reported an epoch."""
    study_init(name, data, storage, f"train.epochs={epochs}")
    proc = study_run(name, storage, log, "--n-trials", n_trials, env=env)
    wait_for(lambda: reported_epoch(storage, name), 120, "a trial to report an epoch")
    return proc


@pytest.mark.slow
def test_connections_refused_for_seconds_mid_trial_do_not_end_the_worker(image_folder, pg_url, tmp_path):
    log = tmp_path / "worker.log"
    # heartbeats every second fall into the outage too; the grace period outlasts what the worker waits out
    env = heartbeat_env(heartbeat=1, grace=70, outage_seconds=60, **FAST_RETRY)
    proc = worker_mid_trial("refused", image_folder, pg_url, log, epochs=4, n_trials=2, env=env)
    with Outage(pg_url) as outage:
        # several storage calls, each retried a few times (about 2 s of back-off in all)
        wait_for(lambda: count_lines(log, "retrying in")() >= 5, 60, "the worker to retry its storage calls")
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert outage.cuts >= 1, "the outage never caught the worker's connection open"
    study = optuna.load_study(study_name="refused", storage=pg_url)
    assert len(study.trials) == 2  # recorded, none failed or left running (a random λ may diverge: pruned)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_an_outage_past_the_limit_stops_the_worker_with_one_line_and_the_next_recovers(image_folder, pg_url, tmp_path):
    log = tmp_path / "worker.log"
    # the grace period must outlast the outage a worker waits out (else live trials are failed): 6 >= 1 + 3 + 1 + 1
    env = heartbeat_env(heartbeat=1, grace=6, outage_seconds=3, **FAST_RETRY)
    proc = worker_mid_trial("gone", image_folder, pg_url, log, epochs=40, n_trials=1, env=env)
    with Outage(pg_url):
        rc = proc.wait(timeout=120)
    err = log.read_text()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err[-3000:]
    assert len(lines) == 1 and "did not answer for 3 s" in lines[0], err[-3000:]
    assert "SWEEPER_DB_OUTAGE_SECONDS" in lines[0]
    assert "Traceback" not in err and "UnboundLocalError" not in err
    wait_until_stale(pg_url, "gone", grace=6)  # the stranded trial, as the next worker will find it
    again = study_run("gone", pg_url, tmp_path / "again.log", "--n-trials", 1, "--set", "train.epochs=1", env=env)
    assert again.wait(timeout=180) == 0, (tmp_path / "again.log").read_text()[-3000:]
    trials = optuna.load_study(study_name="gone", storage=pg_url).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # nothing RUNNING forever
    assert trials[0].state == TrialState.FAIL and trials[-1].state == TrialState.COMPLETE


@pytest.mark.slow
def test_dropped_database_connection_does_not_kill_the_worker(image_folder, pg_url, tmp_path):
    """pg_terminate_backend on every connection of the worker, repeatedly, mid-study: pre-ping reconnects."""
    study_init("drops", image_folder, pg_url, "train.epochs=2")
    log = tmp_path / "worker.log"
    env = heartbeat_env(heartbeat=2, grace=20, **FAST_RETRY)  # up to 16 s of cut connections waited out, quickly
    proc = study_run("drops", pg_url, log, "--n-trials", 4, "--set", "train.epochs=3", env=env)
    with Outage(pg_url, refuse=False, every=0.5) as drops:
        rc = proc.wait(timeout=300)
    assert rc == 0, log.read_text()[-3000:]
    assert drops.cuts >= 2, "the test never caught the worker's connection open"
    study = optuna.load_study(study_name="drops", storage=pg_url)
    # every trial ran to its end: complete, or diverged (recorded as pruned; the random sampler can draw an LR
    # that blows up in 3 epochs), none failed or left running by a dropped connection
    states = [t.state for t in study.trials]
    assert len(states) == 4 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, states
    assert TrialState.COMPLETE in states
    assert all(t.user_attrs.get("reason") == "diverged" for t in study.trials if t.state == TrialState.PRUNED)


# -- the heartbeat: a killed worker's trial is found, failed, its MLflow run ended, and retried ----------------------


@pytest.mark.slow
def test_killed_worker_trial_is_failed_retried_and_its_run_ended(image_folder, mlflow_server, pg_url, tmp_path):
    common = ["--storage", pg_url, "--tracking-uri", mlflow_server.uri]
    env = heartbeat_env(heartbeat=1, grace=4)
    kill_a_worker_mid_trial(common, data=image_folder, database=pg_url, log=tmp_path / "victim.log", env=env)
    dead = optuna.load_study(study_name="killed", storage=pg_url).trials[0]
    assert dead.state == TrialState.RUNNING  # nobody told the storage: only the heartbeat can notice
    wait_until_stale(pg_url, "killed", grace=4)
    survivor = start_sweeper(
        "study", "run", "killed", "--n-trials", 1, *common, "--set", "train.epochs=2",
        log=tmp_path / "survivor.log", env=env,
    )  # fmt: skip
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
    env = heartbeat_env(heartbeat=1, grace=3)
    common = ["--storage", storage, "--tracking-uri", tracking]
    kill_a_worker_mid_trial(common, data=image_folder, database=storage, log=tmp_path / "victim.log", env=env,
                            name="lite")  # fmt: skip
    wait_until_stale(storage, "lite", grace=3)
    again = run_sweeper(
        "study", "run", "lite", "--n-trials", 1, *common, "--set", "train.epochs=1", env=env, timeout=180
    )
    assert again.returncode == 0, again.stderr[-3000:]
    trials = optuna.load_study(study_name="lite", storage=storage).trials
    assert trials[0].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    run = MlflowClient(tracking).get_run(trials[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["sweeper.reason"] == "worker lost (no heartbeat)"
    assert "trial_seconds" not in run.data.metrics and "logging_fraction" not in run.data.metrics
