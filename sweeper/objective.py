"""What a study maximizes: the one definition of a trial's objective value at an epoch."""

from __future__ import annotations

import enum

from pipelines.callbacks import EpochMetrics


class Objective(str, enum.Enum):
    val = "val"  # accuracy on the class-balanced validation split held out of train (data.val_size)
    test = "test"  # accuracy on the test set (the course-compatible mode)


def objective_value(objective: Objective | str, metrics: EpochMetrics) -> float:
    """The objective after an epoch: validation accuracy for ``val`` (test accuracy when no split is held out,
    which planning refuses for studies), test accuracy for ``test``."""
    if Objective(objective) is Objective.val and metrics.val_accuracy is not None:
        return metrics.val_accuracy
    return metrics.test_accuracy
