"""Matplotlib (Agg) figures: LR schedule, loss/accuracy curves, misclassified-image grid, LR range tests.

Each ``*_figure`` function builds one :class:`~matplotlib.figure.Figure` (outside pyplot's registry, so nothing
holds on to it once dropped); :func:`save_figure` writes one, and each ``plot_*`` function is the two in turn,
returning the written path. Nothing is shown on screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from pipelines.callbacks import EpochMetrics
from pipelines.errors import UserError
from pipelines.paths import atomic_path

DPI = 110


def check_image_path(path: Path) -> None:
    """Raise UserError unless matplotlib can save a figure under ``path``'s extension (png, pdf, svg, ...)."""
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise UserError(f"{path}: cannot draw a .{suffix or '(none)'} file; use one of {', '.join(sorted(formats))}")


def plot_lr_schedule(
    lrs: Sequence[float],
    path: Path,
    *,
    steps_per_epoch: int,
    momenta: Sequence[float] | None = None,
    title: str = "Learning-rate schedule",
) -> Path:
    """:func:`lr_schedule_figure`, written to ``path``."""
    return save_figure(lr_schedule_figure(lrs, steps_per_epoch=steps_per_epoch, momenta=momenta, title=title), path)


def lr_schedule_figure(
    lrs: Sequence[float],
    *,
    steps_per_epoch: int,
    momenta: Sequence[float] | None = None,
    title: str = "Learning-rate schedule",
) -> Figure:
    """LR against iteration (top axis in epochs); momentum on a second axis when it varies."""
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    steps = np.arange(len(lrs))
    ax.plot(steps, lrs, color="tab:blue", lw=1.6, label="learning rate")
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate", color="tab:blue")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if steps_per_epoch > 0:
        top = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch))
        top.set_xlabel("epoch")
    if momenta is not None and len(set(momenta)) > 1:
        ax2 = ax.twinx()
        ax2.plot(steps, momenta, color="tab:orange", lw=1.2, ls="--")
        ax2.set_ylabel("momentum", color="tab:orange")
    return fig


def plot_lr_schedules(curves: dict[str, Sequence[float]], path: Path, *, steps_per_epoch: int) -> Path:
    """:func:`lr_schedules_figure`, written to ``path``."""
    return save_figure(lr_schedules_figure(curves, steps_per_epoch=steps_per_epoch), path)


def lr_schedules_figure(curves: dict[str, Sequence[float]], *, steps_per_epoch: int) -> Figure:
    """One panel per named LR curve (x in epochs), two columns; an empty curve shows its name only."""
    rows = (len(curves) + 1) // 2
    fig = Figure(figsize=(11, 2.2 * rows))
    axes = fig.subplots(rows, 2, sharex=True, squeeze=False)
    for ax, (name, lrs) in zip(axes.flat, curves.items(), strict=False):
        ax.plot(np.arange(len(lrs)) / max(steps_per_epoch, 1), lrs, color="tab:blue", lw=1.4)
        ax.set_title(name, fontsize=9, wrap=True)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(curves) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    fig.supylabel("learning rate")
    return fig


def plot_curves(history: Sequence[EpochMetrics], path: Path) -> Path:
    """:func:`curves_figure`, written to ``path``."""
    return save_figure(curves_figure(history), path)


