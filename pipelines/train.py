"""The training loop: epochs of :class:`~pipelines.step.TrainStep`, evaluation when due, the run's :class:`Result`.

Hot path rules (why it is fast): batches come from :class:`~pipelines.feed.Feeder` (uint8 data on the device,
augmented a whole epoch at a time); losses and correct counts are summed on the device and read once per epoch
(no host sync per step); bf16 autocast and channels_last on CUDA; every step's LR is known ahead of time (no
scheduler in the loop; plateau's cuts are decided at epoch ends, from the one host read); evaluation every
train.eval_every / test_every epochs, in batches of one shape. Models and device data come from a
:class:`~pipelines.reuse.RunCache`; what a run writes to train.out_dir is :mod:`pipelines.outputs`.

Evaluation tricks (train.ema, train.tta): with an EMA every evaluation, and the saved model, use the averaged
weights (batch-norm statistics averaged too, as Myrtle.ai's); test-time views are averaged in the logits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines import outputs
from pipelines.augment import BatchAugment, build_albumentations, fit_to_size
from pipelines.callbacks import Callback, CallbackList, EpochMetrics
from pipelines.config import MIN_IMAGE_SIZE, Config
from pipelines.data import Splits, load_splits
from pipelines.ema import EMA
from pipelines.errors import UserError, one_line
from pipelines.feed import Feeder
from pipelines.model import count_parameters
from pipelines.paths import check_writable
from pipelines.result import Result
from pipelines.reuse import DeviceSet, RunCache
from pipelines.schedules import Plateau, schedule_curve
from pipelines.step import autocast, train_step
from pipelines.tta import tta_logits
from pipelines.whitening import SPECS

log = logging.getLogger(__name__)


def check_outputs(config: Config) -> None:
    """train.out_dir can be written: checked before the data is loaded, so a bad folder fails in a second."""
    check_writable(Path(config.train.out_dir), what="train.out_dir")


def check_data(config: Config, splits: Splits) -> None:
    """Problems that only show once the data is known (batch size, image size, the augmentation ops on these
    images) and the device; raised before anything is trained or recorded."""
    n_train, batch = len(splits.train), config.train.batch_size
    if batch > n_train:
        raise UserError(
            f"train.batch_size ({batch}) is larger than the training set ({n_train} images); "
            "lower train.batch_size or raise data.train_limit"
        )
    resolve_device(config.train.device)
    height, width = splits.train.images.shape[1:3]
    smallest = MIN_IMAGE_SIZE
    if config.model.whiten != "none":  # an unpadded whitening conv takes k - 1 - 2 * padding pixels off each side
        spec = SPECS[config.model.whiten]
        smallest += spec.kernel_size - 1 - 2 * spec.padding
    if min(height, width) < smallest:
        raise UserError(
            f"the images are {width}x{height}; the network needs at least {smallest}x{smallest}: "
            f"set data.image_size to resize them"
        )
    ops = fit_to_size(config.augment.ops, height, width)
    _check_augment(ops, height, width)
    if config.augment.alternating_flip and BatchAugment.from_ops(ops) is None:
        raise UserError(
            "augment.alternating_flip needs the batched (device) augmentation, but augment.ops has an op without "
            "a batched version: drop that op or set augment.alternating_flip=false"
        )


def _check_augment(ops: tuple[dict, ...], height: int, width: int) -> None:
    """The ops build (unknown names and bad arguments named) and keep the images' size: the test images are not
    augmented, so a pipeline that resized the training images would train on another picture of the data."""
    transform = build_albumentations(ops)
    try:
        out = transform(image=np.zeros((height, width, 3), dtype=np.uint8))["image"]
    except Exception as err:  # e.g. a crop larger than the (padded) image: albumentations' own error, in one line
        raise UserError(f"augment.ops cannot run on {width}x{height} images: {one_line(err)}") from err
    if tuple(out.shape[:2]) != (height, width):
        raise UserError(
            f"augment.ops turn {width}x{height} images into {out.shape[1]}x{out.shape[0]} while the test images "
            f"stay {width}x{height}: crop back to the images' size (e.g. RandomCrop height={height} width={width})"
        )


def resolve_device(name: str) -> torch.device:
    """``train.device`` (auto | cpu | cuda) as a torch device: auto is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is cuda but no CUDA device is available; use train.device=auto or cpu")
    return torch.device(name)


