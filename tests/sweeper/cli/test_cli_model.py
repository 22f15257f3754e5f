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
