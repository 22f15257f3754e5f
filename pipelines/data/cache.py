"""The decoded-arrays cache: a source's content digest names an uncompressed ``.npz`` that is written atomically.

A file source is keyed by the sha256 of its bytes, a folder by the sha256 of its (path, size, mtime) listing, so
any change to the source misses the cache and decodes again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from pipelines.data.sets import ImageSet
from pipelines.data.trees import walk_error
from pipelines.errors import UserError

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the decoding or the cache layout changes
_CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "classes")


def cache_path(cache_dir: Path, digest: str, *, size: int | None = None) -> Path:
    """The cache file of the source whose content digest is ``digest`` (resized to ``size`` when given)."""
    resized = f"-{size}px" if size is not None else ""
    return cache_dir / f"images-{digest}-v{CACHE_VERSION}{resized}.npz"


def file_digest(path: Path) -> str:
    """sha256 (hex) of the file's bytes."""
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as err:
        raise UserError(f"cannot read data file {path}: {err.strerror or err}") from err


def listing_digest(root: Path) -> str:
    """sha256 (hex) of the folder's sorted (relative path, size, mtime_ns) listing: changes when any file does."""
    rows = []
    try:
        for dirpath, _dirs, files in os.walk(root, followlinks=True, onerror=walk_error):
            for name in files:
                full = os.path.join(dirpath, name)
                st = os.stat(full)
                rows.append(f"{Path(os.path.relpath(full, root)).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}")
    except OSError as err:
        raise UserError(f"cannot read data folder {root}: {err}") from err
    rows.sort()
    return hashlib.sha256("\n".join(rows).encode("utf-8", "surrogateescape")).hexdigest()


def read_cache(path: Path) -> tuple[ImageSet, ImageSet, tuple[str, ...]] | None:
    """(train, test, classes) from ``path``; None when it is missing or unreadable (then it is decoded again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in _CACHE_KEYS}
        train = ImageSet(arrays["train_images"], arrays["train_labels"])
        test = ImageSet(arrays["test_images"], arrays["test_labels"])
        classes = tuple(str(c) for c in arrays["classes"].tolist())
        if train.images.shape[1:] != test.images.shape[1:]:
            raise ValueError("train and test image sizes differ")
        return train, test, classes
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file, whatever numpy raises: decode again
        log.warning("ignoring the unreadable data cache %s (%s)", path, err)
        return None


def write_cache(path: Path, train: ImageSet, test: ImageSet, classes: tuple[str, ...]) -> None:
    """Write the arrays to ``path`` atomically (temporary file + rename); a failure only costs the next load."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                train_images=train.images,
                train_labels=train.labels,
                test_images=test.images,
                test_labels=test.labels,
                classes=np.array(classes, dtype=str),
            )
        os.replace(tmp, path)
        tmp = None
        log.info("cached the decoded images in %s", path)
    except OSError as err:
        log.warning("cannot write the data cache %s (%s): the next load decodes again", path, err)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
