"""sweeper.workers: many worker processes on one PostgreSQL-backed study, and how many `--workers auto` starts."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import PG_ADMIN_URL, TINY, heartbeat_env, invoke, start_sweeper, study_init
from pipelines.errors import UserError
from sweeper import records, workers
from sweeper.connections import WORKER_ENV
from sweeper.study import StudyOptions
from sweeper.workers import WorkerPlan, WorkersResult, auto_devices, workers_per_gpu


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
    study_init("stack", image_folder, pg_url, "train.epochs=1", tracking=mlflow_server.uri)
    procs = [
        start_sweeper(
            "study", "run", "stack", "--n-trials", 3, "--seed", i, "--storage", pg_url,
            "--tracking-uri", mlflow_server.uri, "--json",
            log=tmp_path / f"w{i}.log", env=heartbeat_env(heartbeat=2, grace=6),
        )
        for i in range(2)
    ]  # fmt: skip
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=300) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]
    assert_each_trial_once("stack", pg_url, MlflowClient(mlflow_server.uri), 6)


class ConnectionCounter:
    """The most connections each application name held on a database at once, sampled every 0.1 s."""

    def __init__(self, url: str) -> None:
        self.database = url.rsplit("/", 1)[1]
        self.admin = sqlalchemy.create_engine(PG_ADMIN_URL, poolclass=sqlalchemy.pool.NullPool)
        self.peak: dict[str, int] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        query = sqlalchemy.text(
            "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = :db GROUP BY application_name"
        )
        while not self.done.wait(0.1):
            with self.admin.connect() as conn:
                for name, count in conn.execute(query, {"db": self.database}):
                    self.peak[name] = max(self.peak.get(name, 0), count)

    def __enter__(self) -> ConnectionCounter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.admin.dispose()


@pytest.mark.slow
def test_workers_option_splits_trials_and_shows_one_table(image_folder, mlflow_server, pg_url):
    with ConnectionCounter(pg_url) as connections:
        result = invoke(
            "study", "run", "multi", "--workers", 2, "--n-trials", 3, "--data", image_folder, "--storage", pg_url,
            "--tracking-uri", mlflow_server.uri, "--sampler", "random", "--seed", 0, "--pruner", "none", "--json",
            "--set", *TINY, "train.epochs=1", catch_exceptions=False,
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["workers"] == 2 and payload["failed_workers"] == []
    assert_each_trial_once("multi", pg_url, MlflowClient(mlflow_server.uri), 3)
    reports = payload["worker_reports"]
    assert [r["index"] for r in reports] == [0, 1] and sum(r["trials"] for r in reports) == 3
    trials = optuna.load_study(study_name="multi", storage=pg_url).trials
    assert sorted(t.user_attrs[records.WORKER] for t in trials) == sorted(
        r["index"] for r in reports for _ in range(r["trials"])
    )
    names = {name for name in connections.peak if name.startswith("sweeper worker ")}
    assert {name.split()[2] for name in names} == {"0", "1"}  # each worker's connections name it
    assert max(connections.peak[name] for name in connections.peak if name.startswith("sweeper ")) <= 2
    assert sorted(Path("runs/multi/logs").glob("worker-*.log")) == [
        Path("runs/multi/logs/worker-0.log"),
        Path("runs/multi/logs/worker-1.log"),
    ]


def test_the_trials_of_a_worker_that_could_not_start_are_run_by_the_others(image_folder, tmp_path):
    """Workers share --n-trials: each runs until the study holds the parent's total (--trials-until), so one that
    never started leaves its share to the rest, and one that comes late runs none."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    study_init("shared", image_folder, storage, "train.epochs=1")
    common = ["--storage", storage, "--n-trials", 3, "--trials-until", 3, "--json"]
    alone = invoke("study", "run", "shared", *common)  # the only worker that started
    assert alone.exit_code == 0, alone.output
    assert len(optuna.load_study(study_name="shared", storage=storage).trials) == 3
    late = invoke("study", "run", "shared", *common)
    assert late.exit_code == 0, late.output
    assert len(optuna.load_study(study_name="shared", storage=storage).trials) == 3


