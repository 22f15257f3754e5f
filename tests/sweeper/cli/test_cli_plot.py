"""`sweeper plot schedule`: the config's policy, every policy, or what a finished run used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from conftest import TINY_TRAIN, assert_png, assert_user_error, invoke
from pipelines.config import Config
from pipelines.schedules import schedule_curve
from sweeper.overrides import parse_overrides


def lr_line(fig: Figure) -> list[float]:
    """The LR curve of a schedule figure: the first line of its first axes."""
    return list(map(float, fig.axes[0].get_lines()[0].get_ydata()))


def test_plot_schedule_writes_a_png(tmp_path: Path, drawn) -> None:
    out = tmp_path / "figs" / "f.png"
    result = invoke("plot", "schedule", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout
    assert_png(out)
    ((fig, path),) = drawn
    steps = 50_000 // 512  # CIFAR-10's training set in the recipe's batches
    assert path == out and lr_line(fig) == pytest.approx(schedule_curve(Config(), steps_per_epoch=steps).lrs)
    assert fig.axes[0].get_title() == f"one_cycle (peak lr 0.4, 24 epochs x {steps} steps)"


def test_plot_schedule_draws_the_triangular_policy(tmp_path: Path, drawn) -> None:
    out = tmp_path / "tri.png"
    result = invoke("plot", "schedule", "--out", str(out), "--set", "schedule.policy=triangular", "train.epochs=8")
    assert result.exit_code == 0, result.output
    assert_png(out)
    ((fig, _),) = drawn
    lrs = lr_line(fig)
    assert fig.axes[0].get_title().startswith("triangular (")
    assert min(lrs) == pytest.approx(0.4 / 25) and max(lrs) == pytest.approx(0.4)  # cycling between its bounds


def test_plot_schedule_with_a_batch_bigger_than_the_data_exits_2(tmp_path: Path) -> None:
    result = invoke("plot", "schedule", "--out", str(tmp_path / "f.png"), "--train-size", "100")
    assert_user_error(result, "train.batch_size (512)", "100 images")
    assert not (tmp_path / "f.png").exists()


POLICIES = ("one_cycle", "triangular", "constant", "step", "exponential", "cosine", "plateau")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("warmup", ["none", "constant", "linear", "exponential"])
def test_plot_schedule_draws_every_policy_with_and_without_warmup(
    tmp_path: Path, policy: str, warmup: str, drawn
) -> None:
    out = tmp_path / f"{policy}-{warmup}.png"
    sets = [f"schedule.policy={policy}", "schedule.milestones=[12, 18]"]
    if warmup != "none":
        sets += [f"schedule.warmup={warmup}", "schedule.warmup_epochs=2"]
    result = invoke("plot", "schedule", "--out", str(out), "--set", *sets, "--train-size", 5120)
    assert result.exit_code == 0, result.output
    assert_png(out)
    ((fig, _),) = drawn
    config = Config().with_overrides(parse_overrides(sets))
    assert lr_line(fig) == pytest.approx(schedule_curve(config, steps_per_epoch=10).lrs)  # the policy's own curve
    title = fig.axes[0].get_title()
    assert title.startswith(policy) and ("warm-up of 2 epochs" in title) == (warmup != "none")


def test_plot_schedule_from_a_run_draws_the_lrs_it_used(image_folder: Path, tmp_path: Path, drawn) -> None:
    run_dir = tmp_path / "run"
    trained = invoke(
        "train", "--data", str(image_folder), "--out", str(run_dir), "--set", *TINY_TRAIN, "train.epochs=2",
        "schedule.policy=plateau", "schedule.patience=0",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "used.png"
    drawn.clear()  # the training run drew its own figures
    result = invoke("plot", "schedule", "--run", str(run_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert_png(out)
    recorded = json.loads((run_dir / "metrics.json").read_text())
    assert len(recorded["lrs"]) == 2 * recorded["steps_per_epoch"]
    ((fig, _),) = drawn
    assert lr_line(fig) == pytest.approx(recorded["lrs"])  # what the run used, cuts included
    assert fig.axes[0].get_title() == f"plateau, as used by {run_dir}"


def test_plot_schedule_from_a_folder_without_a_run_exits_2(tmp_path: Path) -> None:
    result = invoke("plot", "schedule", "--run", str(tmp_path), "--out", str(tmp_path / "f.png"))
    assert_user_error(result, "metrics.json", "--run")
    assert not (tmp_path / "f.png").exists()


def test_plot_schedule_all_draws_every_policy_with_and_without_warmup(tmp_path: Path, drawn) -> None:
    out = tmp_path / "all.png"
    result = invoke("plot", "schedule", "--all", "--out", str(out), "--set", "train.epochs=10")
    assert result.exit_code == 0, result.output
    assert_png(out)
    ((fig, _),) = drawn
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert len(titles) == 2 * len(POLICIES)  # one panel each, without and with the warm-up
    for policy in POLICIES:
        assert policy in titles and f"{policy}, linear warm-up 2 epochs" in titles


@pytest.mark.parametrize(
    ("metrics", "args", "fragment"),
    [
        ({"lrs": "abc", "steps_per_epoch": 2}, [], "lrs must be a list of numbers"),
        ({"lrs": [0.1, 0.2], "steps_per_epoch": "x"}, [], "steps_per_epoch"),
        ({"lrs": [0.1, 0.2], "steps_per_epoch": 1}, ["--set", "optim.lr=0.2"], "--run draws what a finished run used"),
    ],
)
def test_plot_schedule_run_with_a_broken_record_or_plan_options_exits_2(
    tmp_path: Path, metrics: dict, args: list[str], fragment: str
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    result = invoke("plot", "schedule", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "f.png"), *args)
    assert_user_error(result, fragment)
