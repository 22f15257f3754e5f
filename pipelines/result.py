"""What a training run produced: :class:`Result`, returned by ``pipelines.train.run``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.callbacks import EpochMetrics


@dataclass(frozen=True, kw_only=True)
class Result:
    """What a run produced. ``status``: complete | diverged | stopped (``reason`` says why, e.g. "pruned")."""

    status: str
    reason: str | None
    history: tuple[EpochMetrics, ...]
    lrs: tuple[float, ...]  # LR of every optimizer step
    steps_per_epoch: int
    seconds: float  # training time: the epochs' wall time, evaluation excluded
    eval_seconds: float  # evaluation time, all epochs
    compile_seconds: float = 0.0  # compiling the model (first run of a process) and capturing the step's graph
    total_seconds: float  # from the call to the return, data loading and plots included
    params: int
    device: str
    classes: tuple[str, ...]
    out_dir: Path | None
    artifacts: dict[str, Path] = field(default_factory=dict)

    def _last(self, name: str) -> float | None:
        return getattr(self.history[-1], name) if self.history else None

    @property
    def test_accuracy(self) -> float | None:
        return self._last("test_accuracy")

    @property
    def train_accuracy(self) -> float | None:
        return self._last("train_accuracy")

    @property
    def val_accuracy(self) -> float | None:
        return self._last("val_accuracy")

    def summary(self) -> dict[str, Any]:
        """The run's headline as JSON-ready values: status, last-epoch accuracies, epochs, seconds, device, out_dir.

        Written as ``summary`` in metrics.json.
        """
        return {
            "status": self.status,
            "reason": self.reason,
            "test_accuracy": self.test_accuracy,
            "train_accuracy": self.train_accuracy,
            "val_accuracy": self.val_accuracy,
            "epochs": len(self.history),
            "seconds": round(self.seconds, 3),
            "eval_seconds": round(self.eval_seconds, 3),
            "compile_seconds": round(self.compile_seconds, 3),
            "total_seconds": round(self.total_seconds, 3),
            "device": self.device,
            "out_dir": str(self.out_dir) if self.out_dir else None,
        }
