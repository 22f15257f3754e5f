"""The typed training config: frozen, keyword-only dataclasses with validation and a YAML round trip.

Defaults are the course recipe: custom ResNet-9, batch 512, 24 epochs, One Cycle peaking at epoch 5,
pad 4 -> random crop 32 -> horizontal flip -> cutout 8x8, SGD with Nesterov momentum.
This is the only module of ``pipelines`` that touches YAML.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import UserError, one_line

POLICIES = ("one_cycle", "triangular", "constant")
ANNEALS = ("linear", "cos")
DEVICES = ("auto", "cpu", "cuda")

# Scientific notation without a dot or an exponent sign (1e-3, 5E4, 1.5e3): floats in YAML 1.2, strings in
# PyYAML's YAML 1.1 resolver, which would reject "lr: 1e-3" as "must be a number, got '1e-3'".
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads YAML 1.2 exponent floats (see _EXPONENT_FLOAT)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """yaml.safe_load, except that 1e-3 and 5e-4 are floats (as in YAML 1.2), not strings."""
    return yaml.load(text, Loader=_Loader)  # safe: _Loader is a SafeLoader subclass


# Fraction of the run at which One Cycle peaks when schedule.peak_epoch is unset: epoch 5 of 24 (the recipe).
RECIPE_PEAK_FRACTION = 5 / 24


def _recipe_augment() -> tuple[dict[str, Any], ...]:
    """The recipe's albumentations pipeline as (name + keyword arguments) dicts, in order.

    pad 4 (reflect, OpenCV's BORDER_REFLECT_101 = 4) -> random crop 32 -> horizontal flip -> cutout 8x8
    (CoarseDropout, one hole, filled with 0 before normalisation, on half the images as in the course notebooks).
    """
    return (
        {"name": "PadIfNeeded", "min_height": 40, "min_width": 40, "border_mode": 4, "p": 1.0},
        {"name": "RandomCrop", "height": 32, "width": 32, "p": 1.0},
        {"name": "HorizontalFlip", "p": 0.5},
        {
            "name": "CoarseDropout",
            "num_holes_range": [1, 1],
            "hole_height_range": [8, 8],
            "hole_width_range": [8, 8],
            "fill": 0,
            "p": 0.5,
        },
    )


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the images come from and which of them are used."""

    path: str = "cifar10"  # "cifar10" | cifar-10-python.tar.gz | its folder | ImageFolder dir or archive
    cache_dir: str = "~/.cache/sweeper"  # decoded uint8 arrays, keyed by content
    train_limit: int | None = None  # class-balanced subset of the training set (images)
    test_limit: int | None = None  # class-balanced subset of the test set (images)
    val_size: int = 0  # class-balanced validation split held out of train (images)
    num_workers: int = 2  # DataLoader workers for the per-sample (non-batched) augmentation path

    def __post_init__(self) -> None:
        _require(bool(self.path), "data.path must not be empty")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"data.{name} must be a positive number of images, got {value}")
        _require(self.val_size >= 0, f"data.val_size must be >= 0, got {self.val_size}")
        _require(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The custom ResNet-9."""

    width: float = 1.0  # multiplier on every channel width (64, 128, 256, 512); 0.25 for quick CPU runs

    def __post_init__(self) -> None:
        _require(self.width > 0 and math.isfinite(self.width), f"model.width must be > 0, got {self.width}")


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """The training augmentation as an albumentations pipeline: a list of {name: <transform>, **kwargs}."""

    ops: tuple[dict[str, Any], ...] = field(default_factory=_recipe_augment)
    normalize: bool = True  # subtract the training set's channel mean, divide by its std (on the device)

    def __post_init__(self) -> None:
        ops = tuple(dict(op) for op in self.ops)
        for i, op in enumerate(ops):
            _require(isinstance(op.get("name"), str), f"augment.ops[{i}] needs a 'name' (an albumentations transform)")
        object.__setattr__(self, "ops", ops)


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """The learning-rate policy, updated every iteration."""

    policy: str = "one_cycle"  # one_cycle | triangular | constant
    peak_epoch: float | None = None  # One Cycle peak; unset: 5/24 of train.epochs (epoch 5 of 24)
    start_div: float = 25.0  # the cycle starts at optim.lr / start_div (torch OneCycleLR's div_factor)
    end_div: float = 2500.0  # ... and ends at optim.lr / end_div; end_div == start_div: "no annihilation"
    anneal: str = "linear"  # linear | cos
    step_epochs: float = 2.0  # triangular: half-cycle length in epochs (Smith 2015's step size)
    cycle_momentum: bool = False  # cycle momentum inversely to the LR between the two bounds below
    min_momentum: float = 0.85
    max_momentum: float = 0.95

    def __post_init__(self) -> None:
        _require(self.policy in POLICIES, f"schedule.policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        _require(self.anneal in ANNEALS, f"schedule.anneal must be one of {', '.join(ANNEALS)}, got {self.anneal!r}")
        _require(
            self.peak_epoch is None or self.peak_epoch > 0, f"schedule.peak_epoch must be > 0, got {self.peak_epoch}"
        )
        _require(self.start_div >= 1, f"schedule.start_div must be >= 1, got {self.start_div}")
        _require(self.end_div >= 1, f"schedule.end_div must be >= 1, got {self.end_div}")
        _require(self.step_epochs > 0, f"schedule.step_epochs must be > 0, got {self.step_epochs}")
        _require(
            0 <= self.min_momentum <= self.max_momentum < 1,
            f"schedule.min_momentum and max_momentum must satisfy 0 <= min <= max < 1, "
            f"got {self.min_momentum} and {self.max_momentum}",
        )


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """SGD on the mean cross-entropy. Myrtle's 94% recipe in these units: lr 0.4, momentum 0.9, decay 5e-4."""

    lr: float = 0.4  # peak learning rate (per mean-reduced loss)
    momentum: float = 0.9
    weight_decay: float = 5e-4  # L2, coupled (torch SGD's weight_decay)
    nesterov: bool = True
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        _require(self.lr > 0 and math.isfinite(self.lr), f"optim.lr must be > 0, got {self.lr}")
        _require(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), got {self.momentum}")
        _require(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _require(0 <= self.label_smoothing < 1, f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _require(not self.nesterov or self.momentum > 0, "optim.nesterov needs optim.momentum > 0")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The loop."""

    epochs: int = 24
    batch_size: int = 512
    eval_batch_size: int = 1024
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile the model once per process (CUDA); reused across runs
    out_dir: str = "runs/train"
    save_model: bool = True

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _require(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _require(self.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        _require(self.device in DEVICES, f"train.device must be one of {', '.join(DEVICES)}, got {self.device!r}")


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything one training run needs; the unit of reproducibility (logged as YAML, replayed from it)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        peak = self.schedule.peak_epoch
        _require(
            peak is None or peak <= self.train.epochs,
            f"schedule.peak_epoch must be <= train.epochs ({self.train.epochs}), got {peak}",
        )

    @property
    def peak_epoch(self) -> float:
        """The One Cycle peak in epochs: schedule.peak_epoch, or 5/24 of the run."""
        if self.schedule.peak_epoch is not None:
            return float(self.schedule.peak_epoch)
        return RECIPE_PEAK_FRACTION * self.train.epochs

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists (YAML-safe)."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Config:
        """Build from nested mappings; unknown keys and bad values raise UserError naming the key."""
        return _build(cls, raw or {}, prefix="")

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "config") -> Config:
        try:
            raw = load_yaml(text)
        except yaml.YAMLError as err:
            raise UserError(f"{source} is not valid YAML: {one_line(err)}") from err
        if raw is not None and not isinstance(raw, Mapping):
            raise UserError(f"{source} must be a YAML mapping of sections (data, model, ...), got {type(raw).__name__}")
        return cls.from_dict(raw)

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise UserError(f"cannot read config {path}: {err.strerror}") from err
        return cls.from_yaml(text, source=str(path))

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """A new config with dotted keys replaced, e.g. {"optim.lr": 0.2}; validated like any config."""
        raw = self.to_dict()
        for key, value in overrides.items():
            parts = key.split(".")
            node: Any = raw
            for depth, part in enumerate(parts[:-1]):
                if not isinstance(node, dict) or part not in node:
                    raise UserError(f"unknown config key {'.'.join(parts[: depth + 1])!r} (in {key!r})")
                node = node[part]
            if not isinstance(node, dict) or parts[-1] not in node:
                raise UserError(f"unknown config key {key!r}")
            node[parts[-1]] = value
        return Config.from_dict(raw)


def config_keys() -> list[str]:
    """Every dotted key of the config, e.g. ``optim.lr``."""
    return [f"{section}.{key}" for section, values in Config().to_dict().items() for key in values]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, raw: Any, *, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(raw, Mapping):
        raise UserError(f"{where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise UserError(f"unknown config key {prefix + str(unknown[0])!r}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, prefix=key + ".")
        else:
            kwargs[name] = _coerce(hint, value, key)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check (and gently convert: int -> float, list -> tuple) a scalar against its annotation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except UserError:
                continue
        raise UserError(f"{key} must be {_describe(hint)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list, got {value!r}")
        return tuple(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise UserError(f"{key} must be {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(
        hint, str(hint)
    )