def test_the_parents_last_line_says_what_each_worker_did(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "worker-1.log").write_text("WARNING ...\nerror: the database at postgresql://u:***@db/x did not answer\n")
    plan = (WorkerPlan(0, None), WorkerPlan(1, None))
    trials = [optuna.trial.create_trial(value=0.5, user_attrs={records.WORKER: 0}) for _ in range(3)]
    assert WorkersResult(plan, (0, 0), logs).check(trials) == "workers: #0 ran 3 trials; #1 ran 0 trials"
    with pytest.raises(UserError) as failed:
        WorkersResult(plan, (0, 2), logs).check(trials)
    assert str(failed.value) == (
        "workers: #0 ran 3 trials; #1 ran 0 trials and exited 2 (the database at postgresql://u:***@db/x did not "
        f"answer); see {logs}/worker-N.log"
    )


@pytest.mark.parametrize(
    ("cores", "user", "expected"),
    [(8, None, ["4", "4"]), (2, None, ["1", "1"]), (1, None, ["1", "1"]), (8, "3", ["3", "3"])],
)
def test_workers_share_the_cores_unless_the_user_set_the_threads(tmp_path, monkeypatch, cores, user, expected):
    """Each of N worker processes gets torch threads for its share of the cores (OMP_NUM_THREADS), not a thread per
    core each; a value the user set is passed on as it is."""
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(cores)))
    if user is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", user)
    started: list[dict[str, str]] = []

    class Finished:  # a worker that has exited 0 by the time the parent looks
        returncode = 0

        def __init__(self, cmd: list[str], *, env: dict[str, str], **kwargs: object) -> None:
            started.append(env)

        def poll(self) -> int:
            return 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(workers.subprocess, "Popen", Finished)
    opts = StudyOptions(name="share", storage="postgresql://u@127.0.0.1/x", runs_dir=str(tmp_path))
    plan = [WorkerPlan(0, None), WorkerPlan(1, None)]
    workers.run_workers(opts, plan, n_trials=2, until=2, timeout=None, refresh=lambda: None)
    assert [env["OMP_NUM_THREADS"] for env in started] == expected
    assert [env[WORKER_ENV] for env in started] == ["0", "1"]


def test_workers_on_sqlite_are_refused_with_a_clear_message(image_folder):
    result = invoke("study", "run", "lite", "--workers", 2, "--n-trials", 2, "--data", image_folder)
    assert result.exit_code == 2
    assert "SQLite" in result.stderr and "postgresql" in result.stderr
    assert "Traceback" not in result.output
    assert not Path("sweeper.db").exists()


@pytest.mark.parametrize(
    ("names", "sqlite", "n_trials", "expected"),
    [
        ([], False, 10, [None]),  # the CPU: one worker
        (["NVIDIA H200"], False, 10, ["0"] * 4),  # the measured best on an H200
        (["NVIDIA H200"], True, 10, ["0"]),  # SQLite cannot take several workers
        (["NVIDIA H200"], False, 2, ["0", "0"]),  # no worker without a trial
        (["NVIDIA H200", "NVIDIA A10G"], False, 10, ["0", "1", "0", "0", "0"]),  # unmeasured models get one
        (["NVIDIA A10G", "NVIDIA A10G"], True, 10, ["0"]),  # SQLite: one in all
        (["NVIDIA A10G", "NVIDIA A10G"], False, 1, ["0"]),  # one trial: one worker
    ],
)
def test_workers_auto_follows_the_measured_table(names, sqlite, n_trials, expected):
    visible = [str(i) for i in range(len(names))]
    assert auto_devices(visible, names, n_trials=n_trials, sqlite=sqlite) == expected
    assert workers_per_gpu("NVIDIA H200") == 4 and workers_per_gpu("Tesla T4") == 1