def run(
    config: Config,
    *,
    callbacks: Iterable[Callback] = (),
    splits: Splits | None = None,
    cache: RunCache | None = None,
    write_outputs: bool = True,
    checked: bool = False,
) -> Result:
    """Train ``config``, evaluating as train.eval_every/test_every say; report through ``callbacks``; write outputs.

    ``splits``: pre-loaded data (else loaded from config.data); ``cache``: models and device data kept across the
    runs of one process; ``checked``: the caller ran :func:`check_outputs` and :func:`check_data` on this config
    and data already (a study, a replay, a range test check once for all their runs). A NaN/infinite loss ends
    the run as "diverged"; a callback's should_stop as "stopped".
    """
    started = time.perf_counter()
    if write_outputs and not checked:
        check_outputs(config)
    device = resolve_device(config.train.device)
    if splits is None:
        splits = load_splits(config.data)  # subsets fixed by data config alone: train.seed varies only training
    if not checked:
        check_data(config, splits)
    training = _Training(config, splits, device, cache or RunCache(), CallbackList(callbacks))
    training.run_epochs()
    result = training.result(out_dir=Path(config.train.out_dir) if write_outputs else None)
    artifacts = training.write(result) if write_outputs else {}
    return dataclasses.replace(result, artifacts=artifacts, total_seconds=time.perf_counter() - started)


class _Training:
    """One run's model, step, data and schedule, and what it has done so far (:func:`run`'s state)."""

    def __init__(self, config: Config, splits: Splits, device: torch.device, cache: RunCache, cb: CallbackList) -> None:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # input shapes are fixed: let cuDNN pick the fastest conv kernels
        torch.manual_seed(config.train.seed)
        self.config, self.splits, self.device, self.cb = config, splits, device, cb
        self.steps_per_epoch = len(splits.train) // config.train.batch_size  # the last partial batch is dropped
        self.built = cache.model(config, splits, device)  # re-initialised, its whitening layer (if any) fitted
        train = config.train
        # the average starts from the weights just initialised (Myrtle's deepcopy of the fresh model)
        self.ema = EMA(self.built.module, momentum=train.ema, every=train.ema_every) if train.ema else None
        self.curve = schedule_curve(config, steps_per_epoch=self.steps_per_epoch)  # every step's LR, ahead of time
        self.plateau = Plateau(config) if self.curve.adaptive else None
        self.scale = 1.0  # plateau's cuts so far, a factor on the planned LR
        self.lrs = list(self.curve.lrs)  # the LRs used: the plan, times plateau's cuts from where they were made
        criterion = nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
        self.feeder = Feeder(config, splits, device, cache)
        self.step_fn = train_step(
            config, self.built.module, self.built.runner, criterion, self.curve, self.feeder.normalize, device
        )
        self.evaluate = functools.partial(
            _evaluate, self.built.runner, self.built.module, normalize=self.feeder.normalize,
            batch=config.train.eval_batch_size, pad=self.built.compiled, tta=config.train.tta,
        )  # fmt: skip
        self.history: list[EpochMetrics] = []
        self.status, self.reason = "complete", None
        self.train_seconds = self.eval_seconds = 0.0
        self.step = 0
        self.test_predictions: torch.Tensor | None = None
        total = self.steps_per_epoch * config.train.epochs
        lrs = () if self.curve.adaptive else self.curve.lrs
        cb.on_start(total_steps=total, steps_per_epoch=self.steps_per_epoch, lrs=lrs)

    def run_epochs(self) -> None:
        """Train, evaluate when due and report each epoch until the last, a divergence or a callback's stop."""
        for epoch in range(1, self.config.train.epochs + 1):
            metrics, watched = self._epoch(epoch)
            self.history.append(metrics)
            self.cb.on_epoch(metrics)
            if not math.isfinite(metrics.train_loss):
                self.status = "diverged"
                self.reason = f"training loss became {metrics.train_loss} in epoch {epoch}"
                log.warning("run diverged: %s", self.reason)
                return
            stop = self.cb.should_stop(metrics)
            if stop:
                self.status, self.reason = "stopped", stop
                return
            if watched is not None:
                self._plateau_cut(watched.loss)

    def _epoch(self, epoch: int) -> tuple[EpochMetrics, _Eval | None]:
        """One epoch of training and its due evaluations; (its metrics, the evaluation plateau watches)."""
        train_loss, train_accuracy, epoch_seconds = self._train_epoch()
        t1 = _now(self.device)
        has_val = self.feeder.val is not None
        # a diverged epoch ends the run: it is evaluated as every last epoch is
        val_due, test_due = _due(self.config, epoch, has_val=has_val, ends=not math.isfinite(train_loss))
        with self.evaluated_weights():
            test = self.evaluate(self.feeder.test, keep_predictions=True) if test_due else None
            val = self.evaluate(self.feeder.val) if val_due and has_val else None
        if test is not None:
            self.test_predictions = test.predictions
        epoch_eval = _now(self.device) - t1
        self.eval_seconds += epoch_eval
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            test_loss=test.loss if test else None,
            test_accuracy=test.accuracy if test else None,
            val_loss=val.loss if val else None,
            val_accuracy=val.accuracy if val else None,
            lr=self.lrs[self.step - 1],
            epoch_seconds=epoch_seconds,
            eval_seconds=epoch_eval,
        )
        return metrics, val if has_val else test  # one split throughout: the validation one if held out

    def _train_epoch(self) -> tuple[float, float, float]:
        """(mean training loss, training accuracy, seconds) of one pass over the training set."""
        self.built.module.train()
        t0 = _now(self.device)
        captured = self.step_fn.capture_seconds
        seen = 0
        for x, y in self.feeder.raw_epoch():
            self.step_fn(x, y, self.step)
            if self.ema is not None:
                self.ema.update(self.step)  # outside the captured step: a few foreach kernels every ema_every steps
            seen += y.shape[0]
            self.cb.on_step(self.step, self.lrs[self.step])
            self.step += 1
        loss_total, correct_total = self.step_fn.take_sums()  # the epoch's one host sync
        seconds = _now(self.device) - t0 - (self.step_fn.capture_seconds - captured)  # the capture is compile time
        self.train_seconds += seconds
        return loss_total / max(seen, 1), correct_total / max(seen, 1), seconds

    def _plateau_cut(self, loss: float) -> None:
        """schedule.policy plateau: tell it the watched loss; a cut rescales the rest of the planned LRs."""
        if self.plateau is None or self.step < self.curve.warmup_steps:  # cuts start after the warm-up
            return
        new_scale = self.plateau.step(loss)
        if new_scale != self.scale:
            self.scale = new_scale
            self.lrs[self.step :] = [lr * new_scale for lr in self.curve.lrs[self.step :]]
            self.step_fn.set_lrs(self.lrs)

    @contextlib.contextmanager
    def evaluated_weights(self) -> Iterator[None]:
        """The weights evaluations see: the EMA's (train.ema), else the trained ones."""
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            yield

    def result(self, *, out_dir: Path | None) -> Result:
        return Result(
            status=self.status,
            reason=self.reason,
            history=tuple(self.history),
            lrs=tuple(self.lrs),
            steps_per_epoch=self.steps_per_epoch,
            seconds=self.train_seconds,
            eval_seconds=self.eval_seconds,
            compile_seconds=self.built.compile_seconds + self.step_fn.capture_seconds,
            total_seconds=0.0,
            params=count_parameters(self.built.module),
            device=_device_name(self.device),
            classes=self.splits.classes,
            out_dir=out_dir,
        )

    def write(self, result: Result) -> dict[str, Path]:
        """The run's files in train.out_dir (:mod:`pipelines.outputs`); name -> path. The model saved is the one
        evaluated: with train.ema, the averaged weights."""
        module, test, momenta = self.built.module, self.feeder.test, self.curve.momenta
        with self.evaluated_weights():
            predictions = self.test_predictions
            if predictions is None:  # a run stopped before its test set was due: predict now for the plots
                predictions = self.evaluate(self.feeder.test, keep_predictions=True).predictions
            return outputs.write(self.config, result, module, test, predictions, momenta, self.cb)


