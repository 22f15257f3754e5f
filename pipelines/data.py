"""Images in, uint8 arrays out: CIFAR-10 (torchvision or the official pickles) and ImageFolder trees or archives.

Every source becomes two :class:`ImageSet` (full train, full test) and a class list. Anything but the torchvision
download is decoded once and cached as an uncompressed ``.npz`` in ``cache_dir``, keyed by content (sha256 of an
archive's bytes, or of a folder's (path, size, mtime) listing), so the second load is a plain file read.
:func:`load_splits` then takes the class-balanced subsets and the validation split that a :class:`DataConfig` asks for.

Sources (``DataConfig.path``):

* ``"cifar10"``: the official set through ``torchvision.datasets.CIFAR10`` in ``<cache_dir>/cifar10``;
* the official ``cifar-10-python.tar.gz``, its ``cifar-10-batches-py/`` folder, or a folder holding that folder;
* an ImageFolder tree ``<root>/train/<class>/<image>`` + ``<root>/test/<class>/<image>`` (any format Pillow reads),
  as a folder or as a ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.xz``, ``.tar.bz2`` or ``.zip`` archive in which
  ``<root>`` may be nested (e.g. ``cifar10-jpeg/train/airplane/0001.jpg``).

Problems the user can fix raise :class:`UserError` with a one-line message naming the culprit path.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import lzma
import os
import pickle
import re
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipelines.config import DataConfig
from pipelines.errors import UserError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

TORCHVISION_CIFAR10 = "cifar10"
OFFLINE_MESSAGE = (
    "cannot download CIFAR-10 (offline?): pass --data with a local copy, "
    "e.g. --data ../shared/data/cifar10-jpeg.tar.xz or a cifar-10-python.tar.gz"
)
CACHE_VERSION = 1  # bump when the decoding or the cache layout changes
PROGRESS_EVERY = 2000  # images between two progress() calls while decoding

_CIFAR_META = "batches.meta"
_CIFAR_TEST = "test_batch"
_CIFAR_TRAIN = re.compile(r"data_batch_(\d+)")
_CIFAR_SHAPE = (3, 32, 32)  # each row of a batch's data: 1024 red, 1024 green, 1024 blue values, row-major
_CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "classes")


# --------------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images and their class indices, in a fixed order."""

    images: np.ndarray  # uint8 (N, H, W, 3), RGB
    labels: np.ndarray  # int64 (N,)

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        labels = np.asarray(self.labels).astype(np.int64, copy=False)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ImageSet:
        """The images at ``indices`` (copied), in that order."""
        return ImageSet(self.images[indices], self.labels[indices])


