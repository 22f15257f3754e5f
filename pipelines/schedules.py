"""Learning-rate (and momentum) per iteration: a warm-up, then a policy, each computed by torch's own schedulers.

policy       torch scheduler (over the steps after the warm-up)
one_cycle    OneCycleLR: lr/start_div up to lr at the peak epoch, then down to lr/end_div at the last step
             (end_div == start_div: the course's "no annihilation")
triangular   CyclicLR (Smith 2015, mode "triangular"): between lr/start_div and lr, half-cycle of step_epochs
constant     ConstantLR with factor 1
step         MultiStepLR: lr, multiplied by gamma at each of the milestones (epochs)
exponential  ExponentialLR: lr * gamma per epoch, applied smoothly (gamma ** (1 / steps per epoch) per step)
cosine       CosineAnnealingLR: lr down to lr/end_div at the last step
plateau      ConstantLR, cut at epoch ends by ReduceLROnPlateau on the validation (else test) loss (:class:`Plateau`)

warm-up      ConstantLR (hold first/warmup_div), LinearLR or ExponentialLR (from first/warmup_div up to first),
             where "first" is the policy's first LR: the warm-up hands over without a jump.

Except for plateau's cuts, the whole curve is known before training (:func:`schedule_curve`); the trainer sets
each step's LR from it, so no scheduler runs in the training loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    CyclicLR,
    ExponentialLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    OneCycleLR,
    ReduceLROnPlateau,
)

from pipelines.config import Config

SchedulerFactory = Callable[[torch.optim.Optimizer], LRScheduler]


@dataclass(frozen=True)
class ScheduleCurve:
    """The LR (and momentum) at each optimizer step, from 0 to total-1, and where the warm-up ends.

    For plateau, ``lrs`` is the plan before any cut (the cuts depend on the run).
    """

    lrs: tuple[float, ...]
    momenta: tuple[float, ...]
    steps_per_epoch: int
    warmup_steps: int = 0
    adaptive: bool = False  # True for plateau: the run decides cuts at epoch ends

    @property
    def cycles_momentum(self) -> bool:
        return len(set(self.momenta)) > 1


def warmup_steps(config: Config, *, steps_per_epoch: int) -> int:
    """Steps of warm-up: schedule.warmup_epochs in steps, leaving at least one step to the policy."""
    total = config.train.epochs * steps_per_epoch
    return min(round(config.schedule.warmup_epochs * steps_per_epoch), total - 1)


def policy_scheduler(
    optimizer: torch.optim.Optimizer, config: Config, *, steps_per_epoch: int, start_step: int = 0
) -> LRScheduler:
    """torch's scheduler for schedule.policy over the run's steps from ``start_step`` (the end of the warm-up)
    on; call ``.step()`` after each optimizer step. Building it sets the optimizer's LR (and momentum, when
    cycled) for its first step. Epoch-valued keys count from the start of the run."""
    sched = config.schedule
    lr = config.effective_lr
    steps = config.train.epochs * steps_per_epoch - start_step
    for group in optimizer.param_groups:
        group["lr"] = lr
    if sched.policy == "one_cycle":
        # pct_start: fraction of steps spent rising, at least one (a peak that rounds into the warm-up still
        # starts at lr/start_div: torch's rise ends at step pct_start * total - 1); OneCycleLR needs at least one
        # step after the peak.
        total = max(steps, 2)
        rise = max(config.peak_epoch * steps_per_epoch - start_step, 2.0)
        pct_start = min(rise / total, (total - 1) / total)
        if math.isclose(pct_start * total, 1.0):
            # A peak at step 0 (e.g. 1-2 steps in all): torch's warm-up would last 0 steps and divide by zero.
            pct_start = (1 - 1e-9) / total
        return OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=total,
            pct_start=pct_start,
            anneal_strategy=sched.anneal,
            div_factor=sched.start_div,
            final_div_factor=sched.end_div / sched.start_div,  # torch: final lr = initial lr / final_div_factor
            cycle_momentum=sched.cycle_momentum,
            base_momentum=sched.min_momentum,
            max_momentum=sched.max_momentum,
            three_phase=False,
        )
    if sched.policy == "triangular":
        return CyclicLR(
            optimizer,
            base_lr=lr / sched.start_div,
            max_lr=lr,
            step_size_up=max(1, round(sched.step_epochs * steps_per_epoch)),
            mode="triangular",
            cycle_momentum=sched.cycle_momentum,
            base_momentum=sched.min_momentum,
            max_momentum=sched.max_momentum,
        )
    if sched.policy == "step":
        # the step each milestone falls in (floor: one before the last epoch always lands on a step that runs)
        milestones = [max(math.floor(m * steps_per_epoch) - start_step, 1) for m in sched.milestones]
        return MultiStepLR(optimizer, milestones=milestones, gamma=sched.gamma)
    if sched.policy == "exponential":
        return ExponentialLR(optimizer, gamma=sched.gamma ** (1 / steps_per_epoch))
    if sched.policy == "cosine":
        return CosineAnnealingLR(optimizer, T_max=max(steps - 1, 1), eta_min=lr / sched.end_div)
    return ConstantLR(optimizer, factor=1.0, total_iters=0)  # constant, and plateau before any cut


def warmup_scheduler(optimizer: torch.optim.Optimizer, config: Config, *, steps: int) -> LRScheduler:
    """torch's scheduler for ``steps`` steps of schedule.warmup towards the optimizer's LR (the policy's first)."""
    sched = config.schedule
    if sched.warmup == "constant":
        return ConstantLR(optimizer, factor=1 / sched.warmup_div, total_iters=steps)
    if sched.warmup == "linear":
        return LinearLR(optimizer, start_factor=1 / sched.warmup_div, end_factor=1.0, total_iters=steps)
    for group in optimizer.param_groups:  # exponential: from first/warmup_div, times warmup_div^(1/steps) a step
        group["lr"] /= sched.warmup_div
    return ExponentialLR(optimizer, gamma=sched.warmup_div ** (1 / steps))


def schedule_curve(config: Config, *, steps_per_epoch: int) -> ScheduleCurve:
    """The warm-up and the policy, each run by its torch scheduler on a throwaway optimizer, end to end."""
    total = config.train.epochs * steps_per_epoch
    warm = warmup_steps(config, steps_per_epoch=steps_per_epoch) if config.schedule.warmup_epochs > 0 else 0
    lrs, momenta = _run(config, steps=total - warm, lr=config.effective_lr, make=_policy(config, steps_per_epoch, warm))
    if warm:
        warm_lrs, _ = _run(config, steps=warm, lr=lrs[0], make=_warmup(config, warm))
        lrs = warm_lrs + lrs
        momenta = [momenta[0]] * warm + momenta
    return ScheduleCurve(
        tuple(lrs), tuple(momenta), steps_per_epoch, warmup_steps=warm, adaptive=config.schedule.policy == "plateau"
    )


def _policy(config: Config, steps_per_epoch: int, start_step: int) -> SchedulerFactory:
    def make(optimizer: torch.optim.Optimizer) -> LRScheduler:
        return policy_scheduler(optimizer, config, steps_per_epoch=steps_per_epoch, start_step=start_step)

    return make


def _warmup(config: Config, steps: int) -> SchedulerFactory:
    def make(optimizer: torch.optim.Optimizer) -> LRScheduler:
        return warmup_scheduler(optimizer, config, steps=steps)

    return make


def _run(config: Config, *, steps: int, lr: float, make: SchedulerFactory) -> tuple[list[float], list[float]]:
    """LR and momentum at each of ``steps`` steps of the scheduler ``make`` builds on a fresh SGD at ``lr``."""
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=lr, momentum=config.optim.momentum, nesterov=config.optim.nesterov)
    scheduler = make(optimizer)
    lrs, momenta = [], []
    for step in range(steps):
        group = optimizer.param_groups[0]
        lrs.append(float(group["lr"]))
        momenta.append(float(group["momentum"]))
        if step < steps - 1:
            optimizer.step()
            scheduler.step()
    return lrs, momenta


class Plateau:
    """schedule.policy plateau: torch's ReduceLROnPlateau, told the validation (else test) loss at epoch ends,
    kept as a factor on the planned LR (it runs on an optimizer of its own whose LR is that factor)."""

    def __init__(self, config: Config) -> None:
        sched = config.schedule
        self._optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        self._reduce = ReduceLROnPlateau(
            self._optimizer,
            mode="min",
            factor=sched.factor,
            patience=sched.patience,
            min_lr=sched.min_lr / config.effective_lr,
        )

    @property
    def scale(self) -> float:
        """What the planned LR is multiplied by now: 1 until the first cut."""
        return float(self._optimizer.param_groups[0]["lr"])

    def step(self, loss: float) -> float:
        """Tell it an epoch's loss; returns the scale for the next epoch."""
        self._reduce.step(loss)
        return self.scale
