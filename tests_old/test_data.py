"""pipelines.data: every kind of source loads to the same arrays, is cached, subsets evenly and fails clearly."""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import time
import zipfile
from pathlib import Path
from typing import ClassVar
from urllib.error import URLError

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, synthetic_images, write_image_folder
from pipelines.config import DataConfig
from pipelines.data import (
    ImageSet,
    Splits,
    SplitsCache,
    balanced_subset,
    image_folder,
    load_source,
    load_splits,
    sources,
)
from pipelines.errors import UserError

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# ----------------------------------------------------------------------------------------------------------- helpers


def make_archive(folder: Path, dest: Path, *, top_folder: bool = True) -> Path:
    """Pack ``folder`` as ``dest`` (.tar, .tar.gz, .tgz, .tar.xz or .zip), under its own name unless not top_folder."""
    prefix = folder.name if top_folder else ""
    files = sorted(p for p in folder.rglob("*"))
    if dest.name.endswith(".zip"):
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                zf.write(path, "/".join(filter(None, (prefix, path.relative_to(folder).as_posix()))))
        return dest
    mode = {".tar": "w", ".gz": "w:gz", ".tgz": "w:gz", ".xz": "w:xz"}[dest.suffix]
    with tarfile.open(dest, mode) as tar:
        for child in sorted(folder.iterdir()):
            tar.add(child, arcname="/".join(filter(None, (prefix, child.name))))
    return dest


def small_folder(tmp_path: Path, name: str = "shapes", *, n_train: int = 12, n_test: int = 6) -> Path:
    return write_image_folder(tmp_path / name, n_train=n_train, n_test=n_test)


