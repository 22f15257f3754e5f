"""Any albumentations pipeline, one image at a time: the path for ops the batched executor lacks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from pipelines.augment.spec import build_albumentations


class SampleDataset(torch.utils.data.Dataset):
    """Images augmented one at a time by albumentations: ``(uint8 (C, H, W) tensor, label)``.

    albumentations' Compose keeps its own random state, which forked DataLoader workers would all copy
    (identical augmentations in every worker). So each worker reseeds it from ``worker_info.seed`` (different
    per worker and per epoch, derived from torch's RNG in the main process), and the main process
    (num_workers=0) seeds it from ``seed`` or, when None, ``torch.initial_seed()``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, ops: Sequence[Mapping], *, seed: int | None = None):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"SampleDataset wants uint8 (N, H, W, C) images, got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.ops = tuple(dict(op) for op in ops)
        self.transform = build_albumentations(self.ops)
        self.transform.set_random_seed((torch.initial_seed() if seed is None else seed) % 2**32)
        self._seeded_for: int | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        info = torch.utils.data.get_worker_info()
        if info is not None and self._seeded_for != info.seed:
            self.transform.set_random_seed(info.seed % 2**32)
            self._seeded_for = info.seed
        out = self.transform(image=self.images[i])["image"]
        if isinstance(out, np.ndarray):
            if out.ndim == 2:
                out = out[:, :, None]
            out = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
        return out, int(self.labels[i])
