"""From ``DataConfig.path`` to arrays: the torchvision download, or a folder or archive decoded once and cached."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.config import DataConfig
from pipelines.data.cache import cache_path, file_digest, listing_digest, read_cache, write_cache
from pipelines.data.cifar_batches import decode_cifar_batches, find_cifar_batches, is_batch_file
from pipelines.data.image_folder import decode_image_folder, find_image_folder, is_image_name
from pipelines.data.sets import ImageSet, Progress, Splits, balanced_subset, resized
from pipelines.data.trees import Tree, open_tree
from pipelines.errors import UserError

log = logging.getLogger(__name__)

TORCHVISION_CIFAR10 = "cifar10"  # the DataConfig.path that means "the official set through torchvision"
OFFLINE_MESSAGE = (
    "cannot download CIFAR-10 (offline?): pass --data with a local copy, "
    "e.g. --data ../shared/data/cifar10-jpeg.tar.xz or a cifar-10-python.tar.gz"
)


class SplitsCache:
    """The last splits loaded, reused while the data config stays the same (e.g. the trials of one worker)."""

    def __init__(self) -> None:
        self._key: DataConfig | None = None
        self._splits: Splits | None = None

    def get(self, cfg: DataConfig) -> Splits:
        """``load_splits(cfg)``, or the splits already loaded for an equal ``cfg``."""
        if self._splits is None or self._key != cfg:
            self._splits = load_splits(cfg)
            self._key = cfg
        return self._splits


def load_splits(cfg: DataConfig, *, seed: int = 0, progress: Progress | None = None) -> Splits:
    """Load ``cfg.path`` and apply ``train_limit``, ``test_limit`` (class-balanced subsets) and ``val_size``.

    ``seed`` picks the subsets (the same seed gives the same images); the validation split is class-balanced,
    taken from the (limited) train set and disjoint from what remains of it. Order within a split is the source's.
    """
    loaded = _load(cfg.path, cache_dir=cfg.cache_dir, progress=progress, size=cfg.image_size)
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


@dataclass(frozen=True, eq=False)
class _Loaded:
    train: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    source: str


def _load(path: str, *, cache_dir: str | Path, progress: Progress | None, size: int | None = None) -> _Loaded:
    cache = Path(cache_dir).expanduser()
    if path == TORCHVISION_CIFAR10:
        loaded = _load_torchvision_cifar10(cache / "cifar10")
        return dataclasses.replace(loaded, train=resized(loaded.train, size), test=resized(loaded.test, size))
    source = Path(path).expanduser()
    if not source.exists():
        raise UserError(f"data path {path} does not exist")
    if source.is_dir():
        digest = listing_digest(source)
        label = f"{source.name or source}/ (listing sha256 {digest[:8]}...)"
    else:
        digest = file_digest(source)
        label = f"{source.name} (sha256 {digest[:8]}...)"
    cache_file = cache_path(cache, digest, size=size)
    cached = read_cache(cache_file)
    if cached is not None:
        log.info("data %s: decoded arrays from the cache %s", label, cache_file)
        return _Loaded(*cached, source=label)
    tree = open_tree(source, wanted=_wanted)
    try:
        train, test, classes = _decode_tree(tree, progress, size)
    finally:
        tree.close()
    write_cache(cache_file, train, test, classes)
    return _Loaded(train, test, classes, source=label)


def _wanted(rel: str) -> bool:
    """Files worth reading out of an archive: images and the CIFAR-10 pickles."""
    name = rel.rpartition("/")[2]
    return is_image_name(name) or is_batch_file(name)


def _decode_tree(tree: Tree, progress: Progress | None, size: int | None) -> tuple[ImageSet, ImageSet, tuple[str, ...]]:
    """CIFAR-10's pickled layout when the tree holds one, else an ImageFolder layout; resized to ``size``."""
    cifar_dir = find_cifar_batches(tree)
    if cifar_dir is not None:
        train, test, classes = decode_cifar_batches(tree, cifar_dir, progress)
        return resized(train, size), resized(test, size), classes
    root = find_image_folder(tree)
    return decode_image_folder(tree, root, progress, size=size)


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
