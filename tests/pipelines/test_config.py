"""pipelines.config: the recipe's defaults, the YAML round trip, and messages that name the culprit."""

from __future__ import annotations

import dataclasses
import re

import pytest

from pipelines.config import Config, OptimConfig, ScheduleConfig, TrainConfig, config_keys
from pipelines.errors import UserError


def test_defaults_are_the_course_recipe() -> None:
    cfg = Config()
    assert cfg.train.batch_size == 512
    assert cfg.train.epochs == 24
    assert cfg.optim.lr == 0.4
    assert cfg.optim.momentum == 0.9
    assert cfg.optim.weight_decay == 5e-4
    assert cfg.optim.nesterov is True
    assert cfg.schedule.policy == "one_cycle"
    assert cfg.peak_epoch == 5
    assert cfg.model.width == 1.0
    assert [op["name"] for op in cfg.augment.ops] == ["PadIfNeeded", "RandomCrop", "HorizontalFlip", "CoarseDropout"]


def test_unset_peak_scales_with_the_number_of_epochs() -> None:
    assert Config().with_overrides({"train.epochs": 12}).peak_epoch == 2.5


def test_explicit_peak_epoch_wins() -> None:
    assert Config().with_overrides({"schedule.peak_epoch": 3}).peak_epoch == 3.0


def test_yaml_round_trip_gives_an_equal_config() -> None:
    cfg = Config().with_overrides(
        {"optim.lr": 0.123, "train.epochs": 7, "schedule.peak_epoch": 2.5, "data.train_limit": 1000, "model.width": 0.5}
    )
    assert Config.from_yaml(cfg.to_yaml()) == cfg
    assert Config.from_yaml(Config().to_yaml()) == Config()


def test_load_reads_a_yaml_file(tmp_path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("optim:\n  lr: 0.2\ntrain:\n  epochs: 3\n")
    cfg = Config.load(path)
    assert (cfg.optim.lr, cfg.train.epochs) == (0.2, 3)
    assert cfg.optim.momentum == 0.9  # unspecified keys keep the recipe


def test_yaml_accepts_exponent_floats_without_a_dot() -> None:
    # YAML 1.1 (PyYAML) would read 5e-4 as a string; users write it that way.
    cfg = Config.from_yaml("optim:\n  lr: 1e-3\n  weight_decay: 5e-4\n")
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.optim.weight_decay == pytest.approx(5e-4)


def test_with_overrides_returns_a_new_config_and_leaves_the_old_one() -> None:
    base = Config()
    new = base.with_overrides({"optim.lr": 0.2, "train.device": "cpu"})
    assert (new.optim.lr, new.train.device) == (0.2, "cpu")
    assert (base.optim.lr, base.train.device) == (0.4, "auto")


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().optim.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("key", ["optim.learning_rate", "nosuch.lr", "optim.lr.x"])
def test_unknown_override_key_is_rejected_naming_it(key: str) -> None:
    with pytest.raises(UserError, match="unknown config key") as info:
        Config().with_overrides({key: 1})
    assert f"'{key}'" in str(info.value)


def test_unknown_key_in_yaml_is_rejected_naming_it() -> None:
    with pytest.raises(UserError, match=re.escape("optim.lrr")):
        Config.from_yaml("optim:\n  lrr: 0.1\n")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("optim.momentum", 1.5, "optim.momentum must be in [0, 1), got 1.5"),
        ("optim.momentum", -0.1, "optim.momentum must be in [0, 1), got -0.1"),
        ("optim.lr", 0.0, "optim.lr must be > 0, got 0.0"),
        ("optim.lr", -1.0, "optim.lr must be > 0, got -1.0"),
        ("optim.weight_decay", -1.0, "optim.weight_decay must be >= 0, got -1.0"),
        ("model.width", 0.0, "model.width must be > 0, got 0.0"),
        ("train.epochs", 0, "train.epochs must be >= 1, got 0"),
        ("train.batch_size", 0, "train.batch_size must be >= 1, got 0"),
        ("schedule.peak_epoch", 30.0, "schedule.peak_epoch must be <= train.epochs (24), got 30.0"),
        (
            "schedule.policy",
            "steps",
            "schedule.policy must be one of one_cycle, triangular, constant, step, exponential, cosine, plateau, "
            "got 'steps'",
        ),
        ("schedule.anneal", "exp", "schedule.anneal must be one of linear, cos, got 'exp'"),
        ("train.device", "tpu", "train.device must be one of auto, cpu, cuda, got 'tpu'"),
    ],
)
def test_invalid_values_are_rejected_naming_field_and_value(key: str, value: object, message: str) -> None:
    with pytest.raises(UserError) as info:
        Config().with_overrides({key: value})
    assert str(info.value) == message


def test_an_int_given_to_a_float_field_is_reported_with_its_value() -> None:
    with pytest.raises(UserError, match=r"^optim.lr must be > 0, got 0(\.0)?$"):
        Config().with_overrides({"optim.lr": 0})


