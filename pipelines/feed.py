"""Training and evaluation batches: the uint8 splits held on the device, normalised on the fly, augmented per epoch.

Why it is fast: the uint8 training set lives on the device (a quarter of float32's bytes) and a whole epoch is
augmented at once by :class:`~pipelines.augment.BatchAugment` in a few batched kernels. Only a pipeline with an op
that has no batched version falls back to albumentations per sample, in DataLoader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch

from pipelines.augment import BatchAugment, SampleDataset, fit_to_size
from pipelines.config import Config
from pipelines.data import ImageSet, Splits

log = logging.getLogger(__name__)


class DeviceSet:
    """An ImageSet on the device: images uint8 (N, 3, H, W), labels int64 (N,)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)

    def __len__(self) -> int:
        return self.labels.shape[0]


class Feeder:
    """Turns the uint8 splits into normalised float batches on the device, augmented for training.

    ``test`` and ``val`` (None without a validation split) are :class:`DeviceSet`; ``train`` is one too on the
    batched path, None on the per-sample path (which reads the host arrays through ``loader``).
    """

    def __init__(self, config: Config, splits: Splits, device: torch.device) -> None:
        self.config, self.device, self.splits = config, device, splits
        self.batch = config.train.batch_size
        self.ops = fit_to_size(config.augment.ops, *splits.train.images.shape[1:3])  # the recipe's, at any size
        self.augment = BatchAugment.from_ops(self.ops)
        mean, std = splits.channel_stats() if config.augment.normalize else ((0.0,) * 3, (1.0,) * 3)
        # uint8 -> float: (x - 255*mean) / (255*std), one fused multiply-add per pixel
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, 3, 1, 1)
        self.shift = (-torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, 3, 1, 1)
        self.generator = torch.Generator(device=device).manual_seed(config.train.seed)
        self.test = DeviceSet(splits.test.images, splits.test.labels, device)
        self.val = DeviceSet(splits.val.images, splits.val.labels, device) if splits.val is not None else None
        if self.augment is not None:
            self.train = DeviceSet(splits.train.images, splits.train.labels, device)
            self.loader = None
        else:
            log.info("augmentation has ops the device path lacks: running it per sample in DataLoader workers")
            self.train = None
            self.loader = self._sample_loader(splits.train)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 normalised, channels_last on CUDA."""
        x = images.float().mul_(self.scale).add_(self.shift)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the shuffled, augmented train split: (normalised float32 (B, 3, H, W), int64 (B,)) batches.

        B is train.batch_size; the last partial batch is dropped. Each call draws a new order and new
        augmentations; the sequence over calls is fixed by train.seed.
        """
        if self.loader is not None:
            for images, labels in self.loader:
                yield (
                    self.normalize(images.to(self.device, non_blocking=True)),
                    labels.to(self.device, non_blocking=True),
                )
            return
        assert self.train is not None and self.augment is not None
        n = len(self.train)
        order = torch.randperm(n, device=self.device, generator=self.generator)
        # The whole epoch augmented in one batched call: a few kernels instead of one per image.
        images = self.augment(self.train.images[order], generator=self.generator)
        labels = self.train.labels[order]
        for start in range(0, n - self.batch + 1, self.batch):
            yield self.normalize(images[start : start + self.batch]), labels[start : start + self.batch]

    def _sample_loader(self, train: ImageSet) -> torch.utils.data.DataLoader:
        dataset = SampleDataset(train.images, train.labels, self.ops)
        generator = torch.Generator().manual_seed(self.config.train.seed)
        workers = self.config.data.num_workers
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.batch,
            shuffle=True,
            drop_last=True,
            generator=generator,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.device.type == "cuda",
        )
