"""pipelines.model: the custom ResNet-9's parameter count, shapes per block, width scaling, reproducible init."""

from __future__ import annotations

import pytest
import torch

from pipelines.config import ModelConfig
from pipelines.model import ResNet9, build_model, count_parameters, layer_table, reset_parameters

RECIPE_PARAMS = 6_573_120  # Myrtle.ai's ResNet-9 with bias-free convs and FC, 10 classes


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_width_one_has_the_recipe_parameter_count() -> None:
    model = ResNet9(ModelConfig())
    assert trainable(model) == RECIPE_PARAMS
    assert count_parameters(model) == RECIPE_PARAMS


@pytest.mark.parametrize("n", [1, 5])
def test_output_is_one_logit_row_per_image(n: int) -> None:
    model = ResNet9(ModelConfig(width=0.125)).eval()
    with torch.no_grad():
        out = model(torch.randn(n, 3, 32, 32))
    assert out.shape == (n, 10)
    assert torch.isfinite(out).all()


def test_number_of_classes_sets_the_output_width() -> None:
    model = build_model(ModelConfig(width=0.125), num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_layer_table_shows_the_recipe_shapes() -> None:
    shapes = {row.name: row.output_shape[1:] for row in layer_table(ResNet9(ModelConfig()))}
    assert shapes["prep"] == (64, 32, 32)
    assert shapes["layer1"] == (128, 16, 16)
    assert shapes["layer2"] == (256, 8, 8)
    assert shapes["layer3"] == (512, 4, 4)
    assert shapes["pool"] == (512, 1, 1)
    assert shapes["fc"] == (10,)


def test_layer_table_parameters_add_up_to_the_model() -> None:
    model = ResNet9(ModelConfig())
    assert sum(row.params for row in layer_table(model)) == count_parameters(model)


def test_layer_table_leaves_the_training_mode_alone() -> None:
    model = ResNet9(ModelConfig(width=0.125)).train()
    layer_table(model)
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())  # its hooks are removed


def test_width_scales_every_channel_count() -> None:
    shapes = {row.name: row.output_shape[1] for row in layer_table(ResNet9(ModelConfig(width=0.25)))}
    assert [shapes[name] for name in ("prep", "layer1", "layer2", "layer3", "pool")] == [16, 32, 64, 128, 128]
    # conv weights scale with width squared: about 1/16 of the parameters
    assert count_parameters(ResNet9(ModelConfig(width=0.25))) == pytest.approx(RECIPE_PARAMS / 16, rel=0.02)


def test_reset_with_the_same_seed_gives_identical_weights() -> None:
    a, b = ResNet9(ModelConfig(width=0.125)), ResNet9(ModelConfig(width=0.125))
    reset_parameters(a, seed=7)
    reset_parameters(b, seed=7)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_reset_with_another_seed_gives_different_weights() -> None:
    a, b = ResNet9(ModelConfig(width=0.125)), ResNet9(ModelConfig(width=0.125))
    reset_parameters(a, seed=7)
    reset_parameters(b, seed=8)
    assert not torch.equal(a.prep[0].weight, b.prep[0].weight)
    assert not torch.equal(a.fc.weight, b.fc.weight)


def test_reset_does_not_disturb_the_global_random_state() -> None:
    model = ResNet9(ModelConfig(width=0.125))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    reset_parameters(model, seed=0)
    assert torch.equal(torch.rand(3), expected)
