"""The typed training config: frozen, keyword-only dataclasses with validation and a YAML round trip.

Defaults are the course recipe: custom ResNet-9, batch 512, 24 epochs, One Cycle peaking at epoch 5,
pad 4 -> random crop 32 -> horizontal flip -> cutout 8x8, SGD with Nesterov momentum.
This is the only module of ``pipelines`` that touches YAML.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.coerce import build, plain, require
from pipelines.errors import UserError, one_line

POLICIES = ("one_cycle", "triangular", "constant", "step", "exponential", "cosine", "plateau")
WARMUPS = ("constant", "linear", "exponential")
LR_SCALINGS = ("none", "linear", "sqrt")
ANNEALS = ("linear", "cos")
DEVICES = ("auto", "cpu", "cuda")
ACTIVATIONS = ("relu", "celu", "gelu")  # the recipe's; Myrtle.ai part 8's; airbench's
BN_WEIGHTS = ("learned", "frozen")  # batch-norm scales trained, or fixed at 1 (Myrtle.ai part 8, airbench)
WHITENINGS = ("none", "patch2", "patch3")  # fixed first-layer whitening: airbench's 2x2 patches, Myrtle's 3x3
TTAS = ("none", "flip", "flip_shift")  # test-time views: the image; + its mirror; + both shifted by 1 px (airbench)

# Scientific notation without a dot or an exponent sign (1e-3, 5E4, 1.5e3): floats in YAML 1.2, strings in
# PyYAML's YAML 1.1 resolver, which would reject "lr: 1e-3" as "must be a number, got '1e-3'".
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads YAML 1.2 exponent floats (see _EXPONENT_FLOAT)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """yaml.safe_load, except that 1e-3 and 5e-4 are floats (as in YAML 1.2), not strings."""
    return yaml.load(text, Loader=_Loader)  # safe: _Loader is a SafeLoader subclass


MIN_IMAGE_SIZE = 8  # pixels: the network halves its maps three times before the global pool

# Fraction of the run at which One Cycle peaks when schedule.peak_epoch is unset: epoch 5 of 24 (the recipe).
RECIPE_PEAK_FRACTION = 5 / 24


def recipe_augment() -> tuple[dict[str, Any], ...]:
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
    image_size: int | None = None  # resize every image to image_size x image_size (mixed sizes); unset: as they are
    num_workers: int = 2  # DataLoader workers for the per-sample (non-batched) augmentation path

    def __post_init__(self) -> None:
        require(bool(self.path), "data.path must not be empty")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            require(value is None or value > 0, f"data.{name} must be a positive number of images, got {value}")
        require(self.val_size >= 0, f"data.val_size must be >= 0, got {self.val_size}")
        require(
            self.image_size is None or self.image_size >= MIN_IMAGE_SIZE,
            f"data.image_size must be at least {MIN_IMAGE_SIZE} (pixels), got {self.image_size}",
        )
        require(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The custom ResNet-9."""

    width: float = 1.0  # multiplier on every channel width (64, 128, 256, 512); 0.25 for quick CPU runs
    activation: str = "relu"  # relu | celu | gelu (after every batch norm)
    # CELU's alpha (dimensionless): 0.075 is Myrtle.ai part 8's with learned BN scales; with model.bn_weight frozen
    # its new_dawn.py uses 4x that, 0.3 (the scales it replaces settle near 1/4)
    celu_alpha: float = 0.075
    # images per ghost batch: batch-norm statistics per chunk of this many images while training (Myrtle.ai part 8:
    # 32 of 512); 0: off (one batch, one set of statistics); must divide train.batch_size
    ghost_batch: int = 0
    bn_weight: str = "learned"  # learned | frozen: every batch-norm scale fixed at 1 (Myrtle.ai part 8, airbench)
    # none | patch2 | patch3: a fixed first conv whitening 2x2 (airbench: 24 channels, the 12 filters and their
    # negations) or 3x3 (Myrtle.ai part 8: 27 channels) patches, fitted to the first training images
    whiten: str = "none"

    def __post_init__(self) -> None:
        require(self.width > 0 and math.isfinite(self.width), f"model.width must be > 0, got {self.width}")
        require(
            self.activation in ACTIVATIONS,
            f"model.activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}",
        )
        require(
            self.celu_alpha > 0 and math.isfinite(self.celu_alpha),
            f"model.celu_alpha must be > 0 and finite, got {self.celu_alpha}",
        )
        require(self.ghost_batch >= 0, f"model.ghost_batch must be >= 0 images (0: off), got {self.ghost_batch}")
        require(
            self.bn_weight in BN_WEIGHTS,
            f"model.bn_weight must be one of {', '.join(BN_WEIGHTS)}, got {self.bn_weight!r}",
        )
        require(self.whiten in WHITENINGS, f"model.whiten must be one of {', '.join(WHITENINGS)}, got {self.whiten!r}")


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """The training augmentation as an albumentations pipeline: a list of {name: <transform>, **kwargs}."""

    ops: tuple[dict[str, Any], ...] = field(default_factory=recipe_augment)
    normalize: bool = True  # subtract the training set's channel mean, divide by its std (on the device)
    # airbench's derandomised flip: the HorizontalFlip op flips each image on alternate epochs (epoch 0: each with
    # the op's p), instead of drawing anew every epoch; needs the batched (device) augmentation
    alternating_flip: bool = False

    def __post_init__(self) -> None:
        ops = tuple(dict(op) for op in self.ops)
        for i, op in enumerate(ops):
            require(isinstance(op.get("name"), str), f"augment.ops[{i}] needs a 'name' (an albumentations transform)")
        object.__setattr__(self, "ops", ops)
        flips = sum(op["name"] == "HorizontalFlip" for op in ops)
        require(
            not self.alternating_flip or flips == 1,
            f"augment.alternating_flip needs exactly one HorizontalFlip in augment.ops (the op whose flips it "
            f"alternates), got {flips}",
        )


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """The learning-rate policy, updated every iteration, and an optional warm-up before it.

    LRs are relative to the peak LR (optim.lr, scaled with the batch size when optim.lr_scaling says so).
    Epoch-valued keys (peak_epoch, milestones) count from the start of the run, warm-up included.
    """

    policy: str = "one_cycle"  # one_cycle | triangular | constant | step | exponential | cosine | plateau
    peak_epoch: float | None = None  # One Cycle peak; unset: 5/24 of train.epochs (epoch 5 of 24)
    start_div: float = 25.0  # the cycle starts at optim.lr / start_div (torch OneCycleLR's div_factor)
    end_div: float = 2500.0  # one_cycle ends (cosine anneals) at optim.lr / end_div; == start_div: "no annihilation"
    anneal: str = "linear"  # linear | cos
    step_epochs: float = 2.0  # triangular: half-cycle length in epochs (Smith 2015's step size)
    cycle_momentum: bool = False  # cycle momentum inversely to the LR between the two bounds below
    min_momentum: float = 0.85
    max_momentum: float = 0.95
    milestones: tuple[float, ...] = ()  # step: epochs at which the LR is multiplied by gamma, e.g. [12, 18]
    gamma: float = 0.1  # step: factor at each milestone; exponential: factor per epoch (applied smoothly per step)
    patience: int = 2  # plateau: epochs without improvement of the validation (else test) loss before a cut
    factor: float = 0.5  # plateau: the LR is multiplied by this at each cut
    min_lr: float = 0.0  # plateau: never below this LR
    warmup: str = "linear"  # constant (hold lr / warmup_div) | linear | exponential (up from lr / warmup_div)
    warmup_epochs: float = 0.0  # 0: no warm-up; the policy starts after it, at the LR the warm-up reached
    warmup_div: float = 10.0  # the warm-up starts at (holds, for constant) the policy's first LR / warmup_div

    def __post_init__(self) -> None:
        require(self.policy in POLICIES, f"schedule.policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        require(self.anneal in ANNEALS, f"schedule.anneal must be one of {', '.join(ANNEALS)}, got {self.anneal!r}")
        require(self.warmup in WARMUPS, f"schedule.warmup must be one of {', '.join(WARMUPS)}, got {self.warmup!r}")
        require(
            all(0 < m < math.inf for m in self.milestones) and list(self.milestones) == sorted(set(self.milestones)),
            f"schedule.milestones must be increasing epochs > 0, got {list(self.milestones)}",
        )
        require(
            self.policy != "step" or bool(self.milestones),
            "schedule.milestones must name at least one epoch for policy step, e.g. [12, 18]",
        )
        require(0 < self.gamma <= 1, f"schedule.gamma must be in (0, 1], got {self.gamma}")
        require(0 < self.factor < 1, f"schedule.factor must be in (0, 1), got {self.factor}")
        require(self.patience >= 0, f"schedule.patience must be >= 0 epochs, got {self.patience}")
        require(0 <= self.min_lr < math.inf, f"schedule.min_lr must be >= 0 and finite, got {self.min_lr}")
        require(
            0 <= self.warmup_epochs < math.inf,
            f"schedule.warmup_epochs must be >= 0 and finite, got {self.warmup_epochs}",
        )
        require(1 <= self.warmup_div < math.inf, f"schedule.warmup_div must be >= 1 and finite, got {self.warmup_div}")
        require(
            self.peak_epoch is None or self.peak_epoch > 0, f"schedule.peak_epoch must be > 0, got {self.peak_epoch}"
        )
        require(self.start_div >= 1, f"schedule.start_div must be >= 1, got {self.start_div}")
        require(self.end_div >= 1, f"schedule.end_div must be >= 1, got {self.end_div}")
        require(self.step_epochs > 0, f"schedule.step_epochs must be > 0, got {self.step_epochs}")
        require(
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
    # batch-norm biases' LR and weight decay, as multiples of the others' (dimensionless). Myrtle.ai part 8 (BN
    # scales frozen): 16 and 1/16; airbench94: 64 and 1/64 (its decoupled decay lr * wd unchanged)
    bn_bias_lr_scale: float = 1.0
    bn_bias_decay_scale: float = 1.0
    lr_scaling: str = "none"  # none | linear | sqrt: the LR trained with is lr * (B / reference_batch_size)^(1 or 1/2)
    reference_batch_size: int = 512  # the batch size optim.lr is meant for (the recipe's)

    def __post_init__(self) -> None:
        require(self.lr > 0 and math.isfinite(self.lr), f"optim.lr must be > 0, got {self.lr}")
        require(
            self.lr_scaling in LR_SCALINGS,
            f"optim.lr_scaling must be one of {', '.join(LR_SCALINGS)}, got {self.lr_scaling!r}",
        )
        require(
            self.reference_batch_size >= 1, f"optim.reference_batch_size must be >= 1, got {self.reference_batch_size}"
        )
        require(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        require(0 <= self.label_smoothing < 1, f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        require(not self.nesterov or self.momentum > 0, "optim.nesterov needs optim.momentum > 0")
        require(
            self.bn_bias_lr_scale > 0 and math.isfinite(self.bn_bias_lr_scale),
            f"optim.bn_bias_lr_scale must be > 0 and finite, got {self.bn_bias_lr_scale}",
        )
        require(
            self.bn_bias_decay_scale >= 0 and math.isfinite(self.bn_bias_decay_scale),
            f"optim.bn_bias_decay_scale must be >= 0 and finite, got {self.bn_bias_decay_scale}",
        )


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The loop."""

    epochs: int = 24
    batch_size: int = 512
    eval_batch_size: int = 1024
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # torch.compile the model once per process, reused across runs; unset: compiled on CUDA where the compile
    # pays for itself (the trials of a study and the seeds of a replay), eager for one `sweeper train`
    compile: bool | None = None
    # the whole training step (normalize, forward, loss, backward, SGD, metric sums) replayed as one CUDA graph
    cuda_graph: bool = False
    eval_every: int = 1  # evaluate the validation split (else the test set) every N epochs; the last always
    test_every: int | None = None  # the test set every N epochs (the last always); unset: as eval_every
    # evaluate with an exponential moving average of the weights (batch-norm statistics included): its momentum
    # per step (Myrtle.ai part 8: 0.99), applied as momentum ** ema_every every ema_every steps; 0: off
    ema: float = 0.0
    ema_every: int = 5  # steps between EMA updates (Myrtle.ai part 8: 5)
    tta: str = "none"  # none | flip | flip_shift: test-time views averaged in the logits (airbench94's tta_level)
    out_dir: str = "runs/train"
    save_model: bool = True

    def __post_init__(self) -> None:
        require(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        require(self.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        require(self.eval_every >= 1, f"train.eval_every must be >= 1 (epochs), got {self.eval_every}")
        require(
            self.test_every is None or self.test_every >= 1,
            f"train.test_every must be >= 1 (epochs), got {self.test_every}",
        )
        require(self.device in DEVICES, f"train.device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        require(self.ema == 0 or 0 < self.ema < 1, f"train.ema must be 0 (off) or a momentum in (0, 1), got {self.ema}")
        require(self.ema_every >= 1, f"train.ema_every must be >= 1 (steps), got {self.ema_every}")
        require(self.tta in TTAS, f"train.tta must be one of {', '.join(TTAS)}, got {self.tta!r}")


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
        sched, epochs = self.schedule, self.train.epochs
        peak = sched.peak_epoch
        ghost, batch = self.model.ghost_batch, self.train.batch_size
        require(
            ghost == 0 or batch % ghost == 0,
            f"model.ghost_batch must divide train.batch_size ({batch}), got {ghost}",
        )
        require(
            peak is None or peak <= epochs,
            f"schedule.peak_epoch must be <= train.epochs ({epochs}), got {peak}",
        )
        require(
            not (self.train.cuda_graph and sched.cycle_momentum and sched.min_momentum == 0),
            "train.cuda_graph needs schedule.min_momentum > 0 when the momentum cycles (torch's SGD skips the "
            "momentum buffer at exactly 0, which the captured step does not copy)",
        )
        require(
            sched.warmup_epochs < epochs,
            f"schedule.warmup_epochs must be shorter than the run (train.epochs = {epochs}), got {sched.warmup_epochs}",
        )
        if sched.policy == "step":
            require(
                sched.milestones[-1] < epochs,
                f"schedule.milestones must lie before the last epoch (train.epochs = {epochs}), "
                f"got {list(sched.milestones)}",
            )
            require(
                sched.milestones[0] > sched.warmup_epochs,
                f"schedule.milestones must come after the warm-up (schedule.warmup_epochs = {sched.warmup_epochs}), "
                f"got {list(sched.milestones)}",
            )
        if sched.policy == "one_cycle" and sched.warmup_epochs > 0:
            require(
                self.peak_epoch > sched.warmup_epochs,
                f"schedule.peak_epoch ({self.peak_epoch:g}) must come after the warm-up "
                f"(schedule.warmup_epochs = {sched.warmup_epochs:g})",
            )
        if sched.policy == "plateau":
            require(
                sched.min_lr < self.effective_lr,
                f"schedule.min_lr must be below the LR ({self.effective_lr:g}), got {sched.min_lr}",
            )

    @property
    def lr_scale(self) -> float:
        """What optim.lr is multiplied by for this batch size: (train.batch_size / optim.reference_batch_size) for
        optim.lr_scaling linear (Goyal et al. 2017), its square root for sqrt (Krizhevsky 2014), else 1."""
        ratio = self.train.batch_size / self.optim.reference_batch_size
        return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.optim.lr_scaling]

    @property
    def effective_lr(self) -> float:
        """The peak LR trained with: optim.lr times :attr:`lr_scale`."""
        return self.optim.lr * self.lr_scale

    @property
    def peak_epoch(self) -> float:
        """The One Cycle peak in epochs: schedule.peak_epoch, or 5/24 of the run."""
        if self.schedule.peak_epoch is not None:
            return float(self.schedule.peak_epoch)
        return RECIPE_PEAK_FRACTION * self.train.epochs

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists (YAML-safe)."""
        return plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Config:
        """Build from nested mappings; unknown keys and bad values raise UserError naming the key."""
        return build(cls, raw or {}, prefix="")

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


# The bag of tricks' switches (Myrtle.ai part 8, airbench), all off by default: the README's recipe section lists
# them; runs record the ones set (sweeper's MLflow params).
TRICK_KEYS = (
    "model.activation",
    "model.celu_alpha",
    "model.ghost_batch",
    "model.bn_weight",
    "model.whiten",
    "optim.bn_bias_lr_scale",
    "optim.bn_bias_decay_scale",
    "train.ema",
    "train.ema_every",
    "train.tta",
    "augment.alternating_flip",
)


def tricks_set(config: Config) -> dict[str, Any]:
    """The trick switches (:data:`TRICK_KEYS`) that ``config`` sets away from their defaults: dotted key -> value."""
    values, defaults = _flat(config.to_dict()), _flat(Config().to_dict())
    return {key: values[key] for key in TRICK_KEYS if values[key] != defaults[key]}


def _flat(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in raw.items() for key, value in values.items()}


def config_keys() -> list[str]:
    """Every dotted key of the config, e.g. ``optim.lr``."""
    return list(_flat(Config().to_dict()))
