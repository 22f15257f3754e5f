"""CIFAR-10's official pickles: ``cifar-10-batches-py/`` with batches.meta, data_batch_1..5 and test_batch.

Read with an unpickler that accepts only the numpy and bytes objects those files hold, so a tampered pickle
cannot run code.
"""

from __future__ import annotations

import importlib
import io
import logging
import pickle
import re

import numpy as np

from pipelines.data.sets import ImageSet, Progress
from pipelines.data.trees import Tree, depth, join
from pipelines.errors import UserError, one_line

log = logging.getLogger(__name__)

_META = "batches.meta"
_TEST = "test_batch"
_TRAIN = re.compile(r"data_batch_(\d+)")
_SHAPE = (3, 32, 32)  # each row of a batch's data: 1024 red, 1024 green, 1024 blue values, row-major


def find_cifar_batches(tree: Tree) -> str | None:
    """The shallowest folder holding ``batches.meta`` and ``data_batch_1`` (CIFAR-10's pickled layout), if any."""
    found = [rel.rpartition("/")[0] for rel in tree.files if rel.rpartition("/")[2] == _META]
    found = [d for d in found if join(d, "data_batch_1") in tree.files]
    return min(found, key=lambda d: (depth(d), d)) if found else None


def is_batch_file(name: str) -> bool:
    """Whether a file name is one of the layout's pickles (batches.meta, data_batch_<n>, test_batch)."""
    return name in (_META, _TEST) or bool(_TRAIN.fullmatch(name))


def decode_cifar_batches(
    tree: Tree, folder: str, progress: Progress | None
) -> tuple[ImageSet, ImageSet, tuple[str, ...]]:
    """The train and test sets of CIFAR-10's ``cifar-10-batches-py`` folder (data_batch_1..5, test_batch)."""
    meta = _unpickle_batch(tree, join(folder, _META))
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or not names:
        raise UserError(f"{tree.where(join(folder, _META))} has no label_names list")
    classes = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    numbered = []
    for rel in tree.files:
        parent, _, name = rel.rpartition("/")
        if parent == folder and (match := _TRAIN.fullmatch(name)):
            numbered.append((int(match.group(1)), rel))
    train_files = [rel for _, rel in sorted(numbered)]
    test_file = join(folder, _TEST)
    if test_file not in tree.files:
        raise UserError(f"{tree.where(folder)} has no {_TEST} (expected CIFAR-10's cifar-10-batches-py layout)")
    log.info("reading CIFAR-10 batches from %s", tree.where(folder))
    steps = len(train_files) + 1
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for step, (split, rel) in enumerate([("train", r) for r in train_files] + [("test", test_file)], start=1):
        parts[split].append(_batch_arrays(tree, rel, len(classes)))
        if progress is not None:
            progress(step, steps)
    train, test = (
        ImageSet(np.concatenate([i for i, _ in parts[s]]), np.concatenate([lab for _, lab in parts[s]]))
        for s in ("train", "test")
    )
    return train, test, classes


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches (dicts of lists, bytes and numpy arrays) and refuses every other global."""

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
            ("builtins", "bytes"),
            ("__builtin__", "bytes"),
        }
    )

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


def _unpickle_batch(tree: Tree, rel: str) -> dict:
    try:
        batch = _BatchUnpickler(io.BytesIO(tree.read(rel)), encoding="latin1").load()
        if not isinstance(batch, dict):
            raise ValueError(f"expected a dict, got {type(batch).__name__}")
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{tree.where(rel)} is not a readable CIFAR-10 batch ({one_line(err)})") from err
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}


def _batch_arrays(tree: Tree, rel: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as (uint8 (N, 32, 32, 3) images, int64 (N,) labels in [0, num_classes))."""
    batch = _unpickle_batch(tree, rel)
    try:
        data = np.asarray(batch["data"])
        labels = np.asarray(batch["labels"], dtype=np.int64)
        size = int(np.prod(_SHAPE))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size:
            raise ValueError(f"data must be uint8 (N, {size}), got {data.dtype} {data.shape}")
        if labels.shape != (len(data),):
            raise ValueError(f"{len(data)} images but {labels.size} labels")
        if labels.size and not (labels.min() >= 0 and labels.max() < num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    except (KeyError, ValueError, TypeError) as err:
        raise UserError(f"{tree.where(rel)} is not a readable CIFAR-10 batch ({one_line(err)})") from err
    images = np.ascontiguousarray(data.reshape(-1, *_SHAPE).transpose(0, 2, 3, 1))
    return images, labels
