"""pipelines.data.cifar_batches: CIFAR-10's official pickles, read with a restricted unpickler."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from conftest import CIFAR_CLASSES, error_of, fake_cifar_batches, load_source


def test_official_cifar_python_tarball_and_its_folders_load_the_batches(tmp_path: Path, cache_dir: Path):
    batches = tmp_path / "official" / "cifar-10-batches-py"
    raw = fake_cifar_batches(batches)
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")

    loads = [load_source(str(p), cache_dir=cache_dir) for p in (tarball, batches, batches.parent)]

    for train, test, classes in loads:
        assert classes == CIFAR_CLASSES
        assert train.images.shape == (20, 32, 32, 3) and test.images.shape == (6, 32, 32, 3)
        # rows are 1024 red, 1024 green, 1024 blue values, each a 32x32 row-major plane; batches 1..5 in order
        np.testing.assert_array_equal(train.images, raw["train_rows"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(train.labels, raw["train_labels"])
        np.testing.assert_array_equal(test.images[..., 2], raw["test_rows"][:, 2048:].reshape(-1, 32, 32))
        np.testing.assert_array_equal(test.labels, raw["test_labels"])


def test_cifar_batch_that_is_not_a_plain_pickle_is_refused_naming_it(tmp_path: Path, cache_dir: Path):
    batches = tmp_path / "cifar-10-batches-py"
    fake_cifar_batches(batches)
    (batches / "data_batch_3").write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}, protocol=2))

    message = error_of(batches, cache_dir)

    assert str(batches / "data_batch_3") in message and "not a readable CIFAR-10 batch" in message
