"""The bag of tricks wired into training: each switch shapes the model, the step, the data or the evaluation as it
says, works eager and with the captured step's arithmetic (uncaptured on the CPU), and, off, leaves the recipe
exactly as it was."""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tiny_config as tiny
from pipelines import reuse, train
from pipelines.config import Config, ModelConfig
from pipelines.data import Splits, load_splits
from pipelines.ema import EMA
from pipelines.errors import UserError
from pipelines.feed import Feeder
from pipelines.layers import GhostBatchNorm2d
from pipelines.lr_finder import lr_range_test
from pipelines.model import ResNet9, count_parameters
from pipelines.reuse import RunCache
from pipelines.schedules import schedule_curve
from pipelines.step import TorchStep, sgd_groups
from pipelines.tta import tta_logits
from pipelines.whitening import fitted_weights

RECIPE_PARAMS = 6_573_120
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# (block, index of its conv, index of its batch norm) in the recipe's state_dict, in order
RECIPE_BLOCKS = (
    ("prep", 0, 1),
    ("layer1.0", 0, 2),
    ("layer1.1.block.0", 0, 1),
    ("layer1.1.block.1", 0, 1),
    ("layer2", 0, 2),
    ("layer3.0", 0, 2),
    ("layer3.1.block.0", 0, 1),
    ("layer3.1.block.1", 0, 1),
)
SWITCHES = {
    "celu": {"model.activation": "celu", "model.celu_alpha": 0.3},
    "gelu": {"model.activation": "gelu"},
    "ghost_batch": {"model.ghost_batch": 8},
    "frozen_scales": {"model.bn_weight": "frozen"},
    "bn_bias_scales": {"optim.bn_bias_lr_scale": 16.0, "optim.bn_bias_decay_scale": 1 / 16},
    "whiten_patch2": {"model.whiten": "patch2"},
    "whiten_patch3": {"model.whiten": "patch3"},
    "ema": {"train.ema": 0.9, "train.ema_every": 2},
    "tta_flip": {"train.tta": "flip"},
    "tta_flip_shift": {"train.tta": "flip_shift"},
    "alternating_flip": {"augment.alternating_flip": True},
}
ALL = {k: v for switch in ("celu", "ghost_batch", "frozen_scales", "bn_bias_scales", "whiten_patch3", "ema",
                           "tta_flip", "alternating_flip") for k, v in SWITCHES[switch].items()}  # fmt: skip