def curves_figure(history: Sequence[EpochMetrics]) -> Figure:
    """Loss and accuracy per epoch: train and test (and validation when held out)."""
    fig = Figure(figsize=(10, 3.8))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, marker, label in (("train", "o-", "train"), ("test", "s-", "test"), ("val", "^-", "validation")):
        # only the epochs that evaluated the split (train.eval_every / test_every)
        points = [(m.epoch, getattr(m, f"{split}_loss"), getattr(m, f"{split}_accuracy")) for m in history]
        points = [p for p in points if p[1] is not None and p[2] is not None]
        if points:
            epochs, losses, accuracies = zip(*points, strict=True)
            ax_loss.plot(epochs, losses, marker, label=label)
            ax_acc.plot(epochs, [100 * a for a in accuracies], marker, label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def plot_misclassified(
    images: np.ndarray,
    true: np.ndarray,
    pred: np.ndarray,
    classes: Sequence[str],
    path: Path,
    *,
    count: int = 25,
) -> Path:
    """:func:`misclassified_figure`, written to ``path``."""
    return save_figure(misclassified_figure(images, true, pred, classes, count=count), path)


def misclassified_figure(
    images: np.ndarray, true: np.ndarray, pred: np.ndarray, classes: Sequence[str], *, count: int = 25
) -> Figure:
    """A grid of up to ``count`` misclassified images, each titled "true -> predicted".

    images: uint8 (N, H, W, 3) of the misclassified test images, in the order to show. One small axes per image
    rather than torchvision's make_grid: per-image captions need their own space to stay readable.
    """
    n = min(count, len(images))
    cols = max(1, int(np.ceil(np.sqrt(n)))) if n else 1
    rows = max(1, int(np.ceil(n / cols)))
    fig = Figure(figsize=(1.7 * cols, 1.95 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(f"{classes[true[i]]}\n-> {classes[pred[i]]}", fontsize=8, pad=2)
    title = f"{n} misclassified test images (true -> predicted)" if n else "no misclassified test image"
    fig.suptitle(title, fontsize=10)
    return fig


def plot_lr_finder(
    lrs: Sequence[float],
    losses: Sequence[float],
    path: Path,
    *,
    suggestions: dict[str, float],
    chosen: str,
    log_x: bool = True,
) -> Path:
    """:func:`lr_finder_figure`, written to ``path``."""
    return save_figure(lr_finder_figure(lrs, losses, suggestions=suggestions, chosen=chosen, log_x=log_x), path)


def lr_finder_figure(
    lrs: Sequence[float], losses: Sequence[float], *, suggestions: dict[str, float], chosen: str, log_x: bool = True
) -> Figure:
    """Smoothed loss against LR (log x), each suggestion marked, the chosen one highlighted."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(lrs, losses, color="tab:blue", lw=1.6)
    if log_x:
        ax.set_xscale("log")
    markers = {"valley": "o", "steepest": "v", "min_loss_div10": "s"}
    losses_arr, lrs_arr = np.asarray(losses), np.asarray(lrs)
    for name, lr in suggestions.items():
        idx = int(np.argmin(np.abs(np.log(lrs_arr) - np.log(lr)))) if log_x else int(np.argmin(np.abs(lrs_arr - lr)))
        if name == chosen:
            style = {"color": "tab:red", "ms": 10, "zorder": 3}
        else:
            style = {"color": "tab:gray", "ms": 7, "zorder": 2}
        ax.plot(lr, losses_arr[idx], markers.get(name, "o"), label=f"{name}: {lr:.3g}", **style)
    ax.set(xlabel="learning rate", ylabel="smoothed loss", title="LR range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def plot_accuracy_range(
    lrs: Sequence[float], accuracies: Sequence[float], path: Path, *, best: float, metric: str, epochs: int
) -> Path:
    """:func:`accuracy_range_figure`, written to ``path``."""
    return save_figure(accuracy_range_figure(lrs, accuracies, best=best, metric=metric, epochs=epochs), path)


def accuracy_range_figure(
    lrs: Sequence[float], accuracies: Sequence[float], *, best: float, metric: str, epochs: int
) -> Figure:
    """Accuracy after ``epochs`` epochs against the run's max LR (log x), the best LR marked."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(lrs, 100 * np.asarray(accuracies), "o-", color="tab:blue", lw=1.6)
    ax.set_xscale("log")
    top = int(np.argmax(np.asarray(lrs) == best))
    ax.plot(best, 100 * accuracies[top], "o", color="tab:red", ms=11, zorder=3, label=f"best: lr {best:.3g}")
    ax.set(
        xlabel="max learning rate (optim.lr)",
        ylabel=f"{metric} accuracy (%)",
        title=f"Accuracy range test: {metric} accuracy after {epochs} epoch{'' if epochs == 1 else 's'}",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` (its folders made; the format from the suffix) at :data:`DPI`, whole or not at all
    (a full disk: UserError naming it), laid out tightly unless the figure has a layout engine of its own; then
    close it. Returns ``path``."""
    path = Path(path)
    try:
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI)
    finally:
        plt.close(fig)
    return path
