"""A study's and a trial's record: every key sweeper writes into Optuna's and MLflow's stores, and how it is read.

Optuna keeps what a study is (its space, config, objective, sampler, pruner: what workers on other machines must
follow) as study user attributes, and what a trial trained and how it went as trial user attributes. MLflow keeps
tags on runs. Nothing else in sweeper spells one of these keys, and a record is read back by the functions below,
not re-parsed where it is needed:

- :func:`recorded_config`: the config a trial trained (or a study recorded);
- :func:`trial_seconds`: a trial's seconds, from the storage's start and end (the live view, ``study show``,
  MLflow's ``trial_seconds`` of a trial's run);
- :func:`epoch_values`: a trial's objective after each epoch (Optuna's intermediate values, or, for a
  multi-objective trial, which Optuna cannot ``report``, the attribute :data:`EPOCH_VALUES`);
- :func:`cost`: what a multi-objective trial cost (its second value; a pruned trial's partial cost);
- :func:`trial_row`: a trial as the live table, ``study show`` and ``study run --json`` show it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipelines.config import Config
from sweeper.objective import Objective
from sweeper.outcome import Outcome
from sweeper.space import Space, space_from_yaml

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from pipelines.callbacks import EpochMetrics

# -- Optuna: the study's user attributes (written by `study init` / `study run`, read by every worker) ----------
SPACE = "space"  # the search space, YAML
STUDY_CONFIG = "config"  # the base config, YAML
OBJECTIVE = "objective"  # an Objective value, e.g. "val" or "val,train_seconds"
SAMPLER = "sampler"
PRUNER = "pruner"
PARENT_RUN_ID = "mlflow_parent_run_id"  # the study's parent run in MLflow
EXPERIMENT_ID = "mlflow_experiment_id"
TRACKING_URI = "tracking_uri"  # masked: no password is ever recorded
SYNCED_RUN_IDS = "mlflow_synced_run_ids"  # run ids made while MLflow was down -> the real ones `study sync` made
STUDY_SETTINGS = (SPACE, STUDY_CONFIG, OBJECTIVE, SAMPLER, PRUNER)  # what `study init` refuses to change silently

# -- Optuna: a trial's user attributes ---------------------------------------------------------------------------
CONFIG = "config"  # the resolved config the trial trained, YAML
LR = "lr"  # the peak LR trained with (optim.lr, scaled with the batch size when optim.lr_scaling says so)
TEST_ACCURACY = "test_accuracy"  # after the last epoch run
TRAIN_SECONDS = "train_seconds"  # the run's training time (evaluation excluded): the cost train_seconds
EPOCH = "epoch"  # the metrics of the last epoch finished (EpochMetrics.as_dict()): what a running trial shows
EPOCH_VALUES = "epoch_values"  # {"epoch": objective value} of a multi-objective trial (Optuna refuses report)
REASON = "reason"  # why the trial did not complete (pruned, diverged, failed, interrupted: one line)
RUN_ID = "mlflow_run_id"  # the trial's MLflow run
SOURCE = "source"  # where an enqueued trial came from
SOURCE_LR_FINDER = "lr_finder"

# -- MLflow: tags on runs -------------------------------------------------------------------------------------
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a run under another in the UI
ROLE = "sweeper.role"  # one of the roles below
ROLE_STUDY, ROLE_TRIAL, ROLE_REPLAY = "study", "trial", "replay"
ROLE_RANGE, ROLE_RANGE_POINT = "lr_range", "lr_point"  # the accuracy range test's parent and its runs
STUDY_TAG = "sweeper.study"  # the study (or range test) a run belongs to
HOST_TAG = "sweeper.host"  # which machine (container) ran it
TRIAL_NUMBER_TAG = "sweeper.trial_number"
STATE_TAG = "sweeper.state"  # an Outcome value
REASON_TAG = "sweeper.reason"
REPLAY_SEED_TAG = "sweeper.replay_seed"
REPLAY_OF_TAG = "sweeper.replay_of"
SOURCE_TRIAL_TAG = "sweeper.source_trial"
SOURCE_RUN_TAG = "sweeper.source_run_id"
SUGGESTED_LR_TAG = "sweeper.suggested_lr"
METRIC_TAG = "sweeper.metric"
PARETO_TAG = "pareto.trials"  # the numbers of a multi-objective study's front, comma-separated
BEST_PREFIX = "best."  # best.trial_number, best.value, best.<param>, best.lr on a single-objective study's parent
REPLAY_MEAN_TAG = "replay.test_accuracy_mean"
REPLAY_STD_TAG = "replay.test_accuracy_std"
MAX_TAG_LENGTH = 500  # a reason longer than this is cut in its tag


# -- reading a trial back -------------------------------------------------------------------------------------


def of_trial(trial: FrozenTrial) -> Outcome | None:
    """How a finished trial ended; None while it runs or waits."""
    reason = trial.user_attrs.get(REASON)
    state = trial.state.name  # Optuna's TrialState, by name: this module does not import Optuna
    if state == "COMPLETE":
        return Outcome.COMPLETE
    if state == "PRUNED":
        return Outcome.DIVERGED if reason == Outcome.DIVERGED.value else Outcome.PRUNED
    if state == "FAIL":
        return Outcome.INTERRUPTED if reason == Outcome.INTERRUPTED.value else Outcome.FAILED
    return None


def state_label(trial: FrozenTrial) -> str:
    """What tables and JSON show: the outcome of a finished trial, else Optuna's state (running, waiting)."""
    outcome = of_trial(trial)
    return outcome.value if outcome is not None else trial.state.name.lower()


