"""How a trial (or a replay run) ended: the one list of outcomes, and how each is read from Optuna or a run.

Optuna knows COMPLETE, PRUNED and FAIL; the trial's ``reason`` user attribute tells a diverged trial from a
pruned one and an interrupted trial from a failed one. MLflow's run status for each is in ``sweeper.tracking``.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from pipelines.result import Result

REASON = "reason"  # the trial's user attribute that says why it did not complete
RUN_ID = "mlflow_run_id"  # the trial's user attribute naming its MLflow run
SYNCED_RUN_IDS = "mlflow_synced_run_ids"  # the study's: run ids made while MLflow was down -> the real ones


class Outcome(str, enum.Enum):
    COMPLETE = "complete"
    PRUNED = "pruned"  # stopped early by the pruner
    DIVERGED = "diverged"  # the loss became NaN or infinite (recorded in Optuna as pruned)
    FAILED = "failed"  # an error, or a worker that died
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM (recorded in Optuna as failed)

    def __str__(self) -> str:
        return self.value


def of_trial(trial: FrozenTrial) -> Outcome | None:
    """The outcome of a finished trial; None while it runs or waits."""
    from optuna.trial import TrialState  # here, not above: tracking and the CLI import this module, Optuna need not

    reason = trial.user_attrs.get(REASON)
    if trial.state == TrialState.COMPLETE:
        return Outcome.COMPLETE
    if trial.state == TrialState.PRUNED:
        return Outcome.DIVERGED if reason == Outcome.DIVERGED.value else Outcome.PRUNED
    if trial.state == TrialState.FAIL:
        return Outcome.INTERRUPTED if reason == Outcome.INTERRUPTED.value else Outcome.FAILED
    return None


def state_label(trial: FrozenTrial) -> str:
    """What tables and JSON show: the outcome of a finished trial, else Optuna's state (running, waiting)."""
    outcome = of_trial(trial)
    return outcome.value if outcome is not None else trial.state.name.lower()


def run_id(trial: FrozenTrial, study_attrs: dict) -> str | None:
    """The trial's MLflow run id: the one it recorded, or the real one `study sync` gave it (a finished trial's
    attributes cannot change, so the study keeps that mapping)."""
    recorded = trial.user_attrs.get(RUN_ID)
    return study_attrs.get(SYNCED_RUN_IDS, {}).get(recorded, recorded)


def of_result(result: Result) -> Outcome:
    """The outcome of a training run that returned (a stopped run was stopped by the pruner)."""
    return {"complete": Outcome.COMPLETE, "diverged": Outcome.DIVERGED, "stopped": Outcome.PRUNED}[result.status]
