"""sweeper.workers: many worker processes on one PostgreSQL-backed study, and how many `--workers auto` starts."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import TINY, heartbeat_env, invoke, start_sweeper, study_init
from sweeper.workers import auto_devices, workers_per_gpu


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


@pytest.mark.slow
def test_workers_option_splits_trials_and_shows_one_table(image_folder, mlflow_server, pg_url):
    result = invoke(
        "study", "run", "multi", "--workers", 2, "--n-trials", 3, "--data", image_folder, "--storage", pg_url,
        "--tracking-uri", mlflow_server.uri, "--sampler", "random", "--seed", 0, "--pruner", "none", "--json",
        "--set", *TINY, "train.epochs=1", catch_exceptions=False,
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
