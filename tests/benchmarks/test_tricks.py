"""The tricks benchmark: the fewest epochs by bisection, and a tiny run writing its table, plot and protocol."""

from __future__ import annotations

import json

import pytest

from benchmarks import tricks
from pipelines.config import Config


@pytest.mark.parametrize(("first_passing", "epochs", "expected"), [(1, 6, 1), (4, 6, 4), (6, 6, 6), (7, 6, None)])
def test_the_fewest_epochs_are_found_by_bisection(first_passing, epochs, expected) -> None:
    asked: list[int] = []

    def passes(e: int) -> bool:
        asked.append(e)
        return e >= first_passing

    assert tricks.fewest_epochs(passes, epochs) == expected
    assert asked[0] == epochs and len(asked) <= 1 + epochs.bit_length()


def test_every_variant_sets_config_keys_the_recipe_accepts() -> None:
    names = ["all", *tricks.TRICKS, *(f"all-{name}" for name in tricks.DEFAULT_TRICKS)]
    for name, overrides in tricks.variants(names).items():
        assert (Config().with_overrides(overrides) != Config()) == (name != tricks.RECIPE), name


def test_all_but_one_leaves_that_tricks_keys_at_the_recipes() -> None:
    assert set(tricks.ALL) - set(tricks.variant("all-ema")) == {"train.ema", "train.ema_every"}
    assert set(tricks.ALL) - set(tricks.variant("all-celu")) == {"model.activation", "model.celu_alpha"}
    assert tricks.variant("all-ema")["model.whiten"] == "patch3"


def test_the_tricks_benchmark_writes_its_table_plot_and_protocol(image_folder, tmp_path, capsys) -> None:
    rc = tricks.main(
        ["--data", str(image_folder), "--train-limit", "150", "--val-size", "30", "--test-limit", "30",
         "--width", "0.125", "--epochs", "2", "--batch-size", "32", "--device", "cpu", "--seeds", "1",
         "--tricks", "all,tta_flip", "--out-dir", str(tmp_path)]
    )  # fmt: skip
    assert rc == 0
    (record_path,) = tmp_path.glob("tricks-*.json")
    record = json.loads(record_path.read_text())
    assert record["complete"] and set(record["table"]) == {"recipe", "all", "tta_flip"}
    assert record["variants"]["all"] == tricks.ALL and record["fewest"]["recipe"] == 2
    for variant, row in record["table"].items():
        assert set(row["val"]) == {"mean", "min", "max"}, variant
        assert f"{variant}/2" in record["runs"]  # every variant ran E epochs
    assert record_path.with_suffix(".png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "target: the recipe's mean validation accuracy after 2 epochs" in out and "tta_flip" in out


def test_an_unknown_trick_exits_2(image_folder, tmp_path, capsys) -> None:
    rc = tricks.main(["--data", str(image_folder), "--tricks", "warp", "--out-dir", str(tmp_path)])
    assert rc == 2 and "unknown trick 'warp'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
