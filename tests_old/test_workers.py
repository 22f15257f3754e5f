"""Many workers on one PostgreSQL-backed study: the stack's own entrypoints, run natively (no Docker here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from conftest import start_process
from sweeper.cli import app

TINY = ["model.width=0.125", "train.epochs=2", "train.batch_size=32", "data.val_size=60", "train.device=cpu"]


def sweeper_proc(*args: str, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "SWEEPER_HEARTBEAT_SECONDS": "2", "SWEEPER_GRACE_SECONDS": "6", **(env or {})}
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    return start_process(
        [sys.executable, "-m", "sweeper", *map(str, args)], env=full_env, stdout=out, stderr=subprocess.STDOUT
    )


def init(name: str, data: Path, storage: str, tracking: str, *extra: str) -> None:
    result = CliRunner().invoke(
        app,
        [
            "study", "init", name, "--data", str(data), "--storage", storage, "--tracking-uri",
            tracking, "--sampler", "random", "--pruner", "none", "--set", *TINY, *extra,
        ],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def assert_each_trial_once(name: str, storage: str, client: MlflowClient, n: int) -> None:
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.trials
    assert sorted(t.number for t in trials) == list(range(n))
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    run_ids = [t.user_attrs["mlflow_run_id"] for t in trials]
    assert len(set(run_ids)) == n
    exp = client.get_experiment_by_name(name)
    parents = client.search_runs([exp.experiment_id], "tags.`sweeper.role` = 'study'")
    assert len(parents) == 1
    children = client.search_runs([exp.experiment_id], "tags.`sweeper.role` = 'trial'")
    assert sorted(r.info.run_id for r in children) == sorted(run_ids)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(int(r.data.tags["sweeper.trial_number"]) for r in children) == list(range(n))
    assert all(r.info.status == "FINISHED" for r in children)


@pytest.mark.slow
def test_two_worker_processes_complete_each_trial_exactly_once(image_folder, mlflow_server, pg_url, tmp_path):
    init("stack", image_folder, pg_url, mlflow_server.uri)
    procs = [
        sweeper_proc(
            "study", "run", "stack", "--n-trials", 3, "--seed", i, "--storage", pg_url,
            "--tracking-uri", mlflow_server.uri, "--json",
            log=tmp_path / f"w{i}.log",
        )
        for i in range(2)
    ]  # fmt: skip
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=300) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]
    assert_each_trial_once("stack", pg_url, MlflowClient(mlflow_server.uri), 6)


@pytest.mark.slow
def test_workers_option_splits_trials_and_shows_one_table(image_folder, mlflow_server, pg_url):
    result = CliRunner().invoke(
        app,
        [
            "study", "run", "multi", "--workers", "2", "--n-trials", "3", "--data", str(image_folder),
            "--storage", pg_url, "--tracking-uri", mlflow_server.uri, "--sampler", "random", "--seed",
            "0", "--pruner", "none", "--json", "--set", *TINY,
        ],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["workers"] == 2 and payload["failed_workers"] == []
    assert_each_trial_once("multi", pg_url, MlflowClient(mlflow_server.uri), 3)
    assert sorted(Path("runs/multi/logs").glob("worker-*.log")) == [
        Path("runs/multi/logs/worker-0.log"),
        Path("runs/multi/logs/worker-1.log"),
    ]


def test_workers_on_sqlite_are_refused_with_a_clear_message(image_folder):
    result = CliRunner().invoke(
        app, ["study", "run", "lite", "--workers", "2", "--n-trials", "2", "--data", str(image_folder)]
    )
    assert result.exit_code == 2
    assert "SQLite" in result.stderr and "postgresql" in result.stderr
    assert "Traceback" not in result.output
    assert not Path("sweeper.db").exists()


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
