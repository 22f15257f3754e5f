"""Learning-rate (and momentum) policies, updated every iteration, built on torch's own schedulers.

one_cycle  -> torch.optim.lr_scheduler.OneCycleLR: lr/start_div up to lr at the peak epoch, then down to
              lr/end_div at the last step (end_div == start_div: the course's "no annihilation").
triangular -> torch.optim.lr_scheduler.CyclicLR (Smith 2015, mode "triangular"): between lr/start_div and lr,
              half-cycle of schedule.step_epochs epochs.
constant   -> torch.optim.lr_scheduler.ConstantLR with factor 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import ConstantLR, CyclicLR, LRScheduler, OneCycleLR

from pipelines.config import Config


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config, *, steps_per_epoch: int) -> LRScheduler:
    """The config's policy over ``train.epochs * steps_per_epoch`` steps; call ``.step()`` after each optimizer step.

    Building it sets the optimizer's LR (and momentum, when cycled) for step 0.
    """
    sched, optim = config.schedule, config.optim
    total = config.train.epochs * steps_per_epoch
    if sched.policy == "one_cycle":
        # pct_start: fraction of steps spent rising. OneCycleLR needs at least one step after the peak.
        steps = max(total, 2)
        pct_start = min(config.peak_epoch / config.train.epochs, (steps - 1) / steps)
        if math.isclose(pct_start * steps, 1.0):
            # A peak at step 0 (e.g. 1-2 steps in all): torch's warm-up would last 0 steps and divide by zero.
            pct_start = (1 - 1e-9) / steps
        return OneCycleLR(
            optimizer,
            max_lr=optim.lr,
            total_steps=steps,
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
            base_lr=optim.lr / sched.start_div,
            max_lr=optim.lr,
            step_size_up=max(1, round(sched.step_epochs * steps_per_epoch)),
            mode="triangular",
            cycle_momentum=sched.cycle_momentum,
            base_momentum=sched.min_momentum,
            max_momentum=sched.max_momentum,
        )
    for group in optimizer.param_groups:
        group["lr"] = optim.lr
    return ConstantLR(optimizer, factor=1.0, total_iters=0)


@dataclass(frozen=True)
class ScheduleCurve:
    """The LR (and momentum) used at each optimizer step, from 0 to total-1."""

    lrs: tuple[float, ...]
    momenta: tuple[float, ...]
    steps_per_epoch: int


def schedule_curve(config: Config, *, steps_per_epoch: int) -> ScheduleCurve:
    """Run the policy on a throwaway optimizer: the curve is known before training starts."""
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD(
        [param], lr=config.optim.lr, momentum=config.optim.momentum, nesterov=config.optim.nesterov
    )
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=steps_per_epoch)
    total = config.train.epochs * steps_per_epoch
    lrs, momenta = [], []
    for step in range(total):
        group = optimizer.param_groups[0]
        lrs.append(float(group["lr"]))
        momenta.append(float(group["momentum"]))
        if step < total - 1:
            optimizer.step()
            scheduler.step()
    return ScheduleCurve(tuple(lrs), tuple(momenta), steps_per_epoch)
