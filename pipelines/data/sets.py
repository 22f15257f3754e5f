"""What every source becomes: :class:`ImageSet` (uint8 images + labels) and :class:`Splits`; balanced subsets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# progress(done, total) while a source is decoded: images (ImageFolder) or batch files (CIFAR-10 pickles)
Progress = Callable[[int, int], None]


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
        rng.permutation(np.flatnonzero(labels == label))[:q] for label, q in zip(present.tolist(), quota, strict=True)
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


def resized(images: ImageSet, size: int | None) -> ImageSet:
    """``images`` at ``size`` x ``size`` pixels (Lanczos, as Pillow does it), or as they are for None or that size."""
    if size is None or images.images.shape[1:3] == (size, size):
        return images
    from PIL import Image  # late: only a resize needs it

    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images.images):  # a one-off when the data is first loaded, then cached
        out[i] = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))
    return ImageSet(out, images.labels)
