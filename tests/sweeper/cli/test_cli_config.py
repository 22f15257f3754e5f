"""`sweeper config show`: the resolved config, layered file < --data < --set, and mistakes in one line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import assert_user_error, invoke
from pipelines.config import TRICK_KEYS, Config


def shown(result: Any) -> Config:
    assert result.exit_code == 0, result.output
    return Config.from_dict(yaml.safe_load(result.stdout))


def test_config_show_prints_the_recipe_as_yaml() -> None:
    cfg = shown(invoke("config", "show"))
    # the only difference from the recipe: SWEEPER_CACHE_DIR (set by conftest) moves the cache
    assert cfg == Config().with_overrides({"data.cache_dir": os.environ["SWEEPER_CACHE_DIR"]})


def test_config_show_applies_one_set_followed_by_bare_overrides() -> None:
    cfg = shown(invoke("config", "show", "--set", "optim.lr=0.2", "train.epochs=3"))
    assert cfg.optim.lr == 0.2
    assert cfg.train.epochs == 3


def test_config_show_accepts_repeated_set_and_exponent_floats() -> None:
    cfg = shown(invoke("config", "show", "-s", "optim.weight_decay=5e-4", "-s", "optim.lr=1e-2"))
    assert cfg.optim.weight_decay == pytest.approx(5e-4)
    assert cfg.optim.lr == pytest.approx(1e-2)


def test_config_show_layers_file_then_data_then_set(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.3\n  momentum: 0.8\ndata:\n  path: from-file\n")
    cfg = shown(invoke("config", "show", "--config", str(path), "--data", "from-flag", "--set", "optim.lr=0.1"))
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.data.path) == (0.1, 0.8, "from-flag")


def test_unknown_key_exits_2_with_one_error_line_naming_it() -> None:
    assert_user_error(invoke("config", "show", "--set", "optim.learning_rate=0.1"), "optim.learning_rate")


def test_invalid_value_exits_2_naming_field_and_value() -> None:
    assert_user_error(invoke("config", "show", "--set", "optim.momentum=1.5"), "optim.momentum", "1.5")


def test_override_without_equals_exits_2() -> None:
    assert_user_error(invoke("config", "show", "--set", "optim.lr"), "optim.lr", "section.key=value")


def test_invalid_yaml_config_file_exits_2_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("optim: [lr: 0.1\n")
    assert_user_error(invoke("config", "show", "--config", str(path)), "broken.yaml", "not valid YAML")


def test_unknown_key_in_config_file_exits_2_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epoch: 3\n")
    assert_user_error(invoke("config", "show", "--config", str(path)), "train.epoch")


def test_missing_config_file_exits_2_naming_it(tmp_path: Path) -> None:
    assert_user_error(invoke("config", "show", "--config", str(tmp_path / "nope.yaml")), "nope.yaml")


def test_config_show_prints_the_lr_scaled_with_the_batch_size() -> None:
    result = invoke("config", "show", "--set", "optim.lr_scaling=linear", "train.batch_size=128")
    cfg = shown(result)
    assert cfg.optim.lr == 0.4 and cfg.effective_lr == pytest.approx(0.1)
    assert result.stdout.strip().splitlines()[-1].startswith("# effective lr: 0.1 = optim.lr 0.4 x 0.25 (linear")
    plain = invoke("config", "show")
    assert plain.stdout.strip().splitlines()[-1] == "# effective lr: 0.4"


def test_config_show_lists_every_switch_off_and_shows_the_ones_set() -> None:
    recipe = shown(invoke("config", "show"))
    assert (recipe.model.activation, recipe.model.whiten, recipe.train.ema, recipe.train.tta) == (
        "relu", "none", 0.0, "none",
    )  # fmt: skip
    cfg = shown(invoke("config", "show", "--set", "model.activation=celu", "model.celu_alpha=0.3",
                       "model.ghost_batch=32", "model.bn_weight=frozen", "model.whiten=patch2",
                       "optim.bn_bias_lr_scale=16", "optim.bn_bias_decay_scale=0.0625", "train.ema=0.99",
                       "train.ema_every=5", "train.tta=flip_shift", "augment.alternating_flip=true"))  # fmt: skip
    values = cfg.to_dict()
    assert {key: values[key.split(".")[0]][key.split(".")[1]] for key in TRICK_KEYS} == {
        "model.activation": "celu", "model.celu_alpha": 0.3, "model.ghost_batch": 32, "model.bn_weight": "frozen",
        "model.whiten": "patch2", "optim.bn_bias_lr_scale": 16.0, "optim.bn_bias_decay_scale": 0.0625,
        "train.ema": 0.99, "train.ema_every": 5, "train.tta": "flip_shift", "augment.alternating_flip": True,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("model.activation=swish", "model.activation must be one of relu, celu, gelu, got 'swish'"),
        ("model.whiten=zca", "model.whiten must be one of none, patch2, patch3, got 'zca'"),
        ("model.ghost_batch=24", "model.ghost_batch must divide train.batch_size (512), got 24"),
        ("model.bn_weight=fixed", "model.bn_weight must be one of learned, frozen, got 'fixed'"),
        ("optim.bn_bias_lr_scale=0", "optim.bn_bias_lr_scale must be > 0 and finite, got 0.0"),
        ("train.ema=1", "train.ema must be 0 (off) or a momentum in (0, 1), got 1.0"),
        ("train.tta=mirror", "train.tta must be one of none, flip, flip_shift, got 'mirror'"),
    ],
)
def test_a_bad_switch_exits_2_with_one_line_naming_key_and_value(setting: str, message: str) -> None:
    result = invoke("config", "show", "--set", setting)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and lines == [f"error: {message}"], result.output
