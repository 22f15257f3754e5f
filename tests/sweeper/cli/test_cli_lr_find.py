"""`sweeper lr-find`: the loss range test's suggestions and plot, the accuracy range test's runs, mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY_TRAIN, assert_png, assert_user_error, invoke, strict_json


def figure(drawn: list, name: str):
    """The figure a command wrote under the file name ``name``."""
    return next(fig for fig, path in drawn if path.name == name)


def test_lr_find_json_suggests_lrs_and_writes_its_plot(image_folder: Path, tmp_path: Path, drawn) -> None:
    out = tmp_path / "finder"
    result = invoke(
        "lr-find", "--json", "--data", str(image_folder), "--iters", "20", "--set", *TINY_TRAIN, f"train.out_dir={out}"
    )
    assert result.exit_code == 0, result.output
    payload = strict_json(result.stdout)
    assert 1e-4 <= payload["min_lr"] < payload["max_lr"] <= 10
    assert payload["min_lr"] == pytest.approx(payload["max_lr"] / 25)
    assert payload["max_lr"] == payload["suggestions"]["valley"]
    assert len(payload["curve"]["lr"]) == len(payload["curve"]["loss"]) <= 20
    assert payload["plot"] == str(out / "lr_finder.png")
    assert_png(out / "lr_finder.png")
    ax = figure(drawn, "lr_finder.png").axes[0]
    curve = ax.get_lines()[0]
    assert list(curve.get_xdata()) == pytest.approx(payload["curve"]["lr"])  # the smoothed loss it printed
    assert list(curve.get_ydata()) == pytest.approx(payload["curve"]["loss"])
    shown = [text.get_text() for text in ax.get_legend().get_texts()]
    assert shown == [f"{name}: {lr:.3g}" for name, lr in payload["suggestions"].items()]


def test_lr_find_json_stays_valid_json_when_the_loss_blows_up(image_folder: Path, tmp_path: Path) -> None:
    result = invoke(
        "lr-find", "--json", "--data", str(image_folder), "--iters", "30", "--min-lr", "1e-2", "--max-lr", "1e6",
        "--set", *TINY_TRAIN,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = strict_json(result.stdout)
    assert payload["diverged_at"] is not None
    assert len(payload["curve"]["lr"]) < 30


def test_lr_find_table_names_the_suggestions(image_folder: Path) -> None:
    result = invoke("lr-find", "--data", str(image_folder), "--iters", "10", "--set", *TINY_TRAIN)
    assert result.exit_code == 0, result.output
    for name in ("valley", "steepest", "min_loss_div10", "suggested max LR"):
        assert name in result.stdout
    assert (Path("runs") / "train" / "lr_finder.png").is_file()


def test_lr_find_with_bad_bounds_exits_2(image_folder: Path) -> None:
    result = invoke("lr-find", "--data", str(image_folder), "--min-lr", "1", "--max-lr", "0.1", "--set", *TINY_TRAIN)
    assert_user_error(result, "min_lr", "max_lr")


def test_lr_find_loss_refuses_the_accuracy_options() -> None:
    result = invoke("lr-find", "--epochs", "3", "--lrs", "0.1,0.2")
    assert_user_error(result, "--epochs, --lrs", "--metric loss")


def test_lr_find_accuracy_trains_one_run_per_lr_and_suggests_the_best(
    image_folder: Path, tmp_path: Path, drawn
) -> None:
    out = tmp_path / "lrf"
    result = invoke(
        "lr-find", "--metric", "accuracy", "--epochs", "2", "--lrs", "0.4,0.02,0.1", "--json",
        "--data", str(image_folder), "--set", *TINY_TRAIN, "data.val_size=60", f"train.out_dir={out}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = strict_json(result.stdout)
    assert payload["metric"] == "accuracy" and payload["split"] == "val" and payload["epochs"] == 2
    assert [p["lr"] for p in payload["points"]] == [0.02, 0.1, 0.4]  # in order of LR
    accuracies = {p["lr"]: p["accuracy"] for p in payload["points"]}
    assert payload["suggested_lr"] == max(accuracies, key=accuracies.get)
    assert all(0 <= a <= 1 for a in accuracies.values())
    assert Path(payload["plot"]) == out / "lr_accuracy.png"
    assert_png(out / "lr_accuracy.png")
    ax = figure(drawn, "lr_accuracy.png").axes[0]
    points, best = ax.get_lines()
    assert list(points.get_xdata()) == [0.02, 0.1, 0.4]
    assert list(points.get_ydata()) == pytest.approx([100 * p["accuracy"] for p in payload["points"]])
    assert list(best.get_xdata()) == [payload["suggested_lr"]]
    assert ax.get_title() == "Accuracy range test: val accuracy after 2 epochs"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--lrs", "0.1,fast"], ["--lrs", "'0.1,fast'"]),
        (["--lrs", "0.1"], ["at least 2 different LRs"]),
        (["--lrs", "0.1,0.1"], ["at least 2 different LRs"]),
        (["--iters", "50"], ["--iters", "--metric accuracy"]),
        (["--points", "1"], ["--points must be >= 2"]),
        (["--epochs", "0"], ["at least 1 epoch"]),
    ],
)
def test_lr_find_accuracy_with_bad_options_exits_2(image_folder: Path, args: list[str], fragments: list[str]) -> None:
    result = invoke("lr-find", "--metric", "accuracy", *args, "--data", str(image_folder), "--set", *TINY_TRAIN)
    assert_user_error(result, *fragments)
