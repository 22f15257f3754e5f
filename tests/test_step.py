"""Trials per GPU-hour on the CPU's terms: the captured step's arithmetic, evaluation cadence, one eval shape, data
kept on the device across runs, compile by default where it pays, and how many workers `--workers auto` starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines import reuse
from pipelines.config import Config
from pipelines.data import Splits, load_splits
from pipelines.errors import UserError
from pipelines.reuse import RunCache
from pipelines.step import CurveStep
from pipelines.train import _evaluate, run
from sweeper.objective import Objective
from sweeper.trials import trial_config
from sweeper.workers import auto_devices, workers_per_gpu
from tests.test_train import tiny


@pytest.fixture(scope="module")
def splits(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Splits:
    cfg = tiny(image_folder, tmp_path_factory.mktemp("splits") / "out", **{"data.val_size": 30})
    return load_splits(cfg.data)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the recipe's policy: one_cycle, Nesterov, weight decay
        {"schedule.cycle_momentum": True, "optim.label_smoothing": 0.1},  # momentum cycled: read from the curve
        {"optim.nesterov": False, "optim.weight_decay": 0.0},
        {"schedule.policy": "cosine", "schedule.warmup_epochs": 1, "schedule.warmup": "linear"},
    ],
    ids=["recipe", "cycled-momentum", "plain-momentum", "cosine-warmup"],
)
def test_the_captured_step_trains_like_torch_sgd(image_folder, splits, tmp_path, overrides):
    """The step a CUDA graph captures (run uncaptured on the CPU) against torch.optim.SGD, same seed: the same
    losses every epoch, within fp32 rounding (the momentum is a float32 tensor here, a double in torch's SGD). At a
    moderate LR: at the recipe's peak this tiny net is chaotic and any rounding difference grows by epoch 3."""
    base = {"data.val_size": 30, "optim.lr": 0.02, "train.epochs": 2}
    cfg = tiny(image_folder, tmp_path / "out", **{**base, **overrides})
    eager = run(cfg, splits=splits, write_outputs=False)
    captured = run(cfg.with_overrides({"train.cuda_graph": True}), splits=splits, write_outputs=False)
    assert eager.status == captured.status == "complete"
    assert len(captured.history) == 2
    for a, b in zip(eager.history, captured.history, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-3)
        assert b.val_loss == pytest.approx(a.val_loss, rel=1e-3)
        assert b.test_loss == pytest.approx(a.test_loss, rel=1e-3)
        assert b.train_loss != pytest.approx(eager.history[0].train_loss, rel=1e-3) or b.epoch == 1  # it trains
    assert captured.lrs == pytest.approx(eager.lrs)
    assert eager.compile_seconds == captured.compile_seconds == 0.0  # nothing compiled or captured on the CPU


def test_plateau_cuts_reach_the_step_through_its_lr_tensor():
    """Plateau rewrites the rest of the curve at an epoch end; the step (and a graph that captured it) reads the
    same tensor, so the next step trains at the cut LR: here 0, which leaves the weights as they were."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    step = CurveStep(
        model, groups=[{"params": list(model.parameters()), "weight_decay": 5e-4, "lr_scale": 1.0}],
        lrs=[0.1, 0.1, 0.1], momenta=[0.9] * 3, nesterov=True,
        criterion=torch.nn.CrossEntropyLoss(), normalize=lambda x: x.float() / 255, device=torch.device("cpu"),
    )  # fmt: skip
    images, labels = torch.randint(0, 256, (8, 3, 2, 2), dtype=torch.uint8), torch.randint(0, 3, (8,))
    step(images, labels)
    trained = [p.detach().clone() for p in model.parameters()]
    step.set_lrs([0.1, 0.0, 0.0])
    step(images, labels)
    assert all(torch.equal(a, b) for a, b in zip(trained, model.parameters(), strict=True))
    loss_sum, correct = step.take_sums()
    assert loss_sum > 0 and 0 <= correct <= 16 and float(step.loss_sum) == 0.0  # read once, then reset


def test_eval_every_and_test_every_choose_the_epochs_evaluated(image_folder, splits, tmp_path):
    cfg = tiny(image_folder, tmp_path / "out", **{"data.val_size": 30, "train.epochs": 5, "train.eval_every": 2})
    result = run(cfg.with_overrides({"train.test_every": 4}), splits=splits)
    val_epochs = [m.epoch for m in result.history if m.val_accuracy is not None]
    test_epochs = [m.epoch for m in result.history if m.test_accuracy is not None]
    assert val_epochs == [2, 4, 5]  # every 2nd, and the last always
    assert test_epochs == [4, 5]
    assert result.test_accuracy is not None and result.val_accuracy is not None
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "test_accuracy" not in metrics["history"][0]  # not evaluated: absent, not a made-up number
    assert (tmp_path / "out" / "plots" / "curves.png").is_file()


def test_a_run_that_diverges_between_evaluations_still_ends_with_both(image_folder, splits, tmp_path):
    cfg = tiny(image_folder, tmp_path / "out", **{"data.val_size": 30, "optim.lr": 1e6, "train.eval_every": 5})
    result = run(cfg, splits=splits, write_outputs=False)
    assert result.status == "diverged" and len(result.history) < cfg.train.epochs
    last = result.history[-1]
    assert last.val_accuracy is not None and last.test_accuracy is not None  # what the range test reads


def test_the_captured_step_refuses_a_momentum_that_cycles_to_zero():
    with pytest.raises(UserError, match="min_momentum > 0"):
        Config().with_overrides(
            {"train.cuda_graph": True, "schedule.cycle_momentum": True, "schedule.min_momentum": 0.0}
        )


def test_a_study_trial_evaluates_the_test_set_once_at_the_end():
    config = Config().with_overrides({"data.val_size": 500, "train.epochs": 12})
    assert trial_config(config, Objective("val")).train.test_every == 12
    assert trial_config(config, Objective("val,train_seconds")).train.test_every == 12
    assert trial_config(config, Objective("test")).train.test_every is None  # the pruner reads it every epoch
    explicit = config.with_overrides({"train.test_every": 3})
    assert trial_config(explicit, Objective("val")).train.test_every == 3


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


def test_runs_sharing_a_cache_upload_the_data_and_count_statistics_once(image_folder, splits, tmp_path, monkeypatch):
    counted: list[int] = []
    original = Splits.channel_stats

    def counting(self: Splits):
        counted.append(1)
        return original(self)

    monkeypatch.setattr(Splits, "channel_stats", counting)
    cache = RunCache()
    cfg = tiny(image_folder, tmp_path / "out", **{"data.val_size": 30, "train.epochs": 1})
    first = run(cfg, splits=splits, cache=cache, write_outputs=False)
    data = cache.data(cfg, splits, torch.device("cpu"), train_on_device=True)
    second = run(cfg.with_overrides({"optim.lr": 0.1}), splits=splits, cache=cache, write_outputs=False)
    assert cache.data(cfg, splits, torch.device("cpu"), train_on_device=True) is data
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


@pytest.mark.parametrize(
    ("names", "sqlite", "n_trials", "expected"),
    [
        ([], False, 10, [None]),  # the CPU: one worker
        (["NVIDIA H200"], False, 10, ["0"] * 4),  # the measured best on an H200
        (["NVIDIA H200"], True, 10, ["0"]),  # SQLite cannot take several workers
        (["NVIDIA H200"], False, 2, ["0", "0"]),  # no worker without a trial
        (["NVIDIA H200", "NVIDIA A10G"], False, 10, ["0", "1", "0", "0", "0"]),  # unmeasured models get one
        (["NVIDIA A10G", "NVIDIA A10G"], True, 10, ["0"]),  # SQLite: one in all
        (["NVIDIA A10G", "NVIDIA A10G"], False, 1, ["0"]),  # one trial: one worker
    ],
)
def test_workers_auto_follows_the_measured_table(names, sqlite, n_trials, expected):
    visible = [str(i) for i in range(len(names))]
    assert auto_devices(visible, names, n_trials=n_trials, sqlite=sqlite) == expected
    assert workers_per_gpu("NVIDIA H200") == 4 and workers_per_gpu("Tesla T4") == 1
