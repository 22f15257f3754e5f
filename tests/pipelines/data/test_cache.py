"""pipelines.data.cache: decoded data kept in a content-keyed .npz, rewritten when damaged or stale."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from conftest import assert_same_sets, load_source, make_archive, small_folder
from pipelines.data import (
    image_folder,
    sources,
)


def test_second_load_comes_from_the_cache_without_decoding(tmp_path: Path, cache_dir: Path, monkeypatch):
    archive = make_archive(small_folder(tmp_path), tmp_path / "shapes.tar.gz")
    first = load_source(str(archive), cache_dir=cache_dir)
    cached = list(cache_dir.iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz"  # and no temporary file left behind

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(image_folder, "_pixels", no_decoding)
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
