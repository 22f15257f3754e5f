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

Modules: ``sets`` (ImageSet, Splits, balanced subsets), ``sources`` (the loaders and the dispatch over sources),
``cache`` (content digests, the ``.npz`` files), ``trees`` (folders and archives as one kind of tree),
``image_folder`` and ``cifar_batches`` (the two layouts a tree may hold).
"""

from pipelines.data.sets import ImageSet, Progress, Splits, balanced_subset, channel_stats
from pipelines.data.sources import OFFLINE_MESSAGE, TORCHVISION_CIFAR10, SplitsCache, load_splits

__all__ = [
    "OFFLINE_MESSAGE",
    "TORCHVISION_CIFAR10",
    "ImageSet",
    "Progress",
    "Splits",
    "SplitsCache",
    "balanced_subset",
    "channel_stats",
    "load_splits",
]
