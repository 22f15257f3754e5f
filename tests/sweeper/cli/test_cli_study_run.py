"""`sweeper study run`: pruning a multi-objective study, in one process and with two workers on PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from sweeper import records
from sweeper.cli import app
from sweeper.objective import Objective

TINY = ["model.width=0.125", "train.batch_size=32", "data.val_size=60", "train.device=cpu", "train.epochs=3"]
LR_SPACE = {"params": {"lr": {"type": "float", "low": 0.01, "high": 4.0, "log": True}}}
GOOD_LR, HOPELESS_LR = 0.15, 4.0  # on the generated shapes: 100 % in 3 epochs; stuck at chance (33.3 %), no NaN
REASON = re.compile(
    r"pruned at epoch (\d): val accuracy 33\.3% \(best so far\) below the median \d+\.\d% of (\d) complete "
    r"3-epoch trials at epoch \1"
)


def invoke(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def init_with_queue(name: str, data: Path, storage: str, tracking: str, *, good: int, hopeless: int) -> None:
    """`study init` a val,epochs study (median pruning), then queue ``good`` trials at a learning LR and then
    ``hopeless`` ones at an LR that learns nothing: the good ones complete first, alike (same config and seed)."""
    space = Path("space.yaml")
    space.write_text(yaml.safe_dump(LR_SPACE))
    made = invoke("study", "init", name, "--data", data, "--space", space, "--objective", "val,epochs", "--pruner",
                  "median", "--storage", storage, "--tracking-uri", tracking, "--set", *TINY)  # fmt: skip
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
                    "hyperband", "--n-trials", 1, "--set", *TINY)  # fmt: skip
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
