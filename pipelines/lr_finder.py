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

from pipelines import lr_range, plots
from pipelines.callbacks import Callback
from pipelines.config import Config
from pipelines.data import Splits, load_splits
from pipelines.errors import UserError
from pipelines.feed import Feeder
from pipelines.lr_range import DIVERGE_FACTOR, MAX_LR, MIN_LR, MODES, NUM_ITER, SMOOTH
from pipelines.result import Result
from pipelines.reuse import RunCache
from pipelines.schedules import ScheduleCurve
from pipelines.step import TorchStep
from pipelines.train import check_data, resolve_device, run

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LRFinderResult:
    """lrs[i] was used for step i; losses[i] is the exponentially smoothed loss after it."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
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


@dataclass(frozen=True)
class _Sweep:
    lrs: list[float]  # as used, step by step
    smoothed: list[float]  # the debiased EMA of the loss after each step
    diverged_at: float | None


def lr_range_test(
    config: Config,
    *,
    min_lr: float = MIN_LR,
    max_lr: float = MAX_LR,
    num_iter: int = NUM_ITER,
    mode: str = MODES[0],
    smooth: float = SMOOTH,
    diverge_factor: float = DIVERGE_FACTOR,
    splits: Splits | None = None,
    model: nn.Module | None = None,
    cache: RunCache | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
    plot_path: Path | None = None,
) -> LRFinderResult:
    """Train for up to ``num_iter`` steps with the LR going from ``min_lr`` to ``max_lr`` (exp: log-spaced).

    The steps are training's own (:class:`~pipelines.step.TorchStep`: the config's SGD, fused on CUDA, on the
    model of ``cache``, compiled where training would compile it), on training's data path. Stops early once the
    smoothed loss exceeds ``diverge_factor`` x its minimum. The model's weights (and BN statistics) are restored
    afterwards, so a model passed in (or cached) is left as it was. ``on_step(step, lr, smoothed_loss)``.
    """
    plan = _planned_lrs(min_lr, max_lr, num_iter, mode)
    device = resolve_device(config.train.device)
    splits = splits or load_splits(config.data)
    check_data(config, splits)  # batch size, image size, augmentation ops
    torch.manual_seed(config.train.seed)
    cache = cache or RunCache()
    if model is None:
        built = cache.model(config, splits, device)
        module, runner = built.module, built.runner
    else:
        module = runner = model
    saved = copy.deepcopy(module.state_dict())
    try:
        sweep = _sweep(config, splits, device, cache, module, runner, plan, smooth, diverge_factor, on_step)
    finally:
        module.load_state_dict(saved)
    return _read(sweep, config, log_x=mode == "exp", plot_path=plot_path)


def _planned_lrs(min_lr: float, max_lr: float, num_iter: int, mode: str) -> np.ndarray:
    if not 0 < min_lr < max_lr:
        raise UserError(f"lr-find needs 0 < min_lr < max_lr, got {min_lr} and {max_lr}")
    if num_iter < 5:
        raise UserError(f"lr-find needs at least 5 iterations, got {num_iter}")
    if mode not in MODES:
        raise UserError(f"lr-find mode must be exp or linear, got {mode!r}")
    return np.geomspace(min_lr, max_lr, num_iter) if mode == "exp" else np.linspace(min_lr, max_lr, num_iter)


def _sweep(
    config: Config,
    splits: Splits,
    device: torch.device,
    cache: RunCache,
    module: nn.Module,
    runner: nn.Module,
    plan: np.ndarray,
    smooth: float,
    diverge_factor: float,
    on_step: Callable[[int, float, float], None] | None,
) -> _Sweep:
    """The training steps at the planned LRs, each loss read and smoothed, until the plan ends or the loss
    diverges."""
    momenta = (config.optim.momentum,) * len(plan)
    curve = ScheduleCurve(tuple(float(lr) for lr in plan), momenta, steps_per_epoch=len(plan))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
    feeder = Feeder(config, splits, device, cache)
    step_fn = TorchStep(config, module, runner, criterion, curve, feeder.normalize, device)  # config's param groups
    lrs: list[float] = []
    smoothed: list[float] = []
    avg, best = 0.0, math.inf
    module.train()
    while len(lrs) < len(plan):
        for x, y in feeder.raw_epoch():
            step = len(lrs)
            if step >= len(plan):
                break
            value = float(step_fn(x, y, step))  # the range test needs each loss to decide when to stop: one sync
            avg = smooth * value + (1 - smooth) * avg  # EMA from 0, debiased (Adam/fastai): the first is the loss
            debiased = avg / (1 - (1 - smooth) ** (step + 1))
            lrs.append(curve.lrs[step])
            smoothed.append(debiased)
            if on_step is not None:
                on_step(step, curve.lrs[step], debiased)
            if not math.isfinite(debiased) or (step > 0 and debiased > diverge_factor * best):
                return _Sweep(lrs, smoothed, diverged_at=curve.lrs[step])
            best = min(best, debiased)
    return _Sweep(lrs, smoothed, diverged_at=None)


def _read(sweep: _Sweep, config: Config, *, log_x: bool, plot_path: Path | None) -> LRFinderResult:
    """The suggestions (and the plot) from a sweep's finite part."""
    finite = [i for i, v in enumerate(sweep.smoothed) if math.isfinite(v)]
    if len(finite) < 5:
        raise UserError(f"lr-find diverged after {len(finite)} steps; lower --min-lr")
    lrs = np.asarray([sweep.lrs[i] for i in finite])
    losses = np.asarray([sweep.smoothed[i] for i in finite])
    suggestions = suggest(lrs, losses)
    plot = None
    if plot_path is not None:
        plot = plots.plot_lr_finder(lrs, losses, plot_path, suggestions=suggestions, chosen="valley", log_x=log_x)
    return LRFinderResult(
        lrs=tuple(sweep.lrs),
        losses=tuple(sweep.smoothed),
        suggestions=suggestions,
        max_lr=suggestions["valley"],
        min_lr=suggestions["valley"] / config.schedule.start_div,
        diverged_at=sweep.diverged_at,
        plot=plot,
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


@dataclass(frozen=True)
class AccuracyRange:
    """The accuracy range test's runs, checked and ready: their configs by increasing LR, and the data."""

    configs: tuple[Config, ...]
    splits: Splits
    epochs: int

    @property
    def metric(self) -> str:
        """Whose accuracy is compared: "val" (a validation split is held out) or "test"."""
        return "val" if self.splits.val is not None else "test"


def plan_accuracy_range(
    config: Config, *, lrs: Sequence[float], epochs: int = lr_range.ACCURACY_EPOCHS, splits: Splits | None = None
) -> AccuracyRange:
    """Check everything the runs need (LRs, epochs, the data, once for all runs) before any is trained or
    recorded: UserError otherwise."""
    configs = accuracy_range_configs(config, lrs=lrs, epochs=epochs)
    splits = splits or load_splits(config.data)
    check_data(configs[0], splits)  # the runs differ only in their LR
    return AccuracyRange(tuple(configs), splits, epochs)


def accuracy_range_test(
    plan: AccuracyRange,
    *,
    callbacks: Callable[[int, Config], Sequence[Callback]] | None = None,
    on_result: Callable[[int, Config, Result], None] | None = None,
    plot_path: Path | None = None,
) -> AccuracyRangeResult:
    """One ``plan.epochs``-epoch run per max LR (as optim.lr: scaled with the batch size if the config says so),
    each with the config's policy, augmentation and seed; accuracy on the validation split, else the test set.

    ``callbacks(i, config)`` gives run i's callbacks (progress, tracking); ``on_result(i, config, result)`` hears
    how it ended. A run that diverges scores the accuracy it had; the best accuracy suggests the LR.
    """
    metric = plan.metric
    cache = RunCache()  # one model for all runs, re-initialised from train.seed each time
    points = []
    for i, cfg in enumerate(plan.configs):
        result = run(cfg, callbacks=callbacks(i, cfg) if callbacks else (), splits=plan.splits, cache=cache,
                     write_outputs=False, checked=True)  # fmt: skip
        if on_result is not None:
            on_result(i, cfg, result)
        last = result.history[-1]
        accuracy = last.val_accuracy if metric == "val" and last.val_accuracy is not None else last.test_accuracy
        points.append(AccuracyPoint(lr=cfg.optim.lr, accuracy=accuracy, status=result.status))
    best = max(points, key=_accuracy)
    plot = None
    if plot_path is not None:
        plot = plots.plot_accuracy_range(
            [p.lr for p in points], [p.accuracy for p in points], plot_path, best=best.lr, metric=metric,
            epochs=plan.epochs,
        )  # fmt: skip
    return AccuracyRangeResult(points=tuple(points), metric=metric, epochs=plan.epochs, suggested_lr=best.lr, plot=plot)


def _accuracy(point: AccuracyPoint) -> float:
    return point.accuracy