def _due(config: Config, epoch: int, *, has_val: bool, ends: bool = False) -> tuple[bool, bool]:
    """(validation due, test due) after ``epoch``: every eval_every (test_every) epochs and always at the last
    (``ends``: the run ends after this epoch, as a diverged one does)."""
    last = ends or epoch == config.train.epochs
    eval_every = config.train.eval_every
    test_every = config.train.test_every or eval_every
    return has_val and (last or epoch % eval_every == 0), last or epoch % test_every == 0


@dataclass(frozen=True)
class _Eval:
    loss: float
    accuracy: float
    predictions: torch.Tensor | None = None


@torch.no_grad()
def _evaluate(
    runner: nn.Module,
    model: nn.Module,
    data: DeviceSet,
    *,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    batch: int,
    pad: bool,
    tta: str = "none",
    keep_predictions: bool = False,
) -> _Eval:
    """Mean loss and accuracy over ``data`` (eval-mode BN); sums stay on the device until the end. ``tta``
    (train.tta): the logits are those of :func:`~pipelines.tta.tta_logits`, averaged over its views.

    ``pad``: the last partial batch is padded to ``batch`` images, so a compiled model sees one shape only (no
    recompile for the remainder); the padding's outputs are dropped.
    """
    model.eval()
    device = data.labels.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    preds = []
    for start in range(0, len(data), batch):
        images = data.images[start : start + batch]
        y = data.labels[start : start + batch]
        n = images.shape[0]
        if pad and n < batch:
            images = torch.cat([images, images.new_zeros((batch - n, *images.shape[1:]))])
        with autocast(device):
            logits = tta_logits(runner, normalize(images), tta)[:n]
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        pred = logits.argmax(1)
        correct += (pred == y).sum()
        if keep_predictions:
            preds.append(pred)
    model.train()
    n = max(len(data), 1)
    return _Eval(float(loss_sum) / n, float(correct) / n, torch.cat(preds) if preds else None)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # wall time of queued GPU work, read at epoch boundaries only
    return time.perf_counter()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
