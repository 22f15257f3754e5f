"""ImageFolder trees: ``<root>/train/<class>/<image>`` + ``<root>/test/<class>/<image>``, decoded with Pillow.

Any format Pillow reads; every image is converted to RGB and all must share one size.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipelines.data.sets import ImageSet, Progress
from pipelines.data.trees import Tree, depth, join
from pipelines.errors import UserError, one_line

log = logging.getLogger(__name__)

PROGRESS_EVERY = 2000  # images between two progress() calls while decoding

_EXTENSIONS: set[str] = set()  # lower-case file extensions Pillow reads, filled on first use


def find_image_folder(tree: Tree) -> str:
    """The shallowest folder with both ``train/`` and ``test/`` in it."""
    roots = [d for d in tree.dirs if join(d, "train") in tree.dirs and join(d, "test") in tree.dirs]
    if not roots:
        kind = "archive" if tree.is_archive else "folder"
        raise UserError(
            f"{tree.origin} has no train/ and test/ folders (expected an ImageFolder layout "
            f"<{kind}>/train/<class>/<image> and <{kind}>/test/<class>/<image>, possibly inside one top folder, "
            "or CIFAR-10's cifar-10-batches-py)"
        )
    roots.sort(key=lambda d: (depth(d), d))
    if len(roots) > 1 and depth(roots[0]) == depth(roots[1]):
        log.warning("%s has several train/ + test/ folders; using %s", tree.origin, tree.where(roots[0]))
    return roots[0]


def is_image_name(name: str) -> bool:
    """Whether a file name has an extension Pillow reads (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in _image_extensions()


def _image_extensions() -> set[str]:
    if not _EXTENSIONS:
        Image.init()
        _EXTENSIONS.update(ext.lower() for ext in Image.registered_extensions())
    return _EXTENSIONS


def decode_image_folder(
    tree: Tree, root: str, progress: Progress | None, *, size: int | None = None
) -> tuple[ImageSet, ImageSet, tuple[str, ...]]:
    """The train and test sets of the ImageFolder at ``root``; classes are the sorted class folder names.

    Train and test must have the same classes, each with at least one image, and every image the same size.
    """
    splits = {split: _class_files(tree, join(root, split)) for split in ("train", "test")}
    train_classes, test_classes = set(splits["train"]), set(splits["test"])
    if train_classes != test_classes:
        only_train = ", ".join(sorted(train_classes - test_classes)) or "-"
        only_test = ", ".join(sorted(test_classes - train_classes)) or "-"
        raise UserError(
            f"train and test classes differ in {tree.where(root)}: "
            f"only in train: {only_train}; only in test: {only_test}"
        )
    if not train_classes:
        raise UserError(f"{tree.where(join(root, 'train'))} has no class folders (expected train/<class>/<image>)")
    classes = tuple(sorted(train_classes))
    for split, by_class in splits.items():
        for name in classes:
            if not by_class[name]:
                raise UserError(f"{tree.where(join(root, split, name))} has no images")
    files = {
        split: [(rel, label) for label, name in enumerate(classes) for rel in by_class[name]]
        for split, by_class in splits.items()
    }
    total = sum(len(f) for f in files.values())
    log.info("decoding %d images from %s", total, tree.origin)
    decoder = _Decoder(tree, total, progress, size=size)
    train, test = (decoder.decode(files[split]) for split in ("train", "test"))
    return train, test, classes


def _class_files(tree: Tree, split_dir: str) -> dict[str, list[str]]:
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
        elif is_image_name(inner):
            classes[inner.split("/", 1)[0]].append(rel)
        else:
            skipped.append(rel)
    if skipped:
        example = tree.where(min(skipped))
        log.warning("ignoring %d non-image file(s) in %s, e.g. %s", len(skipped), tree.where(split_dir), example)
    return {name: sorted(files) for name, files in classes.items()}


MAX_BUDGET_BYTES = 16 * 2**30  # the decoded set may take at most this much memory (uint8), and at most half the
# machine's: CIFAR-10 takes 184 MB; an ImageFolder of large photos is refused before any allocation, with the key
# that resizes it (data.image_size), rather than swapping or dying in numpy


def decoded_budget() -> int:
    """Bytes the decoded images (uint8, every split) may take: half this machine's memory, at most 16 GiB."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that says
        return MAX_BUDGET_BYTES
    return min(MAX_BUDGET_BYTES, memory // 2)


class _Decoder:
    """Decodes files of a tree to one shared image size, reporting progress across calls.

    Each image's size is read from its header before its pixels are decoded: a set that would not fit the memory
    budget, an image of another size, or one past Pillow's decompression-bomb limit is refused in one line before
    anything is allocated for it.
    """

    def __init__(self, tree: Tree, total: int, progress: Progress | None, *, size: int | None = None) -> None:
        self.tree, self.total, self.progress, self.size = tree, total, progress, size
        self.done = 0
        self.first: tuple[str, tuple[int, ...]] | None = None  # (file, shape) every image must match

    def decode(self, files: list[tuple[str, int]]) -> ImageSet:
        images: np.ndarray | None = None
        labels = np.array([label for _, label in files], dtype=np.int64)
        for i, (rel, _) in enumerate(files):
            where = self.tree.where(rel)
            with _opened(self.tree.read(rel), where) as image:
                shape = (self.size, self.size, 3) if self.size is not None else (image.height, image.width, 3)
                self._check_shape(rel, shape)
                pixels = _pixels(image, where, size=self.size)
            if images is None:
                images = np.empty((len(files), *shape), dtype=np.uint8)
            images[i] = pixels
            self.done += 1
            if self.progress is not None and (self.done % PROGRESS_EVERY == 0 or self.done == self.total):
                self.progress(self.done, self.total)
        if images is None:
            images = np.empty((0, *(self.first[1] if self.first else (0, 0, 3))), dtype=np.uint8)
        return ImageSet(images, labels)

    def _check_shape(self, rel: str, shape: tuple[int, int, int]) -> None:
        """The first image fixes the size (and must leave the whole set within the budget); the rest match it."""
        if self.first is None:
            needed, budget = self.total * int(np.prod(shape)), decoded_budget()
            if needed > budget:
                h, w = shape[:2]
                raise UserError(
                    f"the {self.total:,} images would take {needed / 2**30:.1f} GiB decoded ({w}x{h} RGB, like "
                    f"{self.tree.where(rel)}): more than the memory budget of {budget / 2**30:.1f} GiB (half this "
                    f"machine's memory, at most {MAX_BUDGET_BYTES // 2**30} GiB); set data.image_size (e.g. "
                    "data.image_size=32) to resize them"
                )
            self.first = (rel, shape)
        elif shape != self.first[1]:
            (h, w), (fh, fw) = shape[:2], self.first[1][:2]
            raise UserError(
                f"{self.tree.where(rel)} is {w}x{h} but {self.tree.where(self.first[0])} is {fw}x{fh}: "
                "all images must have the same size: set data.image_size (e.g. data.image_size=32) to resize them"
            )


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale as 8-bit (Pillow's convert would clip them to white): 16-bit integers scaled by
    1/257, floats in [0, 1] by 255, anything else clipped to 0..255."""
    if image.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
        values = values / 257.0
    elif image.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


@contextlib.contextmanager
def _opened(data: bytes, where: str) -> Iterator[Image.Image]:
    """The image in ``data``, its header read and its pixels not yet decoded; UserError naming ``where`` when
    Pillow cannot read it or it is past Pillow's decompression-bomb limit (its warning is a refusal here)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        limit = Image.MAX_IMAGE_PIXELS or 0
        raise UserError(
            f"{where} is larger than Pillow's decompression-bomb limit ({limit / 1e6:.0f} megapixels): refused "
            f"before decoding ({one_line(err)})"
        ) from err
    except UnidentifiedImageError as err:
        raise UserError(f"{where} is not a readable image (unknown or damaged format)") from err
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError ...
        raise UserError(f"{where} is not a readable image ({one_line(err)})") from err
    with image:
        yield image


def _pixels(image: Image.Image, where: str, *, size: int | None = None) -> np.ndarray:
    """An opened image's pixels as uint8 (H, W, 3) RGB (grayscale and palette images expanded), resized to
    ``size`` x ``size`` when given."""
    try:
        rgb = _to_8_bit(image).convert("RGB")
        if size is not None and rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
        return np.asarray(rgb)
    except Exception as err:  # a damaged file shows only when its pixels are read: OSError, SyntaxError ...
        raise UserError(f"{where} is not a readable image ({one_line(err)})") from err
