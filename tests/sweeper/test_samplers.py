"""sweeper.samplers: the sampler choices on a conditional space."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from conftest import POLICY_SPACE, TINY, invoke


def test_the_default_sampler_searches_a_conditional_space(image_folder, tmp_path):
    space = tmp_path / "policies.yaml"
    space.write_text(yaml.safe_dump(POLICY_SPACE))
    result = invoke(
        "study",
        "run",
        "tpe",
        "--data",
        image_folder,
        "--space",
        space,
        "--n-trials",
        3,
        "--json",
        "--set",
        *TINY,
        "train.epochs=2",
    )
    assert result.exit_code == 0, result.output
    assert [row["state"] for row in json.loads(result.stdout)["trials"]] == ["complete"] * 3


def test_the_grid_sampler_refuses_a_conditional_space_before_anything_is_made(image_folder, tmp_path):
    space = tmp_path / "policies.yaml"
    space.write_text(yaml.safe_dump(POLICY_SPACE))
    work = tmp_path / "work"
    work.mkdir()
    result = invoke(
        "study", "run", "grid", "--data", image_folder, "--space", space, "--sampler", "grid", "--set", *TINY,
        "train.epochs=2",
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "grid" in lines[0] and "conditional" in lines[0]
    assert not Path("sweeper.db").exists() and not Path("mlflow.db").exists()
