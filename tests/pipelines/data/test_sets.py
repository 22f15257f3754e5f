"""pipelines.data.sets: balanced subsets and the training set's channel statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.config import DataConfig
from pipelines.data import (
    balanced_subset,
    load_splits,
)


def test_balanced_subset_spreads_evenly_with_the_remainder_on_the_first_classes():
    labels = np.repeat(np.arange(3), 20)[np.random.default_rng(1).permutation(60)]

    picked = balanced_subset(labels, 10, seed=0)

    assert np.bincount(labels[picked]).tolist() == [4, 3, 3]
    assert np.all(np.diff(picked) > 0)  # sorted, no repeats


def test_balanced_subset_is_fixed_by_its_seed():
    labels = np.arange(100) % 4

    assert np.array_equal(balanced_subset(labels, 20, seed=3), balanced_subset(labels, 20, seed=3))
    assert not np.array_equal(balanced_subset(labels, 20, seed=3), balanced_subset(labels, 20, seed=4))


def test_balanced_subset_clamps_and_gives_a_short_class_all_it_has():
    labels = np.array([0] * 2 + [1] * 10 + [2] * 10)

    assert np.bincount(labels[balanced_subset(labels, 12, seed=0)]).tolist() == [2, 5, 5]
    assert np.array_equal(balanced_subset(labels, 100, seed=0), np.arange(22))
    assert balanced_subset(labels, 0, seed=0).size == 0


def test_channel_stats_are_the_train_images_mean_and_std_in_unit_range(image_folder: Path, cache_dir: Path):
    splits = load_splits(DataConfig(path=str(image_folder), cache_dir=str(cache_dir), val_size=30))

    mean, std = splits.channel_stats()

    pixels = splits.train.images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=0), atol=1e-12)
    assert all(isinstance(v, float) for v in mean + std)
