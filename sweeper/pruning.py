"""Pruning multi-objective studies: Optuna's median rule, per epoch budget, read from the storage.

Optuna prunes single-objective studies only: a multi-objective trial cannot ``report`` (sweeper keeps its value
after each epoch as the attribute ``records.EPOCH_VALUES``) and ``trial.should_prune()`` raises.
:class:`BudgetMedianPruner` decides from what the storage holds, so every worker reads the others' trials, and
``sweeper.trials.TrialReporter`` asks it directly (:func:`stop_reason`).

The rule: a trial of E epochs is stopped after epoch k when its best accuracy so far is below the median of the
accuracies at epoch k of the complete E-epoch trials. Fair across budgets: with One Cycle (and every policy here)
the LR at epoch k depends on the run's total epochs, so only trials of the same budget are compared, at the same
epoch. Warm-up, as Optuna's median pruner has: no pruning before ``n_startup_trials`` such trials are complete,
nor before the first quarter of the trial's own epochs has run (``warmup_fraction``), nor after its last epoch
(the trial is complete then: ``TrialReporter``).

Why not Optuna's pruners themselves: ``MedianPruner`` reads ``intermediate_values`` and ``study.direction``, which
a multi-objective study has not, and compares every trial at a step whatever its budget; ``HyperbandPruner``
(successive halving) promotes trials through rungs at fixed epochs whatever their budget and keeps its brackets
in the trials' system attributes by ``study.direction``: ``sweeper.samplers.make_pruner`` refuses it for two
objectives.
"""

from __future__ import annotations

import statistics

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper import records

STARTUP_TRIALS = 3  # complete trials of the trial's budget before it can be pruned: sweeper's single-objective median
WARMUP_FRACTION = 0.25  # of a trial's epochs never pruned: One Cycle's rise (5/24 of the run) is not over before


class BudgetMedianPruner(optuna.pruners.BasePruner):
    """The median rule of the module's docstring, for a study whose trials record ``records.EPOCH_VALUES`` (or
    Optuna's intermediate values) and their config (``records.CONFIG``: its ``train.epochs`` is the budget)."""

    def __init__(
        self,
        *,
        n_startup_trials: int = STARTUP_TRIALS,
        warmup_fraction: float = WARMUP_FRACTION,
        metric: str = "accuracy",
    ) -> None:
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be >= 1, got {n_startup_trials}")
        if not 0 <= warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        self.n_startup_trials, self.warmup_fraction, self.metric = n_startup_trials, warmup_fraction, metric
        self._budgets: dict[tuple[str, int], int] = {}  # (study, trial number) -> train.epochs: a config never changes

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.reason(study, trial) is not None

    def reason(self, study: optuna.Study, trial: FrozenTrial) -> str | None:
        """Why ``trial`` (as the storage holds it, after its latest epoch) should stop, in one line; None to go on."""
        values = records.epoch_values(trial)
        budget = self._budget(study, trial)
        if not values or budget is None:
            return None
        epoch = max(values)
        if epoch < max(1, int(budget * self.warmup_fraction)) or epoch >= budget:
            return None
        peers = [
            records.epoch_values(t).get(epoch)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if self._budget(study, t) == budget
        ]
        peers = [v for v in peers if v is not None]
        if len(peers) < self.n_startup_trials:
            return None
        median, best = statistics.median(peers), max(values.values())
        if not best < median:
            return None
        return (
            f"pruned at epoch {epoch}: {self.metric} {best:.1%} (best so far) below the median {median:.1%} of "
            f"{len(peers)} complete {budget}-epoch trials at epoch {epoch}"
        )

    def _budget(self, study: optuna.Study, trial: FrozenTrial) -> int | None:
        """The epochs ``trial`` trains (its recorded config's train.epochs); None before it recorded a config."""
        key = (study.study_name, trial.number)
        if key not in self._budgets:
            config = records.recorded_config(trial)
            if config is None:
                return None
            self._budgets[key] = config.train.epochs
        return self._budgets[key]


def stop_reason(study: optuna.Study, trial: FrozenTrial) -> str | None:
    """Why the running multi-objective ``trial`` (as the storage holds it) should stop, by the study's pruner; None
    to go on (and always for a study whose pruner is not a :class:`BudgetMedianPruner`: ``--pruner none``)."""
    pruner = study.pruner
    return pruner.reason(study, trial) if isinstance(pruner, BudgetMedianPruner) else None
