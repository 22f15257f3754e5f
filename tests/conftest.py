"""Shared fixtures: small generated image sets that a tiny ResNet can learn in a few CPU epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("circle", "cross", "square")
SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.xz"


def synthetic_images(n: int, *, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 32x32 RGB images: class k is a bright shape k at a random place on a noisy background.

    Returns (uint8 (n, 32, 32, 3), int64 (n,)), labels balanced and in class order repeated.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 90, size=(n, 32, 32, 3), dtype=np.int64)
    yy, xx = np.mgrid[0:32, 0:32]
    for i, label in enumerate(labels):
        cy, cx = rng.integers(10, 22, size=2)
        color = rng.integers(150, 256, size=3)
        if label % 3 == 0:  # disc
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
        elif label % 3 == 1:  # cross
            mask = ((abs(yy - cy) <= 1) & (abs(xx - cx) <= 7)) | ((abs(xx - cx) <= 1) & (abs(yy - cy) <= 7))
        else:  # hollow square
            box = (abs(yy - cy) <= 6) & (abs(xx - cx) <= 6)
            mask = box & ~((abs(yy - cy) <= 4) & (abs(xx - cx) <= 4))
        images[i][mask] = color
    return images.astype(np.uint8), labels.astype(np.int64)


def write_image_folder(root: Path, *, n_train: int = 60, n_test: int = 30, classes=CLASSES, seed: int = 0) -> Path:
    """Write ``root/train/<class>/i.png`` and ``root/test/<class>/i.png``; returns root."""
    for split, n, split_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = synthetic_images(n, classes=len(classes), seed=split_seed)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class ImageFolder: 300 train and 90 test PNGs (shared by the session; do not modify)."""
    return write_image_folder(tmp_path_factory.mktemp("synthetic") / "shapes", n_train=300, n_test=90)


@pytest.fixture()
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own folder, so default outputs (runs/, sweeper.db, mlruns) never leak."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path / "cache"))
