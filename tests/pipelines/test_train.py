"""pipelines.train: one training run on tiny generated shapes (300 train / 90 test, 3 classes): results, callbacks,
evaluation when due, divergence, plateau's cuts, failures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import RUN_FILES, STEPS_PER_EPOCH, assert_png, losses, tiny_config
from pipelines import reuse
from pipelines.callbacks import Callback, EpochMetrics
from pipelines.config import Config
from pipelines.data import Splits, load_splits
from pipelines.errors import UserError
from pipelines.result import Result
from pipelines.train import _evaluate, run


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


def test_the_same_seed_twice_gives_the_same_history(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    cfg = tiny_config(image_folder, tmp_path / "a", **{"train.epochs": 2})
    first = run(cfg, splits=splits, write_outputs=False)
    second = run(cfg, splits=splits, write_outputs=False)
    assert losses(first) == losses(second)
    assert [m.test_accuracy for m in first.history] == [m.test_accuracy for m in second.history]


def test_another_seed_gives_another_history(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    cfg = tiny_config(image_folder, tmp_path / "a", **{"train.epochs": 1})
    first = run(cfg, splits=splits, write_outputs=False)
    other = run(cfg.with_overrides({"train.seed": 1}), splits=splits, write_outputs=False)
    assert losses(first) != losses(other)


def test_a_huge_lr_ends_as_diverged_without_raising(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    cfg = tiny_config(image_folder, tmp_path / "out", **{"optim.lr": 1e6})
    result = run(cfg, splits=splits)
    assert result.status == "diverged"
    assert "loss" in result.reason
    assert len(result.history) < cfg.train.epochs
    assert_png(tmp_path / "out" / "plots" / "curves.png")  # outputs are still written
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["summary"]["status"] == "diverged"


def test_a_callback_can_stop_the_run(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    recorder = Recorder(stop_at=1)
    result = run(tiny_config(image_folder, tmp_path / "out"), splits=splits, callbacks=[recorder])
    assert result.status == "stopped"
    assert result.reason == "pruned"
    assert len(result.history) == 1
    assert len(recorder.steps) == STEPS_PER_EPOCH
    assert [e["epoch"] for e in json.loads((tmp_path / "out" / "metrics.json").read_text())["history"]] == [1]


def test_callbacks_hear_start_every_step_every_epoch_and_every_file(
    image_folder: Path, tmp_path: Path, splits: Splits
) -> None:
    recorder = Recorder()
    result = run(
        tiny_config(image_folder, tmp_path / "out", **{"train.epochs": 2}), splits=splits, callbacks=[recorder]
    )
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
    assert {name for _, name in recorder.artifacts} == RUN_FILES
    for path, name in recorder.artifacts:
        assert path == tmp_path / "out" / name and path.is_file()


def test_a_batch_larger_than_the_training_set_is_a_user_error(image_folder: Path, tmp_path: Path) -> None:
    cfg = tiny_config(image_folder, tmp_path / "out", **{"train.batch_size": 512})
    with pytest.raises(UserError, match=r"train.batch_size \(512\) is larger than the training set \(300 images\)"):
        run(cfg)


def test_one_batch_per_epoch_and_one_epoch_still_trains(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    cfg = tiny_config(image_folder, tmp_path / "out", **{"train.batch_size": 256, "train.epochs": 1})
    result = run(cfg, splits=splits, write_outputs=False)
    assert result.status == "complete"
    assert result.steps_per_epoch == 1 and len(result.lrs) == 1


def test_a_validation_split_reports_validation_metrics(image_folder: Path, tmp_path: Path) -> None:
    cfg = tiny_config(image_folder, tmp_path / "out", **{"data.val_size": 30, "train.epochs": 2})
    result = run(cfg)
    assert result.steps_per_epoch == (300 - 30) // 32
    for m in result.history:
        assert m.val_accuracy is not None and 0 <= m.val_accuracy <= 1
        assert m.val_loss is not None and np.isfinite(m.val_loss)
    assert result.summary()["val_accuracy"] == result.history[-1].val_accuracy
    history = json.loads((tmp_path / "out" / "metrics.json").read_text())["history"]
    assert all("val_accuracy" in e for e in history)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_user_error(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    with pytest.raises(UserError, match="no CUDA device"):
        run(tiny_config(image_folder, tmp_path / "out", **{"train.device": "cuda"}), splits=splits)


def test_plateau_cuts_the_lr_at_epoch_ends_as_torch_would_and_records_what_it_used(
    image_folder: Path, tmp_path: Path
) -> None:
    """With patience 0 and an LR too small to learn, the validation loss stalls: torch's ReduceLROnPlateau,
    replayed over the recorded losses, must give exactly the LRs the run used and recorded."""
    cfg = tiny_config(
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


def test_eval_every_and_test_every_choose_the_epochs_evaluated(image_folder, held_out_splits, tmp_path):
    cfg = tiny_config(image_folder, tmp_path / "out", **{"data.val_size": 30, "train.epochs": 5, "train.eval_every": 2})
    result = run(cfg.with_overrides({"train.test_every": 4}), splits=held_out_splits)
    val_epochs = [m.epoch for m in result.history if m.val_accuracy is not None]
    test_epochs = [m.epoch for m in result.history if m.test_accuracy is not None]
    assert val_epochs == [2, 4, 5]  # every 2nd, and the last always
    assert test_epochs == [4, 5]
    assert result.test_accuracy is not None and result.val_accuracy is not None
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "test_accuracy" not in metrics["history"][0]  # not evaluated: absent, not a made-up number
    assert (tmp_path / "out" / "plots" / "curves.png").is_file()


def test_a_run_that_diverges_between_evaluations_still_ends_with_both(image_folder, held_out_splits, tmp_path):
    cfg = tiny_config(image_folder, tmp_path / "out", **{"data.val_size": 30, "optim.lr": 1e6, "train.eval_every": 5})
    result = run(cfg, splits=held_out_splits, write_outputs=False)
    assert result.status == "diverged" and len(result.history) < cfg.train.epochs
    last = result.history[-1]
    assert last.val_accuracy is not None and last.test_accuracy is not None  # what the range test reads


def test_padded_evaluation_batches_give_the_same_numbers(splits):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(len(splits.classes)))
    data = reuse.DeviceSet(splits.test.images, splits.test.labels, torch.device("cpu"))
    seen: list[int] = []

    def runner(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return model(x)

    plain = _evaluate(runner, model, data, normalize=lambda x: x.float() / 255, batch=40, pad=False)
    seen_plain, seen[:] = list(seen), []
    padded = _evaluate(runner, model, data, normalize=lambda x: x.float() / 255, batch=40, pad=True)
    assert seen_plain == [40, 40, 10] and seen == [40, 40, 40]  # 90 test images: one shape when padded
    assert padded.loss == pytest.approx(plain.loss) and padded.accuracy == plain.accuracy