@pytest.fixture(scope="module")
def small_splits(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Splits:
    """90 training images (2 batches of 32 and a dropped rest), 30 validation, 90 test: a run in a few seconds."""
    cfg = tiny(image_folder, tmp_path_factory.mktemp("small") / "out", **{"data.train_limit": 120, "data.val_size": 30})
    return load_splits(cfg.data)


@pytest.fixture(scope="module")
def splits(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Splits:
    cfg = tiny(image_folder, tmp_path_factory.mktemp("splits") / "out", **{"data.val_size": 30})
    return load_splits(cfg.data)


def normalized(images: torch.Tensor, splits: Splits) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float normalised as training normalises."""
    mean, std = splits.channel_stats()
    return (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255


def nchw(images) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


# -- off: the recipe, unchanged ---------------------------------------------------------------------------------


def test_with_every_switch_off_the_model_and_its_update_are_the_recipes() -> None:
    model = ResNet9(ModelConfig())
    expected = [f"{block}.{conv}.weight" if key is None else f"{block}.{bn}.{key}"
                for block, conv, bn in RECIPE_BLOCKS for key in (None, *BN_KEYS)]  # fmt: skip
    assert list(model.state_dict()) == [*expected, "fc.weight"]
    assert count_parameters(model) == count_parameters(model, trainable=True) == RECIPE_PARAMS
    assert all(type(m) is nn.BatchNorm2d for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(type(m) is nn.ReLU for m in model.modules() if isinstance(m, (nn.ReLU, nn.CELU, nn.GELU)))
    (group,) = sgd_groups(model, Config())  # one SGD group, the model's parameters in order: the update as before
    assert group["params"] == list(model.parameters()) and group["lr_scale"] == 1.0
    assert group["weight_decay"] == Config().optim.weight_decay


# -- each switch does what it says ------------------------------------------------------------------------------


def test_the_activation_switch_puts_celu_or_gelu_after_every_batch_norm() -> None:
    for name, kind in (("celu", nn.CELU), ("gelu", nn.GELU)):
        model = ResNet9(ModelConfig(width=0.125, activation=name, celu_alpha=0.3))
        acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.CELU, nn.GELU))]
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(acts) == len(norms) == 8 and all(type(a) is kind for a in acts)
        assert name != "celu" or all(a.alpha == 0.3 for a in acts)


def test_a_ghost_batch_model_trains_each_chunk_as_if_it_were_alone() -> None:
    """Every batch norm takes its statistics per 8 images, and every other layer works per image: in training
    mode the model's output on 16 images is its outputs on each half, put together."""
    torch.manual_seed(0)
    model = ResNet9(ModelConfig(width=0.125, ghost_batch=8), num_classes=3).train()
    assert all(type(m) is GhostBatchNorm2d and m.ghost_batch == 8
               for m in model.modules() if isinstance(m, nn.BatchNorm2d))  # fmt: skip
    x = torch.randn(16, 3, 32, 32)
    whole = model(x)
    halves = torch.cat([model(x[:8]), model(x[8:])])
    assert torch.allclose(whole, halves, atol=1e-5)
    assert not torch.allclose(whole, ResNet9(ModelConfig(width=0.125), num_classes=3).train()(x), atol=1e-3)


def test_frozen_scales_are_still_one_after_training_and_the_biases_learned(image_folder, splits, tmp_path) -> None:
    cfg = tiny(image_folder, tmp_path / "out", **{"data.val_size": 30, "train.epochs": 1, "model.bn_weight": "frozen"})
    result = train.run(cfg, splits=splits)
    state = torch.load(result.out_dir / "model.pt", map_location="cpu")["state_dict"]
    scales = [v for k, v in state.items() if k.endswith(".weight") and v.dim() == 1]
    biases = [v for k, v in state.items() if k.endswith(".bias")]
    assert len(scales) == len(biases) == 8
    assert all(torch.equal(s, torch.ones_like(s)) for s in scales)
    assert all(b.abs().max() > 0 for b in biases)  # trained (they start at 0)
    assert result.params == count_parameters(ResNet9(cfg.model, num_classes=3))  # the frozen scales still count


def test_batch_norm_biases_step_with_their_own_lr_and_decay(splits) -> None:
    """One SGD step from the same weights: the biases move by lr_scale times as much as with the scales at 1
    (no momentum history yet, decay scaled too); every other parameter moves as before."""
    cfg = Config().with_overrides({"model.width": 0.125, "train.device": "cpu", "optim.nesterov": False,
                                   "optim.momentum": 0.5})  # fmt: skip
    scaled = cfg.with_overrides({"optim.bn_bias_lr_scale": 16.0, "optim.bn_bias_decay_scale": 0.0})
    images, labels = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 3, (8,))
    moved = {}
    for name, config in (("plain", cfg), ("scaled", scaled)):
        torch.manual_seed(0)
        model = ResNet9(config.model, num_classes=3)
        before = [p.detach().clone() for p in model.parameters()]
        curve = schedule_curve(config, steps_per_epoch=1)
        step = TorchStep(config, model, model, nn.CrossEntropyLoss(), curve, normalize, torch.device("cpu"))
        step(images, labels, 0)
        moved[name] = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
    biases = {id(m.bias) for m in ResNet9(cfg.model, num_classes=3).modules() if isinstance(m, nn.BatchNorm2d)}
    names = [n for n, _ in ResNet9(cfg.model, num_classes=3).named_parameters()]
    for name, plain, scaled_ in zip(names, moved["plain"], moved["scaled"], strict=True):
        if name.endswith(".bias"):  # batch-norm biases (the convs and the FC have none)
            # lr x16 and no decay; the bias starts at 0, so the decay term was 0 anyway
            assert torch.allclose(scaled_, 16 * plain, rtol=1e-4, atol=1e-7), name
        else:
            assert torch.allclose(scaled_, plain, rtol=1e-4, atol=1e-7), name
    assert biases  # the model has batch-norm biases to scale


def test_the_whitening_is_fitted_once_per_data_set_and_copied_into_each_run(splits, monkeypatch) -> None:
    calls = []

    def counting(mode: str, images: torch.Tensor) -> torch.Tensor:
        calls.append(mode)
        return fitted_weights(mode, images)

    monkeypatch.setattr(reuse, "fitted_weights", counting)
    cfg = Config().with_overrides({"model.width": 0.125, "model.whiten": "patch3", "train.device": "cpu"})
    cache, cpu = RunCache(), torch.device("cpu")
    first = cache.model(cfg, splits, cpu).module
    weight = first.whiten.weight
    expected = fitted_weights("patch3", normalized(nchw(splits.train.images), splits))
    assert torch.allclose(weight, expected, atol=1e-5)
    with torch.no_grad():
        weight.zero_()  # a run cannot leave its mark on the next one's whitening
    second = cache.model(cfg.with_overrides({"train.seed": 1}), splits, cpu).module
    assert second is first and second.whiten.weight.data_ptr() == weight.data_ptr()  # in place: graphs keep it
    assert torch.allclose(second.whiten.weight, expected, atol=1e-5)
    assert calls == ["patch3"]
    cache.model(cfg, dataclasses.replace(splits), cpu)
    assert calls == ["patch3", "patch3"]  # other data (another splits object): fitted again


def test_the_whitening_layer_whitens_the_training_patches(splits) -> None:
    """The fitted layer's outputs over the training images' 3x3 patches have covariance close to identity (exactly
    diag(λ / (λ + eps)): the directions the images barely use are damped)."""
    cfg = Config().with_overrides({"model.width": 0.125, "model.whiten": "patch3", "train.device": "cpu"})
    model = RunCache().model(cfg, splits, torch.device("cpu")).module
    with torch.no_grad():
        out = model.whiten(normalized(nchw(splits.train.images), splits))[..., 1:-1, 1:-1]  # patches inside
    flat = out.permute(1, 0, 2, 3).reshape(27, -1).double()
    moment = flat @ flat.T / flat.shape[1]
    diagonal = torch.diagonal(moment)
    assert torch.allclose(moment - torch.diag(diagonal), torch.zeros_like(moment), atol=0.05)
    assert (diagonal <= 1.0001).all() and (diagonal[:20] > 0.85).all()  # the main directions at unit variance


def test_with_ema_evaluations_and_the_saved_model_use_the_average(image_folder, splits, tmp_path, monkeypatch):
    made: list[EMA] = []
    inside: list[bool] = []

    class Spy(EMA):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.steps: list[int] = []
            self.active = False
            made.append(self)

        def update(self, step: int) -> None:
            self.steps.append(step)
            super().update(step)

        def applied(self):
            outer = super().applied()

            class Both:
                def __enter__(inner):
                    outer.__enter__()
                    self.active = True

                def __exit__(inner, *exc):
                    self.active = False
                    return outer.__exit__(*exc)

            return Both()

    evaluate = train._evaluate

    def watched(*args, **kwargs):
        inside.append(made[0].active)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "EMA", Spy)
    monkeypatch.setattr(train, "_evaluate", watched)
    cfg = tiny(image_folder, tmp_path / "out", **{"data.val_size": 30, "train.epochs": 2, "train.ema": 0.9,
                                                  "train.ema_every": 3})  # fmt: skip
    result = train.run(cfg, splits=splits)
    (ema,) = made
    assert ema.steps == list(range(2 * result.steps_per_epoch))  # after every step; it averages every 3rd
    assert ema.rho == pytest.approx(0.9**3)
    assert inside and all(inside)  # every evaluation (val, test, each epoch) saw the average
    saved = torch.load(result.out_dir / "model.pt", map_location="cpu")["state_dict"]
    model = ResNet9(cfg.model, num_classes=3)  # the EMA's order: parameters, then floating-point buffers
    names = [n for n, _ in model.named_parameters()] + [n for n, b in model.named_buffers() if b.is_floating_point()]
    assert all(torch.equal(saved[n], v) for n, v in zip(names, ema.floats, strict=True))  # the model saved: the average


