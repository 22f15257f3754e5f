"""Data the recipe did not foresee: images that are not 32x32 RGB train, or are refused up front in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import CLASSES, synthetic_images
from pipelines.augment import fit_to_size
from pipelines.config import recipe_augment
from sweeper.cli import app

TINY = ["model.width=0.125", "train.batch_size=32", "train.device=cpu", "train.epochs=2"]


def write_folder(root: Path, size: int, *, mode: str = "RGB", sizes: dict[int, int] | None = None) -> Path:
    """An ImageFolder of the 3 synthetic shapes at ``size`` x ``size`` (image i at ``sizes[i]`` if given)."""
    for split, n, seed in (("train", 150, 0), ("test", 45, 1)):
        images, labels = synthetic_images(n, classes=len(CLASSES), seed=seed)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            side = (sizes or {}).get(i, size)
            picture = Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR).convert(mode)
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            picture.save(folder / f"{i:05d}.png")
    return root


def train(data: Path, out: Path, *extra: str) -> object:
    return CliRunner().invoke(app, ["train", "--json", "--data", str(data), "--out", str(out), "--set", *TINY, *extra])


@pytest.mark.parametrize(("size", "mode"), [(28, "L"), (64, "RGB")], ids=["28x28-gray", "64x64-rgb"])
def test_images_of_another_size_or_in_gray_train_with_the_recipe_fitted_to_them(tmp_path, size, mode):
    data = write_folder(tmp_path / "data", size, mode=mode)
    result = train(data, tmp_path / "run", "train.epochs=8", "optim.lr=0.2")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "complete" and summary["test_accuracy"] > 1 / 3  # it learns: better than chance
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(written["history"]) == 8


def test_the_recipe_pipeline_follows_the_image_size_and_custom_ones_stay_as_written():
    fitted = fit_to_size(recipe_augment(), 28, 28)
    assert (fitted[0]["min_height"], fitted[1]["height"], fitted[3]["hole_height_range"]) == (36, 28, [7, 7])
    assert fit_to_size(recipe_augment(), 32, 32) == recipe_augment()
    custom = ({"name": "HorizontalFlip", "p": 0.5},)
    assert fit_to_size(custom, 64, 64) == custom


def test_images_of_mixed_sizes_are_refused_in_one_line_that_says_how_to_resize_them(tmp_path):
    data = write_folder(tmp_path / "data", 32, sizes={3: 40})
    result = train(data, tmp_path / "run")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "all images must have the same size" in lines[0] and "data.image_size" in lines[0]
    resized = train(data, tmp_path / "run", "data.image_size=24")
    assert resized.exit_code == 0, resized.output


def test_a_custom_pipeline_that_cannot_run_on_the_images_is_refused_before_training(tmp_path):
    data = write_folder(tmp_path / "data", 28)
    ops = json.dumps([{"name": "RandomCrop", "height": 32, "width": 32}])
    result = train(data, tmp_path / "run", f"augment.ops={ops}")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "augment.ops" in lines[0], result.output
    assert not (tmp_path / "run").exists()


def test_images_smaller_than_the_network_needs_are_refused_with_the_key_to_set(tmp_path):
    data = write_folder(tmp_path / "data", 6)
    result = train(data, tmp_path / "run")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "data.image_size" in lines[0], result.output