@dataclass(frozen=True, eq=False)
class Splits:
    """What a training run sees: train, an optional validation split held out of train, and test."""

    train: ImageSet
    val: ImageSet | None  # None when val_size == 0
    test: ImageSet
    classes: tuple[str, ...]
    source: str  # human readable, e.g. "cifar10-jpeg.tar.xz (sha256 dd4f94bd...)"

    def channel_stats(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """Per-channel (R, G, B) mean and standard deviation of the train images, in [0, 1] units."""
        return channel_stats(self.train.images)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Exact per-channel mean and (population) std of uint8 (N, H, W, 3) images, in [0, 1] units.

    Counts the 256 values per channel in chunks, so it needs no float copy of the images (50k CIFAR images: ~0.4 s).
    """
    if len(images) == 0:
        raise ValueError("channel_stats needs at least one image")
    counts = np.zeros((3, 256), dtype=np.int64)
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096]
        for channel in range(3):
            counts[channel] += np.bincount(chunk[..., channel].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(axis=1)
    mean = (counts * values).sum(axis=1) / total
    var = np.maximum((counts * values**2).sum(axis=1) / total - mean**2, 0.0)
    std = np.sqrt(var)
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))


# ------------------------------------------------------------------------------------------------------ public API


def load_source(
    path: str, *, cache_dir: str | Path, progress: Progress | None = None
) -> tuple[ImageSet, ImageSet, tuple[str, ...]]:
    """The full train set, the full test set and the class names of ``path`` (see the module doc for sources)."""
    loaded = _load(path, cache_dir=cache_dir, progress=progress)
    return loaded.train, loaded.test, loaded.classes


def load_splits(cfg: DataConfig, *, seed: int = 0, progress: Progress | None = None) -> Splits:
    """Load ``cfg.path`` and apply ``train_limit``, ``test_limit`` (class-balanced subsets) and ``val_size``.

    ``seed`` picks the subsets (the same seed gives the same images); the validation split is class-balanced,
    taken from the (limited) train set and disjoint from what remains of it. Order within a split is the source's.
    """
    loaded = _load(cfg.path, cache_dir=cfg.cache_dir, progress=progress)
    train, test = loaded.train, loaded.test
    if cfg.train_limit is not None and cfg.train_limit < len(train):
        train = train.subset(balanced_subset(train.labels, cfg.train_limit, seed=seed))
    if cfg.test_limit is not None and cfg.test_limit < len(test):
        test = test.subset(balanced_subset(test.labels, cfg.test_limit, seed=seed))
    val = None
    if cfg.val_size > 0:
        if cfg.val_size >= len(train):
            raise UserError(
                f"data.val_size ({cfg.val_size}) must be smaller than the number of training images ({len(train)})"
            )
        held_out = balanced_subset(train.labels, cfg.val_size, seed=seed + 1)
        keep = np.ones(len(train), dtype=bool)
        keep[held_out] = False
        val = train.subset(held_out)
        train = train.subset(np.flatnonzero(keep))
    log.info(
        "data %s: %d train, %s val, %d test images, %d classes",
        loaded.source,
        len(train),
        len(val) if val is not None else "no",
        len(test),
        len(loaded.classes),
    )
    return Splits(train=train, val=val, test=test, classes=loaded.classes, source=loaded.source)


def balanced_subset(labels: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` items spread evenly over the classes present in ``labels``.

    Each class gets ``n // classes``, the remainder going one each to the first classes (by label); a class with
    too few items gives all it has and the shortfall goes to the others. ``n`` is clamped to ``len(labels)``.
    Which items of a class are taken is random but fixed by ``seed``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n >= len(labels):
        return np.arange(len(labels))
    present, counts = np.unique(labels, return_counts=True)
    quota = _balanced_quota(counts.tolist(), n)
    rng = np.random.default_rng(seed)
    picked = [
        rng.permutation(np.flatnonzero(labels == label))[:q] for label, q in zip(present.tolist(), quota)
    ]
    return np.sort(np.concatenate(picked)) if picked else np.arange(0)


def _balanced_quota(counts: list[int], n: int) -> list[int]:
    """Split ``n`` over classes holding ``counts`` items as evenly as possible (water filling, first classes first)."""
    quota = [0] * len(counts)
    open_classes = list(range(len(counts)))
    left = n
    while open_classes:
        share, extra = divmod(left, len(open_classes))
        wants = {c: share + (1 if i < extra else 0) for i, c in enumerate(open_classes)}
        full = [c for c in open_classes if counts[c] <= wants[c]]
        if not full:
            for c in open_classes:
                quota[c] = wants[c]
            break
        for c in full:
            quota[c] = counts[c]
            left -= counts[c]
        open_classes = [c for c in open_classes if c not in full]
    return quota


# ---------------------------------------------------------------------------------------------------------- loading


@dataclass(frozen=True, eq=False)
class _Loaded:
    train: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    source: str


def _load(path: str, *, cache_dir: str | Path, progress: Progress | None) -> _Loaded:
    cache = Path(cache_dir).expanduser()
    if path == TORCHVISION_CIFAR10:
        return _load_torchvision_cifar10(cache / "cifar10")
    source = Path(path).expanduser()
    if not source.exists():
        raise UserError(f"data path {path} does not exist")
    if source.is_dir():
        digest = _listing_digest(source)
        label = f"{source.name or source}/ (listing sha256 {digest[:8]}...)"
    else:
        digest = _file_digest(source)
        label = f"{source.name} (sha256 {digest[:8]}...)"
    cache_file = cache / f"images-{digest}-v{CACHE_VERSION}.npz"
    cached = _read_cache(cache_file)
    if cached is not None:
        log.info("data %s: decoded arrays from the cache %s", label, cache_file)
        return _Loaded(*cached, source=label)
    tree = _open_tree(source)
    try:
        train, test, classes = _decode_tree(tree, progress)
    finally:
        tree.close()
    _write_cache(cache_file, train, test, classes)
    return _Loaded(train, test, classes, source=label)


def _load_torchvision_cifar10(root: Path) -> _Loaded:
    """The official CIFAR-10 through torchvision, downloading it into ``root`` only when it is not there yet."""
    import torchvision.datasets  # late: torch is heavy and only this source needs it

    def open_split(train: bool, download: bool):
        return torchvision.datasets.CIFAR10(root=str(root), train=train, download=download)

    try:
        train_set, test_set = open_split(True, False), open_split(False, False)
    except (RuntimeError, OSError):
        log.info("CIFAR-10 is not in %s yet: downloading it", root)
        try:
            train_set, test_set = open_split(True, True), open_split(False, False)
        except Exception as err:  # URLError, socket errors, HTTP errors, torchvision's RuntimeError ...
            log.debug("CIFAR-10 download failed: %r", err)
            raise UserError(OFFLINE_MESSAGE) from err
    classes = tuple(train_set.classes)

    def image_set(ds) -> ImageSet:
        return ImageSet(np.ascontiguousarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64))

    return _Loaded(image_set(train_set), image_set(test_set), classes, source=f"CIFAR-10 via torchvision ({root})")


# ------------------------------------------------------------------------------------------------------------ cache


def _file_digest(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as err:
        raise UserError(f"cannot read data file {path}: {err.strerror or err}") from err


def _listing_digest(root: Path) -> str:
    """sha256 of the folder's sorted (relative path, size, mtime_ns) listing: changes when any file does."""
    rows = []
    try:
        for dirpath, _dirs, files in os.walk(root, followlinks=True, onerror=_raise):
            for name in files:
                full = os.path.join(dirpath, name)
                st = os.stat(full)
                rows.append(f"{Path(os.path.relpath(full, root)).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}")
    except OSError as err:
        raise UserError(f"cannot read data folder {root}: {err}") from err
    rows.sort()
    return hashlib.sha256("\n".join(rows).encode("utf-8", "surrogateescape")).hexdigest()


def _raise(err: OSError) -> None:
    raise err


def _read_cache(path: Path) -> tuple[ImageSet, ImageSet, tuple[str, ...]] | None:
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
    except Exception as err:  # a damaged or foreign file: decode again and overwrite it
        log.warning("ignoring the unreadable data cache %s (%s)", path, err)
        return None


def _write_cache(path: Path, train: ImageSet, test: ImageSet, classes: tuple[str, ...]) -> None:
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


# ------------------------------------------------------------------------------------- folders and archives as trees


@dataclass(eq=False)
class _Tree:
    """A folder or an archive seen as posix relative paths: the regular files, the folders, a way to read a file."""

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
        if rel in self.blobs:
            return self.blobs[rel]
        try:
            if self.zip is not None:
                return self.zip.read(self.zip_names[rel])
            return (self.origin / rel).read_bytes()
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, ValueError) as err:
            if self.is_archive:
                message = f"{self.origin} is a corrupt or unreadable archive (cannot read {rel}: {_one_line(err)})"
            else:
                message = f"cannot read {self.where(rel)}: {_one_line(err)}"
            raise UserError(message) from err

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()
        self.blobs.clear()


