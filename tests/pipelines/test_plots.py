"""pipelines.plots: what each figure shows (axes, series and their data, labels, legends, scales, panels), and that
each plot_* function writes that figure where it is told."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from conftest import assert_png
from pipelines import plots
from pipelines.callbacks import EpochMetrics
from pipelines.config import Config
from pipelines.errors import UserError
from pipelines.schedules import schedule_curve


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
            epoch_seconds=1.0,
            eval_seconds=0.1,
        )
        for i in range(1, n + 1)
    ]


def ydata(ax: Axes) -> list[list[float]]:
    """Each line's y values, in the order drawn."""
    return [list(map(float, line.get_ydata())) for line in ax.get_lines()]


def legend(ax: Axes) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def shown_images(fig: Figure) -> list[Axes]:
    return [ax for ax in fig.axes if ax.get_images()]


# -- the LR schedule ------------------------------------------------------------------------------------------------


def test_lr_schedule_figure_draws_each_iterations_lr_with_epochs_on_top() -> None:
    curve = schedule_curve(Config(), steps_per_epoch=10)
    fig = plots.lr_schedule_figure(curve.lrs, steps_per_epoch=10, momenta=curve.momenta)
    (ax,) = fig.axes  # the recipe does not cycle momentum: no second axis
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == list(range(240)) and list(line.get_ydata()) == pytest.approx(curve.lrs)
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "iteration",
        "learning rate",
        "Learning-rate schedule",
    )
    (top,) = ax.child_axes  # the secondary x axis, in epochs
    assert top.get_xlabel() == "epoch"
    assert plots.lr_schedule_figure([0.1, 0.2], steps_per_epoch=1, title="mine").axes[0].get_title() == "mine"


def test_lr_schedule_plot_is_written_into_new_folders(tmp_path: Path) -> None:
    curve = schedule_curve(Config(), steps_per_epoch=10)
    path = plots.plot_lr_schedule(curve.lrs, tmp_path / "a" / "b" / "lr.png", steps_per_epoch=10)
    assert path == tmp_path / "a" / "b" / "lr.png"
    assert_png(path)


def test_lr_schedule_plot_with_cycled_momentum(tmp_path: Path) -> None:
    curve = schedule_curve(Config().with_overrides({"schedule.cycle_momentum": True}), steps_per_epoch=10)
    fig = plots.lr_schedule_figure(curve.lrs, steps_per_epoch=10, momenta=curve.momenta)
    lr_axis, momentum_axis = fig.axes  # momentum on a second y axis, sharing the iterations
    assert momentum_axis.get_ylabel() == "momentum"
    assert ydata(momentum_axis) == [pytest.approx(curve.momenta)] and ydata(lr_axis) == [pytest.approx(curve.lrs)]
    assert_png(plots.plot_lr_schedule(curve.lrs, tmp_path / "lr.png", steps_per_epoch=10, momenta=curve.momenta))


def test_lr_schedules_figure_has_one_panel_per_curve_in_two_columns_x_in_epochs(tmp_path: Path) -> None:
    curves = {"one_cycle": [0.1, 0.4, 0.2, 0.1], "step": [0.4, 0.4, 0.04, 0.04], "plateau": []}
    fig = plots.lr_schedules_figure(curves, steps_per_epoch=2)
    assert len(fig.axes) == 4  # 2 rows x 2 columns, the last one empty and hidden
    drawn, spare = fig.axes[:3], fig.axes[3]
    assert [ax.get_title() for ax in drawn] == list(curves) and not spare.axison
    assert list(drawn[0].get_lines()[0].get_xdata()) == [0, 0.5, 1, 1.5]  # steps / steps_per_epoch
    assert ydata(drawn[1]) == [curves["step"]] and ydata(drawn[2]) == [[]]  # an empty curve: its name only
    assert [ax.get_xlabel() for ax in fig.axes[2:]] == ["epoch", "epoch"]  # under the bottom row
    assert fig.get_supylabel() == "learning rate"
    assert_png(plots.plot_lr_schedules(curves, tmp_path / "all.png", steps_per_epoch=2))


# -- loss and accuracy per epoch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("val", [False, True])
def test_curves_plot_is_written(tmp_path: Path, val: bool) -> None:
    h = history(4, val=val)
    fig = plots.curves_figure(h)
    loss, accuracy = fig.axes
    assert (loss.get_title(), loss.get_xlabel(), loss.get_ylabel()) == ("Loss", "epoch", "cross-entropy")
    assert (accuracy.get_title(), accuracy.get_xlabel(), accuracy.get_ylabel()) == ("Accuracy", "epoch", "accuracy (%)")
    splits = ["train", "test", "validation"] if val else ["train", "test"]
    assert legend(loss) == legend(accuracy) == splits
    assert ydata(loss)[0] == pytest.approx([m.train_loss for m in h])
    assert ydata(accuracy)[1] == pytest.approx([100 * m.test_accuracy for m in h])  # in percent
    if val:
        assert ydata(loss)[2] == pytest.approx([m.val_loss for m in h])
    assert all(list(line.get_xdata()) == [1, 2, 3, 4] for line in loss.get_lines())
    assert_png(plots.plot_curves(h, tmp_path / "curves.png"))


def test_curves_show_a_split_only_at_the_epochs_that_evaluated_it() -> None:
    h = [m if m.epoch % 2 == 0 else EpochMetrics(**{**m.__dict__, "test_loss": None, "test_accuracy": None})
         for m in history(4)]  # fmt: skip
    train, test = plots.curves_figure(h).axes[0].get_lines()
    assert list(train.get_xdata()) == [1, 2, 3, 4] and list(test.get_xdata()) == [2, 4]