def recorded_config(trial: FrozenTrial) -> Config | None:
    """The config ``trial`` trained, as it recorded it; None for a trial that recorded none (it failed before)."""
    text = trial.user_attrs.get(CONFIG)
    return Config.from_yaml(text, source=f"trial {trial.number}") if text else None


def study_config(attrs: Mapping[str, Any], *, name: str) -> Config | None:
    """The base config study ``name`` recorded (its user attributes ``attrs``), or None."""
    text = attrs.get(STUDY_CONFIG)
    return Config.from_yaml(text, source=f"study {name}") if text else None


def study_space(attrs: Mapping[str, Any], *, name: str) -> Space | None:
    """The search space study ``name`` recorded, or None (a study made without sweeper)."""
    text = attrs.get(SPACE)
    return space_from_yaml(text, source=f"study {name}") if text else None


def study_objective(attrs: Mapping[str, Any]) -> Objective:
    """The objective a study recorded (val for a study made without sweeper)."""
    return Objective(str(attrs.get(OBJECTIVE, Objective.val.value)))


def front_numbers(study: optuna.Study) -> set[int]:
    """The numbers of a multi-objective study's Pareto front (Optuna's best_trials); empty for one objective."""
    return {t.number for t in study.best_trials} if len(study.directions) > 1 else set()


def run_id(trial: FrozenTrial, study_attrs: Mapping[str, Any]) -> str | None:
    """The trial's MLflow run id: the one it recorded, or the real one `study sync` gave it (a finished trial's
    attributes cannot change, so the study keeps that mapping)."""
    recorded = trial.user_attrs.get(RUN_ID)
    return study_attrs.get(SYNCED_RUN_IDS, {}).get(recorded, recorded)


def trial_seconds(trial: FrozenTrial | optuna.Trial, *, now: datetime.datetime | None = None) -> float | None:
    """A trial's seconds: from its start to its end as the storage recorded them (so every worker and every view
    agrees); for a trial still running, up to ``now`` (default: this moment); None for one that never started."""
    start = trial.datetime_start
    if start is None:
        return None
    end = getattr(trial, "datetime_complete", None) or now or datetime.datetime.now()
    return (end - start).total_seconds()


def epoch_values(trial: FrozenTrial) -> dict[int, float]:
    """The trial's objective after each epoch that evaluated it: ``{epoch: value}`` in epoch order."""
    if trial.intermediate_values:
        return dict(sorted(trial.intermediate_values.items()))
    raw = trial.user_attrs.get(EPOCH_VALUES) or {}
    return {int(epoch): float(value) for epoch, value in sorted(raw.items(), key=_epoch_key)}