def test_flip_tta_scores_the_mean_of_the_image_and_its_mirror(image_folder, splits, tmp_path) -> None:
    cfg = tiny(image_folder, tmp_path / "out", **{"data.val_size": 30, "train.epochs": 1, "train.tta": "flip"})
    result = train.run(cfg, splits=splits)
    saved = torch.load(result.out_dir / "model.pt", map_location="cpu")["state_dict"]
    model = ResNet9(cfg.model, num_classes=3)
    model.load_state_dict(saved)
    x = normalized(nchw(splits.test.images), splits)
    labels = torch.from_numpy(splits.test.labels).long()
    with torch.no_grad():
        model.eval()
        both = 0.5 * (model(x) + model(x.flip(-1)))
        assert torch.allclose(tta_logits(model, x, "flip"), both, atol=1e-6)
        loss = nn.functional.cross_entropy(both, labels).item()
    assert result.history[-1].test_loss == pytest.approx(loss, rel=1e-4)
    assert result.test_accuracy == pytest.approx((both.argmax(1) == labels).float().mean().item())


def test_alternating_flip_mirrors_exactly_the_images_not_mirrored_the_epoch_before(image_folder, splits, tmp_path):
    """Only a HorizontalFlip in the pipeline: each image of an epoch is found among the originals (or their
    mirrors), so whether it was flipped can be read off; every image seen in two consecutive epochs was flipped in
    exactly one of them."""
    ops = [{"name": "HorizontalFlip", "p": 0.5}]
    cfg = tiny(image_folder, tmp_path / "out", **{"augment.ops": ops, "augment.alternating_flip": True})
    feeder = Feeder(cfg, splits, torch.device("cpu"))
    originals = nchw(splits.train.images)
    lookup = {img.numpy().tobytes(): (i, False) for i, img in enumerate(originals)}
    lookup |= {img.flip(-1).numpy().tobytes(): (i, True) for i, img in enumerate(originals)}
    epochs = []
    for _ in range(3):
        seen = {}
        for images, _labels in feeder.raw_epoch():
            for img in images:
                index, flipped = lookup[img.numpy().tobytes()]
                seen[index] = flipped
        epochs.append(seen)
    for before, after in itertools.pairwise(epochs):
        both = before.keys() & after.keys()
        assert len(both) > len(originals) // 2
        assert all(before[i] != after[i] for i in both)
    assert 0.3 < sum(epochs[0].values()) / len(epochs[0]) < 0.7  # epoch 0: HorizontalFlip's p


