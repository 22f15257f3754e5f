"""The two LR range tests: loss against LR (Smith 2015; fastai's lr_find) and accuracy against max LR.

:func:`lr_range_test` sweeps the LR up over N real training steps and watches the loss.
:func:`accuracy_range_test` (Smith 2018, "A disciplined approach...", section 4.1) trains one short run per max
LR with the config's own policy and compares their accuracies.

The loss test is written here rather than taken from torch-lr-finder because it must use this project's
:class:`~pipelines.feed.Feeder` (device-resident uint8 data, batched augmentation; that package wants a DataLoader)
and return fastai's "valley" suggestion, which that package lacks.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines import plots
from pipelines.callbacks import Callback
from pipelines.config import Config
from pipelines.data import Splits, load_splits
from pipelines.errors import UserError
from pipelines.feed import Feeder
from pipelines.model import build_model
from pipelines.result import Result
from pipelines.reuse import RunCache
from pipelines.step import autocast
from pipelines.train import check_trainable, resolve_device, run

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LRFinderResult:
    """lrs[i] was used for step i; losses[i] is the exponentially smoothed loss after it."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    raw_losses: tuple[float, ...]
    suggestions: dict[str, float]  # valley, steepest, min_loss_div10
    max_lr: float  # suggested optim.lr (the cycle's peak): the valley
    min_lr: float  # suggested start of the cycle: max_lr / schedule.start_div
    diverged_at: float | None  # LR at which the early stop fired, if it did
    plot: Path | None

    def to_dict(self) -> dict:
        return {
            "max_lr": self.max_lr,
            "min_lr": self.min_lr,
            "suggestions": self.suggestions,
            "diverged_at": self.diverged_at,
            "plot": str(self.plot) if self.plot else None,
            "curve": {"lr": list(self.lrs), "loss": list(self.losses)},
        }


