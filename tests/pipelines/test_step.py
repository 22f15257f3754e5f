"""pipelines.step: the training step a CUDA graph captures (run uncaptured on the CPU) against torch's SGD."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from pipelines.config import Config
from pipelines.errors import UserError
from pipelines.step import CurveStep
from pipelines.train import run


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
def test_the_captured_step_trains_like_torch_sgd(image_folder, held_out_splits, tmp_path, overrides):
    """The step a CUDA graph captures (run uncaptured on the CPU) against torch.optim.SGD, same seed: the same
    losses every epoch, within fp32 rounding (the momentum is a float32 tensor here, a double in torch's SGD). At a
    moderate LR: at the recipe's peak this tiny net is chaotic and any rounding difference grows by epoch 3."""
    base = {"data.val_size": 30, "optim.lr": 0.02, "train.epochs": 2}
    cfg = tiny_config(image_folder, tmp_path / "out", **{**base, **overrides})
    eager = run(cfg, splits=held_out_splits, write_outputs=False)
    captured = run(cfg.with_overrides({"train.cuda_graph": True}), splits=held_out_splits, write_outputs=False)
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


def test_the_captured_step_refuses_a_momentum_that_cycles_to_zero():
    with pytest.raises(UserError, match="min_momentum > 0"):
        Config().with_overrides(
            {"train.cuda_graph": True, "schedule.cycle_momentum": True, "schedule.min_momentum": 0.0}
        )
