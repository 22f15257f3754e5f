"""The one error handler (sweeper.cli._common.user_errors) over every command's bad input: exit 2, one line naming the
culprit, nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import TINY, free_port, invoke, tiny_config, write_image_folder


def _bad_inputs(root: Path, good: Path) -> dict[str, tuple[list[str], str]]:
    """case -> (CLI args after `study run bad`, a word the error line must contain)."""
    (root / "invalid.yaml").write_text("optim: [unclosed\n")
    (root / "empty-space.yaml").write_text("params: {}\n")
    (root / "low-high.yaml").write_text("params:\n  momentum: {type: float, low: 0.9, high: 0.8}\n")
    (root / "log-zero.yaml").write_text("params:\n  weight_decay: {type: float, low: 0.0, high: 0.01, log: true}\n")
    (root / "unknown-space.yaml").write_text("params:\n  optim.momentun: {type: float, low: 0.8, high: 0.9}\n")
    (root / "corrupt.tar.gz").write_bytes(b"\x1f\x8b\x08this is not a gzip stream at all" * 10)
    broken = write_image_folder(root / "broken", n_train=6, n_test=3)
    next((broken / "train").rglob("*.png")).write_bytes(b"not a png")
    (root / "flat").mkdir()
    (root / "flat" / "readme.txt").write_text("no train/ or test/ here")
    mismatch = write_image_folder(root / "mismatch", n_train=6, n_test=3)
    for f in (mismatch / "test" / "cross").iterdir():
        f.unlink()
    (mismatch / "test" / "cross").rmdir()
    data = ["--data", str(good)]
    return {
        "invalid yaml": (["--config", str(root / "invalid.yaml"), *data], "YAML"),
        "unknown config key": ([*data, "--set", "optim.momentun=0.9"], "optim.momentun"),
        "unknown space key": ([*data, "--space", str(root / "unknown-space.yaml")], "optim.momentun"),
        "momentum below 0": ([*data, "--set", "optim.momentum=-0.1"], "optim.momentum"),
        "momentum at 1": ([*data, "--set", "optim.momentum=1.0"], "optim.momentum"),
        "zero lr": ([*data, "--set", "optim.lr=0"], "optim.lr"),
        "negative decay": ([*data, "--set", "optim.weight_decay=-1e-4"], "optim.weight_decay"),
        "zero width": ([*data, "--set", "model.width=0"], "model.width"),
        "empty space": ([*data, "--space", str(root / "empty-space.yaml")], "empty"),
        "low above high": ([*data, "--space", str(root / "low-high.yaml")], "low"),
        "log range with 0": ([*data, "--space", str(root / "log-zero.yaml")], "log"),
        "zero epochs": ([*data, "--set", "train.epochs=0"], "train.epochs"),
        "peak after the end": ([*data, "--set", "schedule.peak_epoch=30"], "schedule.peak_epoch"),
        "batch larger than the training set": (
            [*data, "--set", "data.val_size=60", "train.batch_size=100000"],
            "train.batch_size",
        ),
        "missing data path": (["--data", str(root / "nowhere")], "nowhere"),
        "corrupt archive": (["--data", str(root / "corrupt.tar.gz")], "corrupt.tar.gz"),
        "image that does not decode": (["--data", str(broken)], ".png"),
        "folder without train and test": (["--data", str(root / "flat")], "train"),
        "different classes": (["--data", str(mismatch)], "cross"),
        "malformed storage url": ([*data, "--storage", "postgres//oops"], "storage"),
        "unknown augmentation op": (
            [*data, "--set", *TINY, 'augment.ops=[{"name": "Blurr"}]'],
            "Blurr",
        ),
        "negative timeout": ([*data, "--timeout", "-5"], "--timeout"),
        "runs dir that is a file": ([*data, "--runs-dir", str(root / "invalid.yaml")], "--runs-dir"),
        "tracking uri of an unknown scheme": (
            [*data, "--set", *TINY, "--tracking-uri", "ftp://u:pw@host/x"],
            "tracking URI",
        ),
        "unreachable database": (
            [*data, "--storage", f"postgresql+psycopg2://u:pw@127.0.0.1:{free_port()}/x"],
            "storage",
        ),
    }


def test_every_bad_input_exits_2_with_one_line_and_leaves_nothing(tmp_path, image_folder):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cases = _bad_inputs(inputs, image_folder)
    work = tmp_path / "work"
    work.mkdir()
    os.chdir(work)
    failures = []
    for case, (args, word) in cases.items():
        result = invoke("study", "run", "bad", "--n-trials", 1, *args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        left = sorted(p.name for p in work.iterdir())
        ok = (
            result.exit_code == 2
            and len(lines) == 1
            and lines[0].startswith("error:")
            and word.lower() in lines[0].lower()
            and "Traceback" not in result.output
            and not left
        )
        if not ok:
            failures.append(f"{case}: exit {result.exit_code}, stderr {lines}, left {left}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("option", "typo", "choices"),
    [
        ("--sampler", "annealing", ["tpe", "cmaes", "random", "gp", "grid"]),
        ("--pruner", "asha", ["median", "hyperband", "none"]),
        ("--objective", "accuracy", ["val", "test"]),
    ],
)
def test_a_typo_in_a_fixed_choice_is_a_usage_error_that_lists_the_choices(
    tmp_path, image_folder, option, typo, choices
):
    os.chdir(tmp_path)
    result = invoke("study", "run", "bad", "--data", image_folder, option, typo)
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.stderr and typo in result.stderr
    assert all(f"'{choice}'" in result.stderr for choice in choices)
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["..", ".", "a/b", "line\nbreak", "x" * 201])
@pytest.mark.parametrize("command", ["init", "run", "sync"])
def test_a_study_name_that_could_leave_its_folder_is_refused_before_anything_is_made(image_folder, tmp_path, name,
                                                                                      command):  # fmt: skip
    runs = tmp_path / "inside" / "runs"
    runs.mkdir(parents=True)
    args = ["study", command, name]
    if command in ("init", "run"):
        args += ["--data", image_folder, "--n-trials", 1] if command == "run" else ["--data", image_folder]
        args += ["--set", *TINY, "train.epochs=1"]
    args += ["--runs-dir", runs] if command != "init" else []
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "study name" in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no study file, no folder, nothing outside


def test_a_replay_of_a_config_whose_stem_is_dot_dot_stays_in_its_folder(image_folder, tmp_path):
    config = tmp_path / "...yaml"  # its stem is ".."
    config.write_text(tiny_config(image_folder, tmp_path / "unused", **{"train.epochs": 1}).to_yaml())
    runs = tmp_path / "runs"
    result = invoke("replay", config, "--seeds", 1, "--runs-dir", runs, "--json")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (runs / "replay").iterdir()] == ["config"]
    assert sorted(p.name for p in runs.iterdir()) == ["replay"]
