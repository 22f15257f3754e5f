"""How a trial (or a replay run) ended: the one list of outcomes, and the outcome of a training run.

Optuna knows COMPLETE, PRUNED and FAIL; a trial's recorded reason tells a diverged trial from a pruned one and an
interrupted trial from a failed one (``sweeper.records.of_trial`` reads it). MLflow's run status for each is in
``sweeper.tracking``.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.result import Result


class Outcome(str, enum.Enum):
    COMPLETE = "complete"
    PRUNED = "pruned"  # stopped early by the pruner
    DIVERGED = "diverged"  # the loss became NaN or infinite (recorded in Optuna as pruned)
    FAILED = "failed"  # an error, or a worker that died
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM (recorded in Optuna as failed)

    def __str__(self) -> str:
        return self.value


def of_result(result: Result) -> Outcome:
    """The outcome of a training run that returned (a stopped run was stopped by the pruner)."""
    return {"complete": Outcome.COMPLETE, "diverged": Outcome.DIVERGED, "stopped": Outcome.PRUNED}[result.status]
