"""What one process keeps between training runs: built (and compiled) models, and the data on the device.

The trials of a worker, the seeds of a replay and the runs of a range test share a :class:`RunCache`: the model
is built and compiled once and re-initialised in place for each run (so ``torch.compile`` happens once per shape),
and the uint8 splits are uploaded once, with their channel statistics (and the whitening layer's filters, when
model.whiten asks for one) computed once, for as long as the runs use the same data.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipelines.config import Config
from pipelines.data import Splits
from pipelines.model import ResNet9, build_model, reset_parameters
from pipelines.step import autocast
from pipelines.whitening import SPECS, fitted_weights

log = logging.getLogger(__name__)


class DeviceSet:
    """An ImageSet on the device: images uint8 (N, 3, H, W), labels int64 (N,)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass(frozen=True)
class DeviceData:
    """The splits on the device and the normalisation they call for (uint8 -> float: x * scale + shift)."""

    test: DeviceSet
    val: DeviceSet | None
    train: DeviceSet | None  # None until a run augments on the device (the per-sample path reads host arrays)
    scale: torch.Tensor  # (1, 3, 1, 1): 1 / (255 std)
    shift: torch.Tensor  # (1, 3, 1, 1): -mean / std


@dataclass(frozen=True)
class Model:
    """A built model: ``module`` owns the weights, ``runner`` is what to call (compiled or not).

    ``compile_seconds``: the compile this run paid for (warm-up passes of a freshly compiled model), else 0.
    """

    module: ResNet9
    runner: nn.Module
    compiled: bool
    compile_seconds: float = 0.0


class RunCache:
    """Models and device data kept across runs in one process.

    ``compile_on_cuda``: what an unset ``train.compile`` means on CUDA; True where many runs share the compile (a
    study's trials, a replay's seeds), False for one run. The CPU never compiles unless asked.
    """

    def __init__(self, *, compile_on_cuda: bool = False) -> None:
        self.compile_on_cuda = compile_on_cuda
        self._model_key: tuple | None = None
        self._model: Model | None = None
        self._warmed: set[tuple] = set()  # (batch, eval batch, image size) the compiled model has seen
        self._data_key: tuple | None = None
        self._data: DeviceData | None = None
        self._splits: Splits | None = None  # held so the id in the key cannot be reused by another object
        self._whitening: dict[str, torch.Tensor] = {}  # model.whiten mode -> its filters, for the data above

    def compiles(self, config: Config, device: torch.device) -> bool:
        """Whether runs of ``config`` on ``device`` use the compiled model."""
        if config.train.compile is not None:
            return config.train.compile
        return self.compile_on_cuda and device.type == "cuda"

    def model(self, config: Config, splits: Splits, device: torch.device) -> Model:
        """The model for ``config`` on ``splits``' classes and image size, re-initialised from train.seed (and its
        whitening layer, model.whiten, set from ``splits``' training images); built (compiled, warmed up) when new."""
        compile_ = self.compiles(config, device) and not config.train.cuda_graph  # the graph runs the eager module
        num_classes, image_size = len(splits.classes), tuple(splits.train.images.shape[1:3])
        key = (config.model, num_classes, str(device), compile_)  # the whole model config: any model.* key counts
        if key != self._model_key:  # keep one: a space that searches model.width must not pile models on the GPU
            self._model = self._model_key = None
            self._warmed.clear()
            # model.bn_weight frozen: frozen in the constructor, before torch.compile (its graph guards on it)
            module = build_model(config.model, num_classes=num_classes).to(device)
            if device.type == "cuda":
                module = module.to(memory_format=torch.channels_last)  # NHWC convs are faster on tensor cores
            runner = torch.compile(module) if compile_ else module
            self._model, self._model_key = Model(module, runner, compile_), key
        assert self._model is not None
        module, runner = self._model.module, self._model.runner
        seconds = 0.0
        shapes = (config.train.batch_size, config.train.eval_batch_size, image_size)
        if compile_ and shapes not in self._warmed:  # new shapes (a searched batch size): compiled now, timed
            seconds = _warm_up(module, runner, config, device, image_size)
            self._warmed.add(shapes)
        reset_parameters(module, seed=config.train.seed)  # BN running statistics included
        if module.whiten is not None:  # in place: a compiled model or a captured graph reads the same memory
            with torch.no_grad():
                module.whiten.weight.copy_(self.whitening(config, splits, device))
        return Model(module, runner, compile_, seconds)

    def whitening(self, config: Config, splits: Splits, device: torch.device) -> torch.Tensor:
        """model.whiten's filters fitted to ``splits``' first training images, normalised as training normalises
        them: computed once per data set (kept as long as :meth:`data` keeps the upload) and mode."""
        data = self.data(config, splits, device, train_on_device=False)
        mode = config.model.whiten
        if mode not in self._whitening:
            first = splits.train.images[: SPECS[mode].images]  # uint8 (N, H, W, 3) on the host
            images = torch.from_numpy(np.ascontiguousarray(first)).to(device).permute(0, 3, 1, 2)
            self._whitening[mode] = fitted_weights(mode, images.float() * data.scale + data.shift)
            log.info("fitted the %s whitening to %d training images", mode, len(first))
        return self._whitening[mode]

    def data(self, config: Config, splits: Splits, device: torch.device, *, train_on_device: bool) -> DeviceData:
        """``splits`` on ``device``, uploaded once for as long as runs pass the same splits object."""
        key = (id(splits), str(device), config.augment.normalize)
        if key != self._data_key:
            self._data = self._data_key = None  # free the old upload before the new one
            self._whitening.clear()  # fitted to the old training images
            self._data = _upload(config, splits, device, train_on_device=train_on_device)
            self._data_key, self._splits = key, splits
        assert self._data is not None
        if train_on_device and self._data.train is None:
            self._data = dataclasses.replace(
                self._data, train=DeviceSet(splits.train.images, splits.train.labels, device)
            )
        return self._data


def _upload(config: Config, splits: Splits, device: torch.device, *, train_on_device: bool) -> DeviceData:
    mean, std = splits.channel_stats() if config.augment.normalize else ((0.0,) * 3, (1.0,) * 3)
    std_t, mean_t = torch.tensor(std, device=device), torch.tensor(mean, device=device)
    return DeviceData(
        test=DeviceSet(splits.test.images, splits.test.labels, device),
        val=DeviceSet(splits.val.images, splits.val.labels, device) if splits.val is not None else None,
        train=DeviceSet(splits.train.images, splits.train.labels, device) if train_on_device else None,
        scale=(1.0 / (255.0 * std_t)).view(1, 3, 1, 1),
        shift=(-mean_t / std_t).view(1, 3, 1, 1),
    )


def _warm_up(
    module: nn.Module, runner: nn.Module, config: Config, device: torch.device, size: tuple[int, int]
) -> float:
    """Compile the training and the evaluation graphs now, on zeros of the runs' shapes, and return how long that
    took: the first run's training time then compares with the others'. The weights it touches are reset after."""
    started = time.perf_counter()
    memory = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    def zeros(batch: int) -> torch.Tensor:
        return torch.zeros(batch, 3, *size, device=device).contiguous(memory_format=memory)

    module.train()
    with autocast(device):
        out = runner(zeros(config.train.batch_size))
    out.float().sum().backward()
    module.zero_grad(set_to_none=True)
    module.eval()
    with torch.no_grad(), autocast(device):
        runner(zeros(config.train.eval_batch_size))
    module.train()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    log.info("compiled the model in %.1f s", seconds)
    return seconds
