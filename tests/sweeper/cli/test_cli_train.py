"""`sweeper train` as a user runs it: the summary, the outputs, images the recipe did not foresee, and the
acceptance run on the real CIFAR-10 images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import CLASSES, TINY_TRAIN, assert_png, assert_user_error, invoke, strict_json, synthetic_images
from pipelines.config import Config


def test_train_json_prints_the_summary_and_writes_the_outputs(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(
        "train", "--json", "--data", str(image_folder), "--out", str(out), "--set", *TINY_TRAIN, "train.epochs=2"
    )
    assert result.exit_code == 0, result.output
    summary = strict_json(result.stdout)
    assert {"status", "test_accuracy", "train_accuracy", "epochs", "seconds", "out_dir"} <= set(summary)
    assert summary["status"] == "complete"
    assert summary["epochs"] == 2
    assert 0 <= summary["test_accuracy"] <= 1 and 0 <= summary["train_accuracy"] <= 1
    assert summary["seconds"] > 0
    assert Path(summary["out_dir"]) == out
    written = Config.load(out / "config.yaml")
    assert (written.data.path, written.model.width, written.train.epochs) == (str(image_folder), 0.125, 2)
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2
    assert (out / "model.pt").is_file()
    for name in ("lr_schedule", "curves", "misclassified"):
        assert_png(out / "plots" / f"{name}.png")
    assert "epoch   2/2" in result.stderr  # progress lines go to stderr, keeping stdout pure JSON


def test_train_without_json_reports_on_stderr(image_folder: Path, tmp_path: Path) -> None:
    result = invoke("train", "--data", str(image_folder), "--set", *TINY_TRAIN, "train.epochs=1")
    assert result.exit_code == 0, result.output
    assert "complete: test accuracy" in result.stderr
    assert (tmp_path / "runs" / "train" / "metrics.json").is_file()  # the default train.out_dir, under the cwd


def test_train_that_diverges_exits_0_and_says_so(image_folder: Path, tmp_path: Path) -> None:
    result = invoke(
        "train", "--json", "--data", str(image_folder), "--set", *TINY_TRAIN, "train.epochs=2", "optim.lr=1e6"
    )
    assert result.exit_code == 0, result.output
    summary = strict_json(result.stdout)
    assert summary["status"] == "diverged"
    assert "loss" in summary["reason"]


def test_train_with_a_missing_data_path_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "data"
    result = invoke("train", "--data", str(missing), "--set", *TINY_TRAIN)
    assert_user_error(result, str(missing))


def test_train_with_a_batch_bigger_than_the_data_exits_2(image_folder: Path) -> None:
    result = invoke("train", "--data", str(image_folder), "--set", "train.device=cpu", "train.batch_size=4096")
    assert_user_error(result, "train.batch_size (4096)", "300 images")


def test_train_records_the_lr_scaled_with_the_batch_size(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(
        "train", "--json", "--data", str(image_folder), "--out", str(out), "--set", *TINY_TRAIN, "train.epochs=1",
        "optim.lr_scaling=linear", "schedule.policy=constant",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "metrics.json").read_text())
    assert recorded["lr"] == pytest.approx(0.4 * 32 / 512)  # optim.lr at batch 512, trained at batch 32
    assert recorded["lrs"] == pytest.approx([0.025] * recorded["steps_per_epoch"])
    assert recorded["history"][0]["lr"] == pytest.approx(0.025)


@pytest.mark.slow
def test_quarter_width_resnet_reaches_50_percent_on_cifar10_subset_in_4_cpu_epochs(
    tmp_path: Path, shared_cifar: Path, decoded_cifar: tuple[Path, object]
) -> None:
    cache, _ = decoded_cifar  # decoded once for the session (the data tests read the same)
    result = invoke(
        "train", "--data", str(shared_cifar), "--json", "--set",
        "data.train_limit=6000", "data.test_limit=1000", "model.width=0.25", "train.epochs=4",
        "train.batch_size=128", "optim.lr=0.2", "train.device=cpu", f"data.cache_dir={cache}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = strict_json(result.stdout)
    print(f"\nCIFAR-10 acceptance: {json.dumps(summary)}")  # noqa: T201 - the numbers reached, in the CI log
    assert summary["status"] == "complete"
    assert summary["test_accuracy"] >= 0.50


def write_folder(root: Path, size: int, *, mode: str = "RGB", sizes: dict[int, int] | None = None) -> Path:
    """An ImageFolder of the 3 synthetic shapes at ``size`` x ``size`` (image i at ``sizes[i]`` if given)."""
    for split, n, seed in (("train", 150, 0), ("test", 45, 1)):
        images, labels = synthetic_images(n, classes=len(CLASSES), seed=seed)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            side = (sizes or {}).get(i, size)
            picture = Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR).convert(mode)
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            picture.save(folder / f"{i:05d}.png")
    return root


def train(data: Path, out: Path, *extra: str) -> object:
    return invoke("train", "--json", "--data", data, "--out", out, "--set", *TINY_TRAIN, "train.epochs=2", *extra)


@pytest.mark.parametrize(("size", "mode"), [(28, "L"), (64, "RGB")], ids=["28x28-gray", "64x64-rgb"])
def test_images_of_another_size_or_in_gray_train_with_the_recipe_fitted_to_them(tmp_path, size, mode):
    data = write_folder(tmp_path / "data", size, mode=mode)
    result = train(data, tmp_path / "run", "train.epochs=8", "optim.lr=0.2")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "complete" and summary["test_accuracy"] > 1 / 3  # it learns: better than chance
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(written["history"]) == 8


def test_images_of_mixed_sizes_are_refused_in_one_line_that_says_how_to_resize_them(tmp_path):
    data = write_folder(tmp_path / "data", 32, sizes={3: 40})
    result = train(data, tmp_path / "run")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "all images must have the same size" in lines[0] and "data.image_size" in lines[0]
    resized = train(data, tmp_path / "run", "data.image_size=24")
    assert resized.exit_code == 0, resized.output


def test_a_custom_pipeline_that_cannot_run_on_the_images_is_refused_before_training(tmp_path):
    data = write_folder(tmp_path / "data", 28)
    ops = json.dumps([{"name": "RandomCrop", "height": 32, "width": 32}])
    result = train(data, tmp_path / "run", f"augment.ops={ops}")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "augment.ops" in lines[0], result.output
    assert not (tmp_path / "run").exists()


def test_images_smaller_than_the_network_needs_are_refused_with_the_key_to_set(tmp_path):
    data = write_folder(tmp_path / "data", 6)
    result = train(data, tmp_path / "run")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "data.image_size" in lines[0], result.output


def test_train_on_a_full_disk_ends_in_one_line_and_leaves_no_half_written_file(image_folder, small_disk):
    out = small_disk / "run"
    result = invoke("train", "--data", image_folder, "--out", out, "--set", *TINY_TRAIN, "train.epochs=1")
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last == f"error: cannot write {out / 'model.pt'}: No space left on device; free space and run the command again"
    )
    assert "Traceback" not in result.output
    written = sorted(p.name for p in out.iterdir())
    assert "model.pt" not in written and not any(name.startswith(".") for name in written)
    assert Config.from_yaml((out / "config.yaml").read_text()).train.epochs == 1  # whole, where written at all
