"""What a finished run leaves in ``train.out_dir``: config.yaml, metrics.json, model.pt and the plots."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines import plots
from pipelines.callbacks import Callback
from pipelines.config import Config
from pipelines.paths import atomic_path, write_text
from pipelines.result import Result
from pipelines.reuse import DeviceSet


def write(
    config: Config,
    result: Result,
    model: nn.Module,
    test: DeviceSet,
    test_predictions: torch.Tensor | None,
    momenta: tuple[float, ...],
    cb: Callback,
) -> dict[str, Path]:
    """Write the run's files into train.out_dir, each whole or not at all (a full disk raises UserError naming the
    file, leaving no half-written one), each reported to ``cb.on_artifact``; name -> path of each.

    config.yaml (the resolved config), metrics.json (summary, parameter count, peak LR, per-epoch history and
    every step's LR), model.pt
    (when train.save_model) and plots/: lr_schedule.png, curves.png (when an epoch ran) and misclassified.png
    (when ``test_predictions``, int64 (N,) on the test set's device, is given).
    """
    out = Path(config.train.out_dir)
    written: dict[str, Path] = {}

    def emit(name: str, path: Path) -> None:
        written[name] = path
        cb.on_artifact(path, name)

    emit("config.yaml", write_text(out / "config.yaml", config.to_yaml()))
    metrics = {
        "summary": result.summary(),
        "params": result.params,
        "lr": config.effective_lr,  # the peak LR trained with (optim.lr, scaled with the batch size if asked)
        "history": [m.as_dict() for m in result.history],
        "steps_per_epoch": result.steps_per_epoch,
        # every step's LR as used, up to where the run stopped (plateau's cuts included): `sweeper plot schedule --run`
        "lrs": list(result.lrs[: len(result.history) * result.steps_per_epoch]),
    }
    emit("metrics.json", write_text(out / "metrics.json", json.dumps(metrics, indent=2)))
    if config.train.save_model:
        weights = io.BytesIO()  # serialised in memory: torch's writer reports a full disk as a RuntimeError
        torch.save({"state_dict": model.state_dict(), "config": config.to_dict(), "classes": list(result.classes)},
                   weights)  # fmt: skip
        with atomic_path(out / "model.pt") as tmp:
            tmp.write_bytes(weights.getbuffer())
        emit("model.pt", out / "model.pt")
    emit(
        "plots/lr_schedule.png",
        plots.plot_lr_schedule(
            result.lrs, out / "plots" / "lr_schedule.png", steps_per_epoch=result.steps_per_epoch, momenta=momenta
        ),
    )
    if result.history:
        emit("plots/curves.png", plots.plot_curves(result.history, out / "plots" / "curves.png"))
    if test_predictions is not None:
        images, true, pred = misclassified(test, test_predictions, count=25)
        emit(
            "plots/misclassified.png",
            plots.plot_misclassified(images, true, pred, result.classes, out / "plots" / "misclassified.png"),
        )
    return written


def misclassified(
    test: DeviceSet, predictions: torch.Tensor, *, count: int = 25
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``count`` misclassified test images, taken round-robin over the true classes so every class shows:
    (uint8 (k, H, W, 3), true (k,), predicted (k,))."""
    wrong = torch.nonzero(predictions != test.labels).flatten().cpu().numpy()
    labels = test.labels.cpu().numpy()[wrong]
    rank = np.zeros(len(wrong), dtype=np.int64)  # position of each mistake among those of its true class
    for c in np.unique(labels):
        rank[labels == c] = np.arange(int((labels == c).sum()))
    wrong = torch.from_numpy(wrong[np.lexsort((labels, rank))][:count]).to(test.labels.device)
    images = test.images[wrong].permute(0, 2, 3, 1).cpu().numpy()
    return images, test.labels[wrong].cpu().numpy(), predictions[wrong].cpu().numpy()
