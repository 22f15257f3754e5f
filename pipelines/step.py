"""The training step: torch's SGD on an eager or compiled model (the default), or, with ``train.cuda_graph``,
one function of device tensors replayed as a single CUDA graph.

Why not torch's SGD inside the graph: it takes the LR as a tensor but the momentum only as a Python float, which a
captured graph would freeze, and the recipe may cycle both. So the step reads the LR and the momentum of the
current step from the precomputed curve, at a step index that lives on the device and advances inside the graph,
and updates the weights with torch.optim.SGD's arithmetic (weight decay, momentum buffer, Nesterov) in foreach
kernels, as SGD's own foreach path does, param group by param group (batch-norm biases' own LR and decay
scales). Normalisation, forward, loss, backward, update and the epoch's metric sums are all inside; the host only
copies the next uint8 batch in and replays. EMA updates (train.ema) run outside it, after each replay.

On the CPU (no graphs) the same function runs step by step: that is what the equivalence test compares with the
torch.optim.SGD loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipelines.config import Config
from pipelines.layers import param_groups
from pipelines.schedules import ScheduleCurve

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps on a side stream before capture (PyTorch's whole-network capture recipe)


class _Summing:
    """The epoch's summed loss and correct count, kept on the device and read once at its end."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)

    def _add_sums(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss.detach().float() * labels.shape[0]
        self.correct += (logits.detach().argmax(1) == labels).sum()

    def take_sums(self) -> tuple[float, float]:
        """(summed loss, correct count) in one host sync; reset for the next epoch."""
        loss_total, correct_total = torch.stack([self.loss_sum, self.correct.float()]).tolist()
        self.loss_sum.zero_()
        self.correct.zero_()
        return loss_total, correct_total


class TorchStep(_Summing):
    """torch's SGD (fused on CUDA) on the eager or compiled model, the LR (and a cycled momentum) written into its
    param group as floats before each step."""

    capture_seconds = 0.0

    def __init__(
        self,
        config: Config,
        model: nn.Module,
        runner: nn.Module,
        criterion: nn.Module,
        curve: ScheduleCurve,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
    ) -> None:
        super().__init__(device)
        self.runner, self.criterion, self.normalize, self.device = runner, criterion, normalize, device
        self.lrs = list(curve.lrs)
        self.momenta = curve.momenta if curve.cycles_momentum else None  # decided once, not per step
        self.optimizer = torch.optim.SGD(
            sgd_groups(model, config),
            lr=curve.lrs[0],
            momentum=curve.momenta[0],
            nesterov=config.optim.nesterov,
            weight_decay=config.optim.weight_decay,
            fused=device.type == "cuda",  # one kernel for the whole update
        )

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> torch.Tensor:
        """One step at step ``step``'s LR; returns its loss (0-d, detached, on the device: reading it syncs)."""
        for group in self.optimizer.param_groups:  # one group, or two with batch-norm biases' own LR
            group["lr"] = self.lrs[step] * group["lr_scale"]  # a float the optimizer reads: no scheduler in the loop
            if self.momenta is not None:
                group["momentum"] = self.momenta[step]
        with autocast(self.device):
            logits = self.runner(self.normalize(images))
            loss = self.criterion(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._add_sums(loss, logits, labels)  # on the device: no step waits for the GPU
        return loss.detach()

    def set_lrs(self, lrs: Sequence[float]) -> None:
        self.lrs = list(lrs)


@dataclass(frozen=True)
class _Group:
    """One SGD param group of :class:`CurveStep`: ``params[start:end]`` and their momentum buffers, with the
    group's coupled weight decay and the factor on the LR curve (:func:`pipelines.layers.param_groups`)."""

    start: int
    end: int
    weight_decay: float
    lr_scale: float


class CurveStep(_Summing):
    """normalize -> forward -> loss -> backward -> SGD -> metric sums, with LR and momentum indexed on the device.

    ``groups``: torch SGD param groups as :func:`sgd_groups` makes them (``params``, ``weight_decay``,
    ``lr_scale``); each is updated with its own decay and its LR times its scale. Called with the step number for
    TorchStep's interface; it ignores it: its own index lives on the device.
    """

    capture_seconds = 0.0

    def __init__(
        self,
        module: nn.Module,
        *,
        groups: Sequence[dict[str, Any]],
        lrs: Sequence[float],
        momenta: Sequence[float],
        nesterov: bool,
        criterion: nn.Module,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
    ) -> None:
        super().__init__(device)
        self.module, self.criterion, self.normalize, self.device = module, criterion, normalize, device
        self.nesterov = nesterov
        self.params = [p for group in groups for p in group["params"]]
        self.groups: list[_Group] = []
        for group in groups:
            start = self.groups[-1].end if self.groups else 0
            end = start + len(group["params"])
            self.groups.append(_Group(start, end, float(group["weight_decay"]), float(group["lr_scale"])))
        self.momentum_buffers = [torch.zeros_like(p) for p in self.params]  # == torch's first-step clone
        self.lrs = torch.tensor(list(lrs), dtype=torch.float32, device=device)
        self.momenta = torch.tensor(list(momenta), dtype=torch.float32, device=device)
        self.index = torch.zeros(1, dtype=torch.long, device=device)

    def set_lrs(self, lrs: Sequence[float]) -> None:
        """Replace the planned LRs (plateau's cuts) in place: a captured graph reads the same memory."""
        self.lrs.copy_(torch.tensor(list(lrs), dtype=torch.float32))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int | None = None) -> None:
        lr = self.lrs.index_select(0, self.index)[0]  # a 0-d device read: no host sync, capturable
        momentum = self.momenta.index_select(0, self.index)[0]
        x = self.normalize(images)
        # autocast's weight cache must be off under capture; bf16 on CUDA as in the eager loop, fp32 on the CPU
        with torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda", cache_enabled=False
        ):
            logits = self.module(x)
            loss = self.criterion(logits, labels)
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            for group in self.groups:  # torch.optim.SGD's arithmetic, group by group
                params = self.params[group.start : group.end]
                buffers = self.momentum_buffers[group.start : group.end]
                update = list(grads[group.start : group.end])
                if group.weight_decay:
                    update = torch._foreach_add(update, params, alpha=group.weight_decay)
                torch._foreach_mul_(buffers, momentum)
                torch._foreach_add_(buffers, update)
                update = torch._foreach_add(update, torch._foreach_mul(buffers, momentum)) if self.nesterov else buffers
                step_lr = lr if group.lr_scale == 1 else lr * group.lr_scale
                torch._foreach_add_(params, torch._foreach_mul(update, -step_lr))
            self._add_sums(loss, logits, labels)
            self.index += 1


