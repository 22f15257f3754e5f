"""`sweeper study run` (and the `replay` of its best) against a real MLflow server and PostgreSQL, and on the embedded
defaults; single- and multi-objective; what it prints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import (
    TINY,
    TRIAL_STEPS_PER_EPOCH,
    artifacts,
    invoke,
)
from pipelines.config import Config
from sweeper import records
from sweeper.objective import Objective
from sweeper.urls import absolute_sqlite

# 300 train images - 60 held out = 240 -> 7 steps of 32 per epoch, 14 in all


PLOTS = {"plots/lr_schedule.png", "plots/curves.png", "plots/misclassified.png"}


TRIAL_METRICS = {"train_loss", "train_accuracy", "val_accuracy", "test_loss", "test_accuracy"}


def study_run(name: str, data: Path, storage: str, tracking: str, n: int, *extra: str) -> dict:
    result = invoke(
        "study", "run", name, "--data", data, "--n-trials", n, "--storage", storage, "--tracking-uri",
        tracking, "--sampler", "random", "--seed", "0", "--pruner", "none", "--json", "--set", *TINY, "train.epochs=2",
        *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def check_study(client: MlflowClient, name: str, storage: str, trials: int) -> tuple[str, list]:
    """The experiment, one parent run and ``trials`` child runs with their params, metrics and artifacts."""
    exp = client.get_experiment_by_name(name)
    assert exp is not None
    parents = client.search_runs([exp.experiment_id], "tags.`sweeper.role` = 'study'")
    assert len(parents) == 1
    parent = parents[0].info.run_id
    children = client.search_runs([exp.experiment_id], "tags.`sweeper.role` = 'trial'")
    assert len(children) == trials
    study = optuna.load_study(study_name=name, storage=storage)
    run_ids = {t.user_attrs["mlflow_run_id"]: t for t in study.trials}
    for run in children:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert tags["mlflow.parentRunId"] == parent
        assert run.info.run_id in run_ids
        trial = run_ids[run.info.run_id]
        assert tags["sweeper.trial_number"] == str(trial.number)
        assert tags["sweeper.state"] == "complete"
        assert run.info.status == "FINISHED"
        assert {"effective_decay", "momentum", "weight_decay", "lr"} <= set(params)
        # lr = effective_decay * (1 - momentum) / weight_decay, as logged
        ed, rho, alpha, lr = (float(params[k]) for k in ("effective_decay", "momentum", "weight_decay", "lr"))
        assert lr == pytest.approx(ed * (1 - rho) / alpha, rel=1e-4)
        assert float(params["lr"]) == pytest.approx(trial.user_attrs["lr"], rel=1e-5)
        assert TRIAL_METRICS | {"trial_seconds"} <= set(metrics)
        lr_hist = client.get_metric_history(run.info.run_id, "lr")
        assert sorted(m.step for m in lr_hist) == list(range(2 * TRIAL_STEPS_PER_EPOCH))
        acc_hist = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert sorted(m.step for m in acc_hist) == [1, 2]
        assert metrics["val_accuracy"] == pytest.approx(trial.value)
        assert PLOTS | {"config.yaml"} <= artifacts(client, run.info.run_id)
    return parent, children


@pytest.mark.slow
def test_study_logs_parent_children_and_replay_to_mlflow_server(image_folder, mlflow_server, pg_url):
    client = MlflowClient(mlflow_server.uri)
    out = study_run("srv", image_folder, pg_url, mlflow_server.uri, 3)
    assert [t["state"] for t in out["trials"]] == ["complete"] * 3
    parent, _ = check_study(client, "srv", pg_url, 3)
    parent_run = client.get_run(parent)
    assert sorted(m.step for m in client.get_metric_history(parent, "objective")) == [0, 1, 2]
    assert "best.lr" in parent_run.data.tags
    assert {"study_plots/optimization_history.png", "study_plots/accuracy_vs_params.png"} <= artifacts(client, parent)

    # a second run resumes the same study under the same parent
    out2 = study_run("srv", image_folder, pg_url, mlflow_server.uri, 1)
    assert [t["number"] for t in out2["trials"]] == [0, 1, 2, 3]
    parent2, _ = check_study(client, "srv", pg_url, 4)
    assert parent2 == parent

    # replay the best trial for 2 seeds
    best = max((t for t in out2["trials"]), key=lambda t: t["value"])
    result = invoke(
        "replay", "--study", "srv", "--seeds", "2", "--storage", pg_url, "--tracking-uri", mlflow_server.uri, "--json"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["seeds"] == 2 and len(summary["test_accuracies"]) == 2
    exp = client.get_experiment_by_name("srv")
    replays = client.search_runs([exp.experiment_id], "tags.`sweeper.role` = 'replay'")
    assert len(replays) == 2
    for run in replays:
        assert run.data.tags["sweeper.source_trial"] == str(best["number"])
        assert run.data.tags["sweeper.source_run_id"] == best["mlflow_run_id"]
        assert float(run.data.params["lr"]) == pytest.approx(best["lr"], rel=1e-5)
        assert "model.pt" in artifacts(client, run.info.run_id)
        assert "val_accuracy" not in run.data.metrics  # full training set: no hold-out
    assert {r.data.params["seed"] for r in replays} == {"0", "1"}


@pytest.mark.slow
def test_study_with_embedded_defaults_needs_no_server(image_folder):
    out = study_run("local", image_folder, "sqlite:///sweeper.db", "sqlite:///mlflow.db", 2)
    assert len(out["trials"]) == 2
    assert Path("sweeper.db").exists() and Path("mlflow.db").exists() and Path("mlartifacts").is_dir()
    client = MlflowClient(absolute_sqlite("sqlite:///mlflow.db"))
    check_study(client, "local", "sqlite:///sweeper.db", 2)

    listed = invoke("study", "list", "--storage", "sqlite:///sweeper.db", "--json")
    assert listed.exit_code == 0 and [s["name"] for s in json.loads(listed.stdout)] == ["local"]
    shown = invoke("study", "show", "local", "--storage", "sqlite:///sweeper.db", "--json")
    assert len(json.loads(shown.stdout)["trials"]) == 2
    best = invoke("study", "best", "local", "--storage", "sqlite:///sweeper.db", "--export", "best.yaml", "--json")
    assert best.exit_code == 0, best.output
    payload = json.loads(best.stdout)
    assert Path("best.yaml").exists()

    result = invoke("replay", "best.yaml", "--seeds", "1", "--tracking-uri", "sqlite:///mlflow.db", "--json")
    assert result.exit_code == 0, result.output
    replays = client.search_runs([client.get_experiment_by_name("replay").experiment_id])
    assert len(replays) == 1
    assert float(replays[0].data.params["lr"]) == pytest.approx(payload["lr"], rel=1e-5)


def test_study_default_reparametrised_lr(image_folder):
    """Trial params in the default space map to lr = effective_decay * (1 - momentum) / weight_decay."""
    out = study_run("reparam", image_folder, "sqlite:///sweeper.db", "sqlite:///mlflow.db", 1)
    trial = out["trials"][0]
    p = trial["params"]
    assert set(p) == {"effective_decay", "momentum", "weight_decay"}
    assert trial["lr"] == pytest.approx(p["effective_decay"] * (1 - p["momentum"]) / p["weight_decay"])


def test_from_lr_finder_enqueues_trial_0_at_the_suggested_lr(image_folder):
    out = study_run("lrf", image_folder, "sqlite:///sweeper.db", "sqlite:///mlflow.db", 1, "--from-lr-finder")
    study = optuna.load_study(study_name="lrf", storage="sqlite:///sweeper.db")
    first = study.trials[0]
    assert first.user_attrs["source"] == "lr_finder"
    p = first.params
    # the enqueued point keeps the config's momentum and weight decay (0.9, 5e-4)
    assert p["momentum"] == pytest.approx(0.9) and p["weight_decay"] == pytest.approx(5e-4)
    assert out["trials"][0]["lr"] == pytest.approx(p["effective_decay"] * (1 - 0.9) / 5e-4)


def test_for_logs_the_final_table_best_line_replay_hint_and_runs_link_arrive_whole(
    image_folder, monkeypatch, console_script
):
    """Captured output (compose logs, CI: not a terminal) is not wrapped at 80 columns, however long the lines."""
    monkeypatch.setenv("COLUMNS", "60")
    name = "a-study-whose-name-alone-is-longer-than-the-eighty-columns-rich-would-wrap-a-log-line-at"
    common = ["--n-trials", 2, "--sampler", "random", "--pruner", "none", "--set", *TINY, "train.epochs=1"]
    done = console_script("study", "run", name, "--data", image_folder, *common)
    assert done.code == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert f"study {name}" in [line.strip() for line in lines]  # the table's title, unwrapped
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == 2 and all(line.count("│") == rows[0].count("│") for line in rows)
    assert all("complete" in row and "%" in row for row in rows)  # each trial whole on its own row
    best = [line for line in lines if line.startswith("best: ")]
    assert len(best) == 1 and re.fullmatch(r"best: trial [01] val accuracy [\d.]+% \(lr [\d.e+-]+\)", best[0])
    assert f"replay it with: sweeper replay --study {name}" in lines
    experiment = MlflowClient(absolute_sqlite("sqlite:///mlflow.db")).get_experiment_by_name(name).experiment_id
    store = absolute_sqlite("sqlite:///mlflow.db")
    assert lines[-2:] == [
        f"start the MLflow UI with: mlflow ui --backend-store-uri {store}",
        f"runs in MLflow: http://127.0.0.1:5000/#/experiments/{experiment}/runs?workflowType=machine_learning",
    ]

    replayed = console_script("replay", "--study", name, "--seeds", "1", "--set", "train.epochs=1")
    assert replayed.code == 0, replayed.stderr[-3000:]
    assert re.fullmatch(
        rf"replay of {re.escape(name)}-trial-[01]: test accuracy .*% over 1 seeds \(.*\)", replayed.stdout.strip()
    )
    assert replayed.stderr.splitlines()[-1] == lines[-1]  # the same experiment, the same runs view


def test_a_multi_objective_study_ends_with_the_front_and_where_to_see_it_on_lines_of_their_own(image_folder):
    space = {"params": {"train.epochs": {"type": "int", "low": 1, "high": 2}}}
    Path("space.yaml").write_text(json.dumps(space))
    result = invoke(
        "study", "run", "front", "--data", image_folder, "--space", "space.yaml", "--objective", "val,epochs",
        "--n-trials", 2, "--sampler", "random", "--set", *TINY,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert re.fullmatch(r"Pareto front: [12] trial\(s\)", lines[-4]), lines[-4:]
    assert lines[-3] == "see them with: sweeper study best front"
    assert lines[-2].startswith("start the MLflow UI with: mlflow ui --backend-store-uri sqlite:///")
    assert re.fullmatch(
        r"runs in MLflow: http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?workflowType=machine_learning", lines[-1]
    )


EPOCHS_SPACE = {
    "params": {
        "lr": {"type": "float", "low": 0.05, "high": 0.5, "log": True},
        "train.epochs": {"type": "int", "low": 1, "high": 3},
    }
}


@pytest.mark.slow
def test_a_multi_objective_study_has_a_front_users_can_pick_from(image_folder, mlflow_server, pg_url, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(EPOCHS_SPACE))
    common = ["--storage", pg_url, "--tracking-uri", mlflow_server.uri]
    run = invoke(
        "study", "run", "cheap", "--data", image_folder, "--space", space, "--objective", "val,train_seconds",
        "--n-trials", 3, "--sampler", "random", "--seed", "0", *common, "--json", "--set", *TINY,
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "below the median of the complete trials of its own epoch budget" in run.stderr  # --pruner median
    study = optuna.load_study(study_name="cheap", storage=pg_url)
    assert study.metric_names == ["val_accuracy", "train_seconds"]  # what optuna-dashboard shows
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and all(len(t.values) == 2 for t in complete)

    shown = invoke("study", "best", "cheap", "--storage", pg_url, "--json")
    assert shown.exit_code == 0, shown.output
    front = json.loads(shown.stdout)["pareto"]
    assert {r["number"] for r in front} == {t.number for t in study.best_trials}
    for row in front:
        assert set(row["values"]) == {"val", "train_seconds"} and set(row["params"]) == {"lr", "train.epochs"}
    costs = [r["values"]["train_seconds"] for r in front]
    assert costs == sorted(costs)

    target = min(t.values[0] for t in complete)  # every trial reaches it: the cheapest of all is picked
    picked = invoke("study", "best", "cheap", "--storage", pg_url, "--min-accuracy", target, "--json",
                    "--export", tmp_path / "picked.yaml")  # fmt: skip
    assert picked.exit_code == 0, picked.output
    choice = json.loads(picked.stdout)
    cheapest = min(complete, key=lambda t: (t.values[1], -t.values[0]))
    assert choice["number"] == cheapest.number and set(choice) - {"exported"} == set(front[0])  # the front's keys
    assert Config.load(tmp_path / "picked.yaml").train.epochs == cheapest.params["train.epochs"]

    client = MlflowClient(mlflow_server.uri)
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert {"pareto.json", "study_plots/pareto_front.png"} <= artifacts(client, parent)
    assert client.get_run(parent).data.tags["pareto.trials"] == ",".join(str(r["number"]) for r in front)


def test_val_against_epochs_records_the_epochs_run_and_no_single_best(image_folder, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(EPOCHS_SPACE))
    run = invoke("study", "run", "epochs", "--data", image_folder, "--space", space, "--objective", "val,epochs",
                 "--n-trials", 2, "--sampler", "random", "--json", "--set", *TINY)  # fmt: skip
    assert run.exit_code == 0, run.output
    for trial in optuna.load_study(study_name="epochs", storage="sqlite:///sweeper.db").trials:
        assert trial.values[1] == trial.params["train.epochs"]
    single = invoke("replay", "--study", "epochs", "--seeds", 1)
    assert single.exit_code == 2 and "--trial" in single.stderr
    for other in ("val", "val,train_seconds"):  # another arity, or the same arity with another cost
        changed = invoke("study", "run", "epochs", "--objective", other, "--n-trials", 1)
        assert changed.exit_code == 2 and "objectives cannot change" in changed.stderr, other
    cmaes = invoke("study", "run", "cma", "--data", image_folder, "--objective", "val,epochs", "--sampler", "cmaes",
                   "--n-trials", 1, "--set", *TINY)  # fmt: skip
    assert cmaes.exit_code == 2 and "cannot optimize two objectives" in cmaes.stderr


def test_help_lists_every_fixed_choice():
    result = invoke("study", "run", "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for listed in ("tpe|cmaes|random|gp|grid", "median|hyperband|none", "val|test"):
        assert listed in result.stdout


# -- pruning a multi-objective study ---------------------------------------------------------------------------

MO_TINY = [*TINY, "train.epochs=3"]
LR_SPACE = {"params": {"lr": {"type": "float", "low": 0.01, "high": 4.0, "log": True}}}
GOOD_LR, HOPELESS_LR = 0.15, 4.0  # on the generated shapes: 100 % in 3 epochs; stuck at chance (33.3 %), no NaN
REASON = re.compile(
    r"pruned at epoch (\d): val accuracy 33\.3% \(best so far\) below the median \d+\.\d% of (\d) complete "
    r"3-epoch trials at epoch \1"
)


def init_with_queue(name: str, data: Path, storage: str, tracking: str, *, good: int, hopeless: int) -> None:
    """`study init` a val,epochs study (median pruning), then queue ``good`` trials at a learning LR and then
    ``hopeless`` ones at an LR that learns nothing: the good ones complete first, alike (same config and seed)."""
    space = Path("space.yaml")
    space.write_text(yaml.safe_dump(LR_SPACE))
    made = invoke("study", "init", name, "--data", data, "--space", space, "--objective", "val,epochs", "--pruner",
                  "median", "--storage", storage, "--tracking-uri", tracking, "--set", *MO_TINY)  # fmt: skip
    assert made.exit_code == 0, made.output
    assert "pruned when its accuracy falls below the median of the complete trials of its own epoch budget" in (
        made.stderr
    )
    study = optuna.load_study(study_name=name, storage=storage)
    for lr in [GOOD_LR] * good + [HOPELESS_LR] * hopeless:
        study.enqueue_trial({"lr": lr})


@pytest.mark.slow
def test_a_multi_objective_study_prunes_a_hopeless_trial_and_shows_when_and_why(image_folder):
    storage, tracking = "sqlite:///sweeper.db", "sqlite:///mlflow.db"
    init_with_queue("cheap", image_folder, storage, tracking, good=3, hopeless=1)
    run = invoke("study", "run", "cheap", "--n-trials", 4, "--storage", storage, "--tracking-uri", tracking, "--json")
    assert run.exit_code == 0, run.output
    study = optuna.load_study(study_name="cheap", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    pruned = study.trials[3]
    reason = pruned.user_attrs[records.REASON]
    match = REASON.fullmatch(reason)
    assert match and match[2] == "3", reason
    epoch = int(match[1])
    assert records.cost(pruned, Objective.val_epochs) == epoch  # its partial cost: the epochs it ran
    assert 3 not in {t.number for t in study.best_trials}  # never on the front

    payload = json.loads(run.stdout)
    row = payload["trials"][3]
    assert (row["state"], row["epoch"], row["reason"], row["cost"], row["pareto"]) == (
        "pruned", epoch, reason, epoch, False
    )  # fmt: skip
    assert 3 not in {r["number"] for r in payload["pareto"]}
    shown = invoke("study", "show", "cheap", "--storage", storage)
    assert shown.exit_code == 0 and f"pruned (epoch {epoch})" in shown.stderr + shown.stdout
    shown_json = json.loads(invoke("study", "show", "cheap", "--storage", storage, "--json").stdout)
    assert shown_json["trials"][3]["reason"] == reason

    tags = MlflowClient(tracking).get_run(pruned.user_attrs[records.RUN_ID]).data.tags
    assert (tags[records.STATE_TAG], tags[records.REASON_TAG]) == ("pruned", reason)


def test_hyperband_is_refused_for_two_objectives_in_one_line(image_folder):
    result = invoke("study", "run", "hb", "--data", image_folder, "--objective", "val,epochs", "--pruner",
                    "hyperband", "--n-trials", 1, "--set", *MO_TINY)  # fmt: skip
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--pruner hyperband cannot prune two objectives (val,epochs)" in result.stderr
    assert not Path("sweeper.db").exists()


@pytest.mark.slow
def test_two_workers_prune_by_the_trials_the_other_worker_completed(image_folder, mlflow_server, pg_url):
    """Each hopeless trial starts once at least 3 good ones are complete (at most one runs on the other worker);
    the rule reads them from PostgreSQL, whichever worker ran them."""
    init_with_queue("pair", image_folder, pg_url, mlflow_server.uri, good=4, hopeless=3)
    run = invoke("study", "run", "pair", "--workers", 2, "--n-trials", 7, "--storage", pg_url, "--tracking-uri",
                 mlflow_server.uri, "--json")  # fmt: skip
    assert run.exit_code == 0, run.output
    payload = json.loads(run.stdout)
    assert payload["workers"] == 2 and payload["failed_workers"] == []
    study = optuna.load_study(study_name="pair", storage=pg_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4 + [TrialState.PRUNED] * 3
    client = MlflowClient(mlflow_server.uri)
    for trial in study.trials[4:]:
        reason = trial.user_attrs[records.REASON]
        match = REASON.fullmatch(reason)
        assert match and int(match[2]) >= 3, reason
        assert client.get_run(trial.user_attrs[records.RUN_ID]).data.tags[records.REASON_TAG] == reason
    assert not {4, 5, 6} & {r["number"] for r in payload["pareto"]}
