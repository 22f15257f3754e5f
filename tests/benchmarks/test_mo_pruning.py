"""benchmarks.mo_pruning: the same multi-objective study without and with pruning, at a size of seconds."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import mo_pruning


def test_the_mo_pruning_benchmark_writes_both_arms_table_fronts_and_protocol(image_folder, tmp_path, capsys):
    rc = mo_pruning.main(
        ["--data", str(image_folder), "--train-limit", "120", "--val-size", "60", "--test-limit", "30",
         "--width", "0.125", "--epochs", "1,2", "--batch-size", "32", "--device", "cpu", "--trials", "2",
         "--seeds", "1", "--target", "0.5", "--out-dir", str(tmp_path)]
    )  # fmt: skip
    assert rc == 0
    (record_path,) = tmp_path.glob("mo_pruning-*.json")
    record = json.loads(record_path.read_text())
    assert set(record["trials"]) == set(record["per_seed"]) == {"none", "median"}
    for arm, seeds in record["trials"].items():
        (trials,) = seeds
        assert len(trials) == 2, arm  # N trials per arm and seed, pruned ones counted
        assert record["per_seed"][arm][0]["epochs"] == sum(t["epochs"] for t in trials)
    assert record["protocol"]["objective"] == "val,epochs"
    assert record["protocol"]["hypervolume_reference"] == {"epochs": 3.0, "accuracy": 1 / 3}
    assert {"train_seconds_saved", "epochs_saved"} <= set(record["table"]["median"])
    assert Path(record["plot"]).stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "hypervolume" in out and "saved by pruning" in out