def test_validation_also_runs_on_direct_construction() -> None:
    with pytest.raises(UserError, match=r"optim.momentum must be in \[0, 1\), got 1.5"):
        OptimConfig(momentum=1.5)
    with pytest.raises(UserError, match=re.escape("schedule.policy")):
        ScheduleConfig(policy="cyclic")
    with pytest.raises(UserError, match=re.escape("peak_epoch must be <= train.epochs")):
        Config(schedule=ScheduleConfig(peak_epoch=5), train=TrainConfig(epochs=4))


def test_ints_are_accepted_for_float_fields() -> None:
    cfg = Config().with_overrides({"optim.lr": 1, "model.width": 2})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.model.width == 2.0 and isinstance(cfg.model.width, float)


@pytest.mark.parametrize(("key", "value"), [("optim.lr", "fast"), ("train.epochs", "3"), ("model.width", "0.5")])
def test_strings_are_rejected_for_numeric_fields(key: str, value: str) -> None:
    with pytest.raises(UserError, match=f"{key} must be .*got '{value}'"):
        Config().with_overrides({key: value})


def test_booleans_are_not_numbers_and_numbers_are_not_booleans() -> None:
    with pytest.raises(UserError, match=re.escape("train.epochs must be an integer, got True")):
        Config().with_overrides({"train.epochs": True})
    with pytest.raises(UserError, match=re.escape("optim.nesterov must be true or false, got 1")):
        Config().with_overrides({"optim.nesterov": 1})


def test_non_integral_float_is_rejected_for_an_int_field() -> None:
    with pytest.raises(UserError, match=re.escape("train.epochs must be an integer, got 2.5")):
        Config().with_overrides({"train.epochs": 2.5})


def test_invalid_yaml_is_a_user_error_naming_the_source() -> None:
    with pytest.raises(UserError, match=re.escape("my.yaml is not valid YAML")):
        Config.from_yaml("optim: [unclosed\n", source="my.yaml")


def test_yaml_that_is_not_a_mapping_is_a_user_error() -> None:
    with pytest.raises(UserError, match="must be a YAML mapping"):
        Config.from_yaml("- a\n- b\n")


def test_missing_config_file_is_a_user_error_naming_it(tmp_path) -> None:
    with pytest.raises(UserError, match=re.escape("nope.yaml")):
        Config.load(tmp_path / "nope.yaml")


def test_empty_yaml_gives_the_recipe() -> None:
    assert Config.from_yaml("") == Config()


def test_config_keys_lists_every_dotted_key() -> None:
    keys = config_keys()
    assert {"optim.lr", "train.epochs", "schedule.peak_epoch", "model.width", "augment.ops"} <= set(keys)
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"schedule.policy": "step"},
            "schedule.milestones must name at least one epoch for policy step, e.g. [12, 18]",
        ),
        (
            {"schedule.policy": "step", "schedule.milestones": [12, 30]},
            "schedule.milestones must lie before the last epoch (train.epochs = 24), got [12.0, 30.0]",
        ),
        ({"schedule.milestones": [18, 12]}, "schedule.milestones must be increasing epochs > 0, got [18.0, 12.0]"),
        ({"schedule.milestones": ["x"]}, "schedule.milestones[0] must be a number, got 'x'"),
        (
            {"schedule.policy": "step", "schedule.milestones": [2], "schedule.warmup_epochs": 3},
            "schedule.milestones must come after the warm-up (schedule.warmup_epochs = 3.0), got [2.0]",
        ),
        ({"schedule.gamma": 0}, "schedule.gamma must be in (0, 1], got 0.0"),
        ({"schedule.gamma": 1.5}, "schedule.gamma must be in (0, 1], got 1.5"),
        ({"schedule.factor": 1}, "schedule.factor must be in (0, 1), got 1.0"),
        ({"schedule.factor": 0}, "schedule.factor must be in (0, 1), got 0.0"),
        ({"schedule.patience": -1}, "schedule.patience must be >= 0 epochs, got -1"),
        ({"schedule.policy": "plateau", "schedule.min_lr": 1.0}, "schedule.min_lr must be below the LR (0.4), got 1.0"),
        (
            {"schedule.warmup_epochs": 24},
            "schedule.warmup_epochs must be shorter than the run (train.epochs = 24), got 24.0",
        ),
        ({"schedule.warmup_epochs": -1}, "schedule.warmup_epochs must be >= 0 and finite, got -1.0"),
        ({"schedule.warmup_epochs": float("inf")}, "schedule.warmup_epochs must be >= 0 and finite, got inf"),
        ({"schedule.min_lr": float("inf")}, "schedule.min_lr must be >= 0 and finite, got inf"),
        (
            {"schedule.milestones": [2, float("inf")]},
            "schedule.milestones must be increasing epochs > 0, got [2.0, inf]",
        ),
        ({"schedule.warmup": "cosine"}, "schedule.warmup must be one of constant, linear, exponential, got 'cosine'"),
        ({"schedule.warmup_div": 0.5}, "schedule.warmup_div must be >= 1 and finite, got 0.5"),
        ({"schedule.warmup_div": float("inf")}, "schedule.warmup_div must be >= 1 and finite, got inf"),
        (
            {"schedule.warmup_epochs": 6},
            "schedule.peak_epoch (5) must come after the warm-up (schedule.warmup_epochs = 6)",
        ),
        ({"optim.lr_scaling": "log"}, "optim.lr_scaling must be one of none, linear, sqrt, got 'log'"),
        ({"optim.reference_batch_size": 0}, "optim.reference_batch_size must be >= 1, got 0"),
    ],
)
def test_schedule_and_lr_scaling_keys_are_validated_naming_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(UserError) as info:
        Config().with_overrides(overrides)
    assert str(info.value) == message


