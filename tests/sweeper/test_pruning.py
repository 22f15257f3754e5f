"""sweeper.pruning: the median rule per epoch budget for multi-objective studies, read from the storage."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from conftest import epoch_metrics
from pipelines.callbacks import EpochMetrics
from pipelines.config import Config
from pipelines.errors import UserError
from sweeper import records
from sweeper.objective import Objective
from sweeper.pruning import BudgetMedianPruner
from sweeper.samplers import make_pruner
from sweeper.trials import StudyObserver, TrialReporter


def metrics(epoch: int, val: float) -> EpochMetrics:
    return epoch_metrics(epoch, val=val, test=None)


def config_yaml(epochs: int) -> str:
    return Config().with_overrides({"train.epochs": epochs}).to_yaml()


def study_with(*complete: tuple[int, list[float]], pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """A val,epochs study holding complete trials, each (its epochs, its val accuracy after each epoch)."""
    pruner = pruner or make_pruner("median", epochs=8, objective=Objective.val_epochs)
    study = optuna.create_study(directions=Objective.val_epochs.directions, pruner=pruner)
    for epochs, values in complete:
        attrs = {
            records.CONFIG: config_yaml(epochs),
            records.EPOCH_VALUES: {str(k): v for k, v in enumerate(values, start=1)},
        }
        study.add_trial(optuna.trial.create_trial(values=[values[-1], float(epochs)], user_attrs=attrs))
    return study


def running(study: optuna.Study, epochs: int) -> TrialReporter:
    trial = study.ask()
    trial.set_user_attr(records.CONFIG, config_yaml(epochs))
    return TrialReporter(trial, Objective.val_epochs, StudyObserver(), epochs=epochs)


def epoch(reporter: TrialReporter, n: int, val: float) -> str | None:
    """One epoch of a running trial as the trainer reports it: on_epoch, then should_stop."""
    reporter.on_epoch(metrics(n, val))
    return reporter.should_stop(metrics(n, val))


def test_a_multi_objective_trial_records_its_value_after_each_epoch():
    study = study_with()
    reporter = running(study, 4)
    for n, val in ((1, 0.3), (2, 0.45)):
        epoch(reporter, n, val)
    (trial,) = study.get_trials(states=(TrialState.RUNNING,))
    assert trial.intermediate_values == {}  # Optuna refuses report for two objectives
    assert records.epoch_values(trial) == {1: 0.3, 2: 0.45}
    assert records.epochs_run(trial) == 2 and records.cost(trial, Objective.val_epochs) == 2.0


def test_a_trial_below_the_median_of_its_budget_is_pruned_with_the_reason():
    study = study_with((4, [0.3, 0.5, 0.6, 0.7]), (4, [0.35, 0.55, 0.65, 0.72]), (4, [0.2, 0.4, 0.5, 0.6]))
    reporter = running(study, 4)
    assert epoch(reporter, 1, 0.32) is None  # not below the median 0.3 of the 4-epoch trials at epoch 1
    assert epoch(reporter, 2, 0.31) == (
        "pruned at epoch 2: val accuracy 32.0% (best so far) below the median 50.0% of 3 complete 4-epoch trials at "
        "epoch 2"
    )


def test_only_complete_trials_of_the_same_epoch_budget_are_compared():
    """One Cycle's LR at epoch k depends on the run's epochs: 8-epoch trials say nothing about a 4-epoch one."""
    study = study_with(*[(8, [0.6, 0.7, 0.8, 0.85, 0.88, 0.9, 0.91, 0.92])] * 3, (4, [0.1, 0.2, 0.3, 0.4]))
    reporter = running(study, 4)
    assert epoch(reporter, 1, 0.05) is None  # 1 comparable 4-epoch trial: warm-up
    assert epoch(reporter, 2, 0.06) is None


def test_no_pruning_in_the_warm_up_epochs_nor_at_the_last_epoch():
    study = study_with(*[(8, [0.5] * 8)] * 3)
    reporter = running(study, 8)
    assert epoch(reporter, 1, 0.1) is None  # in the first quarter of its 8 epochs
    assert epoch(reporter, 2, 0.1).startswith("pruned at epoch 2:")
    last = running(study, 8)
    for n in range(1, 8):
        last.on_epoch(metrics(n, 0.1))
    assert epoch(last, 8, 0.1) is None  # complete: nothing left to save


def test_the_best_value_so_far_is_compared_as_optunas_median_pruner_does():
    study = study_with(*[(4, [0.3, 0.5, 0.6, 0.7])] * 3)
    reporter = running(study, 4)
    assert epoch(reporter, 1, 0.6) is None
    assert epoch(reporter, 2, 0.4) is None  # a dip below the median at epoch 2, after a best of 0.6


def test_none_never_prunes_and_hyperband_is_refused_for_two_objectives():
    study = study_with(*[(4, [0.9] * 4)] * 3, pruner=make_pruner("none", epochs=4, objective=Objective.val_epochs))
    assert epoch(running(study, 4), 2, 0.1) is None
    with pytest.raises(UserError, match="--pruner hyperband cannot prune two objectives"):
        make_pruner("hyperband", epochs=4, objective=Objective.test_seconds)


def test_single_objective_studies_keep_optunas_pruners():
    median = make_pruner("median", epochs=8)
    assert type(median) is optuna.pruners.MedianPruner
    assert (median._n_startup_trials, median._n_warmup_steps) == (3, 2)
    assert type(make_pruner("hyperband", epochs=8, objective="val")) is optuna.pruners.HyperbandPruner
    assert isinstance(make_pruner("median", epochs=8, objective="test,epochs"), BudgetMedianPruner)


def test_a_single_objective_trial_is_pruned_by_optunas_median_pruner_as_before():
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", epochs=4))
    for _ in range(3):
        values = {1: 0.5, 2: 0.6, 3: 0.65, 4: 0.7}
        study.add_trial(optuna.trial.create_trial(value=0.7, intermediate_values=values))
    reporter = TrialReporter(study.ask(), Objective.val, StudyObserver(), epochs=4)
    assert epoch(reporter, 1, 0.1) == "pruned"  # Optuna's should_prune, its one-word reason
    (trial,) = study.get_trials(states=(TrialState.RUNNING,))
    assert trial.intermediate_values == {1: 0.1} and records.EPOCH_VALUES not in trial.user_attrs
    last = TrialReporter(study.ask(), Objective.val, StudyObserver(), epochs=1)
    assert epoch(last, 1, 0.1) is None  # complete: nothing left to save by stopping
