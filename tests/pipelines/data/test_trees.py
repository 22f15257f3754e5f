"""pipelines.data.trees: folders, zip and tar archives read as one tree; damaged archives named."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import (
    CLASSES,
    assert_same_sets,
    error_of,
    load_source,
    make_archive,
    small_folder,
)


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


def test_empty_class_folder_in_a_zip_is_named(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    shutil.rmtree(folder / "test" / "cross")
    (folder / "test" / "cross").mkdir()

    message = error_of(make_archive(folder, tmp_path / "shapes.zip"), cache_dir)

    assert f"{tmp_path / 'shapes.zip'}:shapes/test/cross has no images" == message


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


def test_links_inside_a_zip_are_skipped_as_a_tars_are(tmp_path: Path, cache_dir: Path):
    folder = small_folder(tmp_path)
    expected = load_source(str(folder), cache_dir=cache_dir)
    target = sorted((folder / "train").rglob("*.png"))[0]
    link = target.parent / "link.png"
    link.symlink_to(target.name)
    for name in ("links.zip", "links.tar"):
        archive = tmp_path / name
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive, "w") as zf:
                for path in sorted(folder.rglob("*")):
                    rel = path.relative_to(folder.parent).as_posix()
                    if path.is_symlink():  # as `zip --symlinks` stores one: its mode says link, its data the target
                        info = zipfile.ZipInfo(rel)
                        info.external_attr = (stat.S_IFLNK | 0o777) << 16
                        zf.writestr(info, os.readlink(path))
                    elif path.is_file():
                        zf.write(path, rel)
        else:
            with tarfile.open(archive, "w") as tf:
                tf.add(folder, arcname=folder.name)  # links stay links
        train, test, classes = load_source(str(archive), cache_dir=cache_dir / name)
        assert classes == expected[2]
        assert len(train) == len(expected[0]) and len(test) == len(expected[1]), name
