"""benchmarks.bench (``python -m benchmarks.bench``) in its tiny CPU form: the JSON report, the printed table,
trials/hour per K.

The harness is called in-process (``bench.main(argv)``) on the 3-class shapes (300 train / 90 test PNGs), width
0.125, one epoch of batch 32 (9 steps), one torch thread; only the concurrency test starts processes.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
from pathlib import Path

import pytest
import torch

from benchmarks import bench
from pipelines.config import Config

STEPS = 300 // 32  # the fixture's 300 training images in batches of 32, the last partial batch dropped


# --threads 1: the two cores of the test machine are shared; one thread per process keeps these runs short.
# --peak-size 256: a 34 MFLOP peak matmul, milliseconds instead of the default's seconds.
TINY_BENCH = ["--width", "0.125", "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--threads", "1"]


TINY_BENCH += ["--peak-size", "256"]


def call(argv: list[str]) -> tuple[int, str, str]:
    """bench.main(argv) in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = bench.main(argv)
    return code, out.getvalue(), err.getvalue()


def bench_argv(image_folder: Path, cache: Path, *extra: str) -> list[str]:
    return ["--data", str(image_folder), "--cache-dir", str(cache), *TINY_BENCH, *extra]


@pytest.fixture(scope="module")
def both(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path, list[str]]:
    """One run of both variants: (the JSON written, the table printed, the output folder, the argv)."""
    root = tmp_path_factory.mktemp("bench")
    argv = bench_argv(image_folder, root / "cache", "--variants", "baseline,fast", "--out-dir", str(root / "results"))
    code, stdout, stderr = call(argv)
    assert code == 0, stderr
    files = sorted((root / "results").glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text()), stdout, files[0], argv


def test_report_has_both_variants_with_positive_speeds(both: tuple) -> None:
    report = both[0]
    assert list(report["variants"]) == ["baseline", "fast"]
    for v in report["variants"].values():
        assert v["seconds"] > 0 and v["seconds_per_epoch"] > 0, v
        assert v["images_per_s"] > 0 and v["tflops"] > 0 and v["fraction_of_peak"] > 0, v
        assert v["epochs"] == 1 and v["steps_per_epoch"] == STEPS and v["train_images_per_epoch"] == STEPS * 32
        assert 0 <= v["test_accuracy"] <= 1
        assert v["eval_seconds"] > 0
    fast = report["variants"]["fast"]
    assert fast["process_seconds"] >= fast["seconds"] > 0


def test_speedup_is_baseline_over_fast_seconds_per_epoch(both: tuple) -> None:
    report = both[0]
    baseline, fast = report["variants"]["baseline"], report["variants"]["fast"]
    assert report["speedup"] == pytest.approx(baseline["seconds_per_epoch"] / fast["seconds_per_epoch"])
    assert baseline["seconds_per_epoch"] == pytest.approx(baseline["seconds"] / baseline["epochs"])


def test_rates_follow_from_seconds_and_the_width_scaled_flop(both: tuple) -> None:
    report = both[0]
    assert report["flop_per_train_image"] == pytest.approx(2.28e9 * 0.125**2)
    for v in report["variants"].values():
        images_per_s = v["train_images_per_epoch"] * v["epochs"] / v["seconds"]
        assert v["images_per_s"] == pytest.approx(images_per_s)
        assert v["tflops"] == pytest.approx(images_per_s * 2.28e9 * 0.125**2 / 1e12)
        assert v["fraction_of_peak"] == pytest.approx(v["tflops"] / report["peak"]["tflops"])


def test_report_names_device_versions_command_date_and_config(both: tuple) -> None:
    report, _, path, argv = both
    assert report["device"]["type"] == "cpu" and report["device"]["name"].startswith("cpu")
    assert report["device"]["torch"] == torch.__version__
    assert report["argv"] == argv
    assert report["command"].startswith("python -m benchmarks.bench ") and "--batch-size 32" in report["command"]
    assert "fp32 matmul 256^3" in report["peak"]["method"] and report["peak"]["tflops"] > 0
    assert datetime.datetime.fromisoformat(report["date"]).tzinfo is not None
    assert path.name.startswith("cpu-") and path.suffix == ".json"
    config = Config.from_dict(report["config"])
    assert (config.model.width, config.train.batch_size, config.train.epochs) == (0.125, 32, 1)
    assert report["data"] == {**report["data"], "train_images": 300, "test_images": 90, "classes": 3}


