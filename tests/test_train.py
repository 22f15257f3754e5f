"""One training run on tiny generated shapes (300 train / 90 test, 3 classes): results, files, callbacks, failures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.augment import BatchAugment
from pipelines.callbacks import Callback, EpochMetrics
from pipelines.config import Config, ModelConfig
from pipelines.data import Splits, load_splits
from pipelines.errors import UserError
from pipelines.model import ResNet9
from pipelines.result import Result
from pipelines.reuse import RunCache
from pipelines.train import run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS_PER_EPOCH = 300 // 32  # the fixture's 300 training images, the last partial batch dropped
ARTIFACTS = {
    "config.yaml",
    "metrics.json",
    "model.pt",
    "plots/lr_schedule.png",
    "plots/curves.png",
    "plots/misclassified.png",
}


def tiny(data: Path, out: Path, **overrides: object) -> Config:
    """A config that trains in about a second on 2 CPU cores."""
    base = {
        "data.path": str(data),
        "data.cache_dir": str(out.parent / "cache"),
        "model.width": 0.125,
        "train.epochs": 3,
        "train.batch_size": 32,
        "train.device": "cpu",
        "train.out_dir": str(out),
    }
    return Config().with_overrides({**base, **overrides})


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    assert path.stat().st_size > 1024, path


def losses(result: Result) -> list[tuple[float, float]]:
    return [(m.train_loss, m.test_loss) for m in result.history]


@pytest.fixture(scope="module")
def splits(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Splits:
    cfg = tiny(image_folder, tmp_path_factory.mktemp("splits") / "out")
    return load_splits(cfg.data)


@pytest.fixture(scope="module")
def trained(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Result]:
    """The recipe, shrunk: 3 epochs, loading the data from the ImageFolder like a user would."""
    cfg = tiny(image_folder, tmp_path_factory.mktemp("trained") / "run")
    return cfg, run(cfg)


class Recorder(Callback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.starts: list[dict] = []
        self.steps: list[tuple[int, float]] = []
        self.epochs: list[EpochMetrics] = []
        self.artifacts: list[tuple[Path, str]] = []
        self.stop_at = stop_at

    def on_start(self, *, total_steps: int, steps_per_epoch: int, lrs: Sequence[float]) -> None:
        self.starts.append({"total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "lrs": list(lrs)})

    def on_step(self, step: int, lr: float) -> None:
        self.steps.append((step, lr))

    def on_epoch(self, metrics: EpochMetrics) -> None:
        self.epochs.append(metrics)

    def on_artifact(self, path: Path, name: str) -> None:
        self.artifacts.append((path, name))

    def should_stop(self, metrics: EpochMetrics) -> str | None:
        return "pruned" if self.stop_at is not None and metrics.epoch >= self.stop_at else None


def test_a_run_completes_and_learns_the_shapes(trained: tuple[Config, Result]) -> None:
    _, result = trained
    assert result.status == "complete"
    assert result.reason is None
    assert [m.epoch for m in result.history] == [1, 2, 3]
    for m in result.history:
        assert 0 <= m.train_accuracy <= 1 and 0 <= m.test_accuracy <= 1
        assert np.isfinite(m.train_loss) and np.isfinite(m.test_loss)
        assert m.val_accuracy is None and m.val_loss is None
    assert result.test_accuracy > 0.6  # chance is 1/3
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.classes == ("circle", "cross", "square")
    assert result.steps_per_epoch == STEPS_PER_EPOCH
    assert len(result.lrs) == 3 * STEPS_PER_EPOCH


def test_summary_is_what_train_json_prints(trained: tuple[Config, Result]) -> None:
    cfg, result = trained
    summary = result.summary()
    assert summary["status"] == "complete"
    assert summary["epochs"] == 3
    assert summary["test_accuracy"] == result.history[-1].test_accuracy
    assert summary["out_dir"] == cfg.train.out_dir
    assert summary["device"] == "cpu"
    assert summary["seconds"] > 0
    json.dumps(summary)  # plain JSON


def test_a_run_writes_config_metrics_model_and_plots(trained: tuple[Config, Result]) -> None:
    cfg, result = trained
    out = Path(cfg.train.out_dir)
    assert set(result.artifacts) == ARTIFACTS
    assert Config.from_yaml((out / "config.yaml").read_text()) == cfg
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["history"]] == [1, 2, 3]
    assert metrics["history"][-1]["test_accuracy"] == result.test_accuracy
    assert metrics["summary"]["status"] == "complete"
    assert metrics["params"] == result.params
    for name in ("plots/lr_schedule.png", "plots/curves.png", "plots/misclassified.png"):
        assert_png(out / name)


def test_saved_model_loads_and_reproduces_the_test_accuracy(trained: tuple[Config, Result], splits: Splits) -> None:
    cfg, result = trained
    saved = torch.load(Path(cfg.train.out_dir) / "model.pt", map_location="cpu")
    assert saved["classes"] == list(result.classes)
    assert Config.from_dict(saved["config"]) == cfg
    model = ResNet9(ModelConfig(width=0.125), num_classes=3)
    model.load_state_dict(saved["state_dict"])  # strict: every key and shape matches
    mean, std = splits.channel_stats()
    x = torch.from_numpy(splits.test.images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        accuracy = (model.eval()(x).argmax(1).numpy() == splits.test.labels).mean()
    assert accuracy == pytest.approx(result.test_accuracy, abs=1.5 / len(splits.test))


def test_the_same_seed_twice_gives_the_same_history(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    cfg = tiny(image_folder, tmp_path / "a", **{"train.epochs": 2})
    first = run(cfg, splits=splits, write_outputs=False)
    second = run(cfg, splits=splits, write_outputs=False)
    assert losses(first) == losses(second)
    assert [m.test_accuracy for m in first.history] == [m.test_accuracy for m in second.history]


def test_another_seed_gives_another_history(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    cfg = tiny(image_folder, tmp_path / "a", **{"train.epochs": 1})
    first = run(cfg, splits=splits, write_outputs=False)
    other = run(cfg.with_overrides({"train.seed": 1}), splits=splits, write_outputs=False)
    assert losses(first) != losses(other)


def test_a_reused_model_cache_gives_the_same_history_as_a_fresh_model(
    image_folder: Path, tmp_path: Path, splits: Splits
) -> None:
    cfg = tiny(image_folder, tmp_path / "a", **{"train.epochs": 1})
    cache = RunCache()
    run(cfg.with_overrides({"train.seed": 5}), splits=splits, cache=cache, write_outputs=False)
    reused = run(cfg, splits=splits, cache=cache, write_outputs=False)  # weights re-initialised from seed 0
    fresh = run(cfg, splits=splits, write_outputs=False)
    assert losses(reused) == losses(fresh)


def test_a_huge_lr_ends_as_diverged_without_raising(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    cfg = tiny(image_folder, tmp_path / "out", **{"optim.lr": 1e6})
    result = run(cfg, splits=splits)
    assert result.status == "diverged"
    assert "loss" in result.reason
    assert len(result.history) < cfg.train.epochs
    assert_png(tmp_path / "out" / "plots" / "curves.png")  # outputs are still written
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["summary"]["status"] == "diverged"


def test_a_callback_can_stop_the_run(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    recorder = Recorder(stop_at=1)
    result = run(tiny(image_folder, tmp_path / "out"), splits=splits, callbacks=[recorder])
    assert result.status == "stopped"
    assert result.reason == "pruned"
    assert len(result.history) == 1
    assert len(recorder.steps) == STEPS_PER_EPOCH
    assert [e["epoch"] for e in json.loads((tmp_path / "out" / "metrics.json").read_text())["history"]] == [1]


def test_callbacks_hear_start_every_step_every_epoch_and_every_file(
    image_folder: Path, tmp_path: Path, splits: Splits
) -> None:
    recorder = Recorder()
    result = run(tiny(image_folder, tmp_path / "out", **{"train.epochs": 2}), splits=splits, callbacks=[recorder])
    total = 2 * STEPS_PER_EPOCH
    assert len(recorder.starts) == 1
    start = recorder.starts[0]
    assert start["total_steps"] == total
    assert start["steps_per_epoch"] == STEPS_PER_EPOCH
    assert len(start["lrs"]) == total
    assert [step for step, _ in recorder.steps] == list(range(total))
    assert [lr for _, lr in recorder.steps] == start["lrs"] == list(result.lrs)
    assert [m.epoch for m in recorder.epochs] == [1, 2]
    assert recorder.epochs == list(result.history)
    assert {name for _, name in recorder.artifacts} == ARTIFACTS
    for path, name in recorder.artifacts:
        assert path == tmp_path / "out" / name and path.is_file()


def test_save_model_false_writes_no_weights(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    result = run(tiny(image_folder, tmp_path / "out", **{"train.epochs": 1, "train.save_model": False}), splits=splits)
    assert not (tmp_path / "out" / "model.pt").exists()
    assert "model.pt" not in result.artifacts
    assert (tmp_path / "out" / "metrics.json").is_file()


def test_write_outputs_false_writes_nothing(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    result = run(tiny(image_folder, tmp_path / "out", **{"train.epochs": 1}), splits=splits, write_outputs=False)
    assert result.out_dir is None and result.artifacts == {}
    assert not (tmp_path / "out").exists()


def test_a_batch_larger_than_the_training_set_is_a_user_error(image_folder: Path, tmp_path: Path) -> None:
    cfg = tiny(image_folder, tmp_path / "out", **{"train.batch_size": 512})
    with pytest.raises(UserError, match=r"train.batch_size \(512\) is larger than the training set \(300 images\)"):
        run(cfg)


def test_one_batch_per_epoch_and_one_epoch_still_trains(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    cfg = tiny(image_folder, tmp_path / "out", **{"train.batch_size": 256, "train.epochs": 1})
    result = run(cfg, splits=splits, write_outputs=False)
    assert result.status == "complete"
    assert result.steps_per_epoch == 1 and len(result.lrs) == 1


def test_a_validation_split_reports_validation_metrics(image_folder: Path, tmp_path: Path) -> None:
    cfg = tiny(image_folder, tmp_path / "out", **{"data.val_size": 30, "train.epochs": 2})
    result = run(cfg)
    assert result.steps_per_epoch == (300 - 30) // 32
    for m in result.history:
        assert m.val_accuracy is not None and 0 <= m.val_accuracy <= 1
        assert m.val_loss is not None and np.isfinite(m.val_loss)
    assert result.summary()["val_accuracy"] == result.history[-1].val_accuracy
    history = json.loads((tmp_path / "out" / "metrics.json").read_text())["history"]
    assert all("val_accuracy" in e for e in history)


def test_an_augmentation_without_a_batched_version_trains_per_sample(
    image_folder: Path, tmp_path: Path, splits: Splits
) -> None:
    ops = [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "RandomBrightnessContrast", "brightness_limit": 0.1, "contrast_limit": 0.1, "p": 0.5},
    ]
    assert BatchAugment.from_ops(ops) is None  # so the run must take the per-sample DataLoader path
    cfg = tiny(image_folder, tmp_path / "out", **{"augment.ops": ops, "data.num_workers": 0, "train.epochs": 2})
    result = run(cfg, splits=splits, write_outputs=False)
    assert result.status == "complete"
    assert len(result.history) == 2
    assert result.steps_per_epoch == STEPS_PER_EPOCH
    assert result.test_accuracy > 1 / 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_user_error(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    with pytest.raises(UserError, match="no CUDA device"):
        run(tiny(image_folder, tmp_path / "out", **{"train.device": "cuda"}), splits=splits)


def test_plateau_cuts_the_lr_at_epoch_ends_as_torch_would_and_records_what_it_used(
    image_folder: Path, tmp_path: Path
) -> None:
    """With patience 0 and an LR too small to learn, the validation loss stalls: torch's ReduceLROnPlateau,
    replayed over the recorded losses, must give exactly the LRs the run used and recorded."""
    cfg = tiny(
        image_folder,
        tmp_path / "run",
        **{
            "optim.lr": 1e-6,
            "train.epochs": 5,
            "data.val_size": 60,
            "schedule.policy": "plateau",
            "schedule.patience": 0,
            "schedule.factor": 0.5,
            "schedule.warmup_epochs": 1,
            "schedule.warmup": "constant",
        },
    )
    held_out = load_splits(cfg.data)
    recorder = Recorder()
    result = run(cfg, splits=held_out, callbacks=[recorder])
    spe = result.steps_per_epoch
    assert recorder.starts[0]["lrs"] == []  # not known ahead: the run decides
    assert [lr for _, lr in recorder.steps] == list(result.lrs)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-6)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=0)
    expected = [1e-7] * spe  # the constant warm-up: lr / warmup_div for one epoch
    for m in result.history[:-1]:
        if len(expected) >= spe:  # cuts start once the warm-up is over
            reference.step(m.val_loss)
        expected += [optimizer.param_groups[0]["lr"]] * spe
    assert list(result.lrs) == pytest.approx(expected, rel=1e-9)
    assert min(result.lrs[spe:]) < 1e-6  # it did cut
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert recorded["lrs"] == pytest.approx(expected) and recorded["steps_per_epoch"] == spe
    assert [m["lr"] for m in recorded["history"]] == pytest.approx([expected[(e + 1) * spe - 1] for e in range(5)])
