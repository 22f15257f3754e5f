"""pipelines.outputs: what a run leaves in train.out_dir (config, metrics, weights, plots), and when it leaves less."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import RUN_FILES, assert_png, tiny_config
from pipelines.config import Config, ModelConfig
from pipelines.data import Splits
from pipelines.model import ResNet9
from pipelines.result import Result
from pipelines.train import run


def test_a_run_writes_config_metrics_model_and_plots(trained: tuple[Config, Result]) -> None:
    cfg, result = trained
    out = Path(cfg.train.out_dir)
    assert set(result.artifacts) == RUN_FILES
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


def test_save_model_false_writes_no_weights(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    result = run(
        tiny_config(image_folder, tmp_path / "out", **{"train.epochs": 1, "train.save_model": False}), splits=splits
    )
    assert not (tmp_path / "out" / "model.pt").exists()
    assert "model.pt" not in result.artifacts
    assert (tmp_path / "out" / "metrics.json").is_file()


def test_write_outputs_false_writes_nothing(image_folder: Path, tmp_path: Path, splits: Splits) -> None:
    result = run(tiny_config(image_folder, tmp_path / "out", **{"train.epochs": 1}), splits=splits, write_outputs=False)
    assert result.out_dir is None and result.artifacts == {}
    assert not (tmp_path / "out").exists()