def test_alternating_flip_is_refused_where_augmentation_runs_per_sample(image_folder, splits, tmp_path) -> None:
    ops = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "Rotate", "limit": 10, "p": 0.5}]  # Rotate: per sample
    cfg = tiny(image_folder, tmp_path / "out", **{"augment.ops": ops, "augment.alternating_flip": True})
    with pytest.raises(UserError, match=r"^augment.alternating_flip needs the batched \(device\) augmentation"):
        train.run(cfg, splits=splits)


def test_a_model_switch_rebuilds_the_reused_model_and_the_same_config_reuses_it(splits) -> None:
    cfg = Config().with_overrides({"model.width": 0.125, "train.device": "cpu"})
    cache, cpu = RunCache(), torch.device("cpu")
    first = cache.model(cfg, splits, cpu).module
    assert cache.model(cfg.with_overrides({"train.seed": 3}), splits, cpu).module is first
    for key, value in (("model.activation", "gelu"), ("model.ghost_batch", 32), ("model.bn_weight", "frozen"),
                       ("model.whiten", "patch2"), ("model.celu_alpha", 0.3)):  # fmt: skip
        other = cache.model(cfg.with_overrides({key: value}), splits, cpu).module
        assert other is not first, key  # two model configs, two networks
        first = cache.model(cfg, splits, cpu).module


# -- each switch, eager and with the captured step's arithmetic -------------------------------------------------


@pytest.mark.parametrize("switch", [*SWITCHES, "all"])
def test_each_switch_trains_alike_eager_and_with_the_captured_step(image_folder, small_splits, tmp_path, switch):
    """torch's SGD against the step a CUDA graph captures (uncaptured on the CPU: the same arithmetic), one epoch
    at a moderate LR: the same losses within fp32 rounding, for each switch and all of them together."""
    overrides = ALL if switch == "all" else SWITCHES[switch]
    base = {"data.val_size": 30, "optim.lr": 0.02, "train.epochs": 1, **overrides}
    cfg = tiny(image_folder, tmp_path / "out", **base)
    eager = train.run(cfg, splits=small_splits, write_outputs=False)
    captured = train.run(cfg.with_overrides({"train.cuda_graph": True}), splits=small_splits, write_outputs=False)
    assert eager.status == captured.status == "complete"
    (a,), (b,) = eager.history, captured.history
    assert b.train_loss == pytest.approx(a.train_loss, rel=1e-3)
    assert b.val_loss == pytest.approx(a.val_loss, rel=1e-3)
    assert b.test_loss == pytest.approx(a.test_loss, rel=1e-3)


def test_the_loss_range_test_trains_with_the_switches(image_folder, splits, tmp_path) -> None:
    cfg = tiny(image_folder, tmp_path / "out", **{"data.val_size": 30, **ALL})
    found = lr_range_test(cfg, splits=splits, num_iter=6, min_lr=1e-3, max_lr=1e-1)
    assert len(found.lrs) == 6 and all(map(torch.isfinite, torch.tensor(found.losses)))


@pytest.mark.slow
def test_every_switch_at_once_trains_compiled_on_the_cpu(image_folder, splits, tmp_path) -> None:
    """torch.compile (Inductor, C++ on the CPU) of the model with every model switch on; one epoch."""
    cfg = tiny(image_folder, tmp_path / "out", **{"data.val_size": 30, "train.epochs": 1, "train.compile": True,
                                                  **ALL})  # fmt: skip
    started = time.perf_counter()
    result = train.run(cfg, splits=splits, write_outputs=False)
    assert result.status == "complete" and result.compile_seconds > 0
    assert time.perf_counter() - started < 600
