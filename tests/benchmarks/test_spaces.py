"""benchmarks.spaces: both spaces searched on one budget, in its tiny form."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import spaces


def test_the_spaces_benchmark_writes_its_table_plot_and_protocol(image_folder, tmp_path, capsys):
    rc = spaces.main(
        ["--data", str(image_folder), "--train-limit", "300", "--val-size", "60", "--test-limit", "90",
         "--width", "0.125", "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--trials", "2",
         "--seeds", "1", "--out-dir", str(tmp_path)]
    )  # fmt: skip
    assert rc == 0
    (record_path,) = tmp_path.glob("spaces-*.json")
    record = json.loads(record_path.read_text())
    assert set(record["runs"]) == {"reparam", "plain"}
    for runs in record["runs"].values():
        assert len(runs) == 1 and len(runs[0]["scores"]) == 2
        assert runs[0]["best_so_far"] == sorted(runs[0]["best_so_far"])
    assert set(record["table"]["plain"]) >= {"N/4", "N/2", "N", "trials_to_within_0.5pt"}
    assert record["protocol"]["region"]["lr"] == [0.02, 4.0]
    assert Path(record["plot"]).is_file()
    assert "best @N=2" in capsys.readouterr().out
