"""Tiny configs: a run of about a second on 2 CPU cores, on the shapes (generated 32x32 images of three classes,
learnable in a few epochs) that the image_folder fixture writes; the `--set` words a test's trials take.

The lowest of the tests' helper modules: it imports none of them (conftest.py re-exports what it holds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.callbacks import EpochMetrics
from pipelines.config import Config

CLASSES = ("circle", "cross", "square")

TRAIN_IMAGES, TEST_IMAGES = 300, 90  # the image_folder fixture's
TINY_TRAIN = ["model.width=0.125", "train.batch_size=32", "train.device=cpu"]  # `--set` words for one run
VAL_SIZE = 60  # studies hold out 60 of the 300 training images for validation
TINY = [*TINY_TRAIN, f"data.val_size={VAL_SIZE}"]  # `--set` words for a study's trials (add train.epochs=N)
TRIAL_STEPS_PER_EPOCH = (TRAIN_IMAGES - VAL_SIZE) // 32  # a trial's optimizer steps per epoch on the shapes
# A space over four LR policies, each with keys searched only when it is drawn (a conditional space)
POLICY_SPACE = {
    "params": {
        "lr": {"type": "float", "low": 0.05, "high": 0.5, "log": True},
        "schedule.policy": {"type": "categorical", "choices": ["one_cycle", "step", "cosine", "plateau"]},
        "schedule.milestones": {"type": "categorical", "choices": [[1], [1.5]], "when": {"schedule.policy": "step"}},
        "schedule.gamma": {"type": "float", "low": 0.1, "high": 0.5, "when": {"schedule.policy": "step"}},
        "schedule.end_div": {"type": "categorical", "choices": [10, 100], "when": {"schedule.policy": "cosine"}},
        "schedule.patience": {"type": "int", "low": 0, "high": 1, "when": {"schedule.policy": ["plateau"]}},
    }
}


def epoch_metrics(epoch: int = 1, *, val: float | None = 0.5, test: float | None = 0.4, **more: Any) -> EpochMetrics:
    """An epoch's metrics as the loop reports them: ``val`` and ``test`` accuracies (None: not evaluated that
    epoch, and no loss either), the rest fixed unless ``more`` says otherwise."""
    values: dict[str, Any] = {
        "epoch": epoch, "train_loss": 1.0, "train_accuracy": 0.5, "test_loss": 1.1 if test is not None else None,
        "test_accuracy": test, "val_loss": 1.2 if val is not None else None, "val_accuracy": val, "lr": 0.1,
        "epoch_seconds": 1.0, "eval_seconds": 0.1,
    }  # fmt: skip
    return EpochMetrics(**{**values, **more})


def tiny_config(data: Path, out: Path, **overrides: object) -> Config:
    """The recipe shrunk to train on ``data`` in about a second per epoch (3 epochs unless overridden), writing to
    ``out``, caching decoded data beside it."""
    base = {
        "data.path": str(data),
        "data.cache_dir": str(out.parent / "cache"),
        "model.width": 0.125,
        "train.epochs": 3,
        "train.batch_size": 32,
        "train.device": "cpu",
        "train.out_dir": str(out),
    }
    return Config().with_overrides({**base, **overrides})


def synthetic_images(n: int, *, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 32x32 RGB images: class k is a bright shape k at a random place on a noisy background.

    Returns (uint8 (n, 32, 32, 3), int64 (n,)), labels balanced and in class order repeated.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 90, size=(n, 32, 32, 3), dtype=np.int64)
    yy, xx = np.mgrid[0:32, 0:32]
    for i, label in enumerate(labels):
        cy, cx = rng.integers(10, 22, size=2)
        color = rng.integers(150, 256, size=3)
        if label % 3 == 0:  # disc
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
        elif label % 3 == 1:  # cross
            mask = ((abs(yy - cy) <= 1) & (abs(xx - cx) <= 7)) | ((abs(xx - cx) <= 1) & (abs(yy - cy) <= 7))
        else:  # hollow square
            box = (abs(yy - cy) <= 6) & (abs(xx - cx) <= 6)
            mask = box & ~((abs(yy - cy) <= 4) & (abs(xx - cx) <= 4))
        images[i][mask] = color
    return images.astype(np.uint8), labels.astype(np.int64)


def write_image_folder(root: Path, *, n_train: int = 60, n_test: int = 30, classes=CLASSES, seed: int = 0) -> Path:
    """Write ``root/train/<class>/i.png`` and ``root/test/<class>/i.png``; returns root."""
    for split, n, split_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = synthetic_images(n, classes=len(classes), seed=split_seed)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root
