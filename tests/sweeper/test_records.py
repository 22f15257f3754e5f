"""sweeper.records: a trial's record read back (config, seconds, epoch values, cost, accuracy, its table row) and
written (EpochRecorder), on in-memory Optuna studies whose trials are made with ask/tell."""

from __future__ import annotations

import datetime

import optuna
import pytest
from optuna.trial import TrialState

from conftest import epoch_metrics
from pipelines.callbacks import EpochMetrics
from pipelines.config import Config
from sweeper import records
from sweeper.objective import Objective

VAL, CHEAP, BY_EPOCHS = Objective("val"), Objective("val,train_seconds"), Objective("val,epochs")


def study(objective: Objective = VAL) -> optuna.Study:
    return optuna.create_study(storage=optuna.storages.InMemoryStorage(), directions=objective.directions)


def epoch(n: int, *, val: float = 0.5, test: float | None = 0.4) -> EpochMetrics:
    return epoch_metrics(n, val=val, test=test, train_accuracy=0.6, epoch_seconds=2.0, eval_seconds=0.5)


def frozen(s: optuna.Study, number: int = 0) -> optuna.trial.FrozenTrial:
    return s.trials[number]


# -- the keys ---------------------------------------------------------------------------------------------------


def test_every_key_is_a_distinct_string_and_the_study_settings_are_named_once():
    keys = {name: value for name, value in vars(records).items() if name.isupper() and isinstance(value, str)}
    study_keys = [records.SPACE, records.STUDY_CONFIG, records.OBJECTIVE, records.SAMPLER, records.PRUNER]
    assert tuple(study_keys) == records.STUDY_SETTINGS
    tags = [v for k, v in keys.items() if k.endswith("_TAG")]
    assert len(tags) == len(set(tags)) and all(
        tag.startswith(("sweeper.", "mlflow.", "pareto.", "replay.")) for tag in tags
    )
    assert records.ROLE not in tags and records.ROLE == "sweeper.role"


# -- reading a trial back ---------------------------------------------------------------------------------------


def test_recorded_config_is_the_config_the_trial_trained_or_none():
    s = study()
    trained = Config().with_overrides({"optim.lr": 0.2, "train.epochs": 3})
    t = s.ask()
    t.set_user_attr(records.CONFIG, trained.to_yaml())
    s.tell(t, 0.5)
    s.tell(s.ask(), state=TrialState.FAIL)  # failed before it recorded one
    assert records.recorded_config(frozen(s, 0)) == trained
    assert records.recorded_config(frozen(s, 1)) is None


def test_study_config_is_the_base_config_the_study_recorded():
    base = Config().with_overrides({"model.width": 0.5})
    assert records.study_config({records.STUDY_CONFIG: base.to_yaml()}, name="s") == base
    assert records.study_config({}, name="s") is None


def test_run_id_is_the_recorded_one_or_the_real_one_a_sync_gave_it():
    s = study()
    t = s.ask()
    t.set_user_attr(records.RUN_ID, "pending-1")
    s.tell(t, 0.5)
    assert records.run_id(frozen(s), {}) == "pending-1"
    assert records.run_id(frozen(s), {records.SYNCED_RUN_IDS: {"pending-1": "abc"}}) == "abc"
    s.tell(s.ask(), 0.1)
    assert records.run_id(frozen(s, 1), {}) is None


def test_trial_seconds_run_from_the_recorded_start_to_the_end_or_to_now():
    s = study()
    running = s.ask()
    start = frozen(s).datetime_start
    later = start + datetime.timedelta(seconds=12.5)
    assert records.trial_seconds(frozen(s), now=later) == pytest.approx(12.5)  # still running: up to now
    s.tell(running, 0.5)
    done = frozen(s)
    assert records.trial_seconds(done) == pytest.approx((done.datetime_complete - start).total_seconds())
    assert records.trial_seconds(done, now=later) == records.trial_seconds(done)  # now does not matter once ended
    s.enqueue_trial({})
    waiting = next(t for t in s.get_trials(deepcopy=False) if t.state == TrialState.WAITING)
    assert records.trial_seconds(waiting) is None  # never started


def test_epoch_values_are_the_reported_values_in_epoch_order():
    s = study()
    t = s.ask()
    for step, value in ((2, 0.6), (1, 0.5), (3, 0.7)):
        t.report(value, step)
    assert records.epoch_values(frozen(s)) == {1: 0.5, 2: 0.6, 3: 0.7}
    assert list(records.epoch_values(frozen(s))) == [1, 2, 3]


def test_a_multi_objective_trial_keeps_its_epoch_values_in_an_attribute_read_back_as_numbers():
    s = study(CHEAP)
    t = s.ask()
    t.set_user_attr(records.EPOCH_VALUES, {"10": 0.9, "2": 0.4, "1": 0.3})  # JSON keys are strings
    assert records.epoch_values(frozen(s)) == {1: 0.3, 2: 0.4, 10: 0.9}
    assert list(records.epoch_values(frozen(s))) == [1, 2, 10]  # by epoch, not as strings sort
    s.ask()
    assert records.epoch_values(frozen(s, 1)) == {}  # nothing reached yet


def test_last_epoch_and_epochs_run_read_the_last_epoch_recorded():
    s = study()
    t = s.ask()
    assert records.last_epoch(frozen(s)) == {} and records.epochs_run(frozen(s)) is None  # before the first
    t.set_user_attr(records.EPOCH, epoch(4).as_dict())
    assert records.last_epoch(frozen(s))["val_accuracy"] == 0.5
    assert records.epochs_run(frozen(s)) == 4


