"""Nothing lost, nothing leaked: killed workers, Ctrl-C, divergence, MLflow outages, bad input, secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from conftest import MlflowServer, free_port, start_process, wait_for, write_image_folder
from sweeper.cli import app
from sweeper.urls import absolute_sqlite

TINY = ["model.width=0.125", "train.batch_size=32", "data.val_size=60", "train.device=cpu"]


def sweeper_proc(*args: object, log: Path, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "SWEEPER_HEARTBEAT_SECONDS": "1", "SWEEPER_GRACE_SECONDS": "4", **(env or {})}
    return start_process(
        [sys.executable, "-m", "sweeper", *map(str, args)],
        env=full_env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
    )


def running_trial_with_epoch(storage: str, name: str) -> bool:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return False
    return any(
        t.state == TrialState.RUNNING and t.intermediate_values and "mlflow_run_id" in t.user_attrs
        for t in study.trials
    )


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
def test_ctrl_c_records_the_trial_as_interrupted_and_exits_130(image_folder, tmp_path):
    storage = f"sqlite:///{tmp_path / 'sweeper.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--storage", storage, "--tracking-uri", tracking]
    proc = sweeper_proc(
        "study", "run", "ctrlc", "--data", image_folder, "--n-trials", 2, *common, "--set", *TINY,
        "train.epochs=60",
        log=tmp_path / "run.log",
    )  # fmt: skip
    wait_for(lambda: running_trial_with_epoch(storage, "ctrlc"), 120, "a running trial")
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130, (tmp_path / "run.log").read_text()[-2000:]
    assert time.monotonic() - sent < 10
    trial = optuna.load_study(study_name="ctrlc", storage=storage).trials[0]
    assert trial.state == TrialState.FAIL and trial.user_attrs["reason"] == "interrupted"
    run = MlflowClient(tracking).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["sweeper.state"] == "interrupted"
    # a later run resumes the study
    again = sweeper_proc(
        "study", "run", "ctrlc", "--n-trials", 1, *common, "--set", "train.epochs=1", log=tmp_path / "again.log"
    )
    assert again.wait(timeout=120) == 0, (tmp_path / "again.log").read_text()[-2000:]
    states = [t.state for t in optuna.load_study(study_name="ctrlc", storage=storage).trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]


def test_diverging_trial_is_pruned_as_diverged_and_the_study_goes_on(image_folder, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  lr: {type: categorical, choices: [1000000.0, 0.1]}\n")
    result = CliRunner().invoke(
        app,
        [
            "study", "run", "div", "--data", str(image_folder), "--space", str(space), "--sampler",
            "grid", "--n-trials", "2", "--pruner", "none", "--json", "--set", *TINY, "train.epochs=2",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    trials = {t["params"]["lr"]: t for t in json.loads(result.stdout)["trials"]}
    assert trials[1000000.0]["state"] == "diverged"
    assert trials[0.1]["state"] == "complete"
    study = optuna.load_study(study_name="div", storage="sqlite:///sweeper.db")
    diverged = next(t for t in study.trials if t.params["lr"] == 1000000.0)
    assert diverged.state == TrialState.PRUNED and diverged.user_attrs["reason"] == "diverged"
    run = MlflowClient(absolute_sqlite("sqlite:///mlflow.db")).get_run(diverged.user_attrs["mlflow_run_id"])
    assert run.data.tags["sweeper.state"] == "diverged"


def test_unreachable_mlflow_at_start_exits_2_before_training(image_folder):
    uri = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        app, ["study", "run", "nomlflow", "--data", str(image_folder), "--tracking-uri", uri, "--set", *TINY]
    )
    assert result.exit_code == 2
    assert uri in result.stderr and "Traceback" not in result.output
    assert not Path("sweeper.db").exists() and not Path("runs").exists()


@pytest.mark.slow
def test_mlflow_outage_mid_study_is_spooled_and_synced(image_folder, tmp_path):
    server = MlflowServer(tmp_path / "outage-server")
    server.start()
    try:
        storage = f"sqlite:///{tmp_path / 'sweeper.db'}"
        common = ["--storage", storage, "--tracking-uri", server.uri]
        proc = sweeper_proc(
            "study", "run", "outage", "--data", image_folder, "--n-trials", 3, "--pruner", "none",
            *common, "--set", *TINY, "train.epochs=3",
            log=tmp_path / "run.log",
        )  # fmt: skip
        wait_for(lambda: running_trial_with_epoch(storage, "outage"), 120, "the first trial")
        server.stop()
        assert proc.wait(timeout=400) == 0, (tmp_path / "run.log").read_text()[-3000:]
        study = optuna.load_study(study_name="outage", storage=storage)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3  # training went on
        spool = Path("runs/outage/spool")
        assert list(spool.glob("*.jsonl")), "nothing was spooled"

        server.start()
        synced = CliRunner().invoke(
            app, ["study", "sync", "outage", "--tracking-uri", server.uri, "--storage", storage, "--json"]
        )
        assert synced.exit_code == 0, synced.output
        done = json.loads(synced.stdout)
        assert done["operations"] > 0 and done["run_ids"] and done["run_ids_recorded"]
        assert not list(spool.glob("*.jsonl"))
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("outage")
        children = client.search_runs([exp.experiment_id], "tags.`sweeper.role` = 'trial'")
        assert sorted(int(r.data.tags["sweeper.trial_number"]) for r in children) == [0, 1, 2]
        for run in children:
            assert run.info.status == "FINISHED" and run.data.tags["sweeper.state"] == "complete"
            assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 3  # every epoch, synced
            assert [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")] == [3]  # at the end
            names = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
            assert names == {"plots/lr_schedule.png", "plots/curves.png", "plots/misclassified.png"}
        shown = CliRunner().invoke(app, ["study", "show", "outage", "--storage", storage, "--json"])
        recorded = sorted(t["mlflow_run_id"] for t in json.loads(shown.stdout)["trials"])
        assert recorded == sorted(r.info.run_id for r in children)  # the real ids, no pending- placeholder
    finally:
        server.stop()


# -- bad input: one line, exit 2, nothing left behind -------------------------------------------------------------


def _bad_inputs(root: Path, good: Path) -> dict[str, tuple[list[str], str]]:
    """case -> (CLI args after `study run bad`, a word the error line must contain)."""
    (root / "invalid.yaml").write_text("optim: [unclosed\n")
    (root / "empty-space.yaml").write_text("params: {}\n")
    (root / "low-high.yaml").write_text("params:\n  momentum: {type: float, low: 0.9, high: 0.8}\n")
    (root / "log-zero.yaml").write_text("params:\n  weight_decay: {type: float, low: 0.0, high: 0.01, log: true}\n")
    (root / "unknown-space.yaml").write_text("params:\n  optim.momentun: {type: float, low: 0.8, high: 0.9}\n")
    (root / "corrupt.tar.gz").write_bytes(b"\x1f\x8b\x08this is not a gzip stream at all" * 10)
    broken = write_image_folder(root / "broken", n_train=6, n_test=3)
    next((broken / "train").rglob("*.png")).write_bytes(b"not a png")
    (root / "flat").mkdir()
    (root / "flat" / "readme.txt").write_text("no train/ or test/ here")
    mismatch = write_image_folder(root / "mismatch", n_train=6, n_test=3)
    for f in (mismatch / "test" / "cross").iterdir():
        f.unlink()
    (mismatch / "test" / "cross").rmdir()
    data = ["--data", str(good)]
    return {
        "invalid yaml": (["--config", str(root / "invalid.yaml"), *data], "YAML"),
        "unknown config key": ([*data, "--set", "optim.momentun=0.9"], "optim.momentun"),
        "unknown space key": ([*data, "--space", str(root / "unknown-space.yaml")], "optim.momentun"),
        "momentum below 0": ([*data, "--set", "optim.momentum=-0.1"], "optim.momentum"),
        "momentum at 1": ([*data, "--set", "optim.momentum=1.0"], "optim.momentum"),
        "zero lr": ([*data, "--set", "optim.lr=0"], "optim.lr"),
        "negative decay": ([*data, "--set", "optim.weight_decay=-1e-4"], "optim.weight_decay"),
        "zero width": ([*data, "--set", "model.width=0"], "model.width"),
        "empty space": ([*data, "--space", str(root / "empty-space.yaml")], "empty"),
        "low above high": ([*data, "--space", str(root / "low-high.yaml")], "low"),
        "log range with 0": ([*data, "--space", str(root / "log-zero.yaml")], "log"),
        "zero epochs": ([*data, "--set", "train.epochs=0"], "train.epochs"),
        "peak after the end": ([*data, "--set", "schedule.peak_epoch=30"], "schedule.peak_epoch"),
        "batch larger than the training set": (
            [*data, "--set", "data.val_size=60", "train.batch_size=100000"],
            "train.batch_size",
        ),
        "missing data path": (["--data", str(root / "nowhere")], "nowhere"),
        "corrupt archive": (["--data", str(root / "corrupt.tar.gz")], "corrupt.tar.gz"),
        "image that does not decode": (["--data", str(broken)], ".png"),
        "folder without train and test": (["--data", str(root / "flat")], "train"),
        "different classes": (["--data", str(mismatch)], "cross"),
        "malformed storage url": ([*data, "--storage", "postgres//oops"], "storage"),
        "unknown augmentation op": (
            [*data, "--set", *TINY, 'augment.ops=[{"name": "Blurr"}]'],
            "Blurr",
        ),
        "negative timeout": ([*data, "--timeout", "-5"], "--timeout"),
        "runs dir that is a file": ([*data, "--runs-dir", str(root / "invalid.yaml")], "--runs-dir"),
        "tracking uri of an unknown scheme": (
            [*data, "--set", *TINY, "--tracking-uri", "ftp://u:pw@host/x"],
            "tracking URI",
        ),
        "unreachable database": (
            [*data, "--storage", f"postgresql+psycopg2://u:pw@127.0.0.1:{free_port()}/x"],
            "storage",
        ),
    }


def test_every_bad_input_exits_2_with_one_line_and_leaves_nothing(tmp_path, image_folder):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cases = _bad_inputs(inputs, image_folder)
    work = tmp_path / "work"
    work.mkdir()
    os.chdir(work)
    failures = []
    for case, (args, word) in cases.items():
        result = CliRunner().invoke(app, ["study", "run", "bad", "--n-trials", "1", *args])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        left = sorted(p.name for p in work.iterdir())
        ok = (
            result.exit_code == 2
            and len(lines) == 1
            and lines[0].startswith("error:")
            and word.lower() in lines[0].lower()
            and "Traceback" not in result.output
            and not left
        )
        if not ok:
            failures.append(f"{case}: exit {result.exit_code}, stderr {lines}, left {left}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("option", "typo", "choices"),
    [
        ("--sampler", "annealing", ["tpe", "cmaes", "random", "gp", "grid"]),
        ("--pruner", "asha", ["median", "hyperband", "none"]),
        ("--objective", "accuracy", ["val", "test"]),
    ],
)
def test_a_typo_in_a_fixed_choice_is_a_usage_error_that_lists_the_choices(
    tmp_path, image_folder, option, typo, choices
):
    os.chdir(tmp_path)
    result = CliRunner().invoke(app, ["study", "run", "bad", "--data", str(image_folder), option, typo])
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.stderr and typo in result.stderr
    assert all(f"'{choice}'" in result.stderr for choice in choices)
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_help_lists_every_fixed_choice():
    result = CliRunner().invoke(app, ["study", "run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for listed in ("tpe|cmaes|random|gp|grid", "median|hyperband|none", "val|test"):
        assert listed in result.stdout


# -- secrets -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_password_reaches_logs_mlflow_or_config(image_folder, mlflow_server, pg_url, tmp_path):
    secret = "s3cretPassw0rd"
    storage = pg_url.replace("postgres@", f"postgres:{secret}@")  # trust auth: any password connects
    log = tmp_path / "run.log"
    proc = sweeper_proc(
        "study", "run", "secret", "--data", image_folder, "--n-trials", 1, "--storage", storage,
        "--tracking-uri", mlflow_server.uri, "--set", *TINY, "train.epochs=1",
        log=log,
        env={"SWEEPER_STORAGE": storage},
    )  # fmt: skip
    assert proc.wait(timeout=180) == 0, log.read_text()[-2000:]
    assert secret not in log.read_text()
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("secret")
    for run in client.search_runs([exp.experiment_id]):
        dumped = json.dumps({"params": run.data.params, "tags": run.data.tags})
        assert secret not in dumped
        for path in ("config.yaml", "space.yaml"):
            try:
                text = Path(client.download_artifacts(run.info.run_id, path, str(tmp_path))).read_text()
            except Exception:  # noqa: BLE001 - not every run has both
                continue
            assert secret not in text
    study = optuna.load_study(study_name="secret", storage=storage)
    assert secret not in json.dumps(study.user_attrs) and "***" in study.user_attrs["tracking_uri"] + json.dumps(
        client.get_run(study.user_attrs["mlflow_parent_run_id"]).data.params
    )
    for path in Path("runs").rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".json", ".log", ".jsonl"):
            assert secret not in path.read_text(errors="ignore"), path