def _epoch_key(item: tuple[str, Any]) -> int:
    return int(item[0])


def last_epoch(trial: FrozenTrial) -> dict[str, Any]:
    """The metrics of the last epoch the trial finished (``EpochMetrics.as_dict()``), empty before the first."""
    return dict(trial.user_attrs.get(EPOCH) or {})


def epochs_run(trial: FrozenTrial) -> int | None:
    """How many epochs the trial trained (so far)."""
    return last_epoch(trial).get("epoch")


def cost(trial: FrozenTrial, objective: Objective) -> float | None:
    """What ``trial`` cost in a multi-objective study: its second value once complete; for a trial stopped early
    (pruned, diverged) what it had spent (its training seconds, or the epochs it ran); None otherwise."""
    if objective.cost is None:
        return None
    if trial.values is not None and len(trial.values) > 1:
        return trial.values[1]
    if objective.cost == "train_seconds":
        return trial.user_attrs.get(TRAIN_SECONDS)
    epochs = epochs_run(trial)
    return float(epochs) if epochs is not None else None


def accuracy(trial: FrozenTrial) -> float | None:
    """The trial's accuracy objective: its (first) value once complete, else the last one it reached."""
    if trial.values:
        return trial.values[0]
    values = epoch_values(trial)
    return values[max(values)] if values else None


# -- writing a trial's record ---------------------------------------------------------------------------------


class EpochRecorder:
    """Records a running trial's epochs in the storage: its objective value (Optuna's ``report`` in a
    single-objective study, the attribute :data:`EPOCH_VALUES` in a multi-objective one) and the epoch's metrics
    (:data:`EPOCH`). One or two storage writes per epoch."""

    def __init__(self, trial: optuna.Trial, objective: Objective) -> None:
        self.trial, self.objective = trial, objective
        self.values: dict[str, float] = {}  # kept here: reading the trial back would cost a query per epoch

    def record(self, metrics: EpochMetrics, value: float | None) -> None:
        if value is not None:
            if self.objective.multi:
                self.values[str(metrics.epoch)] = value
                self.trial.set_user_attr(EPOCH_VALUES, dict(self.values))
            else:
                self.trial.report(value, metrics.epoch)
        self.trial.set_user_attr(EPOCH, metrics.as_dict())


# -- a trial as the tables show it ----------------------------------------------------------------------------


def trial_row(
    trial: FrozenTrial,
    *,
    objective: Objective,
    study_attrs: Mapping[str, Any],
    front: frozenset[int] | set[int] = frozenset(),
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """One trial as the live table, ``study show`` and ``--json`` show it: number, state, value (its objective,
    the last one reached while it runs), epoch, params, lr, test accuracy, seconds, reason and MLflow run id; in a
    multi-objective study also its values, its cost and whether it is on the Pareto ``front``."""
    last = last_epoch(trial)
    row: dict[str, Any] = {
        "number": trial.number,
        "state": state_label(trial),
        "value": None if trial.state.name == "FAIL" else accuracy(trial),
        "epoch": last.get("epoch") or max(epoch_values(trial), default=None),
        "params": dict(trial.params),
        "lr": trial.user_attrs.get(LR),
        "test_accuracy": trial.user_attrs.get(TEST_ACCURACY, last.get("test_accuracy")),
        "seconds": trial_seconds(trial, now=now),
        "reason": trial.user_attrs.get(REASON) if of_trial(trial) not in (None, Outcome.COMPLETE) else None,
        "mlflow_run_id": run_id(trial, study_attrs),
    }
    if objective.multi:
        row.update(values=trial.values, cost=cost(trial, objective), pareto=trial.number in front)
    return row


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial of ``study`` as :func:`trial_row` shows it, read from the storage."""
    attrs, now = study.user_attrs, datetime.datetime.now()
    objective, front = study_objective(attrs), front_numbers(study)
    return [
        trial_row(t, objective=objective, study_attrs=attrs, front=front, now=now)
        for t in study.get_trials(deepcopy=False)
    ]