_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".zip", ".gz", ".xz", ".bz2")


def _normalize(name: str) -> str | None:
    """An archive member's name as a clean relative posix path; None for hidden or macOS resource entries."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return "/".join(parts)


def _wanted(rel: str) -> bool:
    """Files worth reading out of an archive: images and the CIFAR-10 pickles."""
    name = rel.rpartition("/")[2]
    return _is_image_name(name) or name in (_CIFAR_META, _CIFAR_TEST) or bool(_CIFAR_TRAIN.fullmatch(name))


def _open_tree(source: Path) -> _Tree:
    if source.is_dir():
        return _folder_tree(source)
    if zipfile.is_zipfile(source):
        return _zip_tree(source)
    return _tar_tree(source)


def _folder_tree(root: Path) -> _Tree:
    tree = _Tree(origin=root, is_archive=False)
    try:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=_raise):
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


def _zip_tree(path: Path) -> _Tree:
    tree = _Tree(origin=path, is_archive=True)
    try:
        tree.zip = zipfile.ZipFile(path)
        for info in tree.zip.infolist():
            rel = _normalize(info.filename)
            if rel is None:
                continue
            if info.is_dir():
                tree.add_dir(rel)
            else:
                tree.add_file(rel)
                tree.zip_names[rel] = info.filename
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError) as err:
        tree.close()
        raise UserError(f"{path} is a corrupt or unreadable archive ({_one_line(err)})") from err
    return tree


def _tar_tree(path: Path) -> _Tree:
    """Read a (possibly compressed) tar in one forward pass, keeping the bytes of the images and CIFAR pickles."""
    tree = _Tree(origin=path, is_archive=True)
    try:
        tar = tarfile.open(path, mode="r:*")
    except tarfile.ReadError as err:
        if not path.name.lower().endswith(_ARCHIVE_SUFFIXES):
            raise UserError(
                f"{path} is not a supported data source: expected a folder, a .tar, .tar.gz, .tgz, .tar.xz or .zip "
                "archive of an ImageFolder tree, or the official cifar-10-python.tar.gz"
            ) from err
        raise UserError(f"{path} is a corrupt or unreadable archive (not a valid zip or tar file)") from err
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error, ValueError) as err:
        raise UserError(f"{path} is a corrupt or unreadable archive ({_one_line(err)})") from err
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
                    if _wanted(rel):
                        handle = tar.extractfile(member)
                        assert handle is not None  # regular files always have data
                        tree.blobs[rel] = handle.read()
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error, ValueError) as err:
        raise UserError(f"{path} is a corrupt or unreadable archive ({_one_line(err)})") from err
    return tree


# ---------------------------------------------------------------------------------------------------------- layouts


def _decode_tree(tree: _Tree, progress: Progress | None) -> tuple[ImageSet, ImageSet, tuple[str, ...]]:
    cifar_dir = _find_cifar_batches(tree)
    if cifar_dir is not None:
        return _decode_cifar_batches(tree, cifar_dir, progress)
    root = _find_image_folder(tree)
    return _decode_image_folder(tree, root, progress)


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _depth(rel: str) -> int:
    return rel.count("/") + 1 if rel else 0


def _find_cifar_batches(tree: _Tree) -> str | None:
    """The shallowest folder holding ``batches.meta`` and ``data_batch_1`` (CIFAR-10's pickled layout), if any."""
    found = [rel.rpartition("/")[0] for rel in tree.files if rel.rpartition("/")[2] == _CIFAR_META]
    found = [d for d in found if _join(d, "data_batch_1") in tree.files]
    return min(found, key=lambda d: (_depth(d), d)) if found else None


def _find_image_folder(tree: _Tree) -> str:
    """The shallowest folder with both ``train/`` and ``test/`` in it."""
    roots = [d for d in tree.dirs if _join(d, "train") in tree.dirs and _join(d, "test") in tree.dirs]
    if not roots:
        kind = "archive" if tree.is_archive else "folder"
        raise UserError(
            f"{tree.origin} has no train/ and test/ folders (expected an ImageFolder layout "
            f"<{kind}>/train/<class>/<image> and <{kind}>/test/<class>/<image>, possibly inside one top folder, "
            "or CIFAR-10's cifar-10-batches-py)"
        )
    roots.sort(key=lambda d: (_depth(d), d))
    if len(roots) > 1 and _depth(roots[0]) == _depth(roots[1]):
        log.warning("%s has several train/ + test/ folders; using %s", tree.origin, tree.where(roots[0]))
    return roots[0]


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in _image_extensions()


_EXTENSIONS: set[str] = set()


def _image_extensions() -> set[str]:
    if not _EXTENSIONS:
        Image.init()
        _EXTENSIONS.update(ext.lower() for ext in Image.registered_extensions())
    return _EXTENSIONS


def _class_files(tree: _Tree, split_dir: str) -> dict[str, list[str]]:
    """Class name -> sorted image files (any depth below the class folder) of one split folder."""
    prefix = split_dir + "/"
    classes: dict[str, list[str]] = {
        d[len(prefix) :]: [] for d in tree.dirs if d.startswith(prefix) and "/" not in d[len(prefix) :]
    }
    skipped: list[str] = []
    for rel in tree.files:
        if not rel.startswith(prefix):
            continue
        inner = rel[len(prefix) :]
        if "/" not in inner:
            skipped.append(rel)  # a file beside the class folders
        elif _is_image_name(inner):
            classes[inner.split("/", 1)[0]].append(rel)
        else:
            skipped.append(rel)
    if skipped:
        example = tree.where(min(skipped))
        log.warning("ignoring %d non-image file(s) in %s, e.g. %s", len(skipped), tree.where(split_dir), example)
    return {name: sorted(files) for name, files in classes.items()}


def _decode_image_folder(
    tree: _Tree, root: str, progress: Progress | None
) -> tuple[ImageSet, ImageSet, tuple[str, ...]]:
    splits = {split: _class_files(tree, _join(root, split)) for split in ("train", "test")}
    train_classes, test_classes = set(splits["train"]), set(splits["test"])
    if train_classes != test_classes:
        only_train = ", ".join(sorted(train_classes - test_classes)) or "-"
        only_test = ", ".join(sorted(test_classes - train_classes)) or "-"
        raise UserError(
            f"train and test classes differ in {tree.where(root)}: "
            f"only in train: {only_train}; only in test: {only_test}"
        )
    if not train_classes:
        raise UserError(f"{tree.where(_join(root, 'train'))} has no class folders (expected train/<class>/<image>)")
    classes = tuple(sorted(train_classes))
    for split, by_class in splits.items():
        for name in classes:
            if not by_class[name]:
                raise UserError(f"{tree.where(_join(root, split, name))} has no images")
    files = {
        split: [(rel, label) for label, name in enumerate(classes) for rel in by_class[name]]
        for split, by_class in splits.items()
    }
    total = sum(len(f) for f in files.values())
    log.info("decoding %d images from %s", total, tree.origin)
    decoder = _Decoder(tree, total, progress)
    train, test = (decoder.decode(files[split]) for split in ("train", "test"))
    return train, test, classes


class _Decoder:
    """Decodes files of a tree to one shared image size, reporting progress across calls."""

    def __init__(self, tree: _Tree, total: int, progress: Progress | None) -> None:
        self.tree, self.total, self.progress = tree, total, progress
        self.done = 0
        self.first: tuple[str, tuple[int, ...]] | None = None  # (file, shape) every image must match

    def decode(self, files: list[tuple[str, int]]) -> ImageSet:
        images: np.ndarray | None = None
        labels = np.array([label for _, label in files], dtype=np.int64)
        for i, (rel, _) in enumerate(files):
            image = _decode_image(self.tree.read(rel), self.tree.where(rel))
            if self.first is None:
                self.first = (rel, image.shape)
            elif image.shape != self.first[1]:
                (h, w), (fh, fw) = image.shape[:2], self.first[1][:2]
                raise UserError(
                    f"{self.tree.where(rel)} is {w}x{h} but {self.tree.where(self.first[0])} is {fw}x{fh}: "
                    "all images must have the same size"
                )
            if images is None:
                images = np.empty((len(files), *image.shape), dtype=np.uint8)
            images[i] = image
            self.done += 1
            if self.progress is not None and (self.done % PROGRESS_EVERY == 0 or self.done == self.total):
                self.progress(self.done, self.total)
        if images is None:
            images = np.empty((0, *(self.first[1] if self.first else (0, 0, 3))), dtype=np.uint8)
        return ImageSet(images, labels)


def _decode_image(data: bytes, where: str) -> np.ndarray:
    """One image file's bytes as uint8 (H, W, 3) RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError as err:
        raise UserError(f"{where} is not a readable image (unknown or damaged format)") from err
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError ...
        raise UserError(f"{where} is not a readable image ({_one_line(err)})") from err


# ------------------------------------------------------------------------------------------ CIFAR-10's pickled batches


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches (dicts of lists, bytes and numpy arrays) and refuses every other global."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
        ("builtins", "bytes"),
        ("__builtin__", "bytes"),
    }

    def find_class(self, module: str, name: str):
        module = module.replace("numpy._core", "numpy.core")
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        if module.startswith("numpy.core"):
            new = "numpy._core" + module[len("numpy.core") :]
            try:  # numpy >= 2 moved numpy.core to numpy._core (the old name warns)
                return getattr(importlib.import_module(new), name)
            except ImportError:
                pass
        if module == "__builtin__":
            module = "builtins"
        return getattr(importlib.import_module(module), name)


def _unpickle_batch(tree: _Tree, rel: str) -> dict:
    try:
        batch = _BatchUnpickler(io.BytesIO(tree.read(rel)), encoding="latin1").load()
        if not isinstance(batch, dict):
            raise ValueError(f"expected a dict, got {type(batch).__name__}")
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{tree.where(rel)} is not a readable CIFAR-10 batch ({_one_line(err)})") from err
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}


def _decode_cifar_batches(
    tree: _Tree, folder: str, progress: Progress | None
) -> tuple[ImageSet, ImageSet, tuple[str, ...]]:
    """The train and test sets of CIFAR-10's ``cifar-10-batches-py`` folder (data_batch_1..5, test_batch)."""
    meta = _unpickle_batch(tree, _join(folder, _CIFAR_META))
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or not names:
        raise UserError(f"{tree.where(_join(folder, _CIFAR_META))} has no label_names list")
    classes = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    numbered = []
    for rel in tree.files:
        parent, _, name = rel.rpartition("/")
        if parent == folder and (match := _CIFAR_TRAIN.fullmatch(name)):
            numbered.append((int(match.group(1)), rel))
    train_files = [rel for _, rel in sorted(numbered)]
    test_file = _join(folder, _CIFAR_TEST)
    if test_file not in tree.files:
        raise UserError(f"{tree.where(folder)} has no {_CIFAR_TEST} (expected CIFAR-10's cifar-10-batches-py layout)")
    log.info("reading CIFAR-10 batches from %s", tree.where(folder))
    steps = len(train_files) + 1
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for step, (split, rel) in enumerate([("train", r) for r in train_files] + [("test", test_file)], start=1):
        parts[split].append(_cifar_batch_arrays(tree, rel, len(classes)))
        if progress is not None:
            progress(step, steps)
    train, test = (
        ImageSet(np.concatenate([i for i, _ in parts[s]]), np.concatenate([lab for _, lab in parts[s]]))
        for s in ("train", "test")
    )
    return train, test, classes


def _cifar_batch_arrays(tree: _Tree, rel: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle_batch(tree, rel)
    try:
        data = np.asarray(batch["data"])
        labels = np.asarray(batch["labels"], dtype=np.int64)
        size = int(np.prod(_CIFAR_SHAPE))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size:
            raise ValueError(f"data must be uint8 (N, {size}), got {data.dtype} {data.shape}")
        if labels.shape != (len(data),):
            raise ValueError(f"{len(data)} images but {labels.size} labels")
        if labels.size and not (0 <= labels.min() and labels.max() < num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    except (KeyError, ValueError, TypeError) as err:
        raise UserError(f"{tree.where(rel)} is not a readable CIFAR-10 batch ({_one_line(err)})") from err
    images = np.ascontiguousarray(data.reshape(-1, *_CIFAR_SHAPE).transpose(0, 2, 3, 1))
    return images, labels


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__
