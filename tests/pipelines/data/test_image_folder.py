"""pipelines.data.image_folder: ImageFolder trees decode to uint8 RGB arrays, or fail naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import CLASSES, error_of, load_source, small_folder, synthetic_images
from pipelines.data import (
    image_folder,
)


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


def test_unreadable_image_in_a_folder_is_named(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    (folder / "train" / "cross" / "00001.png").write_bytes(b"not a png at all")

    message = error_of(folder, cache_dir)

    assert message.startswith(f"{folder / 'train' / 'cross' / '00001.png'} is not a readable image")


def test_image_of_another_size_is_named(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    odd = folder / "test" / "square" / "00002.png"
    Image.open(odd).resize((28, 30)).save(odd)

    message = error_of(folder, cache_dir)

    assert message.startswith(f"{odd} is 28x30 but ") and "same size" in message


def test_a_set_past_the_memory_budget_is_refused_before_any_image_is_decoded(tmp_path, cache_dir, monkeypatch):
    folder = small_folder(tmp_path)
    Image.new("RGB", (400, 300)).save(sorted((folder / "train").rglob("*.png"))[0])
    decoded = []
    monkeypatch.setattr(image_folder, "decoded_budget", lambda: 1_000_000)  # 18 images of 400x300 need 6.5 MB
    monkeypatch.setattr(image_folder, "_pixels", lambda *args, **kwargs: decoded.append(args))
    message = error_of(folder, cache_dir)
    assert "would take" in message and "400x300" in message and "data.image_size" in message
    assert decoded == []  # refused from the first image's header


def test_an_image_past_the_decompression_bomb_limit_is_refused_from_its_header(tmp_path, cache_dir):
    folder = small_folder(tmp_path)
    bomb = sorted((folder / "train").rglob("*.png"))[-1]  # sorted last: after the others were decoded
    Image.new("1", (10_000, 10_000)).save(bomb)  # 100 megapixels in 12 kB
    message = error_of(folder, cache_dir)
    assert str(bomb) in message and "decompression-bomb limit" in message


def test_an_image_of_another_size_is_refused_before_its_pixels_are_decoded(tmp_path, cache_dir, monkeypatch):
    folder = small_folder(tmp_path)
    big = sorted((folder / "test").rglob("*.png"))[-1]
    Image.new("RGB", (3000, 2000)).save(big)
    sizes = []
    pixels = image_folder._pixels

    def recording(image, where, *, size=None):
        sizes.append(image.size)
        return pixels(image, where, size=size)

    monkeypatch.setattr(image_folder, "_pixels", recording)
    assert "3000x2000" in error_of(folder, cache_dir)
    assert sizes and (3000, 2000) not in sizes  # its size read from the header, its pixels never decoded
