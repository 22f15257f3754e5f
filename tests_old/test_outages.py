"""A database that refuses or drops connections mid-study, against the real PostgreSQL: nothing lost, one line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from typer.testing import CliRunner

from conftest import PG_ADMIN_URL, start_process, wait_for
from sweeper.cli import app

TINY = ["model.width=0.125", "train.batch_size=32", "data.val_size=60", "train.device=cpu"]


def worker(name: str, storage: str, log: Path, *args: object, env: dict[str, str]) -> subprocess.Popen:
    return start_process(
        [sys.executable, "-m", "sweeper", "study", "run", name, "--storage", storage,
         "--tracking-uri", "sqlite:///mlflow.db", *map(str, args)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=open(log, "ab"),
    )  # fmt: skip


def running_with_an_epoch(storage: str, name: str) -> bool:
    study = optuna.load_study(study_name=name, storage=storage)
    return any(t.state == TrialState.RUNNING and t.intermediate_values for t in study.trials)


class Outage:
    """The database refuses new connections and its open ones are cut, until ``end()``."""

    def __init__(self, url: str) -> None:
        self.name = url.rsplit("/", 1)[1]
        self.admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self.stop = threading.Event()
        self.cuts = 0
        self.thread = threading.Thread(target=self._cut, daemon=True)

    def start(self) -> Outage:
        with self.admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false'))
        self.thread.start()
        return self

    def _cut(self) -> None:
        while not self.stop.is_set():
            with self.admin.connect() as conn:
                rows = conn.execute(
                    sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
                    {"db": self.name},
                ).fetchall()
            self.cuts += sum(1 for (ok,) in rows if ok)
            self.stop.wait(0.2)

    def end(self) -> None:
        self.stop.set()
        self.thread.join()
        with self.admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true'))
        self.admin.dispose()


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