def test_table_names_each_variant_and_the_speedup(both: tuple) -> None:
    report, table = both[0], both[1]
    lines = table.splitlines()
    for name in ("baseline", "fast"):
        assert any(line.startswith(name) for line in lines), table
    assert f"{report['speedup']:.2f}x" in table
    assert "TFLOP/s" in table and "fp32 matmul" in table


def test_no_write_with_json_prints_the_report_and_writes_nothing(image_folder: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "results"
    argv = bench_argv(image_folder, tmp_path / "cache", "--variants", "fast", "--no-write", "--json")
    argv += ["--out-dir", str(out_dir)]
    code, stdout, stderr = call(argv)
    assert code == 0, stderr
    report = json.loads(stdout)
    assert list(report["variants"]) == ["fast"] and report["speedup"] is None
    assert not out_dir.exists()


def test_unknown_variant_exits_2_naming_it(image_folder: Path, tmp_path: Path) -> None:
    code, stdout, stderr = call(bench_argv(image_folder, tmp_path / "cache", "--variants", "baseline,slow"))
    assert code == 2
    assert stderr.strip() == "error: --variants: unknown variant 'slow'; known: baseline, fast"
    assert stdout == ""


def test_flop_constants_match_the_counted_network() -> None:
    forward = bench.forward_flop_counted(Config(), 10)  # width 1, 10 classes, FlopCounterMode on the meta device
    assert forward == pytest.approx(bench.FORWARD_FLOP_PER_IMAGE, rel=1e-3)
    assert pytest.approx(3 * bench.FORWARD_FLOP_PER_IMAGE, rel=2e-3) == bench.FLOP_PER_TRAIN_IMAGE


def test_concurrency_reports_trials_per_hour_for_each_k(image_folder: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "results"
    argv = bench_argv(
        image_folder, tmp_path / "cache", "--variants", "", "--concurrency", "1,2", "--worker-trials", "2"
    )
    code, stdout, stderr = call([*argv, "--out-dir", str(out_dir)])
    assert code == 0, stderr
    (path,) = out_dir.glob("*.json")
    conc = json.loads(path.read_text())["concurrency"]
    assert [r["k"] for r in conc["results"]] == [1, 2]
    for r in conc["results"]:
        assert r["trials"] == 2 * r["k"] and len(r["workers"]) == r["k"]
        assert r["trials_per_hour"] == pytest.approx(r["trials"] * 3600 / r["wall_seconds"])
        assert r["steady_trials_per_hour"] > 0
        assert all(w["threads"] == 1 for w in r["workers"])  # 1 thread (--threads 1) split over K: at least 1
    best = max(conc["results"], key=lambda r: r["steady_trials_per_hour"])
    assert conc["best_k"] == best["k"] and conc["ranked_by"] == "steady_trials_per_hour"
    assert f"best K: {best['k']}" in stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_reports_a_bf16_peak_and_both_variants(image_folder: Path, tmp_path: Path) -> None:
    argv = ["--data", str(image_folder), "--cache-dir", str(tmp_path / "cache"), "--width", "0.125", "--epochs", "1"]
    argv += ["--batch-size", "32", "--device", "cuda", "--compile", "off", "--peak-size", "2048"]
    argv += ["--no-write", "--json"]
    code, stdout, stderr = call(argv)
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["device"]["type"] == "cuda" and report["device"]["cuda"]
    assert report["peak"]["dtype"] == "bfloat16" and "CUDA events" in report["peak"]["method"]
    assert report["speedup"] == pytest.approx(
        report["variants"]["baseline"]["seconds_per_epoch"] / report["variants"]["fast"]["seconds_per_epoch"]
    )
