"""The assignment-style training loop, written the way course notebooks write it: the yardstick for the fast path.

Per-sample albumentations (the config's ops, then ``A.Normalize``) in DataLoader worker processes, fp32 eager
model in NCHW, torch's ``OneCycleLR`` (through :func:`pipelines.schedules.policy_scheduler`) stepped after every
batch, and a ``.item()`` on the loss and on the correct count after every step (a host sync per step). Everything
else -- model, optimizer hyperparameters, schedule, batch size, data -- is the config's, as in
:func:`pipelines.train.run`, so the two loops differ only in *how* they train.

This file is deliberately slow in the ways the fast path is not; do not "fix" it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from pipelines.augment import SampleDataset
from pipelines.config import Config
from pipelines.data import Splits
from pipelines.model import build_model, count_parameters
from pipelines.schedules import policy_scheduler

__all__ = ["BaselineResult", "run_baseline"]


@dataclass(frozen=True, kw_only=True)
class BaselineResult:
    """What the baseline loop measured. Times in seconds."""

    seconds: float  # training: the sum of the epochs' times (below), evaluation excluded
    epoch_seconds: tuple[float, ...]  # each epoch from its first batch request to its last optimizer step finished
    eval_seconds: float  # evaluation of the test set after every epoch, all epochs
    total_seconds: float  # from the call to the return: dataset/loader/model construction included
    steps_per_epoch: int
    batch_size: int
    epochs: int
    train_loss: float  # mean training loss of the last epoch
    test_accuracy: float  # after the last epoch
    params: int
    device: str


def run_baseline(config: Config, splits: Splits, *, device: torch.device) -> BaselineResult:
    """Train ``config`` on ``splits`` the notebook way; evaluate on the test split after every epoch.

    ``device``: where the model runs; the augmentation always runs on the CPU, in ``config.data.num_workers``
    DataLoader workers (0: in this process). Epoch times include the DataLoader's worker start-up (workers are
    not persistent, the DataLoader default) and every host-to-device copy.
    """
    started = time.perf_counter()
    train_cfg = config.train
    torch.manual_seed(train_cfg.seed)
    extra: tuple[dict[str, Any], ...] = ()
    if config.augment.normalize:
        mean, std = splits.channel_stats()
        # A.Normalize: (x - 255*mean) / (255*std) per pixel, float32 out -- the notebooks' last transform.
        extra = ({"name": "Normalize", "mean": mean, "std": std, "max_pixel_value": 255.0, "p": 1.0},)
    train_set = SampleDataset(
        splits.train.images, splits.train.labels, (*config.augment.ops, *extra), seed=train_cfg.seed
    )
    test_set = SampleDataset(splits.test.images, splits.test.labels, extra, seed=train_cfg.seed)
    workers = config.data.num_workers
    pin = device.type == "cuda"
    train_loader = DataLoader(
        train_set,
        batch_size=train_cfg.batch_size,
        shuffle=True,
        drop_last=True,  # as the fast path: the last partial batch is dropped
        num_workers=workers,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(train_cfg.seed),
    )
    test_loader = DataLoader(test_set, batch_size=train_cfg.eval_batch_size, num_workers=workers, pin_memory=pin)

    model = build_model(config.model, num_classes=len(splits.classes)).to(device)
    optim = config.optim
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=optim.lr,
        momentum=optim.momentum,
        nesterov=optim.nesterov,
        weight_decay=optim.weight_decay,
    )
    steps_per_epoch = len(train_loader)
    if config.schedule.warmup_epochs > 0 or config.schedule.policy == "plateau":
        raise ValueError("the baseline steps the policy's own torch scheduler: no warm-up, no plateau")
    scheduler = policy_scheduler(optimizer, config, steps_per_epoch=steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)

    epoch_seconds: list[float] = []
    eval_seconds = 0.0
    train_loss = float("nan")
    test_accuracy = 0.0
    for _epoch in range(train_cfg.epochs):
        model.train()
        clock = _Clock(device)
        running_loss, correct, seen = 0.0, 0, 0
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            logits = model(images)
            loss = criterion(logits, labels)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running_loss += loss.item() * labels.size(0)  # the per-step host sync of the notebooks
            correct += (logits.argmax(1) == labels).sum().item()
            seen += labels.size(0)
        epoch_seconds.append(clock.seconds())
        train_loss = running_loss / max(seen, 1)

        clock = _Clock(device)
        test_accuracy = _evaluate(model, test_loader, device)
        eval_seconds += clock.seconds()

    return BaselineResult(
        seconds=sum(epoch_seconds),
        epoch_seconds=tuple(epoch_seconds),
        eval_seconds=eval_seconds,
        total_seconds=time.perf_counter() - started,
        steps_per_epoch=steps_per_epoch,
        batch_size=train_cfg.batch_size,
        epochs=train_cfg.epochs,
        train_loss=train_loss,
        test_accuracy=test_accuracy,
        params=count_parameters(model),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    )


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Test accuracy in eval mode, a ``.item()`` per batch as the notebooks do."""
    model.eval()
    correct, seen = 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        correct += (model(images).argmax(1) == labels).sum().item()
        seen += labels.size(0)
    model.train()
    return correct / max(seen, 1)


class _Clock:
    """Wall time of an interval of host + device work.

    On CUDA: a CUDA event recorded after a synchronize (so the stream is idle and the event marks "now") and one
    recorded at the end, read after synchronizing on it: the interval includes the host-side work (data loading,
    launches) and all GPU work queued in it. On the CPU: ``time.perf_counter``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()

    def seconds(self) -> float:
        if self.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return self.start.elapsed_time(end) / 1000.0  # elapsed_time is in milliseconds
        return time.perf_counter() - self.t0