def lr_range_test(
    config: Config,
    *,
    min_lr: float = 1e-4,
    max_lr: float = 10.0,
    num_iter: int = 100,
    mode: str = "exp",
    smooth: float = 0.05,
    diverge_factor: float = 4.0,
    splits: Splits | None = None,
    model: nn.Module | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
    plot_path: Path | None = None,
) -> LRFinderResult:
    """Train for up to ``num_iter`` steps with the LR going from ``min_lr`` to ``max_lr`` (exp: log-spaced).

    Stops early once the smoothed loss exceeds ``diverge_factor`` x its minimum. The model's weights (and BN
    statistics) are restored afterwards, so a model passed in is left as it was. Uses the config's optimizer
    (momentum, Nesterov, weight decay), augmentation and batch size; ``on_step(step, lr, smoothed_loss)``.
    """
    if not 0 < min_lr < max_lr:
        raise UserError(f"lr-find needs 0 < min_lr < max_lr, got {min_lr} and {max_lr}")
    if num_iter < 5:
        raise UserError(f"lr-find needs at least 5 iterations, got {num_iter}")
    if mode not in ("exp", "linear"):
        raise UserError(f"lr-find mode must be exp or linear, got {mode!r}")
    device = resolve_device(config.train.device)
    torch.manual_seed(config.train.seed)
    splits = splits or load_splits(config.data)
    check_trainable(config, splits, write_outputs=False)  # batch size, image size, augmentation ops
    if model is None:
        model = build_model(config.model, num_classes=len(splits.classes)).to(device)
    saved = copy.deepcopy(model.state_dict())
    lrs_plan = np.geomspace(min_lr, max_lr, num_iter) if mode == "exp" else np.linspace(min_lr, max_lr, num_iter)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=float(lrs_plan[0]),
        momentum=config.optim.momentum,
        nesterov=config.optim.nesterov,
        weight_decay=config.optim.weight_decay,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
    feeder = Feeder(config, splits, device)
    lrs: list[float] = []
    raw: list[float] = []
    smoothed: list[float] = []
    avg, best, diverged_at = 0.0, math.inf, None
    model.train()
    try:
        while len(lrs) < num_iter and diverged_at is None:
            for x, y in feeder.epoch():
                step = len(lrs)
                if step >= num_iter:
                    break
                lr = float(lrs_plan[step])
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast(device):
                    loss = criterion(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = float(loss.detach())  # the range test needs each loss to decide when to stop: one sync per step
                # EMA from 0, debiased (Adam/fastai): the first smoothed value is the first loss itself
                avg = smooth * value + (1 - smooth) * avg
                debiased = avg / (1 - (1 - smooth) ** (step + 1))
                lrs.append(lr)
                raw.append(value)
                smoothed.append(debiased)
                if on_step is not None:
                    on_step(step, lr, debiased)
                if not math.isfinite(debiased) or (step > 0 and debiased > diverge_factor * best):
                    diverged_at = lr
                    break
                best = min(best, debiased)
    finally:
        model.load_state_dict(saved)
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    if len(finite) < 5:
        raise UserError(f"lr-find diverged after {len(finite)} steps; lower --min-lr")
    lrs_arr = np.asarray([lrs[i] for i in finite])
    loss_arr = np.asarray([smoothed[i] for i in finite])
    suggestions = suggest(lrs_arr, loss_arr)
    max_suggested = suggestions["valley"]
    result_plot = None
    if plot_path is not None:
        result_plot = plots.plot_lr_finder(
            lrs_arr, loss_arr, plot_path, suggestions=suggestions, chosen="valley", log_x=mode == "exp"
        )
    return LRFinderResult(
        lrs=tuple(lrs),
        losses=tuple(smoothed),
        raw_losses=tuple(raw),
        suggestions=suggestions,
        max_lr=max_suggested,
        min_lr=max_suggested / config.schedule.start_div,
        diverged_at=diverged_at,
        plot=result_plot,
    )


def suggest(lrs: np.ndarray, losses: np.ndarray) -> dict[str, float]:
    """Three readings of a range-test curve (fastai's): valley, steepest descent, and min-loss LR / 10."""
    return {
        "valley": valley(lrs, losses),
        "steepest": steepest(lrs, losses),
        "min_loss_div10": float(lrs[int(np.argmin(losses))] / 10),
    }


def steepest(lrs: np.ndarray, losses: np.ndarray) -> float:
    """LR where the loss falls fastest per log-LR."""
    grads = np.gradient(losses, np.log(lrs))
    return float(lrs[int(np.argmin(grads))])


def valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    """fastai's valley: the longest decreasing run of the loss; the point 1/2 of the way into its middle third."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[min(max(idx, 0), n - 1)])


# -- accuracy against max LR ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AccuracyPoint:
    lr: float  # the run's max LR (optim.lr)
    accuracy: float  # after the last epoch run, on the validation split (else the test set)
    status: str  # the run's: complete | diverged | stopped


@dataclass(frozen=True, kw_only=True)
class AccuracyRangeResult:
    points: tuple[AccuracyPoint, ...]
    metric: str  # "val" (data.val_size > 0) or "test"
    epochs: int
    suggested_lr: float  # the LR of the best accuracy
    plot: Path | None

    def to_dict(self) -> dict:
        return {
            "metric": "accuracy",
            "split": self.metric,
            "epochs": self.epochs,
            "points": [{"lr": p.lr, "accuracy": p.accuracy, "status": p.status} for p in self.points],
            "suggested_lr": self.suggested_lr,
            "plot": str(self.plot) if self.plot else None,
        }


def accuracy_range_configs(config: Config, *, lrs: Sequence[float], epochs: int) -> list[Config]:
    """The runs' configs, by increasing LR: ``config`` with each distinct LR as optim.lr and ``epochs`` epochs.
    Raises UserError on fewer than 2 distinct LRs, an LR <= 0, or a config the shorter run makes invalid."""
    distinct = sorted(set(lrs))
    if len(distinct) < 2 or any(not (lr > 0 and math.isfinite(lr)) for lr in distinct):
        raise UserError(f"the accuracy range test needs at least 2 different LRs, all > 0, got {list(lrs)}")
    if epochs < 1:
        raise UserError(f"the accuracy range test needs at least 1 epoch, got {epochs}")
    return [config.with_overrides({"optim.lr": float(lr), "train.epochs": epochs}) for lr in distinct]


def accuracy_range_test(
    config: Config,
    *,
    lrs: Sequence[float],
    epochs: int = 5,
    splits: Splits | None = None,
    callbacks: Callable[[int, Config], Sequence[Callback]] | None = None,
    on_result: Callable[[int, Config, Result], None] | None = None,
    plot_path: Path | None = None,
) -> AccuracyRangeResult:
    """One ``epochs``-epoch run per max LR in ``lrs`` (as optim.lr: scaled with the batch size if the config says
    so), each with the config's policy, augmentation and seed; accuracy on the validation split, else the test set.

    ``callbacks(i, config)`` gives run i's callbacks (progress, tracking); ``on_result(i, config, result)`` hears
    how it ended. A run that diverges scores the accuracy it had; the best accuracy suggests the LR.
    """
    configs = accuracy_range_configs(config, lrs=lrs, epochs=epochs)
    splits = splits or load_splits(config.data)
    check_trainable(configs[0], splits)
    metric = "val" if splits.val is not None else "test"
    cache = RunCache()  # one model for all runs, re-initialised from train.seed each time
    points = []
    for i, cfg in enumerate(configs):
        result = run(cfg, callbacks=callbacks(i, cfg) if callbacks else (), splits=splits, cache=cache,
                     write_outputs=False)  # fmt: skip
        if on_result is not None:
            on_result(i, cfg, result)
        last = result.history[-1]
        accuracy = last.val_accuracy if metric == "val" and last.val_accuracy is not None else last.test_accuracy
        points.append(AccuracyPoint(lr=cfg.optim.lr, accuracy=accuracy, status=result.status))
    best = max(points, key=_accuracy)
    plot = None
    if plot_path is not None:
        plot = plots.plot_accuracy_range(
            [p.lr for p in points], [p.accuracy for p in points], plot_path, best=best.lr, metric=metric, epochs=epochs
        )
    return AccuracyRangeResult(points=tuple(points), metric=metric, epochs=epochs, suggested_lr=best.lr, plot=plot)


def _accuracy(point: AccuracyPoint) -> float:
    return point.accuracy
