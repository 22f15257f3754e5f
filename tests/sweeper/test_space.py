"""sweeper.space: search spaces as users write them: conditional keys (define-by-run), list-valued choices, λ from
the effective decay, the shipped example."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from conftest import POLICY_SPACE, REPO_ROOT, TINY, TRIAL_STEPS_PER_EPOCH, invoke
from pipelines.config import TRICK_KEYS, Config
from sweeper.space import load_space
from sweeper.urls import absolute_sqlite

EXAMPLE = REPO_ROOT / "examples" / "schedules.yaml"


CONDITIONAL = {"step": {"schedule.milestones", "schedule.gamma"}, "cosine": {"schedule.end_div"}}


def test_the_shipped_example_compares_three_policies_with_and_without_warmup():
    space = load_space(str(EXAMPLE))
    assert space.conditional
    params = {p.name: p for p in space.params}
    assert set(params["schedule.policy"].choices) == {"one_cycle", "step", "cosine"}
    assert set(params["schedule.warmup_epochs"].choices) == {0, 2}
    assert params["schedule.milestones"].when == (("schedule.policy", ("step",)),)
    space.check_against(Config())  # every choice is valid for the 24-epoch recipe


def test_the_shipped_tricks_example_searches_every_switch_with_the_epochs():
    space = load_space(str(EXAMPLE.with_name("tricks.yaml")))
    params = {p.name: p for p in space.params}
    assert set(params) == {"train.epochs", *TRICK_KEYS}
    assert all(params[key].type == "categorical" for key in TRICK_KEYS)
    assert params["model.celu_alpha"].when == (("model.activation", ("celu",)),)
    assert params["train.ema_every"].when == (("train.ema", (0.99,)),)
    space.check_against(Config())  # every choice is valid for the recipe (ghost batches divide 512)


def test_a_conditional_key_is_suggested_only_when_its_policy_is_drawn(image_folder, tmp_path):
    space = tmp_path / "policies.yaml"
    space.write_text(yaml.safe_dump(POLICY_SPACE))
    result = invoke(
        "study", "run", "policies", "--data", image_folder, "--space", space, "--sampler", "random", "--seed", "1",
        "--n-trials", 8, "--pruner", "none", "--json", "--set", *TINY, "train.epochs=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="policies", storage="sqlite:///sweeper.db")
    assert {t.params["schedule.policy"] for t in study.trials} == {
        "one_cycle",
        "step",
        "cosine",
        "plateau",
    }  # seed 1 draws all four
    client = MlflowClient(absolute_sqlite("sqlite:///mlflow.db"))
    for trial in study.trials:
        policy = trial.params["schedule.policy"]
        searched = set(trial.params) - {"lr", "schedule.policy"}
        assert searched == CONDITIONAL.get(policy, {"schedule.patience"} if policy == "plateau" else set())
        config = Config.from_yaml(trial.user_attrs["config"])
        assert config.schedule.policy == policy
        if policy == "step":
            assert trial.params["schedule.milestones"] in ("[1]", "[1.5]")  # a list, labelled for Optuna
            assert list(config.schedule.milestones) == yaml.safe_load(trial.params["schedule.milestones"])
            assert config.schedule.gamma == pytest.approx(trial.params["schedule.gamma"])
        lr_history = client.get_metric_history(trial.user_attrs["mlflow_run_id"], "lr")
        assert sorted(m.step for m in lr_history) == list(range(2 * TRIAL_STEPS_PER_EPOCH))  # plateau's too, as used
    rows = json.loads(result.stdout)["trials"]
    assert all(row["state"] == "complete" for row in rows)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"type": "float", "low": 0.1, "high": 0.5, "when": {"schedule.polcy": "step"}}, "'schedule.polcy'"),
        ({"type": "float", "low": 0.1, "high": 0.5, "when": {"schedule.policy": "linear"}}, "'linear'"),
        ({"type": "float", "low": 0.1, "high": 0.5, "when": "step"}, "when must map"),
    ],
)
def test_a_bad_condition_exits_2_naming_it(image_folder, tmp_path, spec, fragment):
    space = tmp_path / "bad.yaml"
    space.write_text(
        yaml.safe_dump(
            {"params": {"schedule.policy": {"type": "categorical", "choices": ["step"]}, "schedule.gamma": spec}}
        )
    )
    result = invoke("study", "run", "bad", "--data", image_folder, "--space", space)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.output


def test_a_study_with_lr_scaling_logs_the_trained_lr_and_the_reference_one(image_folder):
    result = invoke(
        "study", "run", "scaled", "--data", image_folder, "--n-trials", 1, "--sampler", "random", "--json",
        "--set", *TINY, "train.epochs=2", "optim.lr_scaling=sqrt", "optim.reference_batch_size=128",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (trial,) = optuna.load_study(study_name="scaled", storage="sqlite:///sweeper.db").trials
    p = trial.params
    reference = p["effective_decay"] * (1 - p["momentum"]) / p["weight_decay"]  # the space's λ, at batch 128
    assert trial.user_attrs["lr"] == pytest.approx(reference * (32 / 128) ** 0.5)  # trained at batch 32
    run = MlflowClient(absolute_sqlite("sqlite:///mlflow.db")).get_run(trial.user_attrs["mlflow_run_id"])
    assert float(run.data.params["lr"]) == pytest.approx(trial.user_attrs["lr"], rel=1e-5)
    assert float(run.data.params["lr_reference"]) == pytest.approx(reference, rel=1e-5)
    assert float(run.data.params["effective_decay"]) == pytest.approx(p["effective_decay"], rel=1e-5)


def test_a_value_valid_under_some_policy_of_the_space_is_accepted(image_folder, tmp_path):
    """warm-up 1 of 4 epochs rules out the base config's one_cycle peak (5/24 of 4), but not cosine or step."""
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "params": {
                    "schedule.policy": {"type": "categorical", "choices": ["cosine", "step"]},
                    "schedule.warmup_epochs": {"type": "categorical", "choices": [0, 1]},
                    "schedule.milestones": {
                        "type": "categorical",
                        "choices": [[2], [3]],
                        "when": {"schedule.policy": "step"},
                    },
                }
            },
            sort_keys=False,
        )
    )
    tiny = [*TINY, "train.epochs=4"]
    result = invoke("study", "run", "ok", "--data", image_folder, "--space", space, "--n-trials", 2, "--sampler",
                    "random", "--json", "--set", *tiny)  # fmt: skip
    assert result.exit_code == 0, result.output


def test_a_condition_may_name_a_parameter_by_its_config_key_but_not_by_no_value():
    from sweeper.space import parse_space

    space = parse_space(
        {
            "params": {
                "momentum": {"type": "categorical", "choices": [0.8, 0.9]},
                "optim.label_smoothing": {"type": "float", "low": 0, "high": 0.2, "when": {"optim.momentum": 0.9}},
            }
        },
        source="alias",
    )
    assert space.params[1].when == (("momentum", (0.9,)),)
    with pytest.raises(Exception, match="names no value"):
        parse_space(
            {
                "params": {
                    "momentum": {"type": "categorical", "choices": [0.8, 0.9]},
                    "optim.label_smoothing": {"type": "float", "low": 0, "high": 0.2, "when": {"momentum": []}},
                }
            },
            source="empty",
        )