def test_every_new_key_round_trips_through_yaml() -> None:
    cfg = Config().with_overrides(
        {
            "schedule.policy": "step",
            "schedule.milestones": [10, 20],
            "schedule.gamma": 0.2,
            "schedule.warmup": "exponential",
            "schedule.warmup_epochs": 1.5,
            "optim.lr_scaling": "sqrt",
            "optim.reference_batch_size": 256,
        }
    )
    assert Config.from_yaml(cfg.to_yaml()) == cfg


def test_the_tricks_are_off_by_default() -> None:
    cfg = Config()
    assert (cfg.model.activation, cfg.model.ghost_batch, cfg.model.bn_weight, cfg.model.whiten) == (
        "relu",
        0,
        "learned",
        "none",
    )
    assert (cfg.optim.bn_bias_lr_scale, cfg.optim.bn_bias_decay_scale) == (1.0, 1.0)
    assert (cfg.train.ema, cfg.train.tta, cfg.augment.alternating_flip) == (0.0, "none", False)


def test_the_tricks_round_trip_through_yaml() -> None:
    cfg = Config().with_overrides(
        {
            "model.activation": "celu",
            "model.celu_alpha": 0.3,
            "model.ghost_batch": 32,
            "model.bn_weight": "frozen",
            "model.whiten": "patch3",
            "optim.bn_bias_lr_scale": 16,
            "optim.bn_bias_decay_scale": 0.0625,
            "train.ema": 0.99,
            "train.ema_every": 5,
            "train.tta": "flip_shift",
            "augment.alternating_flip": True,
        }
    )
    assert Config.from_yaml(cfg.to_yaml()) == cfg
    assert cfg.optim.bn_bias_lr_scale == 16.0 and isinstance(cfg.optim.bn_bias_lr_scale, float)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.activation": "swish"}, "model.activation must be one of relu, celu, gelu, got 'swish'"),
        ({"model.celu_alpha": 0}, "model.celu_alpha must be > 0 and finite, got 0.0"),
        ({"model.ghost_batch": -1}, "model.ghost_batch must be >= 0 images (0: off), got -1"),
        ({"model.ghost_batch": 24}, "model.ghost_batch must divide train.batch_size (512), got 24"),
        (
            {"model.ghost_batch": 32, "train.batch_size": 48},
            "model.ghost_batch must divide train.batch_size (48), got 32",
        ),
        ({"model.bn_weight": "fixed"}, "model.bn_weight must be one of learned, frozen, got 'fixed'"),
        ({"model.whiten": "zca"}, "model.whiten must be one of none, patch2, patch3, got 'zca'"),
        ({"optim.bn_bias_lr_scale": 0}, "optim.bn_bias_lr_scale must be > 0 and finite, got 0.0"),
        ({"optim.bn_bias_decay_scale": -1}, "optim.bn_bias_decay_scale must be >= 0 and finite, got -1.0"),
        ({"train.ema": 1}, "train.ema must be 0 (off) or a momentum in (0, 1), got 1.0"),
        ({"train.ema": -0.5}, "train.ema must be 0 (off) or a momentum in (0, 1), got -0.5"),
        ({"train.ema_every": 0}, "train.ema_every must be >= 1 (steps), got 0"),
        ({"train.tta": "flips"}, "train.tta must be one of none, flip, flip_shift, got 'flips'"),
        (
            {"augment.alternating_flip": True, "augment.ops": [{"name": "RandomCrop", "height": 32, "width": 32}]},
            "augment.alternating_flip needs exactly one HorizontalFlip in augment.ops (the op whose flips it "
            "alternates), got 0",
        ),
    ],
)
def test_the_trick_keys_are_validated_naming_key_and_value(overrides: dict, message: str) -> None:
    with pytest.raises(UserError) as info:
        Config().with_overrides(overrides)
    assert str(info.value) == message


def test_a_ghost_batch_that_divides_the_batch_is_accepted() -> None:
    cfg = Config().with_overrides({"model.ghost_batch": 32, "train.batch_size": 96})
    assert cfg.model.ghost_batch == 32
