"""Each figure function writes a real PNG where it is told, creating folders, even for edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines import plots
from pipelines.callbacks import EpochMetrics
from pipelines.config import Config
from pipelines.schedules import schedule_curve

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    assert path.stat().st_size > 1024, path


def history(n: int, *, val: bool = False) -> list[EpochMetrics]:
    return [
        EpochMetrics(
            epoch=i,
            train_loss=1.0 / i,
            train_accuracy=0.5 + 0.1 * i,
            test_loss=1.2 / i,
            test_accuracy=0.45 + 0.1 * i,
            val_loss=1.1 / i if val else None,
            val_accuracy=0.4 + 0.1 * i if val else None,
            lr=0.1,
            seconds=1.0,
            eval_seconds=0.1,
        )
        for i in range(1, n + 1)
    ]


def test_lr_schedule_plot_is_written_into_new_folders(tmp_path: Path) -> None:
    curve = schedule_curve(Config(), steps_per_epoch=10)
    path = plots.plot_lr_schedule(curve.lrs, tmp_path / "a" / "b" / "lr.png", steps_per_epoch=10)
    assert path == tmp_path / "a" / "b" / "lr.png"
    assert_png(path)


def test_lr_schedule_plot_with_cycled_momentum(tmp_path: Path) -> None:
    curve = schedule_curve(Config().with_overrides({"schedule.cycle_momentum": True}), steps_per_epoch=10)
    assert_png(plots.plot_lr_schedule(curve.lrs, tmp_path / "lr.png", steps_per_epoch=10, momenta=curve.momenta))


@pytest.mark.parametrize("val", [False, True])
def test_curves_plot_is_written(tmp_path: Path, val: bool) -> None:
    assert_png(plots.plot_curves(history(4, val=val), tmp_path / "curves.png"))


def test_curves_plot_survives_a_diverged_loss(tmp_path: Path) -> None:
    h = history(2)
    h[-1] = EpochMetrics(**{**h[-1].__dict__, "train_loss": float("nan")})
    assert_png(plots.plot_curves(h, tmp_path / "curves.png"))


def test_misclassified_grid_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)
    true, pred = np.array([0, 1, 2, 0, 1, 2, 0]), np.array([1, 2, 0, 2, 0, 1, 1])
    path = plots.plot_misclassified(images, true, pred, ("a", "b", "c"), tmp_path / "wrong.png")
    assert_png(path)


def test_misclassified_grid_with_no_images_still_writes_a_png(tmp_path: Path) -> None:
    empty = np.zeros((0, 32, 32, 3), np.uint8)
    none = np.zeros(0, np.int64)
    assert_png(plots.plot_misclassified(empty, none, none, ("a", "b"), tmp_path / "wrong.png"))


def test_misclassified_grid_shows_at_most_count_images(tmp_path: Path) -> None:
    images = np.zeros((40, 32, 32, 3), np.uint8)
    labels = np.zeros(40, np.int64)
    small = plots.plot_misclassified(images, labels, labels + 1, ("a", "b"), tmp_path / "few.png", count=4)
    large = plots.plot_misclassified(images, labels, labels + 1, ("a", "b"), tmp_path / "many.png", count=25)
    assert_png(small)
    assert_png(large)
    assert small.stat().st_size < large.stat().st_size


def test_lr_finder_plot_is_written(tmp_path: Path) -> None:
    lrs = np.geomspace(1e-4, 10, 50)
    losses = (np.log10(lrs) + 1) ** 2 + 1
    suggestions = {"valley": float(lrs[10]), "steepest": float(lrs[5]), "min_loss_div10": float(lrs[30] / 10)}
    assert_png(plots.plot_lr_finder(lrs, losses, tmp_path / "lr_finder.png", suggestions=suggestions, chosen="valley"))


def test_lr_finder_plot_in_linear_mode(tmp_path: Path) -> None:
    lrs = np.linspace(0.01, 1, 20)
    losses = (lrs - 0.5) ** 2
    path = plots.plot_lr_finder(
        lrs, losses, tmp_path / "lin.png", suggestions={"valley": 0.3}, chosen="valley", log_x=False
    )
    assert_png(path)
