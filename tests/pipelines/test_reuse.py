"""pipelines.reuse: what a process keeps across runs (the model, the data on the device, its statistics, compile)."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import losses, tiny_config
from pipelines.config import Config
from pipelines.data import Splits
from pipelines.reuse import RunCache
from pipelines.train import run


def test_a_reused_model_cache_gives_the_same_history_as_a_fresh_model(
    image_folder: Path, tmp_path: Path, splits: Splits
) -> None:
    cfg = tiny_config(image_folder, tmp_path / "a", **{"train.epochs": 1})
    cache = RunCache()
    run(cfg.with_overrides({"train.seed": 5}), splits=splits, cache=cache, write_outputs=False)
    reused = run(cfg, splits=splits, cache=cache, write_outputs=False)  # weights re-initialised from seed 0
    fresh = run(cfg, splits=splits, write_outputs=False)
    assert losses(reused) == losses(fresh)


def test_runs_sharing_a_cache_upload_the_data_and_count_statistics_once(
    image_folder, held_out_splits, tmp_path, monkeypatch
):
    counted: list[int] = []
    original = Splits.channel_stats

    def counting(self: Splits):
        counted.append(1)
        return original(self)

    monkeypatch.setattr(Splits, "channel_stats", counting)
    cache = RunCache()
    cfg = tiny_config(image_folder, tmp_path / "out", **{"data.val_size": 30, "train.epochs": 1})
    first = run(cfg, splits=held_out_splits, cache=cache, write_outputs=False)
    data = cache.data(cfg, held_out_splits, torch.device("cpu"), train_on_device=True)
    second = run(cfg.with_overrides({"optim.lr": 0.1}), splits=held_out_splits, cache=cache, write_outputs=False)
    assert cache.data(cfg, held_out_splits, torch.device("cpu"), train_on_device=True) is data
    assert len(counted) == 1
    assert first.history[0].train_loss != second.history[0].train_loss  # really two runs


def test_compile_is_the_default_on_cuda_where_runs_share_it():
    study, one_run = RunCache(compile_on_cuda=True), RunCache()
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    unset = Config()
    assert unset.train.compile is None
    assert study.compiles(unset, cuda) and not study.compiles(unset, cpu)
    assert not one_run.compiles(unset, cuda)
    assert not study.compiles(unset.with_overrides({"train.compile": False}), cuda)  # still overridable
    assert one_run.compiles(unset.with_overrides({"train.compile": True}), cpu)
