"""pipelines.schedules: LR policies per iteration, against torch's own schedulers built by hand, and the recipe's
shape."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, CyclicLR, OneCycleLR, ReduceLROnPlateau

from pipelines.config import Config
from pipelines.schedules import Plateau, policy_scheduler, schedule_curve

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
    scheduler = policy_scheduler(optimizer, cfg, steps_per_epoch=SPE)
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


def test_step_policy_is_piecewise_constant_with_gamma_at_each_milestone() -> None:
    cfg = config(**{"schedule.policy": "step", "schedule.milestones": [12, 18], "schedule.gamma": 0.2})
    lrs = schedule_curve(cfg, steps_per_epoch=SPE).lrs
    expected = [0.4 * 0.2 ** sum(k >= m * SPE for m in (12, 18)) for k in range(24 * SPE)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_exponential_policy_multiplies_by_gamma_every_epoch_smoothly() -> None:
    lrs = schedule_curve(config(**{"schedule.policy": "exponential", "schedule.gamma": 0.8}), steps_per_epoch=SPE).lrs
    assert lrs == pytest.approx([0.4 * 0.8 ** (k / SPE) for k in range(24 * SPE)], rel=1e-9)


def test_cosine_policy_equals_torch_cosine_annealing_down_to_lr_over_end_div() -> None:
    total = 24 * SPE
    lrs = schedule_curve(config(**{"schedule.policy": "cosine", "schedule.end_div": 100.0}), steps_per_epoch=SPE).lrs
    expected, _ = torch_curve(lambda opt: CosineAnnealingLR(opt, T_max=total - 1, eta_min=0.4 / 100), total)
    assert lrs == pytest.approx(expected, rel=1e-9)
    closed = [0.004 + (0.4 - 0.004) * (1 + math.cos(math.pi * k / (total - 1))) / 2 for k in range(total)]
    assert lrs == pytest.approx(closed, rel=1e-6)


def test_plateau_plans_a_constant_lr_and_cuts_like_torch_reduce_lr_on_plateau() -> None:
    cfg = config(
        **{"schedule.policy": "plateau", "schedule.patience": 1, "schedule.factor": 0.5, "schedule.min_lr": 0.06}
    )
    curve = schedule_curve(cfg, steps_per_epoch=SPE)
    assert curve.adaptive and set(curve.lrs) == {0.4}
    losses = [2.0, 1.5, 1.6, 1.6, 1.4, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5]
    plateau = Plateau(cfg)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
    reference = ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1, min_lr=0.06)
    cuts = 0
    for loss in losses:
        scale = plateau.step(loss)
        reference.step(loss)
        assert 0.4 * scale == pytest.approx(optimizer.param_groups[0]["lr"])
        cuts += scale < 1
    assert cuts > 0 and 0.4 * plateau.scale == pytest.approx(0.06)  # cut down to schedule.min_lr, never below


@pytest.mark.parametrize(
    ("warmup", "first"),
    [
        ("constant", [0.04] * 20),
        ("linear", [0.4 * (0.1 + 0.9 * k / 20) for k in range(20)]),
        ("exponential", [0.04 * 10 ** (k / 20) for k in range(20)]),
    ],
)
def test_warmups_rise_from_lr_over_warmup_div_and_hand_over_to_the_policy(warmup: str, first: list[float]) -> None:
    cfg = config(**{"schedule.policy": "cosine", "schedule.warmup": warmup, "schedule.warmup_epochs": 2})
    curve = schedule_curve(cfg, steps_per_epoch=SPE)
    assert curve.warmup_steps == 20 and len(curve.lrs) == 24 * SPE
    assert curve.lrs[:20] == pytest.approx(first, rel=1e-9)
    rest = 22 * SPE  # the policy runs over the steps after the warm-up, from the peak LR
    expected, _ = torch_curve(lambda opt: CosineAnnealingLR(opt, T_max=rest - 1, eta_min=0.4 / 2500), rest)
    assert curve.lrs[20:] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("policy", ["one_cycle", "triangular", "constant", "step", "exponential", "cosine", "plateau"])
def test_every_policy_takes_a_warmup_that_ends_where_the_policy_starts(policy: str) -> None:
    overrides = {"schedule.policy": policy, "schedule.warmup_epochs": 1.5, "schedule.milestones": [12, 18]}
    warm = schedule_curve(config(**overrides), steps_per_epoch=SPE)
    plain = schedule_curve(config(**{"schedule.policy": policy, "schedule.milestones": [12, 18]}), steps_per_epoch=SPE)
    assert warm.warmup_steps == 15 and len(warm.lrs) == len(plain.lrs) == 24 * SPE
    start = warm.lrs[15]
    assert warm.lrs[:15] == pytest.approx([start * (0.1 + 0.9 * k / 15) for k in range(15)], rel=1e-9)
    if policy in ("constant", "step", "plateau"):  # policies that do not depend on their length
        assert warm.lrs[15:] == pytest.approx(plain.lrs[15:], rel=1e-12)


def test_milestones_and_peak_count_from_the_start_of_the_run_warmup_included() -> None:
    step = config(**{"schedule.policy": "step", "schedule.milestones": [10], "schedule.warmup_epochs": 2})
    lrs = schedule_curve(step, steps_per_epoch=SPE).lrs
    assert lrs[10 * SPE - 1] == pytest.approx(0.4) and lrs[10 * SPE] == pytest.approx(0.04)
    cycle = schedule_curve(config(**{"schedule.peak_epoch": 8, "schedule.warmup_epochs": 2}), steps_per_epoch=SPE)
    assert abs(int(np.argmax(cycle.lrs)) - 8 * SPE) <= 1


@pytest.mark.parametrize(("scaling", "factor"), [("none", 1.0), ("linear", 0.25), ("sqrt", 0.5)])
def test_lr_scales_with_the_batch_size_against_the_reference(scaling: str, factor: float) -> None:
    cfg = config(**{"optim.lr_scaling": scaling, "train.batch_size": 128, "schedule.policy": "constant"})
    assert cfg.effective_lr == pytest.approx(0.4 * factor)
    assert schedule_curve(cfg, steps_per_epoch=SPE).lrs == pytest.approx([0.4 * factor] * 24 * SPE)
    same = config(**{"optim.lr_scaling": scaling, "train.batch_size": 512})
    assert same.effective_lr == pytest.approx(0.4)  # at the reference batch size, optim.lr itself


def test_a_one_cycle_peak_that_rounds_into_the_warmup_still_rises_from_its_start() -> None:
    cfg = config(**{"train.epochs": 1, "schedule.warmup_epochs": 0.5, "schedule.peak_epoch": 0.51})
    curve = schedule_curve(cfg, steps_per_epoch=SPE)
    assert curve.warmup_steps == 5
    assert curve.lrs[5] == pytest.approx(0.4 / 25) and max(curve.lrs) == pytest.approx(0.4)
    crowded = config(**{"train.epochs": 1, "schedule.warmup_epochs": 0.2, "schedule.peak_epoch": 0.21})
    assert len(schedule_curve(crowded, steps_per_epoch=3).lrs) == 3  # no error from OneCycleLR


def test_a_milestone_in_the_last_epoch_still_cuts_the_lr() -> None:
    cfg = config(**{"train.epochs": 1, "schedule.policy": "step", "schedule.milestones": [0.99]})
    lrs = schedule_curve(cfg, steps_per_epoch=SPE).lrs
    assert lrs[-1] == pytest.approx(0.04) and lrs[-2] == pytest.approx(0.4)
