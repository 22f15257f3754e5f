"""pipelines.feed: the training batches, on the batched path or per sample through a DataLoader."""

from __future__ import annotations

from pathlib import Path

from conftest import STEPS_PER_EPOCH, tiny_config
from pipelines.augment import BatchAugment
from pipelines.data import Splits
from pipelines.train import run


def test_an_augmentation_without_a_batched_version_trains_per_sample(
    image_folder: Path, tmp_path: Path, splits: Splits
) -> None:
    ops = [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "RandomBrightnessContrast", "brightness_limit": 0.1, "contrast_limit": 0.1, "p": 0.5},
    ]
    assert BatchAugment.from_ops(ops) is None  # so the run must take the per-sample DataLoader path
    cfg = tiny_config(image_folder, tmp_path / "out", **{"augment.ops": ops, "data.num_workers": 0, "train.epochs": 2})
    result = run(cfg, splits=splits, write_outputs=False)
    assert result.status == "complete"
    assert len(result.history) == 2
    assert result.steps_per_epoch == STEPS_PER_EPOCH
    assert result.test_accuracy > 1 / 3
