"""A folder or an archive (zip, or tar: plain, gzip, xz or bzip2) seen the same way: posix relative paths + read().

Hidden entries (a leading ``.``) and macOS ``__MACOSX`` resource folders are left out everywhere.
"""

from __future__ import annotations

import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import UserError, one_line

_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".zip", ".gz", ".xz", ".bz2")


@dataclass(eq=False)
class Tree:
    """A folder or an archive seen as posix relative paths: the regular files, the folders, a way to read a file.

    Paths are relative to the folder or the archive's top (``""`` is the top itself), e.g. ``"train/cat/1.png"``.
    """

    origin: Path
    is_archive: bool
    files: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=lambda: {""})
    blobs: dict[str, bytes] = field(default_factory=dict)  # tar members, read in one pass
    zip: zipfile.ZipFile | None = None
    zip_names: dict[str, str] = field(default_factory=dict)  # clean relative path -> the zip entry's own name

    def where(self, rel: str) -> str:
        """How to name a file or folder of the tree in a message."""
        if self.is_archive:
            return f"{self.origin}:{rel}" if rel else str(self.origin)
        return str(self.origin / rel) if rel else str(self.origin)

    def add_file(self, rel: str) -> None:
        self.files.add(rel)
        self.add_dir(rel.rpartition("/")[0])

    def add_dir(self, rel: str) -> None:
        while rel not in self.dirs:
            self.dirs.add(rel)
            rel = rel.rpartition("/")[0]

    def read(self, rel: str) -> bytes:
        """The bytes of file ``rel``; UserError naming it when it cannot be read."""
        if rel in self.blobs:
            return self.blobs[rel]
        try:
            if self.zip is not None:
                return self.zip.read(self.zip_names[rel])
            return (self.origin / rel).read_bytes()
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, ValueError) as err:
            if self.is_archive:
                message = f"{self.origin} is a corrupt or unreadable archive (cannot read {rel}: {one_line(err)})"
            else:
                message = f"cannot read {self.where(rel)}: {one_line(err)}"
            raise UserError(message) from err

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()
        self.blobs.clear()


def join(*parts: str) -> str:
    """Relative paths joined with ``/``, empty parts (the top) skipped."""
    return "/".join(p for p in parts if p)


def depth(rel: str) -> int:
    """How many folders down ``rel`` is: 0 for the top ``""``, 1 for ``"train"``."""
    return rel.count("/") + 1 if rel else 0


def walk_error(err: OSError) -> None:
    """``os.walk``'s onerror: raise, so an unreadable folder is reported instead of silently skipped."""
    raise err


def open_tree(source: Path, *, wanted: Callable[[str], bool]) -> Tree:
    """The folder, zip or tar at ``source``; UserError when it is none of these or is damaged.

    ``wanted(rel)``: the files a tar keeps in memory, read during its single forward pass (a compressed tar
    cannot be read by name cheaply). Folders and zips read any file on demand.
    """
    if source.is_dir():
        return _folder_tree(source)
    if zipfile.is_zipfile(source):
        return _zip_tree(source)
    return _tar_tree(source, wanted)


def _normalize(name: str) -> str | None:
    """An archive member's name as a clean relative posix path; None for hidden or macOS resource entries."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return "/".join(parts)


def _folder_tree(root: Path) -> Tree:
    tree = Tree(origin=root, is_archive=False)
    try:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=walk_error):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
            rel_dir = Path(os.path.relpath(dirpath, root)).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir
            tree.add_dir(rel_dir)
            for name in filenames:
                if not name.startswith("."):
                    tree.add_file(f"{rel_dir}/{name}" if rel_dir else name)
    except OSError as err:
        raise UserError(f"cannot read data folder {root}: {err}") from err
    return tree


def _zip_tree(path: Path) -> Tree:
    tree = Tree(origin=path, is_archive=True)
    try:
        tree.zip = zipfile.ZipFile(path)
        for info in tree.zip.infolist():
            rel = _normalize(info.filename)
            if rel is None:
                continue
            if info.is_dir():
                tree.add_dir(rel)
            elif _zip_regular_file(info):  # links and special files are skipped, as a tar's are
                tree.add_file(rel)
                tree.zip_names[rel] = info.filename
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError) as err:
        tree.close()
        raise UserError(f"{path} is a corrupt or unreadable archive ({one_line(err)})") from err
    return tree


def _zip_regular_file(info: zipfile.ZipInfo) -> bool:
    """Whether a zip entry is a regular file: its Unix mode (the high 16 bits of external_attr, when the archive
    was made on Unix) says file, or says nothing (a zip made elsewhere)."""
    mode = info.external_attr >> 16
    return mode == 0 or stat.S_ISREG(mode)


def _tar_tree(path: Path, wanted: Callable[[str], bool]) -> Tree:
    """Read a (possibly compressed) tar in one forward pass, keeping the bytes of the ``wanted`` files."""
    tree = Tree(origin=path, is_archive=True)
    tar = _open_tar(path)
    try:
        with tar:
            for member in tar:
                rel = _normalize(member.name)
                if rel is None:
                    continue
                if member.isdir():
                    tree.add_dir(rel)
                elif member.isfile():
                    tree.add_file(rel)
                    if wanted(rel):
                        handle = tar.extractfile(member)
                        assert handle is not None  # regular files always have data
                        tree.blobs[rel] = handle.read()
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error, ValueError) as err:
        raise UserError(f"{path} is a corrupt or unreadable archive ({one_line(err)})") from err
    return tree


def _open_tar(path: Path) -> tarfile.TarFile:
    """``tarfile.open`` (any compression), or UserError telling an unsupported file from a damaged archive."""
    try:
        return tarfile.open(path, mode="r:*")
    except tarfile.ReadError as err:
        if not path.name.lower().endswith(_ARCHIVE_SUFFIXES):
            raise UserError(
                f"{path} is not a supported data source: expected a folder, a .tar, .tar.gz, .tgz, .tar.xz or .zip "
                "archive of an ImageFolder tree, or the official cifar-10-python.tar.gz"
            ) from err
        raise UserError(f"{path} is a corrupt or unreadable archive (not a valid zip or tar file)") from err
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error, ValueError) as err:
        raise UserError(f"{path} is a corrupt or unreadable archive ({one_line(err)})") from err
