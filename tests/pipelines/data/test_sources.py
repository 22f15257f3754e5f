"""pipelines.data.sources: a data path (or cifar10) to train/val/test splits, limits applied, reused per config."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar
from urllib.error import URLError

import numpy as np
import pytest

from conftest import (
    CIFAR_CLASSES,
    CLASSES,
    assert_same_sets,
    error_of,
    load_source,
    small_folder,
)
from pipelines.config import DataConfig
from pipelines.data import (
    Splits,
    SplitsCache,
    load_splits,
)
from pipelines.errors import UserError


def test_cifar10_loads_through_torchvision_when_already_downloaded(cache_dir: Path, monkeypatch):
    import torchvision.datasets

    seen = []

    class Downloaded:
        classes: ClassVar[list[str]] = list(CIFAR_CLASSES)  # torchvision's attribute is a list

        def __init__(self, root, train, download):
            seen.append((root, train, download))
            n = 8 if train else 4
            self.data = np.full((n, 32, 32, 3), 7, dtype=np.uint8)
            self.targets = list(range(n))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Downloaded)

    train, test, classes = load_source("cifar10", cache_dir=cache_dir)

    assert (len(train), len(test), classes) == (8, 4, CIFAR_CLASSES)
    assert train.labels.dtype == np.int64
    assert all(download is False for _, _, download in seen)
    assert all(root == str(cache_dir / "cifar10") for root, _, _ in seen)


def test_cifar10_offline_asks_for_a_local_copy_with_data(cache_dir: Path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, root, train, download):
            if download:
                raise URLError("[Errno -3] Temporary failure in name resolution")
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)

    message = error_of("cifar10", cache_dir)

    assert "--data" in message and "cannot download CIFAR-10" in message


def test_missing_path_is_named(tmp_path: Path, cache_dir: Path):
    assert error_of(tmp_path / "nowhere.tar.gz", cache_dir) == f"data path {tmp_path / 'nowhere.tar.gz'} does not exist"


def test_splits_apply_limits_and_hold_out_a_balanced_disjoint_validation_set(image_folder: Path, cache_dir: Path):
    cfg = DataConfig(path=str(image_folder), cache_dir=str(cache_dir), train_limit=30, test_limit=9, val_size=12)

    splits = load_splits(cfg, seed=5)

    assert isinstance(splits, Splits) and splits.classes == tuple(sorted(CLASSES))
    assert np.bincount(splits.train.labels).tolist() == [6, 6, 6]
    assert np.bincount(splits.val.labels).tolist() == [4, 4, 4]
    assert np.bincount(splits.test.labels).tolist() == [3, 3, 3]
    train_images = {image.tobytes() for image in splits.train.images}
    assert not any(image.tobytes() in train_images for image in splits.val.images)
    assert image_folder.name in splits.source and "sha256" in splits.source


def test_splits_are_the_same_for_the_same_seed_and_differ_for_another(image_folder: Path, cache_dir: Path):
    cfg = DataConfig(path=str(image_folder), cache_dir=str(cache_dir), train_limit=60, val_size=15)

    a, b, c = load_splits(cfg, seed=1), load_splits(cfg, seed=1), load_splits(cfg, seed=2)

    assert_same_sets(a.train, b.train)
    assert_same_sets(a.val, b.val)
    assert not np.array_equal(a.val.images, c.val.images)


def test_splits_without_val_size_have_no_validation_set_and_keep_everything(image_folder: Path, cache_dir: Path):
    splits = load_splits(DataConfig(path=str(image_folder), cache_dir=str(cache_dir), train_limit=10_000), seed=0)

    assert splits.val is None
    assert (len(splits.train), len(splits.test)) == (300, 90)


def test_val_size_as_large_as_the_train_set_is_a_user_error(image_folder: Path, cache_dir: Path):
    cfg = DataConfig(path=str(image_folder), cache_dir=str(cache_dir), train_limit=30, val_size=30)

    with pytest.raises(UserError, match=r"data\.val_size"):
        load_splits(cfg)


def test_splits_cache_reuses_the_splits_of_an_equal_config_and_reloads_for_another(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    cache = SplitsCache()
    cfg = DataConfig(path=str(folder), cache_dir=str(cache_dir), val_size=6)
    first = cache.get(cfg)
    assert cache.get(DataConfig(path=str(folder), cache_dir=str(cache_dir), val_size=6)) is first
    other = cache.get(DataConfig(path=str(folder), cache_dir=str(cache_dir), val_size=0))
    assert other is not first and other.val is None and len(other.train) == len(first.train) + 6


@pytest.mark.slow
def test_shared_cifar10_jpeg_archive_loads_and_reloads_from_the_cache_fast(
    decoded_cifar: tuple[Path, Splits], shared_cifar: Path
):
    cache, first = decoded_cifar  # the first load decoded the archive into the cache
    start = time.perf_counter()
    second = load_splits(DataConfig(path=str(shared_cifar), cache_dir=str(cache)))
    reload_s = time.perf_counter() - start

    for splits in (first, second):
        assert splits.classes == CIFAR_CLASSES
        assert splits.train.images.shape == (50_000, 32, 32, 3) and len(splits.test) == 10_000
        assert np.bincount(splits.train.labels).tolist() == [5000] * 10
    mean, _std = second.channel_stats()
    np.testing.assert_allclose(mean, (0.4913, 0.4821, 0.4465), atol=0.005)
    assert reload_s < 2.0
    assert_same_sets(first.train, second.train)
