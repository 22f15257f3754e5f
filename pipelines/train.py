"""The training loop: SGD with the configured LR schedule, evaluation after every epoch, the run's :class:`Result`.

Hot path rules (why it is fast): batches come from :class:`~pipelines.feed.Feeder` (uint8 data on the device,
augmented a whole epoch at a time); losses and correct counts are summed on the device and read once per epoch
(no host sync per step); bf16 autocast and channels_last on CUDA; every step's LR is known ahead of time and
set as a float (no scheduler in the loop; plateau's cuts are decided at epoch ends, from the one host read).
What a run writes to train.out_dir is :mod:`pipelines.outputs`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines import outputs
from pipelines.augment import build_albumentations, fit_to_size
from pipelines.callbacks import Callback, CallbackList, EpochMetrics
from pipelines.config import MIN_IMAGE_SIZE, Config
from pipelines.data import Splits, load_splits
from pipelines.errors import UserError, one_line
from pipelines.feed import DeviceSet, Feeder
from pipelines.model import build_model, count_parameters, reset_parameters
from pipelines.paths import check_writable
from pipelines.result import Result
from pipelines.schedules import Plateau, schedule_curve

log = logging.getLogger(__name__)


class ModelCache:
    """Keeps built (and compiled) models for reuse across runs in one process, e.g. the trials of a worker.

    Reuse re-initialises weights in place, so ``torch.compile`` happens once per (width, classes, device).
    """

    def __init__(self) -> None:
        self._models: dict[tuple[float, int, str, bool], tuple[nn.Module, nn.Module]] = {}

    def get(self, config: Config, *, num_classes: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
        """(model, callable): the eager module that owns the weights, and what to call (compiled or not)."""
        compile_ = config.train.compile
        key = (config.model.width, num_classes, str(device), compile_)
        if key not in self._models:
            self._models.clear()  # keep one: a space that searches model.width must not pile models on the GPU
            model = build_model(config.model, num_classes=num_classes).to(device)
            if device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)  # NHWC convs are faster on tensor cores
            runner = torch.compile(model) if compile_ else model
            self._models[key] = (model, runner)
        model, runner = self._models[key]
        reset_parameters(model, seed=config.train.seed)
        return model, runner


def check_trainable(config: Config, splits: Splits, *, write_outputs: bool = True) -> None:
    """Problems that only show once the data is known, or that would only show after training (the augmentation
    ops, the output folder); raised before anything is trained or recorded."""
    n_train, batch = len(splits.train), config.train.batch_size
    if batch > n_train:
        raise UserError(
            f"train.batch_size ({batch}) is larger than the training set ({n_train} images); "
            "lower train.batch_size or raise data.train_limit"
        )
    resolve_device(config.train.device)
    height, width = splits.train.images.shape[1:3]
    if min(height, width) < MIN_IMAGE_SIZE:
        raise UserError(
            f"the images are {width}x{height}; the network needs at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}: "
            f"set data.image_size to resize them"
        )
    _check_augment(fit_to_size(config.augment.ops, height, width), height, width)
    if write_outputs:
        check_writable(Path(config.train.out_dir), what="train.out_dir")


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
    models: ModelCache | None = None,
    write_outputs: bool = True,
) -> Result:
    """Train ``config`` and evaluate every epoch; report through ``callbacks``; write outputs to train.out_dir.

    ``splits``: pre-loaded data (else loaded from config.data); ``models``: a cache to reuse compiled models.
    A NaN/infinite loss ends the run with status "diverged"; a callback's should_stop ends it as "stopped".
    """
    started = time.perf_counter()
    cb = CallbackList(callbacks)
    device = resolve_device(config.train.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # input shapes are fixed: let cuDNN pick the fastest conv kernels
    torch.manual_seed(config.train.seed)
    if splits is None:
        splits = load_splits(config.data)  # subsets fixed by data config alone: train.seed varies only training
    check_trainable(config, splits, write_outputs=write_outputs)
    steps_per_epoch = len(splits.train) // config.train.batch_size  # the last partial batch is dropped (Myrtle)
    total_steps = steps_per_epoch * config.train.epochs

    model, runner = (models or ModelCache()).get(config, num_classes=len(splits.classes), device=device)
    curve = schedule_curve(config, steps_per_epoch=steps_per_epoch)  # every step's LR, known ahead (torch's schedulers)
    plateau = Plateau(config) if curve.adaptive else None
    scale = 1.0  # plateau's cuts so far, a factor on the planned LR
    lrs = list(curve.lrs)  # the LRs used: the plan, times plateau's cuts from where they were made
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=curve.lrs[0],
        momentum=curve.momenta[0],
        nesterov=config.optim.nesterov,
        weight_decay=config.optim.weight_decay,
        fused=device.type == "cuda",  # one kernel for the whole update
    )
    group = optimizer.param_groups[0]
    criterion = nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
    feeder = Feeder(config, splits, device)
    cb.on_start(total_steps=total_steps, steps_per_epoch=steps_per_epoch, lrs=() if curve.adaptive else curve.lrs)

    history: list[EpochMetrics] = []
    status, reason = "complete", None
    train_seconds = eval_seconds = 0.0
    step = 0
    test_predictions: torch.Tensor | None = None
    for epoch in range(1, config.train.epochs + 1):
        model.train()
        t0 = _now(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for x, y in feeder.epoch():
            group["lr"] = lrs[step]  # a float the optimizer reads: no scheduler in the loop
            if curve.cycles_momentum:
                group["momentum"] = curve.momenta[step]
            with autocast(device):
                logits = runner(x)
                loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Summed on the device: read once at epoch end, so no step waits for the GPU.
            loss_sum += loss.detach().float() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            cb.on_step(step, lrs[step])
            step += 1
        loss_total, correct_total = torch.stack([loss_sum, correct.float()]).tolist()  # the epoch's one host sync
        train_loss = loss_total / max(seen, 1)
        epoch_seconds = _now(device) - t0
        train_seconds += epoch_seconds

        t1 = _now(device)
        eval_batch = config.train.eval_batch_size
        test = _evaluate(runner, model, feeder.test, feeder.normalize, batch=eval_batch, keep_predictions=True)
        test_predictions = test.predictions
        val = _evaluate(runner, model, feeder.val, feeder.normalize, batch=eval_batch) if feeder.val else None
        epoch_eval = _now(device) - t1
        eval_seconds += epoch_eval
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=correct_total / max(seen, 1),
            test_loss=test.loss,
            test_accuracy=test.accuracy,
            val_loss=val.loss if val else None,
            val_accuracy=val.accuracy if val else None,
            lr=lrs[step - 1],
            seconds=epoch_seconds,
            eval_seconds=epoch_eval,
        )
        history.append(metrics)
        cb.on_epoch(metrics)
        if not math.isfinite(train_loss):
            status, reason = "diverged", f"training loss became {train_loss} in epoch {epoch}"
            log.warning("run diverged: %s", reason)
            break
        stop = cb.should_stop(metrics)
        if stop:
            status, reason = "stopped", stop
            break
        if plateau is not None and step >= curve.warmup_steps:  # cuts start once the warm-up is over
            new_scale = plateau.step(val.loss if val else test.loss)
            if new_scale != scale:
                scale = new_scale
                lrs[step:] = [lr * scale for lr in curve.lrs[step:]]

    result = Result(
        status=status,
        reason=reason,
        history=tuple(history),
        lrs=tuple(lrs),
        steps_per_epoch=steps_per_epoch,
        seconds=train_seconds,
        eval_seconds=eval_seconds,
        total_seconds=0.0,
        params=count_parameters(model),
        device=_device_name(device),
        classes=splits.classes,
        out_dir=Path(config.train.out_dir) if write_outputs else None,
    )
    artifacts: dict[str, Path] = {}
    if write_outputs:
        artifacts = outputs.write(config, result, model, feeder.test, test_predictions, curve.momenta, cb)
    return dataclasses.replace(result, artifacts=artifacts, total_seconds=time.perf_counter() - started)


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
    normalize: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch: int,
    keep_predictions: bool = False,
) -> _Eval:
    """Mean loss and accuracy over ``data`` (eval-mode BN); sums stay on the device until the end."""
    model.eval()
    device = data.labels.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    preds = []
    for start in range(0, len(data), batch):
        x = normalize(data.images[start : start + batch])
        y = data.labels[start : start + batch]
        with autocast(device):
            logits = runner(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        pred = logits.argmax(1)
        correct += (pred == y).sum()
        if keep_predictions:
            preds.append(pred)
    model.train()
    n = max(len(data), 1)
    return _Eval(float(loss_sum) / n, float(correct) / n, torch.cat(preds) if preds else None)


def autocast(device: torch.device) -> torch.autocast:
    """The autocast context of the forward pass on ``device``."""
    # bf16 on CUDA: tensor-core speed without loss scaling; CPU stays fp32 (bf16 is slower on most CPUs).
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # wall time of queued GPU work, read at epoch boundaries only
    return time.perf_counter()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
