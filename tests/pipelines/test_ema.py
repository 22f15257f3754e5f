"""The EMA of the weights: Myrtle's closed form every ``every`` steps, batch-norm statistics averaged too, and
evaluation with the average that leaves the trained weights as they were."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipelines.ema import EMA


def net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.BatchNorm2d(2))


def set_state(model: nn.Sequential, value: float) -> None:
    """Every float tensor of the model (weights and BN statistics) filled with ``value``."""
    with torch.no_grad():
        for t in [*model.parameters(), model[1].running_mean, model[1].running_var]:
            t.fill_(value)
        model[1].num_batches_tracked.fill_(int(value))


def test_the_average_equals_the_closed_form_after_a_few_steps() -> None:
    model = net()
    set_state(model, 100.0)  # the starting point the average remembers
    ema = EMA(model, momentum=0.99, every=5)  # Myrtle's update_ema(momentum=0.99, update_freq=5)
    for step in range(12):
        set_state(model, float(step))  # the weights after optimizer step ``step``
        ema.update(step)
    rho = 0.99**5
    # updates at steps 0, 5 and 10: e = rho^3 * 100 + (1 - rho) * (rho^2 * w0 + rho * w5 + w10)
    expected = rho**3 * 100 + (1 - rho) * (rho**2 * 0 + rho * 5 + 10)
    for average in ema.floats:  # conv weight, BN weight and bias, running mean and variance alike
        assert torch.allclose(average, torch.full_like(average, expected), rtol=1e-6)
    assert [int(t) for t in ema.others] == [10]  # num_batches_tracked: copied (at step 10), not averaged


def test_every_one_is_a_per_step_average() -> None:
    model = net()
    set_state(model, 0.0)
    ema = EMA(model, momentum=0.5, every=1)
    for step, value in enumerate([8.0, 4.0]):
        set_state(model, value)
        ema.update(step)
    assert torch.allclose(ema.floats[0], torch.full_like(ema.floats[0], 0.25 * 0 + 0.25 * 8 + 0.5 * 4))


def test_applied_evaluates_with_the_average_and_restores_the_model() -> None:
    model = net().eval()
    set_state(model, 2.0)
    ema = EMA(model, momentum=0.9, every=1)
    set_state(model, 12.0)
    ema.update(0)  # average: 0.9 * 2 + 0.1 * 12 = 3
    x = torch.randn(3, 2, 2, 2)
    trained = model(x)
    addresses = [p.data_ptr() for p in model.parameters()]
    with ema.applied():
        assert torch.allclose(model[0].weight, torch.full((2, 2, 1, 1), 3.0))
        assert torch.allclose(model[1].running_var, torch.full((2,), 3.0))
        averaged = model(x)
    assert not torch.allclose(averaged, trained)
    assert torch.equal(model(x), trained)  # the trained state is back, exactly
    assert [p.data_ptr() for p in model.parameters()] == addresses  # swapped in place: a graph keeps its memory


def test_reset_starts_the_average_from_the_current_weights() -> None:
    model = net()
    set_state(model, 1.0)
    ema = EMA(model, momentum=0.99)
    set_state(model, 7.0)
    ema.reset()
    assert all(torch.equal(t, torch.full_like(t, 7.0)) for t in ema.floats)


@pytest.mark.parametrize(("momentum", "every"), [(0.0, 5), (1.0, 5), (0.99, 0)])
def test_a_momentum_outside_0_1_or_no_interval_is_refused(momentum: float, every: int) -> None:
    with pytest.raises(ValueError):
        EMA(net(), momentum=momentum, every=every)
