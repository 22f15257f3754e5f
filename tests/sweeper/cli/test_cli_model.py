"""`sweeper model`: the layer table and the parameter count."""

from __future__ import annotations

from conftest import invoke, strict_json


def test_model_json_reports_the_recipe_parameter_count() -> None:
    result = invoke("model", "--json")
    assert result.exit_code == 0, result.output
    payload = strict_json(result.stdout)
    assert payload["params"] == 6_573_120
    shapes = {layer["name"]: layer["output_shape"][1:] for layer in payload["layers"]}
    assert shapes["layer3"] == [512, 4, 4]


def test_model_table_shows_the_total_with_separators() -> None:
    result = invoke("model")
    assert result.exit_code == 0, result.output
    assert "6,573,120" in result.stdout
    assert "512 x 4 x 4" in result.stdout


def test_model_width_option_scales_the_network() -> None:
    result = invoke("model", "--width", "0.25", "--classes", "3", "--json")
    assert result.exit_code == 0
    payload = strict_json(result.stdout)
    assert payload["params"] < 6_573_120 / 10
    assert payload["layers"][-2]["output_shape"] == [1, 3]  # fc, before the softmax row


def test_model_set_shows_the_switches_and_the_layers_they_change() -> None:
    result = invoke("model", "--json", "--set", "model.activation=gelu", "model.ghost_batch=32",
                    "model.bn_weight=frozen", "model.whiten=patch3")  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = strict_json(result.stdout)
    assert payload["model"] == {"width": 1.0, "activation": "gelu", "celu_alpha": 0.075, "ghost_batch": 32,
                                "bn_weight": "frozen", "whiten": "patch3"}  # fmt: skip
    layers = {layer["name"]: layer for layer in payload["layers"]}
    assert layers["whiten"]["kind"] == "Whitening(patch3, fixed)" and layers["whiten"]["params"] == 0
    assert layers["whiten"]["output_shape"] == [1, 27, 32, 32]
    assert layers["prep"]["kind"] == "Conv2d -> GhostBatchNorm2d -> GELU"
    assert payload["params"] == 6_573_120  # a 1x1 conv of 27 channels weighs what the 3x3 conv of 3 did
    assert payload["trainable_params"] == 6_573_120 - (64 + 128 + 128 + 128 + 256 + 512 + 512 + 512)  # BN scales


def test_model_table_names_the_switches_and_the_frozen_scales() -> None:
    result = invoke("model", "--set", "model.activation=celu", "model.bn_weight=frozen")
    assert result.exit_code == 0, result.output
    assert "activation celu" in result.stdout and "bn_weight frozen" in result.stdout
    assert "Residual(2x ConvBNCELU)" in result.stdout
    assert "trainable" in result.stdout and "6,570,880" in result.stdout  # 2,240 scales fixed at 1
