"""Training and evaluation batches: the uint8 splits held on the device, normalised on the fly, augmented per epoch.

Why it is fast: the uint8 training set lives on the device (a quarter of float32's bytes) and a whole epoch is
augmented at once by :class:`~pipelines.augment.BatchAugment` in a few batched kernels. Only a pipeline with an op
that has no batched version falls back to albumentations per sample, in DataLoader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from pipelines.augment import AlternatingFlip, BatchAugment, SampleDataset, fit_to_size
from pipelines.config import Config
from pipelines.data import ImageSet, Splits
from pipelines.reuse import RunCache

log = logging.getLogger(__name__)


class Feeder:
    """Turns the uint8 splits into normalised float batches on the device, augmented for training.

    ``test`` and ``val`` (None without a validation split) are :class:`~pipelines.reuse.DeviceSet`, uploaded once
    per ``cache``; ``train`` is one too on the batched path, None on the per-sample path (which reads the host
    arrays through ``loader``).
    """

    def __init__(self, config: Config, splits: Splits, device: torch.device, cache: RunCache | None = None) -> None:
        self.config, self.device, self.splits = config, device, splits
        self.batch = config.train.batch_size
        self.ops = fit_to_size(config.augment.ops, *splits.train.images.shape[1:3])  # the recipe's, at any size
        self.augment = BatchAugment.from_ops(self.ops)
        data = (cache or RunCache()).data(config, splits, device, train_on_device=self.augment is not None)
        # uint8 -> float: (x - 255*mean) / (255*std), one fused multiply-add per pixel
        self.scale, self.shift = data.scale, data.shift
        self.generator = torch.Generator(device=device).manual_seed(config.train.seed)
        self.test, self.val = data.test, data.val
        self.epoch = 0  # epochs drawn so far by raw_epoch
        self.alternating: AlternatingFlip | None = None
        if self.augment is not None:
            self.train = data.train
            self.loader = None
            if config.augment.alternating_flip:  # epoch 0's coins, once per run, with HorizontalFlip's p
                p = self.augment.horizontal_flip_p
                self.alternating = AlternatingFlip.draw(len(self.train), p=p, generator=self.generator)
        else:
            log.info("augmentation has ops the device path lacks: running it per sample in DataLoader workers")
            self.train = None
            self.loader = self._sample_loader(splits.train)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 normalised, channels_last on CUDA."""
        x = images.float().mul_(self.scale).add_(self.shift)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def raw_epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the shuffled, augmented train split: (uint8 (B, 3, H, W), int64 (B,)) batches on the
        device, to be normalised by :meth:`normalize` inside the step (a captured step does it in its graph).

        B is train.batch_size; the last partial batch is dropped. Each call draws a new order and new
        augmentations; the sequence over calls is fixed by train.seed. With augment.alternating_flip, HorizontalFlip
        mirrors the images it did not mirror the epoch before (:class:`~pipelines.augment.AlternatingFlip`).
        """
        assert self.loader is None or not self.config.augment.alternating_flip  # check_data refuses it
        if self.loader is not None:
            for images, labels in self.loader:
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            return
        assert self.train is not None and self.augment is not None
        n = len(self.train)
        order = torch.randperm(n, device=self.device, generator=self.generator)
        flips = self.alternating.mask(order, self.epoch) if self.alternating is not None else None
        self.epoch += 1
        # The whole epoch augmented in one batched call: a few kernels instead of one per image.
        images = self.augment(self.train.images[order], generator=self.generator, flips=flips)
        labels = self.train.labels[order]
        for start in range(0, n - self.batch + 1, self.batch):
            yield images[start : start + self.batch], labels[start : start + self.batch]

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
