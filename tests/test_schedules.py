"""LR policies per iteration, checked against torch's own schedulers built by hand and against the recipe's shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR

from pipelines.config import Config
from pipelines.schedules import build_scheduler, schedule_curve

SPE = 10  # steps per epoch in these tests


def config(**overrides: object) -> Config:
    return Config().with_overrides(overrides)


def torch_curve(make_scheduler, total: int, *, lr: float = 0.4) -> tuple[list[float], list[float]]:
    """LR and momentum at steps 0..total-1 of a scheduler built by hand on a fresh SGD."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9, nesterov=True)
    scheduler = make_scheduler(optimizer)
    lrs, momenta = [], []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    return lrs, momenta


def test_recipe_one_cycle_equals_torch_one_cycle() -> None:
    curve = schedule_curve(Config(), steps_per_epoch=SPE)
    total = 24 * SPE
    expected, _ = torch_curve(
        lambda opt: OneCycleLR(
            opt,
            max_lr=0.4,
            total_steps=total,
            pct_start=5 / 24,
            anneal_strategy="linear",
            div_factor=25,
            final_div_factor=100,  # 0.4 / 25 / 100 = 0.4 / 2500
            cycle_momentum=False,
            three_phase=False,
        ),
        total,
    )
    assert len(curve.lrs) == total
    assert curve.lrs == pytest.approx(expected, rel=1e-9)


def test_one_cycle_starts_low_peaks_at_the_peak_epoch_and_ends_annihilated() -> None:
    lrs = np.array(schedule_curve(Config(), steps_per_epoch=SPE).lrs)
    assert lrs[0] == pytest.approx(0.4 / 25)
    assert lrs.max() == pytest.approx(0.4)
    assert abs(int(lrs.argmax()) - 5 * SPE) <= 1
    assert lrs[-1] == pytest.approx(0.4 / 2500)
    assert np.all(np.diff(lrs[: int(lrs.argmax()) + 1]) > 0)  # rising to the peak
    assert np.all(np.diff(lrs[int(lrs.argmax()) :]) < 0)  # falling after it


def test_explicit_peak_epoch_moves_the_peak() -> None:
    lrs = np.array(schedule_curve(config(**{"schedule.peak_epoch": 12}), steps_per_epoch=SPE).lrs)
    assert abs(int(lrs.argmax()) - 12 * SPE) <= 1


def test_unset_peak_scales_with_the_number_of_epochs() -> None:
    lrs = np.array(schedule_curve(config(**{"train.epochs": 12}), steps_per_epoch=SPE).lrs)
    assert len(lrs) == 12 * SPE
    assert abs(int(lrs.argmax()) - 2.5 * SPE) <= 1


def test_end_div_equal_to_start_div_ends_where_it_started() -> None:
    lrs = schedule_curve(config(**{"schedule.end_div": 25.0}), steps_per_epoch=SPE).lrs
    assert lrs[-1] == pytest.approx(lrs[0])
    assert lrs[0] == pytest.approx(0.4 / 25)


def test_cos_anneal_differs_from_linear_and_still_falls_monotonically() -> None:
    linear = np.array(schedule_curve(Config(), steps_per_epoch=SPE).lrs)
    cos = np.array(schedule_curve(config(**{"schedule.anneal": "cos"}), steps_per_epoch=SPE).lrs)
    assert not np.allclose(cos, linear)
    assert cos[0] == pytest.approx(linear[0]) and cos[-1] == pytest.approx(linear[-1])
    assert int(cos.argmax()) == int(linear.argmax())
    assert np.all(np.diff(cos[int(cos.argmax()) :]) <= 0)


def test_triangular_equals_torch_cyclic_lr() -> None:
    cfg = config(**{"schedule.policy": "triangular", "schedule.step_epochs": 2.0, "train.epochs": 10})
    curve = schedule_curve(cfg, steps_per_epoch=SPE)
    expected, _ = torch_curve(
        lambda opt: CyclicLR(
            opt, base_lr=0.4 / 25, max_lr=0.4, step_size_up=2 * SPE, mode="triangular", cycle_momentum=False
        ),
        10 * SPE,
    )
    assert curve.lrs == pytest.approx(expected, rel=1e-9)


def test_triangular_cycles_between_its_bounds_with_the_configured_period() -> None:
    cfg = config(**{"schedule.policy": "triangular", "schedule.step_epochs": 1.5, "train.epochs": 12})
    lrs = np.array(schedule_curve(cfg, steps_per_epoch=SPE).lrs)
    period = int(2 * 1.5 * SPE)
    assert lrs.min() == pytest.approx(0.4 / 25)
    assert lrs.max() == pytest.approx(0.4)
    assert lrs[0] == pytest.approx(0.4 / 25)
    assert lrs[period // 2] == pytest.approx(0.4)
    assert np.allclose(lrs[period:], lrs[:-period])
    assert np.all(lrs >= 0.4 / 25 - 1e-12) and np.all(lrs <= 0.4 + 1e-12)


def test_constant_policy_is_constant_at_the_configured_lr() -> None:
    lrs = schedule_curve(config(**{"schedule.policy": "constant", "optim.lr": 0.05}), steps_per_epoch=SPE).lrs
    assert len(lrs) == 24 * SPE
    assert set(lrs) == {0.05}


@pytest.mark.parametrize("policy", ["one_cycle", "triangular"])
def test_cycled_momentum_moves_inversely_to_the_lr(policy: str) -> None:
    cfg = config(**{"schedule.policy": policy, "schedule.cycle_momentum": True})
    curve = schedule_curve(cfg, steps_per_epoch=SPE)
    lrs, momenta = np.array(curve.lrs), np.array(curve.momenta)
    assert momenta.min() == pytest.approx(0.85) and momenta.max() == pytest.approx(0.95)
    assert momenta[int(lrs.argmax())] == pytest.approx(0.85)  # LR highest: momentum lowest
    assert momenta[0] == pytest.approx(0.95)  # LR low at the start: momentum high
    lr_up, mom_up = np.diff(lrs) > 1e-12, np.diff(momenta) > 1e-12
    assert not np.any(lr_up & mom_up)  # never both rising


def test_momentum_stays_at_optim_momentum_unless_cycled() -> None:
    curve = schedule_curve(config(**{"optim.momentum": 0.8}), steps_per_epoch=SPE)
    assert set(curve.momenta) == {0.8}


def test_the_real_scheduler_follows_the_precomputed_curve() -> None:
    cfg = config(**{"train.epochs": 4, "schedule.anneal": "cos"})
    curve = schedule_curve(cfg, steps_per_epoch=SPE)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=SPE)
    seen = []
    for _ in range(4 * SPE):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(list(curve.lrs), rel=1e-12)


@pytest.mark.parametrize(
    ("epochs", "spe", "peak"), [(1, 1, None), (1, 1, 1.0), (1, 2, 1.0), (2, 1, 2.0), (4, 1, 1.0), (1, 3, None)]
)
def test_tiny_runs_still_get_a_one_cycle_curve(epochs: int, spe: int, peak: float | None) -> None:
    cfg = config(**{"train.epochs": epochs, "schedule.peak_epoch": peak})
    lrs = schedule_curve(cfg, steps_per_epoch=spe).lrs
    assert len(lrs) == epochs * spe
    assert all(0.4 / 2500 - 1e-12 <= lr <= 0.4 + 1e-12 for lr in lrs)
