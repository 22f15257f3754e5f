"""pipelines.augment.sample: ops without a batched version run per sample, seeded, in DataLoader workers."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.augment import BatchAugment, SampleDataset
from pipelines.config import recipe_augment


def test_unsupported_ops_fall_back_to_sample_dataset():
    ops = [*recipe_augment(), {"name": "RandomBrightnessContrast", "p": 0.5}]
    assert BatchAugment.from_ops(ops) is None
    assert BatchAugment.from_ops([{"name": "Normalize"}]) is None
    assert BatchAugment.from_ops([{"name": "ToTensorV2"}]) is None
    assert BatchAugment.from_ops([{"name": "CoarseDropout", "fill": "inpaint_ns"}]) is None
    assert BatchAugment.from_ops([{"name": "RandomCrop", "height": 8, "width": 8, "p": 0.5}]) is None

    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(10) % 3
    dataset = SampleDataset(images, labels, ops, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=0)
    batches = list(loader)
    x, y = batches[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and y.tolist() == [0, 1, 2, 0]
    assert sum(len(b[1]) for b in batches) == 10
    again = list(torch.utils.data.DataLoader(SampleDataset(images, labels, ops, seed=0), batch_size=4))
    assert torch.equal(again[0][0], x)  # seeded: reproducible
