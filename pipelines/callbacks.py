"""The small interface through which a training run reports progress; the sweeper implements it.

``pipelines`` never imports Optuna or MLflow: a tracker logs in ``on_epoch``/``on_artifact``, a pruner
answers ``should_stop``, a progress bar listens to ``on_step``. Every method has a no-op default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True, kw_only=True)
class EpochMetrics:
    """What one epoch measured. Accuracies are fractions in [0, 1]; losses are mean cross-entropy per image.

    ``val_*`` is None when no validation split is held out (data.val_size = 0) or it was not due this epoch
    (train.eval_every); ``test_*`` is None when the test set was not due (train.test_every). The last epoch has both.
    """

    epoch: int  # 1-based: the number of epochs finished
    train_loss: float
    train_accuracy: float
    test_loss: float | None
    test_accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    lr: float  # LR at the end of the epoch
    epoch_seconds: float  # wall time of this epoch's training (not evaluation)
    eval_seconds: float  # wall time of this epoch's evaluation

    # The one list of what an epoch measured: a new per-epoch metric is a field here, set by the loop
    # (pipelines.train), and every consumer (MLflow, the trial's record, the tables, metrics.json) takes it from
    # as_dict()/measured() without naming it again.
    NOT_MEASURED: ClassVar[tuple[str, ...]] = ("epoch", "lr")  # the step, and the LR (logged per step instead)

    def as_dict(self) -> dict[str, float]:
        """Every field that has a value, by name (metrics.json's history, a trial's record)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def measured(self) -> dict[str, float]:
        """What the epoch measured, by metric name: as_dict() without the epoch number and the LR."""
        return {k: v for k, v in self.as_dict().items() if k not in self.NOT_MEASURED}


class Callback:
    """Base class: override what you need. Called on the training process, between steps, never inside one."""

    def on_start(self, *, total_steps: int, steps_per_epoch: int, lrs: Sequence[float]) -> None:
        """Before the first step. ``lrs``: the LR of every step, known ahead of time; empty when the policy
        decides as it goes (plateau), and then ``on_step`` tells each step's LR as used."""

    def on_step(self, step: int, lr: float) -> None:
        """After optimizer step ``step`` (0-based); no device value is read here, so it costs no sync."""

    def on_epoch(self, metrics: EpochMetrics) -> None:
        """After an epoch's evaluation."""

    def on_artifact(self, path: Path, name: str) -> None:
        """A file the run wrote; ``name`` is its relative name, e.g. ``plots/curves.png``."""

    def should_stop(self, metrics: EpochMetrics) -> str | None:
        """Return a reason (e.g. ``pruned``) to end the run after this epoch, or None to go on."""
        return None


class CallbackList(Callback):
    """Fans out to several callbacks; the first non-None ``should_stop`` reason wins."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = tuple(callbacks)

    def on_start(self, *, total_steps: int, steps_per_epoch: int, lrs: Sequence[float]) -> None:
        for cb in self.callbacks:
            cb.on_start(total_steps=total_steps, steps_per_epoch=steps_per_epoch, lrs=lrs)

    def on_step(self, step: int, lr: float) -> None:
        for cb in self.callbacks:
            cb.on_step(step, lr)

    def on_epoch(self, metrics: EpochMetrics) -> None:
        for cb in self.callbacks:
            cb.on_epoch(metrics)

    def on_artifact(self, path: Path, name: str) -> None:
        for cb in self.callbacks:
            cb.on_artifact(path, name)

    def should_stop(self, metrics: EpochMetrics) -> str | None:
        for cb in self.callbacks:
            reason = cb.should_stop(metrics)
            if reason:
                return reason
        return None
