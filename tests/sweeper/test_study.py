"""sweeper.study: a study planned, opened, held and finished."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from conftest import TINY, invoke
from sweeper.urls import absolute_sqlite


def test_a_study_held_open_has_its_parent_run_running_and_ended_as_it_ends(image_folder):
    from pipelines.data import SplitsCache
    from sweeper.study import StudyOptions, holding, open_study, plan_study

    assert invoke("study", "init", "held", "--data", image_folder, "--set", *TINY, "train.epochs=1").exit_code == 0
    client = MlflowClient(absolute_sqlite("sqlite:///mlflow.db"))
    plan = plan_study(StudyOptions(name="held"), space=None, config=None, data=SplitsCache())
    ctx = open_study(plan)
    assert client.get_run(ctx.parent_run_id).info.status == "FINISHED"  # init ended it
    with pytest.raises(KeyboardInterrupt), holding(ctx):
        ctx.tracker.flush()
        assert client.get_run(ctx.parent_run_id).info.status == "RUNNING"
        raise KeyboardInterrupt
    run = client.get_run(ctx.parent_run_id)
    assert run.info.status == "KILLED" and run.data.tags["sweeper.state"] == "interrupted"