def test_curves_plot_survives_a_diverged_loss(tmp_path: Path) -> None:
    h = history(2)
    h[-1] = EpochMetrics(**{**h[-1].__dict__, "train_loss": float("nan")})
    train = plots.curves_figure(h).axes[0].get_lines()[0]
    assert math.isnan(train.get_ydata()[-1])
    assert_png(plots.plot_curves(h, tmp_path / "curves.png"))


# -- the misclassified images ---------------------------------------------------------------------------------------


def test_misclassified_grid_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)
    true, pred = np.array([0, 1, 2, 0, 1, 2, 0]), np.array([1, 2, 0, 2, 0, 1, 1])
    fig = plots.misclassified_figure(images, true, pred, ("a", "b", "c"))
    assert len(fig.axes) == 9 and not any(ax.axison for ax in fig.axes)  # 3 x 3, no ticks
    shown = shown_images(fig)
    assert len(shown) == 7
    assert [ax.get_title() for ax in shown[:3]] == ["a\n-> b", "b\n-> c", "c\n-> a"]  # true -> predicted
    assert np.array_equal(shown[0].get_images()[0].get_array(), images[0])
    assert fig.get_suptitle() == "7 misclassified test images (true -> predicted)"
    path = plots.plot_misclassified(images, true, pred, ("a", "b", "c"), tmp_path / "wrong.png")
    assert_png(path)


def test_misclassified_grid_with_no_images_still_writes_a_png(tmp_path: Path) -> None:
    empty = np.zeros((0, 32, 32, 3), np.uint8)
    none = np.zeros(0, np.int64)
    fig = plots.misclassified_figure(empty, none, none, ("a", "b"))
    assert len(fig.axes) == 1 and not shown_images(fig)
    assert fig.get_suptitle() == "no misclassified test image"
    assert_png(plots.plot_misclassified(empty, none, none, ("a", "b"), tmp_path / "wrong.png"))


@pytest.mark.parametrize(("count", "grid"), [(4, 4), (7, 9), (25, 25), (40, 30)])
def test_misclassified_grid_shows_at_most_count_images(count: int, grid: int) -> None:
    images = np.zeros((30, 32, 32, 3), np.uint8)
    labels = np.zeros(30, np.int64)
    fig = plots.misclassified_figure(images, labels, labels + 1, ("a", "b"), count=count)
    assert len(shown_images(fig)) == min(count, 30) and len(fig.axes) == grid  # a square grid around them


# -- the range tests ------------------------------------------------------------------------------------------------


def test_lr_finder_plot_is_written(tmp_path: Path) -> None:
    lrs = np.geomspace(1e-4, 10, 50)
    losses = (np.log10(lrs) + 1) ** 2 + 1
    suggestions = {"valley": float(lrs[10]), "steepest": float(lrs[5]), "min_loss_div10": float(lrs[30] / 10)}
    fig = plots.lr_finder_figure(lrs, losses, suggestions=suggestions, chosen="valley")
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("learning rate", "smoothed loss", "LR range test")
    curve, *marks = ax.get_lines()
    assert list(curve.get_ydata()) == pytest.approx(losses)
    assert legend(ax) == [f"{name}: {lr:.3g}" for name, lr in suggestions.items()]
    assert [mark.get_color() for mark in marks] == ["tab:red", "tab:gray", "tab:gray"]  # the chosen one stands out
    assert list(marks[0].get_xdata()) == [suggestions["valley"]] and list(marks[0].get_ydata()) == [losses[10]]
    path = plots.plot_lr_finder(lrs, losses, tmp_path / "lr_finder.png", suggestions=suggestions, chosen="valley")
    assert_png(path)


def test_lr_finder_plot_in_linear_mode(tmp_path: Path) -> None:
    lrs = np.linspace(0.01, 1, 20)
    losses = (lrs - 0.5) ** 2
    fig = plots.lr_finder_figure(lrs, losses, suggestions={"valley": 0.3}, chosen="valley", log_x=False)
    assert fig.axes[0].get_xscale() == "linear" and legend(fig.axes[0]) == ["valley: 0.3"]
    path = plots.plot_lr_finder(
        lrs, losses, tmp_path / "lin.png", suggestions={"valley": 0.3}, chosen="valley", log_x=False
    )
    assert_png(path)


@pytest.mark.parametrize(("epochs", "title"), [(1, "after 1 epoch"), (3, "after 3 epochs")])
def test_accuracy_range_figure_marks_the_best_lr(tmp_path: Path, epochs: int, title: str) -> None:
    lrs, accuracies = [0.01, 0.1, 1.0], [0.3, 0.6, 0.4]
    fig = plots.accuracy_range_figure(lrs, accuracies, best=0.1, metric="val", epochs=epochs)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "val accuracy (%)"
    assert ax.get_title() == f"Accuracy range test: val accuracy {title}"
    line, best = ax.get_lines()
    assert list(line.get_ydata()) == pytest.approx([30, 60, 40])
    assert (list(best.get_xdata()), list(best.get_ydata())) == ([0.1], [pytest.approx(60)])
    assert legend(ax) == ["best: lr 0.1"]
    path = plots.plot_accuracy_range(lrs, accuracies, tmp_path / "acc.png", best=0.1, metric="val", epochs=epochs)
    assert_png(path)


def test_a_figure_that_cannot_be_written_is_a_user_error_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot write .*file/lr\.png"):
        plots.plot_lr_schedule([0.1, 0.2], tmp_path / "file" / "lr.png", steps_per_epoch=1)