def test_the_cost_of_a_complete_trial_is_its_second_value_of_a_stopped_one_what_it_spent():
    s = study(CHEAP)
    done = s.ask()
    s.tell(done, [0.8, 31.5])
    pruned = s.ask()
    pruned.set_user_attr(records.TRAIN_SECONDS, 12.0)
    pruned.set_user_attr(records.EPOCH, epoch(3).as_dict())
    s.tell(pruned, state=TrialState.PRUNED)
    assert records.cost(frozen(s, 0), CHEAP) == 31.5
    assert records.cost(frozen(s, 1), CHEAP) == 12.0  # its training seconds so far
    assert records.cost(frozen(s, 1), BY_EPOCHS) == 3.0  # or the epochs it ran
    assert records.cost(frozen(s, 0), VAL) is None  # a single-objective study has no cost


def test_accuracy_is_the_first_value_once_complete_else_the_last_reached():
    s = study(CHEAP)
    s.tell(s.ask(), [0.8, 10.0])
    running = s.ask()
    assert records.accuracy(frozen(s, 1)) is None  # nothing reached yet
    running.set_user_attr(records.EPOCH_VALUES, {"1": 0.3, "2": 0.45})
    assert records.accuracy(frozen(s, 0)) == 0.8
    assert records.accuracy(frozen(s, 1)) == 0.45


# -- writing a running trial's epochs ---------------------------------------------------------------------------


def test_a_single_objective_trial_reports_each_value_to_optuna_and_keeps_the_epochs_metrics():
    s = study()
    recorder = records.EpochRecorder(s.ask(), VAL)
    recorder.record(epoch(1, val=0.5), 0.5)
    recorder.record(epoch(2, val=0.7), 0.7)
    recorder.record(epoch(3, val=0.8), None)  # not evaluated this epoch: nothing reported
    trial = frozen(s)
    assert trial.intermediate_values == {1: 0.5, 2: 0.7}
    assert records.EPOCH_VALUES not in trial.user_attrs
    assert trial.user_attrs[records.EPOCH] == epoch(3, val=0.8).as_dict()  # the last epoch finished


def test_a_multi_objective_trial_keeps_its_values_in_an_attribute_optuna_cannot_report():
    s = study(CHEAP)
    recorder = records.EpochRecorder(s.ask(), CHEAP)
    recorder.record(epoch(1), 0.5)
    recorder.record(epoch(2, test=None), 0.6)
    trial = frozen(s)
    assert trial.intermediate_values == {}
    assert trial.user_attrs[records.EPOCH_VALUES] == {"1": 0.5, "2": 0.6}
    assert records.epoch_values(trial) == {1: 0.5, 2: 0.6}
    assert "test_accuracy" not in trial.user_attrs[records.EPOCH]  # not evaluated: absent, not made up


# -- a trial as the tables show it ------------------------------------------------------------------------------


def test_a_complete_trials_row_has_its_value_params_lr_test_accuracy_seconds_and_run():
    s = study()
    t = s.ask()
    t.suggest_float("lr", 0.01, 1.0)
    t.set_user_attr(records.LR, 0.25)
    t.set_user_attr(records.TEST_ACCURACY, 0.77)
    t.set_user_attr(records.RUN_ID, "run-0")
    t.set_user_attr(records.EPOCH, epoch(4).as_dict())
    s.tell(t, 0.8)
    row = records.trial_row(frozen(s), objective=VAL, study_attrs={})
    seconds = records.trial_seconds(frozen(s))
    assert row == {
        "number": 0, "state": "complete", "value": 0.8, "epoch": 4, "params": {"lr": frozen(s).params["lr"]},
        "lr": 0.25, "test_accuracy": 0.77, "seconds": seconds, "reason": None, "mlflow_run_id": "run-0",
    }  # fmt: skip


def test_a_running_trials_row_shows_the_last_value_reached_and_its_epochs_test_accuracy():
    s = study()
    t = s.ask()
    t.report(0.4, 1)
    t.report(0.55, 2)
    t.set_user_attr(records.EPOCH, epoch(2, test=0.5).as_dict())
    now = frozen(s).datetime_start + datetime.timedelta(seconds=3)
    row = records.trial_row(frozen(s), objective=VAL, study_attrs={}, now=now)
    assert (row["state"], row["value"], row["epoch"], row["test_accuracy"]) == ("running", 0.55, 2, 0.5)
    assert row["seconds"] == pytest.approx(3.0) and row["reason"] is None


@pytest.mark.parametrize(
    ("state", "reason", "shown", "value"),
    [
        (TrialState.PRUNED, "diverged", "diverged", 0.4),
        (TrialState.PRUNED, "pruned", "pruned", 0.4),
        (TrialState.FAIL, "interrupted", "interrupted", None),  # a failed trial shows no value
        (TrialState.FAIL, "ValueError: boom", "failed", None),
    ],
)
def test_a_trial_that_did_not_complete_shows_how_it_ended_and_why(state, reason, shown, value):
    s = study()
    t = s.ask()
    t.report(0.4, 1)
    t.set_user_attr(records.REASON, reason)
    s.tell(t, state=state)
    row = records.trial_row(frozen(s), objective=VAL, study_attrs={})
    assert (row["state"], row["reason"], row["value"]) == (shown, reason, value)


def test_a_multi_objective_row_adds_its_values_cost_and_place_on_the_front():
    s = study(CHEAP)
    s.tell(s.ask(), [0.9, 20.0])
    s.tell(s.ask(), [0.8, 30.0])
    front = {t.number for t in s.best_trials}
    rows = [records.trial_row(t, objective=CHEAP, study_attrs={}, front=front) for t in s.trials]
    assert [(r["values"], r["cost"], r["pareto"]) for r in rows] == [
        ([0.9, 20.0], 20.0, True),
        ([0.8, 30.0], 30.0, False),
    ]
    assert "pareto" not in records.trial_row(s.trials[0], objective=VAL, study_attrs={})