def assert_same_sets(a: ImageSet, b: ImageSet) -> None:
    assert a.images.dtype == b.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def fake_cifar_batches(folder: Path, *, per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny cifar-10-batches-py folder with the official pickle layout; returns the raw rows and labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows, labels = {}, {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        rows[name] = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels[name] = rng.integers(0, 10, size=n).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels[name], b"data": rows[name], b"filenames": [b"x"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    train_rows = np.concatenate([rows[f"data_batch_{i}"] for i in range(1, 6)])
    train_labels = [label for i in range(1, 6) for label in labels[f"data_batch_{i}"]]
    return {
        "train_rows": train_rows,
        "train_labels": np.array(train_labels),
        "test_rows": rows["test_batch"],
        "test_labels": np.array(labels["test_batch"]),
    }


def error_of(path, cache_dir: Path) -> str:
    with pytest.raises(UserError) as info:
        load_source(str(path), cache_dir=cache_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


# -------------------------------------------------------------------------------------------------- ImageFolder trees


def test_image_folder_loads_as_uint8_rgb_with_sorted_classes_and_all_images(image_folder: Path, cache_dir: Path):
    train, test, classes = load_source(str(image_folder), cache_dir=cache_dir)

    assert classes == tuple(sorted(CLASSES))
    assert train.images.shape == (300, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (90, 32, 32, 3)
    assert train.labels.dtype == np.int64 and len(train) == 300 and len(test) == 90
    assert np.bincount(train.labels).tolist() == [100, 100, 100]
    assert np.bincount(test.labels).tolist() == [30, 30, 30]
    # class by class, files in name order, pixels exactly as written (PNG is lossless)
    images, labels = synthetic_images(300, classes=3, seed=0)
    order = np.argsort(labels, kind="stable")
    np.testing.assert_array_equal(train.images, images[order])
    np.testing.assert_array_equal(train.labels, labels[order])


@pytest.mark.parametrize("name", ["shapes.tar.gz", "shapes.tgz", "shapes.tar.xz", "shapes.zip", "shapes.tar"])
def test_archive_of_an_image_folder_gives_the_same_arrays_as_the_folder(tmp_path: Path, cache_dir: Path, name: str):
    folder = small_folder(tmp_path)
    archive = make_archive(folder, tmp_path / name)

    from_folder = load_source(str(folder), cache_dir=cache_dir)
    from_archive = load_source(str(archive), cache_dir=cache_dir)

    assert from_archive[2] == from_folder[2] == tuple(sorted(CLASSES))
    assert_same_sets(from_archive[0], from_folder[0])
    assert_same_sets(from_archive[1], from_folder[1])


def test_archive_without_a_top_folder_and_folder_holding_the_tree_both_load(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path / "outer")
    expected = load_source(str(folder), cache_dir=cache_dir)

    flat = load_source(str(make_archive(folder, tmp_path / "flat.zip", top_folder=False)), cache_dir=cache_dir)
    parent = load_source(str(tmp_path / "outer"), cache_dir=cache_dir)

    for got in (flat, parent):
        assert got[2] == expected[2]
        assert_same_sets(got[0], expected[0])
        assert_same_sets(got[1], expected[1])


def test_grayscale_and_rgba_images_are_converted_to_rgb(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    gray = folder / "train" / "circle" / "00000.png"
    Image.open(gray).convert("L").save(gray)
    rgba = folder / "test" / "cross" / "00001.png"
    Image.open(rgba).convert("RGBA").save(rgba)

    train, test, _ = load_source(str(folder), cache_dir=cache_dir)

    assert train.images.shape[1:] == test.images.shape[1:] == (32, 32, 3)
    first = train.images[0]
    assert np.array_equal(first[..., 0], first[..., 1]) and np.array_equal(first[..., 1], first[..., 2])


def test_hidden_and_non_image_files_are_ignored(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    (folder / "train" / "circle" / ".DS_Store").write_bytes(b"\0junk")
    (folder / "train" / "circle" / "notes.txt").write_text("not an image")
    (folder / "test" / "README").write_text("about the test set")

    train, test, classes = load_source(str(folder), cache_dir=cache_dir)

    assert (len(train), len(test), classes) == (12, 6, tuple(sorted(CLASSES)))


def test_progress_reports_images_decoded_up_to_the_total(tmp_path: Path, cache_dir: Path, monkeypatch):
    folder = small_folder(tmp_path)
    monkeypatch.setattr(image_folder, "PROGRESS_EVERY", 5)
    calls: list[tuple[int, int]] = []

    load_source(str(folder), cache_dir=cache_dir, progress=lambda done, total: calls.append((done, total)))

    assert calls[-1] == (18, 18)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert len(calls) >= 3


# ------------------------------------------------------------------------------------ CIFAR-10's official pickles


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


# --------------------------------------------------------------------------------------------------------- caching


def test_second_load_comes_from_the_cache_without_decoding(tmp_path: Path, cache_dir: Path, monkeypatch):
    archive = make_archive(small_folder(tmp_path), tmp_path / "shapes.tar.gz")
    first = load_source(str(archive), cache_dir=cache_dir)
    cached = list(cache_dir.iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz"  # and no temporary file left behind

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(image_folder, "_decode_image", no_decoding)
    monkeypatch.setattr(sources, "open_tree", no_decoding)
    second = load_source(str(archive), cache_dir=cache_dir)

    assert second[2] == first[2]
    assert_same_sets(second[0], first[0])
    assert_same_sets(second[1], first[1])


def test_changed_folder_is_decoded_again(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    assert len(load_source(str(folder), cache_dir=cache_dir)[0]) == 12
    shutil.copy(folder / "train" / "circle" / "00000.png", folder / "train" / "circle" / "extra.png")

    assert len(load_source(str(folder), cache_dir=cache_dir)[0]) == 13


def test_damaged_cache_is_ignored_and_rewritten(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    expected = load_source(str(folder), cache_dir=cache_dir)
    (cache_file,) = cache_dir.iterdir()
    cache_file.write_bytes(cache_file.read_bytes()[:1000])

    again = load_source(str(folder), cache_dir=cache_dir)

    assert_same_sets(again[0], expected[0])
    with np.load(cache_file) as npz:  # whole again
        assert npz["train_images"].shape == (12, 32, 32, 3)


def test_cache_dir_expands_the_home_folder(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = small_folder(tmp_path)

    load_source(str(folder), cache_dir="~/cache")

    assert len(list((tmp_path / "home" / "cache").glob("*.npz"))) == 1


# ----------------------------------------------------------------------------------------------- subsets and splits


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


def test_channel_stats_are_the_train_images_mean_and_std_in_unit_range(image_folder: Path, cache_dir: Path):
    splits = load_splits(DataConfig(path=str(image_folder), cache_dir=str(cache_dir), val_size=30))

    mean, std = splits.channel_stats()

    pixels = splits.train.images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=0), atol=1e-12)
    assert all(isinstance(v, float) for v in mean + std)


# ---------------------------------------------------------------------------------------------------------- errors


def test_missing_path_is_named(tmp_path: Path, cache_dir: Path):
    assert error_of(tmp_path / "nowhere.tar.gz", cache_dir) == f"data path {tmp_path / 'nowhere.tar.gz'} does not exist"


def test_folder_without_train_and_test_is_named(tmp_path: Path, cache_dir: Path):
    folder = tmp_path / "pictures"
    (folder / "cats").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "cats" / "1.png")

    message = error_of(folder, cache_dir)

    assert message.startswith(f"{folder} has no train/ and test/ folders")


def test_different_train_and_test_classes_are_named(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    (folder / "test" / "square").rename(folder / "test" / "triangle")

    message = error_of(folder, cache_dir)

    assert "only in train: square" in message and "only in test: triangle" in message


def test_empty_class_folder_is_named(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    (folder / "train" / "star").mkdir()
    (folder / "test" / "star").mkdir()
    shutil.copy(folder / "test" / "circle" / "00000.png", folder / "test" / "star" / "1.png")

    message = error_of(folder, cache_dir)

    assert message == f"{folder / 'train' / 'star'} has no images"


def test_empty_class_folder_in_a_zip_is_named(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    shutil.rmtree(folder / "test" / "cross")
    (folder / "test" / "cross").mkdir()

    message = error_of(make_archive(folder, tmp_path / "shapes.zip"), cache_dir)

    assert f"{tmp_path / 'shapes.zip'}:shapes/test/cross has no images" == message


def test_unreadable_image_in_a_folder_is_named(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    (folder / "train" / "cross" / "00001.png").write_bytes(b"not a png at all")

    message = error_of(folder, cache_dir)

    assert message.startswith(f"{folder / 'train' / 'cross' / '00001.png'} is not a readable image")


def test_unreadable_image_inside_an_archive_is_named_with_the_archive(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    (folder / "train" / "cross" / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    archive = make_archive(folder, tmp_path / "shapes.tar.gz")

    message = error_of(archive, cache_dir)

    assert message.startswith(f"{archive}:shapes/train/cross/00001.png is not a readable image")


@pytest.mark.parametrize("name", ["broken.tar.gz", "broken.tar.xz", "broken.zip"])
def test_corrupt_archive_is_named(tmp_path: Path, cache_dir: Path, name: str):
    archive = tmp_path / name
    archive.write_bytes(b"\x1f\x8b\x08\x00garbage" * 50)

    message = error_of(archive, cache_dir)

    assert message.startswith(f"{archive} is a corrupt or unreadable archive")


@pytest.mark.parametrize("name", ["cut.tar.gz", "cut.tar.xz"])
def test_truncated_archive_is_named(tmp_path: Path, cache_dir: Path, name: str):
    archive = make_archive(small_folder(tmp_path, n_train=30), tmp_path / name)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])

    message = error_of(archive, cache_dir)

    assert message.startswith(f"{archive} is a corrupt or unreadable archive")


def test_file_that_is_no_archive_is_refused(tmp_path: Path, cache_dir: Path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")

    assert error_of(notes, cache_dir).startswith(f"{notes} is not a supported data source")


def test_image_of_another_size_is_named(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    odd = folder / "test" / "square" / "00002.png"
    Image.open(odd).resize((28, 30)).save(odd)

    message = error_of(folder, cache_dir)

    assert message.startswith(f"{odd} is 28x30 but ") and "same size" in message


# ----------------------------------------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_shared_cifar10_jpeg_archive_loads_and_reloads_from_the_cache_fast(tmp_path: Path, shared_cifar: Path):
    cfg = DataConfig(path=str(shared_cifar), cache_dir=str(tmp_path / "cache"))

    first = load_splits(cfg)
    start = time.perf_counter()
    second = load_splits(cfg)
    reload_s = time.perf_counter() - start

    for splits in (first, second):
        assert splits.classes == CIFAR_CLASSES
        assert splits.train.images.shape == (50_000, 32, 32, 3) and len(splits.test) == 10_000
        assert np.bincount(splits.train.labels).tolist() == [5000] * 10
    mean, _std = second.channel_stats()
    np.testing.assert_allclose(mean, (0.4913, 0.4821, 0.4465), atol=0.005)
    assert reload_s < 2.0
    assert_same_sets(first.train, second.train)


def test_splits_cache_reuses_the_splits_of_an_equal_config_and_reloads_for_another(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    cache = SplitsCache()
    cfg = DataConfig(path=str(folder), cache_dir=str(cache_dir), val_size=6)
    first = cache.get(cfg)
    assert cache.get(DataConfig(path=str(folder), cache_dir=str(cache_dir), val_size=6)) is first
    other = cache.get(DataConfig(path=str(folder), cache_dir=str(cache_dir), val_size=0))
    assert other is not first and other.val is None and len(other.train) == len(first.train) + 6
