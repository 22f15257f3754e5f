"""`sweeper config show` and bad values: the trick switches are keys like every other."""

from __future__ import annotations

import pytest

from pipelines.config import TRICK_KEYS
from tests.test_cli_train import invoke, shown


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
