"""A trial's record: the trick switches it trained with, searched or set, are its MLflow run's params."""

from __future__ import annotations

import optuna
import yaml
from mlflow import MlflowClient

from pipelines.config import Config
from sweeper.space import run_params
from sweeper.urls import absolute_sqlite
from tests.test_space import TINY, invoke

TRICKS = {
    "params": {
        "model.whiten": {"type": "categorical", "choices": ["none", "patch2"]},
        "train.ema": {"type": "categorical", "choices": [0, 0.9]},
        "train.ema_every": {"type": "categorical", "choices": [1, 5], "when": {"train.ema": 0.9}},
    }
}


def test_run_params_add_the_switches_set_away_from_their_defaults() -> None:
    recipe = Config()
    assert set(run_params(recipe)) == {"effective_decay", "momentum", "weight_decay", "lr"}  # as before
    tricked = recipe.with_overrides({"model.activation": "gelu", "train.tta": "flip", "model.ghost_batch": 0})
    assert run_params(tricked) == {**run_params(recipe), "model.activation": "gelu", "train.tta": "flip"}


def test_a_trial_records_the_switches_it_searched_and_those_the_config_set(image_folder, tmp_path) -> None:
    space = tmp_path / "tricks.yaml"
    space.write_text(yaml.safe_dump(TRICKS))
    result = invoke(
        "study", "run", "tricks", "--data", image_folder, "--space", space, "--sampler", "random", "--seed", "3",
        "--n-trials", 3, "--pruner", "none", "--json", "--set", *TINY, "train.epochs=1", "model.activation=celu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tricks", storage="sqlite:///sweeper.db")
    client = MlflowClient(absolute_sqlite("sqlite:///mlflow.db"))
    for trial in study.trials:
        params = client.get_run(trial.user_attrs["mlflow_run_id"]).data.params
        assert params["model.activation"] == "celu"  # set by the study's config, not searched
        assert params["model.whiten"] == trial.params["model.whiten"]  # searched: logged whatever it drew
        assert float(params["train.ema"]) == trial.params["train.ema"]
        assert ("train.ema_every" in params) == (trial.params["train.ema"] == 0.9)  # searched only with an EMA
        assert "model.ghost_batch" not in params  # neither searched nor set: off
        config = Config.from_yaml(trial.user_attrs["config"])
        assert config.model.whiten == trial.params["model.whiten"] and config.model.activation == "celu"
