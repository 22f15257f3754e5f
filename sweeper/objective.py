"""What a study optimizes: accuracy alone, or accuracy against a cost (a multi-objective study).

The one definition of a trial's objective value at an epoch (:func:`objective_value`, what pruners and the live
table see) and of its values when it ends (:func:`objective_values`, what Optuna records).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from pipelines.callbacks import EpochMetrics

if TYPE_CHECKING:
    from pipelines.result import Result


class Objective(str, enum.Enum):
    val = "val"  # accuracy on the class-balanced validation split held out of train (data.val_size)
    test = "test"  # accuracy on the test set (the course-compatible mode)
    val_seconds = "val,train_seconds"  # ... and the training time, minimized: the cheapest run to an accuracy
    test_seconds = "test,train_seconds"
    val_epochs = "val,epochs"  # ... and the epochs, minimized (a time that does not depend on the machine)
    test_epochs = "test,epochs"

    def __str__(self) -> str:
        return self.value

    @property
    def split(self) -> str:
        """Whose accuracy: ``val`` or ``test``."""
        return self.value.split(",")[0]

    @property
    def cost(self) -> str | None:
        """What is minimized beside the accuracy: ``train_seconds``, ``epochs``, or None."""
        parts = self.value.split(",")
        return parts[1] if len(parts) > 1 else None

    @property
    def multi(self) -> bool:
        return self.cost is not None

    @property
    def names(self) -> list[str]:
        """The values' names, in Optuna's order (shown by optuna-dashboard): e.g. val_accuracy, train_seconds."""
        return [f"{self.split}_accuracy", *([self.cost] if self.cost else [])]

    @property
    def keys(self) -> list[str]:
        """The values' keys in JSON (``study best --json``, pareto.json): e.g. val, train_seconds."""
        return [self.split, *([self.cost] if self.cost else [])]

    @property
    def directions(self) -> list[str]:
        return ["maximize", *(["minimize"] if self.cost else [])]


def objective_value(objective: Objective | str, metrics: EpochMetrics) -> float | None:
    """The accuracy objective after an epoch: validation accuracy for ``val`` (planning refuses it without a held
    out split), test accuracy for ``test``; None when that split was not evaluated this epoch (train.eval_every,
    train.test_every)."""
    return metrics.val_accuracy if Objective(objective).split == "val" else metrics.test_accuracy


def objective_values(objective: Objective | str, result: Result) -> float | list[float]:
    """What a finished trial records: its accuracy, and for a multi-objective study its cost too (the training
    seconds, or the epochs it ran)."""
    objective = Objective(objective)
    accuracy = objective_value(objective, result.history[-1])
    if objective.cost is None:
        return accuracy
    cost = result.seconds if objective.cost == "train_seconds" else float(len(result.history))
    return [accuracy, cost]
