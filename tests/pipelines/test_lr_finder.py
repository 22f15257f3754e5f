"""pipelines.lr_finder: the LR range test on tiny shapes, and its suggestions on curves whose answer is known."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_png, tiny_config
from pipelines import lr_finder
from pipelines.config import Config, ModelConfig
from pipelines.data import Splits
from pipelines.errors import UserError
from pipelines.lr_finder import LRFinderResult, lr_range_test, steepest, suggest, valley
from pipelines.model import ResNet9


@pytest.fixture(scope="module")
def config(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Config:
    return tiny_config(image_folder, tmp_path_factory.mktemp("lr_find") / "out")


@pytest.fixture(scope="module")
def sweep(config: Config, splits: Splits, tmp_path_factory: pytest.TempPathFactory) -> LRFinderResult:
    plot = tmp_path_factory.mktemp("lr_find_plot") / "lr_finder.png"
    return lr_range_test(config, min_lr=1e-4, max_lr=10.0, num_iter=30, splits=splits, plot_path=plot)


def test_range_test_sweeps_increasing_lrs_from_min_to_max(sweep: LRFinderResult) -> None:
    lrs = np.array(sweep.lrs)
    assert lrs[0] == pytest.approx(1e-4)
    assert np.all(np.diff(lrs) > 0)
    assert lrs[-1] <= 10.0 * (1 + 1e-9)
    if sweep.diverged_at is None:
        assert len(lrs) == 30 and lrs[-1] == pytest.approx(10.0)
    # log-spaced: a constant ratio between neighbours
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, (10.0 / 1e-4) ** (1 / 29))


def test_range_test_reports_smoothed_losses(config: Config, splits: Splits, monkeypatch: pytest.MonkeyPatch) -> None:
    """The losses are the training step's own (training's TorchStep), smoothed."""
    raw_losses: list[float] = []
    step = lr_finder.TorchStep.__call__

    def recording(self, images, labels, index):
        loss = step(self, images, labels, index)
        raw_losses.append(float(loss))
        return loss

    monkeypatch.setattr(lr_finder.TorchStep, "__call__", recording)
    sweep = lr_range_test(config, min_lr=1e-4, max_lr=10.0, num_iter=30, splits=splits)
    raw, smooth = np.array(raw_losses), np.array(sweep.losses)
    assert len(raw) == len(smooth) == len(sweep.lrs)
    assert smooth[0] == pytest.approx(raw[0])  # debiased: the first smoothed value is the first loss
    # a debiased moving average is a weighted mean of the losses so far: never outside their range
    for i in range(len(raw)):
        assert raw[: i + 1].min() - 1e-9 <= smooth[i] <= raw[: i + 1].max() + 1e-9, i
    finite = np.isfinite(raw) & np.isfinite(smooth)
    # smoothing: the curve moves less from step to step than the raw losses do
    assert np.abs(np.diff(smooth[finite])).sum() < np.abs(np.diff(raw[finite])).sum()


def test_suggestions_lie_inside_the_sweep(sweep: LRFinderResult) -> None:
    assert set(sweep.suggestions) == {"valley", "steepest", "min_loss_div10"}
    for name, lr in sweep.suggestions.items():
        assert 1e-4 <= lr <= 10.0, name
    assert sweep.max_lr == sweep.suggestions["valley"]
    assert sweep.min_lr == pytest.approx(sweep.max_lr / Config().schedule.start_div)


def test_range_test_writes_its_plot(sweep: LRFinderResult) -> None:
    assert sweep.plot is not None
    assert_png(sweep.plot)


def test_to_dict_is_what_lr_find_json_prints(sweep: LRFinderResult) -> None:
    d = sweep.to_dict()
    assert d["max_lr"] == sweep.max_lr and d["min_lr"] == sweep.min_lr
    assert d["curve"]["lr"] == list(sweep.lrs)
    assert len(d["curve"]["loss"]) == len(sweep.lrs)
    assert d["plot"] == str(sweep.plot)


def test_range_test_stops_early_when_the_loss_blows_up(config: Config, splits: Splits) -> None:
    result = lr_range_test(config, min_lr=1e-2, max_lr=1e4, num_iter=40, splits=splits)
    assert result.diverged_at is not None
    assert len(result.lrs) < 40
    assert result.diverged_at == result.lrs[-1]
    assert result.max_lr < result.diverged_at


def test_range_test_leaves_a_passed_model_as_it_was(config: Config, splits: Splits) -> None:
    model = ResNet9(ModelConfig(width=0.125), num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lr_range_test(config, num_iter=10, splits=splits, model=model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key  # weights and BN statistics


def test_range_test_reports_each_step(config: Config, splits: Splits) -> None:
    seen: list[tuple[int, float, float]] = []
    result = lr_range_test(
        config, num_iter=8, splits=splits, on_step=lambda step, lr, loss: seen.append((step, lr, loss))
    )
    assert [s for s, _, _ in seen] == list(range(len(result.lrs)))
    assert [lr for _, lr, _ in seen] == list(result.lrs)
    assert [loss for _, _, loss in seen] == list(result.losses)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_lr": 1.0, "max_lr": 0.1}, "0 < min_lr < max_lr"),
        ({"min_lr": 0.0}, "0 < min_lr < max_lr"),
        ({"num_iter": 3}, "at least 5 iterations"),
        ({"mode": "log"}, "mode must be exp or linear"),
    ],
)
def test_bad_arguments_are_user_errors(config: Config, splits: Splits, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        lr_range_test(config, splits=splits, **kwargs)


def test_a_batch_larger_than_the_training_set_is_a_user_error(config: Config, splits: Splits) -> None:
    with pytest.raises(UserError, match=r"train\.batch_size"):
        lr_range_test(config.with_overrides({"train.batch_size": 1000}), splits=splits)


def test_linear_mode_spaces_the_lrs_evenly(config: Config, splits: Splits) -> None:
    result = lr_range_test(config, min_lr=0.01, max_lr=0.5, num_iter=6, mode="linear", splits=splits)
    assert np.allclose(np.diff(result.lrs), (0.5 - 0.01) / 5)


LRS = np.geomspace(1e-5, 10, 200)


X = np.log10(LRS)


def fastai_shaped_curve() -> np.ndarray:
    """Flat at 2.3, a steep drop centred at lr 1e-2.5, a minimum, then a blow-up past lr ~1."""
    return 2.3 - 1.5 / (1 + np.exp(-4 * (X + 2.5))) + np.exp(3 * (X - 0.5))


def test_steepest_is_where_the_loss_falls_fastest() -> None:
    assert steepest(LRS, fastai_shaped_curve()) == pytest.approx(10**-2.5, rel=0.15)


def test_valley_is_midway_down_the_drop_not_at_its_bottom() -> None:
    # flat at 2.3 up to lr 10^-3.5, falling linearly in log lr to 0.8 at 10^-1.5, then exploding
    drop = 1.5 * np.clip((X + 3.5) / 2, 0, 1)
    losses = 2.3 - drop + np.exp(3 * (X - 0.5))
    v = valley(LRS, losses)
    assert 10**-3.5 < v < 10**-1.5
    assert math.log10(v) == pytest.approx(-2.5, abs=0.3)
    assert v < LRS[int(np.argmin(losses))] / 10  # well before the bottom, where the loss turns


def test_valley_of_a_bowl_is_halfway_down_in_log_lr() -> None:
    losses = (X + 1) ** 2  # minimum at lr 0.1
    v = valley(LRS, losses)
    assert 1e-5 < v < 0.1
    assert math.log10(v) == pytest.approx((-5 + -1) / 2, abs=0.3)


def test_valley_of_a_monotone_falling_curve_is_inside_it() -> None:
    losses = -X  # always falling: the whole sweep is the valley
    v = valley(LRS, losses)
    assert math.log10(v) == pytest.approx((-5 + 1) / 2, abs=0.3)


def test_suggest_returns_the_three_readings() -> None:
    losses = fastai_shaped_curve()
    s = suggest(LRS, losses)
    assert s["valley"] == valley(LRS, losses)
    assert s["steepest"] == steepest(LRS, losses)
    assert s["min_loss_div10"] == pytest.approx(LRS[int(np.argmin(losses))] / 10)