class GraphStep:
    """A :class:`CurveStep` captured as one CUDA graph at its first call; each call copies the batch in and
    replays. ``capture_seconds``: the warm-up steps and the capture, paid once per run."""

    def __init__(self, step: CurveStep) -> None:
        self.step = step
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_seconds = 0.0

    def set_lrs(self, lrs: Sequence[float]) -> None:
        self.step.set_lrs(lrs)

    def take_sums(self) -> tuple[float, float]:
        return self.step.take_sums()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int | None = None) -> None:
        if self.graph is None:
            self._capture(images, labels)
        self.images.copy_(images, non_blocking=True)
        self.labels.copy_(labels, non_blocking=True)
        self.graph.replay()

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        torch.cuda.synchronize()  # the epoch's queued augmentation is not capture time
        started = time.perf_counter()
        step = self.step
        self.images, self.labels = images.clone(), labels.clone()
        saved = _snapshot(step)  # the warm-up steps train: undo them after
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                step(self.images, self.labels)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # recorded, not run; thread_local: a DataLoader's pin-memory thread may call CUDA meanwhile, which the
        # default ("global") mode would count as an error in the capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            step(self.images, self.labels)
        _restore(step, saved)
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - started
        log.info("captured the training step in %.2f s", self.capture_seconds)


TrainStep = TorchStep | CurveStep | GraphStep


def train_step(
    config: Config,
    model: nn.Module,
    runner: nn.Module,
    criterion: nn.Module,
    curve: ScheduleCurve,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> TrainStep:
    """The step ``config`` asks for: torch's SGD, or (train.cuda_graph) the curve-fed step, captured on CUDA."""
    if not config.train.cuda_graph:
        return TorchStep(config, model, runner, criterion, curve, normalize, device)
    step = CurveStep(
        model,
        groups=sgd_groups(model, config),
        lrs=curve.lrs,
        momenta=curve.momenta,
        nesterov=config.optim.nesterov,
        criterion=criterion,
        normalize=normalize,
        device=device,
    )
    if device.type != "cuda":
        log.info("train.cuda_graph without CUDA: the step runs uncaptured")
        return step
    return GraphStep(step)


def sgd_groups(model: nn.Module, config: Config) -> list[dict[str, Any]]:
    """The model's trainable parameters as SGD param groups: one (the recipe), or batch-norm biases apart with
    optim.bn_bias_lr_scale and optim.bn_bias_decay_scale (:func:`pipelines.layers.param_groups`)."""
    optim = config.optim
    return param_groups(
        model,
        weight_decay=optim.weight_decay,
        bn_bias_lr_scale=optim.bn_bias_lr_scale,
        bn_bias_decay_scale=optim.bn_bias_decay_scale,
    )


def _snapshot(step: CurveStep) -> list[torch.Tensor]:
    return [t.detach().clone() for t in _state(step)]


def _restore(step: CurveStep, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for tensor, value in zip(_state(step), saved, strict=True):
            tensor.copy_(value)


def _state(step: CurveStep) -> list[torch.Tensor]:
    """Everything a step writes: weights, BN statistics, momentum buffers, the index, the sums."""
    return [
        *step.params,
        *step.module.buffers(),
        *step.momentum_buffers,
        step.index,
        step.loss_sum,
        step.correct,
    ]


def autocast(device: torch.device) -> torch.autocast:
    """The autocast context of the forward pass on ``device``."""
    # bf16 on CUDA: tensor-core speed without loss scaling; CPU stays fp32 (bf16 is slower on most CPUs).
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
