"""`sweeper study init`: the study made once, its settings recorded and kept, nothing left on bad input."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from conftest import TINY, invoke


def test_init_again_keeps_the_recorded_settings_unless_forced(image_folder):
    first = invoke("study", "init", "kept", "--data", image_folder, "--set", *TINY, "train.epochs=1")
    assert first.exit_code == 0, first.output
    assert (
        invoke("study", "init", "kept", "--data", image_folder, "--set", *TINY, "train.epochs=1").exit_code == 0
    )  # idempotent
    changed = invoke("study", "init", "kept", "--data", image_folder, "--sampler", "random", "--set", *TINY,
                     "train.epochs=1", "optim.lr=0.2")  # fmt: skip
    assert changed.exit_code == 2
    assert "sampler tpe -> random" in changed.stderr and "optim.lr 0.4 -> 0.2" in changed.stderr
    assert "--force" in changed.stderr
    forced = invoke("study", "init", "kept", "--data", image_folder, "--sampler", "random", "--force", "--set", *TINY,
                    "train.epochs=1", "optim.lr=0.2")  # fmt: skip
    assert forced.exit_code == 0, forced.output
    study = optuna.load_study(study_name="kept", storage="sqlite:///sweeper.db")
    assert study.user_attrs["sampler"] == "random" and "lr: 0.2" in study.user_attrs["config"]


@pytest.mark.parametrize(
    ("objective", "names"),
    [
        ("val", ["val_accuracy"]),
        ("test", ["test_accuracy"]),
        ("val,train_seconds", ["val_accuracy", "train_seconds"]),
        ("test,epochs", ["test_accuracy", "epochs"]),
    ],
)
def test_study_init_names_the_metrics_so_the_dashboard_shows_no_objective_0(image_folder, objective, names):
    """The stack's `init` makes the study before any worker runs a trial: optuna-dashboard reads these names."""
    made = invoke("study", "init", "named", "--data", image_folder, "--objective", objective, "--set", *TINY)
    assert made.exit_code == 0, made.output
    assert optuna.load_study(study_name="named", storage="sqlite:///sweeper.db").metric_names == names


def test_study_init_with_bad_data_leaves_nothing(tmp_path):
    result = invoke("study", "init", "bad", "--data", tmp_path / "nowhere")
    assert result.exit_code == 2 and "nowhere" in result.stderr
    assert not Path("sweeper.db").exists() and not Path("mlflow.db").exists()
