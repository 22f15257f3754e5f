"""The storage proxy (`sweeper storage serve`, grpc:// storage): its lease, its reaper, its resilience, its door."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from conftest import Outage, StorageProxy, free_port, heartbeat_env, kill_a_worker_mid_trial, start_sweeper, wait_for
from sweeper import records
from sweeper.cli import app
from sweeper.proxy import is_loopback, parse_proxy_url
from sweeper.storage import make_storage

LEASE_ENV = heartbeat_env(heartbeat=1, grace=4)  # a lease renewed every second, expired after 4


def test_a_grpc_url_is_host_and_port_only() -> None:
    assert str(parse_proxy_url("grpc://127.0.0.1:13000")) == "grpc://127.0.0.1:13000"
    assert parse_proxy_url("grpc://[::1]:13000").target == "[::1]:13000"
    for bad in ("grpc://host", "grpc://host:port", "grpc://u:pw@host:1", "grpc://host:1/db", "grpc://host:1?x=1"):
        result = CliRunner().invoke(app, ["study", "list", "--storage", bad])
        assert result.exit_code == 2, (bad, result.output)
        assert "grpc://HOST:PORT" in result.stderr and "Traceback" not in result.output
        assert "pw" not in result.stderr


def test_loopback_is_localhost_and_127_and_1() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "db-host"]))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--host", "0.0.0.0"], ["--host 0.0.0.0 is not a loopback address", "--allow-remote"]),
        (["--storage", "sqlite:///x.db"], ["server database", "SQLite"]),
        (["--storage", "grpc://127.0.0.1:1"], ["is a storage proxy already"]),
        (["--threads", "0"], ["--threads must be at least 1"]),
    ],
    ids=["remote-host", "sqlite", "proxy-of-a-proxy", "no-threads"],
)
def test_serve_refuses_what_it_cannot_serve_safely_with_one_line(args: list[str], words: list[str]) -> None:
    base = ["--storage", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"]
    result = CliRunner().invoke(app, ["storage", "serve", *base, *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert all(word in result.stderr for word in words), result.stderr
    assert not Path("x.db").exists()


def test_no_proxy_listening_exits_2_naming_the_address() -> None:
    url = f"grpc://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["study", "list", "--storage", url])
    assert result.exit_code == 2
    assert f"cannot open storage {url}: no storage proxy answered" in result.stderr
    assert "Traceback" not in result.output


def test_serve_says_ready_once_masks_the_password_and_stops_cleanly_on_sigterm(pg_url, tmp_path) -> None:
    with_password = pg_url.replace("postgres@", "postgres:s3cr%40t@")  # trust auth: the password is not checked
    proxy = StorageProxy(with_password, tmp_path / "serve.log", env=LEASE_ENV)
    storage = make_storage(proxy.url, heartbeat=False)
    optuna.create_study(study_name="served", storage=storage)
    assert [s.study_name for s in storage.get_all_studies()] == ["served"]
    assert proxy.stop() == 0
    lines = (tmp_path / "serve.log").read_text().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("storage proxy for postgresql+psycopg2://postgres:***@127.0.0.1:5432/")
    assert f"ready at {proxy.url} (10 threads, at most 11 database connections" in lines[0]
    assert lines[1] == "storage proxy stopped"
    assert "s3cr" not in "\n".join(lines)


def test_a_lease_is_the_trials_heartbeat_not_an_attribute(pg_url, tmp_path) -> None:
    proxy = StorageProxy(pg_url, tmp_path / "serve.log", env=LEASE_ENV)
    leased = make_storage(proxy.url)
    study = optuna.create_study(study_name="lease", storage=leased)
    trial = study.ask()
    leased.record_heartbeat(trial._trial_id)  # what Optuna's heartbeat thread calls
    direct = make_storage(pg_url, heartbeat=False)
    assert records.LEASE not in direct.get_trial(trial._trial_id).system_attrs
    # past the grace period without a renewal, the reaper fails it and enqueues the retry
    wait_for(lambda: direct.get_trial(trial._trial_id).state == TrialState.FAIL, 15, "the reaper")
    retried = [t for t in direct.get_all_trials(study._study_id) if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.WAITING


@pytest.mark.slow
def test_killed_worker_behind_the_proxy_is_failed_retried_and_its_run_ended(
    image_folder, mlflow_server, pg_url, tmp_path
) -> None:
    """kill -9 of a worker behind the proxy: the reaper in `storage serve` (with the tracking URI the study
    recorded) fails its trial, ends its MLflow run FAILED and enqueues the retry, which the next worker runs."""
    proxy = StorageProxy(pg_url, tmp_path / "serve.log", env=LEASE_ENV)
    common = ["--storage", proxy.url, "--tracking-uri", mlflow_server.uri]
    kill_a_worker_mid_trial(common, data=image_folder, database=pg_url, log=tmp_path / "victim.log", env=LEASE_ENV)
    wait_for(lambda: len(trials(pg_url, "killed")) == 2, 30, "the reaper to fail and retry the trial")
    dead, retry = trials(pg_url, "killed")
    assert dead.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.system_attrs["failed_trial"] == dead.number and retry.params == dead.params
    run = MlflowClient(mlflow_server.uri).get_run(dead.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["sweeper.state"] == "failed"
    assert run.data.tags["sweeper.reason"] == "worker lost (no heartbeat)"
    assert "lost its worker (no lease): failed and retried" in (tmp_path / "serve.log").read_text()
    survivor = start_sweeper(
        "study", "run", "killed", "--n-trials", 1, *common, "--set", "train.epochs=2",
        log=tmp_path / "survivor.log", env=LEASE_ENV,
    )  # fmt: skip
    assert survivor.wait(timeout=180) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
    assert [t.state for t in trials(pg_url, "killed")] == [TrialState.FAIL, TrialState.COMPLETE]


def test_calls_wait_through_a_database_outage_behind_the_proxy(pg_url, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SWEEPER_DB_OUTAGE_SECONDS", "30")  # the client waits on the proxy, longer than the outage
    env = {**LEASE_ENV, "SWEEPER_GRACE_SECONDS": "60", "SWEEPER_DB_OUTAGE_SECONDS": "30"}
    proxy = StorageProxy(pg_url, tmp_path / "serve.log", env=env)
    storage = make_storage(proxy.url, heartbeat=False)
    optuna.create_study(study_name="outage", storage=storage)
    outage = Outage(pg_url).start()
    timer = threading.Timer(4, outage.end)
    timer.start()
    try:
        study = optuna.load_study(study_name="outage", storage=storage)  # waits on the proxy, which waits on PG
        study.enqueue_trial({"x": 1.0})
    finally:
        timer.join()
    assert outage.cuts >= 1
    assert [t.state for t in trials(pg_url, "outage")] == [TrialState.WAITING]
    assert "retrying" in (tmp_path / "serve.log").read_text()


def test_a_database_gone_past_the_limit_stops_the_proxy_with_one_line(pg_url, tmp_path) -> None:
    env = {**LEASE_ENV, "SWEEPER_GRACE_SECONDS": "60", "SWEEPER_DB_OUTAGE_SECONDS": "2"}
    proxy = StorageProxy(pg_url, tmp_path / "serve.log", env=env)
    outage = Outage(pg_url).start()
    try:
        assert proxy.proc.wait(timeout=60) == 2  # the reaper's next pass found the database gone for 2 s
    finally:
        outage.end()
    last = (tmp_path / "serve.log").read_text().strip().splitlines()[-1]
    assert last.startswith("error: the database at postgresql+psycopg2://postgres@127.0.0.1:5432/") and "2 s" in last


def test_calls_wait_for_a_restarting_proxy(pg_url, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SWEEPER_DB_OUTAGE_SECONDS", "30")  # longer than the proxy's restart
    port = free_port()
    env = {**LEASE_ENV, "SWEEPER_GRACE_SECONDS": "60"}
    first = StorageProxy(pg_url, tmp_path / "first.log", env=env, port=port)
    storage = make_storage(first.url, heartbeat=False)
    optuna.create_study(study_name="restart", storage=storage)
    assert first.stop() == 0
    restarted: list[StorageProxy] = []
    timer = threading.Timer(
        3, lambda: restarted.append(StorageProxy(pg_url, tmp_path / "second.log", env=env, port=port))
    )
    timer.start()
    try:
        assert [s.study_name for s in storage.get_all_studies()] == ["restart"]  # UNAVAILABLE, retried
    finally:
        timer.join()
    assert restarted and restarted[0].url == first.url


# -- helpers ---------------------------------------------------------------------------------------------------


def trials(pg_url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=pg_url).trials
