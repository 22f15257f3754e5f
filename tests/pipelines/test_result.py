"""pipelines.result: what a run produced, as `sweeper train --json` prints it."""

from __future__ import annotations

import json

from pipelines.config import Config
from pipelines.result import Result


def test_summary_is_what_train_json_prints(trained: tuple[Config, Result]) -> None:
    cfg, result = trained
    summary = result.summary()
    assert summary["status"] == "complete"
    assert summary["epochs"] == 3
    assert summary["test_accuracy"] == result.history[-1].test_accuracy
    assert summary["out_dir"] == cfg.train.out_dir
    assert summary["device"] == "cpu"
    assert summary["seconds"] > 0
    json.dumps(summary)  # plain JSON
