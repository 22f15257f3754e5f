"""pipelines/paths.py: output paths checked before work, files written whole or not at all, names kept inside
their folder."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from conftest import fill
from pipelines.errors import UserError
from pipelines.paths import NAME_LIMIT, atomic_path, check_name, check_writable, write_text


def test_a_file_written_whole_replaces_the_old_one_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "metrics.json"
    write_text(target, "old")
    write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_a_block_that_fails_leaves_the_old_file_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer died")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_a_new_file_gets_the_mode_open_would_give(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_full_disk_is_one_user_error_naming_the_file_and_leaves_nothing(small_disk: Path) -> None:
    fill(small_disk)
    target = small_disk / "model.pt"
    with pytest.raises(UserError, match=r"cannot write .*model\.pt: No space left on device"):
        write_text(target, "x" * 100_000)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_writer_that_fails_with_enospc_is_the_same_error_without_a_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stand-in for a full disk where no file system can be mounted: every write fails with ENOSPC."""

    def full(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError, match="No space left on device"):
        write_text(tmp_path / "a.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_takes_no_new_file_is_refused_before_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"train\.out_dir .* is a file; give a folder"):
        check_writable(tmp_path / "file", what="train.out_dir")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("..", "cannot be . or .."),
        (".", "cannot be . or .."),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("line\nbreak", "control characters"),
        ("tab\there", "control characters"),
        ("x" * (NAME_LIMIT + 1), f"at most {NAME_LIMIT} bytes"),
        ("é" * (NAME_LIMIT // 2 + 1), f"at most {NAME_LIMIT} bytes"),
        (" padded", "surrounding spaces"),
        ("", "non-empty"),
        ("it's", "quotes"),
    ],
)
def test_names_that_could_leave_their_folder_or_break_a_file_name_are_refused(name: str, problem: str) -> None:
    with pytest.raises(UserError, match="study name") as caught:
        check_name(name, what="study name")
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)


def test_ordinary_names_pass_as_they_are() -> None:
    for name in ("smoke", "cheap-2026.12", "résumé", "x" * NAME_LIMIT, "a b"):
        assert check_name(name, what="study name") == name
