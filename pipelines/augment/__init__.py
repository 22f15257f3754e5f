"""Training augmentation: an albumentations pipeline from the config, run batched on the device when it can be.

``augment.ops`` is a list of ``{"name": <albumentations transform>, **kwargs}`` (built by
:func:`build_albumentations`). Two ways to run it:

* :class:`BatchAugment` -- the standard ops (PadIfNeeded, RandomCrop, HorizontalFlip, VerticalFlip,
  CoarseDropout) re-implemented with torch over a whole uint8 batch ``(N, C, H, W)`` on its device, sampling
  every random choice per image exactly as albumentations 2.0.8 does (same distributions, not the same
  random stream). Geometric ops (pads, crops, flips) are composed as per-image row/column index maps and
  applied with one gather; cutout is a broadcast mask. No per-image Python.
* :class:`SampleDataset` -- any other pipeline, per sample through albumentations (in DataLoader workers).

:class:`AlternatingFlip` (``augment.alternating_flip``) decides which images the HorizontalFlip op mirrors from
their identity and the epoch (airbench), instead of a fresh coin each epoch.

``BatchAugment.from_ops`` returns None when some op has no batched version; the caller then uses the other path.

Modules: ``spec`` (ops -> albumentations), ``batched`` (the torch executor), ``sample`` (per sample),
``alternating`` (the derandomised flip).
"""

from pipelines.augment.alternating import AlternatingFlip
from pipelines.augment.batched import BatchAugment
from pipelines.augment.sample import SampleDataset
from pipelines.augment.spec import build_albumentations, fit_to_size

__all__ = ["AlternatingFlip", "BatchAugment", "SampleDataset", "build_albumentations", "fit_to_size"]
