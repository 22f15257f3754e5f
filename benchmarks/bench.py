"""Time the notebook-style baseline against the trainer's fast path, in one process, on the same data.

    python -m benchmarks.bench                       # the full recipe (24 epochs, all of CIFAR-10): wants a GPU
    python -m benchmarks.bench --train-limit 2000 --test-limit 500 --width 0.25 --epochs 1 --batch-size 128 \\
        --device cpu                                 # a small CPU comparison (see benchmarks/README.md)
    python -m benchmarks.bench --variants fast --concurrency 1,2,4   # trials/hour with K trials sharing a device

Variants: ``baseline`` (benchmarks/baseline.py: per-sample albumentations in DataLoader workers, fp32 eager,
OneCycleLR per batch, ``.item()`` per step) and ``fast`` (``pipelines.train.run``: device-resident uint8 data,
batched augmentation, no per-step sync; on CUDA bf16 autocast, channels_last and ``train.compile``).
The fast path runs first, so its whole-process time is a cold start; see the README for what each number includes.

A script, not library code: it prints, reads argv and exits. Results go to ``benchmarks/results/`` as JSON.
"""

from __future__ import annotations

import time

# The zero of "process_seconds": taken before torch (and everything else) is imported. Excludes only the
# interpreter's own start-up before this module is imported (tens of milliseconds).
PROCESS_START = time.perf_counter()

import argparse  # noqa: E402 - after the clock on purpose
import datetime  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.baseline import BaselineResult, run_baseline  # noqa: E402
from benchmarks.concurrency import run_concurrency, worker_main  # noqa: E402
from benchmarks.machine import (  # noqa: E402
    CPU_PEAK_SIZE,
    CUDA_PEAK_SIZE,
    RESULTS_DIR,
    default_data,
    device_info,
    measure_peak,
    slug,
)
from pipelines.config import Config  # noqa: E402
from pipelines.data import Splits, load_splits  # noqa: E402
from pipelines.errors import UserError  # noqa: E402
from pipelines.model import build_model  # noqa: E402
from pipelines.result import Result  # noqa: E402
from pipelines.reuse import RunCache  # noqa: E402
from pipelines.train import check_data, resolve_device, run  # noqa: E402
from sweeper.overrides import resolve_config  # noqa: E402

__all__ = ["FLOP_PER_TRAIN_IMAGE", "VARIANTS", "bench", "format_table", "main", "measure_peak"]

VARIANTS = ("baseline", "fast")
SCHEMA = 1  # bump when the JSON's fields change meaning

# FLOP of one training image (forward + backward) of the width-1 ResNet-9 on 32x32 inputs, from the issue:
# 0.759 GFLOP forward (convolutions and the FC, a multiply-add counted as 2 FLOP; torch's FlopCounterMode counts
# 0.7585 GFLOP), times 3 for forward + backward (input and weight gradients each cost about one forward).
FORWARD_FLOP_PER_IMAGE = 0.759e9
FLOP_PER_TRAIN_IMAGE = 2.28e9
# Width-multiplied models: scaled by width**2 (every conv but the 3-channel prep conv, and the FC, has both its
# input and output channels multiplied). The prep conv and FC scale by width only: at width 1 they are 0.5% of
# the total, at width 0.125 the exact count is 3.2% above the width**2 figure (see "forward_flop_counted").
FLOP_BASIS = "2.28 GFLOP per training image x width**2 (issue: 3 x 0.759 GFLOP forward at width 1)"

log = logging.getLogger("benchmarks.bench")
Printer = Callable[[str], None]


# ------------------------------------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description="Time the notebook-style baseline against the trainer's fast path on the same data.",
    )
    data = default_data()
    add = parser.add_argument
    add("--data", default=data, help=f"data source (default: {data})")
    add("--cache-dir", default=None, help="decoded-image cache (default: $SWEEPER_CACHE_DIR, else data.cache_dir)")
    add("--config", type=Path, default=None, help="YAML config to start from (default: the recipe)")
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override")
    add("--epochs", type=int, help="train.epochs (default: the config's, 24)")
    add("--train-limit", type=int, help="data.train_limit (default: all training images)")
    add("--test-limit", type=int, help="data.test_limit (default: all test images)")
    add("--width", type=float, help="model.width (default: 1)")
    add("--batch-size", type=int, help="train.batch_size (default: 512)")
    add("--seed", type=int, default=0, help="train.seed of the first run; --seeds N uses seed .. seed+N-1")
    add("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add("--compile", choices=("auto", "on", "off"), default="auto", help="fast path train.compile (auto: on CUDA)")
    add("--threads", type=int, help="torch.set_num_threads (CPU); default: torch's choice")
    add("--variants", default="baseline,fast", help="comma-separated subset of baseline,fast ('' for none)")
    add("--seeds", type=int, default=1, help="fast path runs (seeds); the table shows their median")
    add("--warmup", action="store_true", help="one untimed 1-epoch fast-path run first (compile excluded)")
    add("--peak-size", type=int, help=f"peak matmul size (default {CUDA_PEAK_SIZE} CUDA, {CPU_PEAK_SIZE} CPU)")
    add("--concurrency", default="", metavar="K,K,...", help="also run K fast trials as K processes, e.g. 1,2,4")
    add("--worker-trials", type=int, default=2, help="trials each concurrent process runs, one after another")
    add("--out-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes (default: benchmarks/results)")
    add("--no-write", action="store_true", help="write no JSON file")
    add("--json", action="store_true", help="print the JSON on stdout instead of the table")
    add("--worker", action="store_true", help=argparse.SUPPRESS)  # internal: one concurrent trial process
    add("--result-file", type=Path, help=argparse.SUPPRESS)  # internal: where a worker writes its timings
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    args = build_parser().parse_args(list(argv))
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variant_list if v not in VARIANTS]
    if unknown:
        raise UserError(f"--variants: unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    try:
        args.ks = [int(k) for k in args.concurrency.split(",") if k.strip()]
    except ValueError as err:
        raise UserError(f"--concurrency must be a comma-separated list of numbers, got {args.concurrency!r}") from err
    if any(k < 1 for k in args.ks):
        raise UserError(f"--concurrency values must be >= 1, got {args.concurrency!r}")
    for name in ("seeds", "worker_trials"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if not args.variant_list and not args.ks and not args.worker:
        raise UserError("nothing to run: give --variants and/or --concurrency")
    return args


def build_config(args: argparse.Namespace) -> Config:
    """The recipe (or --config) <- the bench's flags <- --set; train.compile resolved for the device."""
    flags: dict[str, Any] = {"data.path": args.data, "train.device": args.device, "train.seed": args.seed}
    for flag, key in (
        ("cache_dir", "data.cache_dir"),
        ("epochs", "train.epochs"),
        ("train_limit", "data.train_limit"),
        ("test_limit", "data.test_limit"),
        ("width", "model.width"),
        ("batch_size", "train.batch_size"),
    ):
        if getattr(args, flag) is not None:
            flags[key] = getattr(args, flag)
    flags["train.save_model"] = False  # nothing is written (run(write_outputs=False)); said for the record
    config = resolve_config(args.config, args.overrides, extra=flags)
    device = resolve_device(config.train.device)
    compile_ = {"on": True, "off": False, "auto": device.type == "cuda"}[args.compile]
    return config.with_overrides({"train.compile": compile_})


# ---------------------------------------------------------------------------------------------------------- pieces


def forward_flop_counted(config: Config, num_classes: int) -> int:
    """FLOP of one 32x32 image's forward pass at the config's width, counted by torch on the meta device."""
    model = build_model(config.model, num_classes=num_classes).to("meta")
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32, device="meta"))
    return int(counter.get_total_flops())


def rates(*, seconds: float, epochs: int, images_per_epoch: int, flop_per_image: float) -> dict[str, float]:
    """Seconds per epoch, training images per second and achieved TFLOP/s (training images only)."""
    images_per_s = images_per_epoch * epochs / seconds if seconds > 0 else 0.0
    tflops = images_per_s * flop_per_image / 1e12
    return {
        "seconds_per_epoch": seconds / epochs,
        "images_per_s": images_per_s,
        "tflops": tflops,
    }


# ---------------------------------------------------------------------------------------------------------- variants


def run_fast_variant(
    config: Config, splits: Splits, *, seeds: int, warmup: bool, flop_per_image: float
) -> dict[str, Any]:
    """``seeds`` runs of pipelines.train.run (seed, seed+1, ...) sharing one RunCache; medians in the headline."""
    cache = RunCache()  # as a sweep worker: the model (and its compiled graph) is built once
    if warmup:
        short = config.with_overrides({"train.epochs": 1})
        run(short, splits=splits, cache=cache, write_outputs=False)
    runs: list[dict[str, Any]] = []
    process_seconds = None
    for i in range(seeds):
        seeded = config.with_overrides({"train.seed": config.train.seed + i})
        result = run(seeded, splits=splits, cache=cache, write_outputs=False)
        if process_seconds is None:
            process_seconds = time.perf_counter() - PROCESS_START
        runs.append(_fast_run_row(result, seed=seeded.train.seed))
    epochs = len(runs[0]["epoch_seconds"])
    images_per_epoch = runs[0]["steps_per_epoch"] * config.train.batch_size
    seconds = statistics.median(r["seconds"] for r in runs)
    return {
        "name": "fast",
        "description": "pipelines.train.run: device-resident uint8 data, batched augmentation, no per-step sync"
        + (", bf16 autocast, channels_last" if resolve_device(config.train.device).type == "cuda" else "")
        + (", torch.compile" if config.train.compile else ""),
        "runs": len(runs),
        "warmup": warmup,
        "epochs": epochs,
        "steps_per_epoch": runs[0]["steps_per_epoch"],
        "batch_size": config.train.batch_size,
        "train_images_per_epoch": images_per_epoch,
        "seconds": seconds,
        "eval_seconds": statistics.median(r["eval_seconds"] for r in runs),
        "total_seconds": statistics.median(r["total_seconds"] for r in runs),
        "process_seconds": process_seconds,
        "test_accuracy": statistics.median(r["test_accuracy"] for r in runs),
        "epoch_seconds": runs[0]["epoch_seconds"],
        **rates(
            seconds=seconds,
            epochs=epochs,
            images_per_epoch=images_per_epoch,
            flop_per_image=flop_per_image,
        ),
        "per_run": runs,
    }


def _fast_run_row(result: Result, *, seed: int) -> dict[str, Any]:
    if result.status != "complete":
        raise RuntimeError(f"fast path run (seed {seed}) ended {result.status}: {result.reason}")
    return {
        "seed": seed,
        "seconds": result.seconds,
        "eval_seconds": result.eval_seconds,
        "total_seconds": result.total_seconds,
        "steps_per_epoch": result.steps_per_epoch,
        "epoch_seconds": [m.epoch_seconds for m in result.history],
        "test_accuracy": result.test_accuracy,
    }


def run_baseline_variant(config: Config, splits: Splits, *, flop_per_image: float) -> dict[str, Any]:
    device = resolve_device(config.train.device)
    result: BaselineResult = run_baseline(config, splits, device=device)
    images_per_epoch = result.steps_per_epoch * result.batch_size
    return {
        "name": "baseline",
        "description": "notebook style: per-sample albumentations in "
        f"{config.data.num_workers} DataLoader workers, fp32 eager, OneCycleLR per batch, .item() per step",
        "runs": 1,
        "warmup": False,
        "epochs": result.epochs,
        "steps_per_epoch": result.steps_per_epoch,
        "batch_size": result.batch_size,
        "train_images_per_epoch": images_per_epoch,
        "seconds": result.seconds,
        "eval_seconds": result.eval_seconds,
        "total_seconds": result.total_seconds,
        "process_seconds": None,
        "test_accuracy": result.test_accuracy,
        "epoch_seconds": list(result.epoch_seconds),
        **rates(
            seconds=result.seconds,
            epochs=result.epochs,
            images_per_epoch=images_per_epoch,
            flop_per_image=flop_per_image,
        ),
    }


# ------------------------------------------------------------------------------------------------------- concurrency


# ------------------------------------------------------------------------------------------------------------ report


def bench(args: argparse.Namespace, *, out: Printer = print) -> dict[str, Any]:
    """Run what ``args`` asks for; return the report (the JSON's content). ``out`` gets progress lines."""
    started = datetime.datetime.now(datetime.timezone.utc)
    config = build_config(args)
    device = resolve_device(config.train.device)
    out(f"loading {config.data.path} ...")
    splits = load_splits(config.data)
    check_data(config, splits)  # e.g. a batch larger than the training set, before anything runs
    width = config.model.width
    flop_per_image = FLOP_PER_TRAIN_IMAGE * width**2
    variants: dict[str, Any] = {}
    # The fast path first: its process_seconds is then a cold start (imports, data, [warm-up], first run).
    for name in sorted(args.variant_list, key=lambda v: v != "fast"):
        out(f"running {name} ...")
        if name == "fast":
            variants[name] = run_fast_variant(
                config, splits, seeds=args.seeds, warmup=args.warmup, flop_per_image=flop_per_image
            )
        else:
            variants[name] = run_baseline_variant(config, splits, flop_per_image=flop_per_image)
    variants = {name: variants[name] for name in VARIANTS if name in variants}  # table order: baseline, fast
    # After the variants, so that the fast path's process_seconds does not include it.
    out(f"measuring the {device.type} peak ...")
    peak = measure_peak(device, size=args.peak_size)
    for v in variants.values():
        v["fraction_of_peak"] = v["tflops"] / peak["tflops"] if peak["tflops"] > 0 else 0.0
    speedup = None
    if "baseline" in variants and "fast" in variants:
        speedup = variants["baseline"]["seconds_per_epoch"] / variants["fast"]["seconds_per_epoch"]
    concurrency = None
    if args.ks:
        out(f"running concurrency {','.join(map(str, args.ks))} ...")
        concurrency = run_concurrency(args, config, ks=args.ks)
    return {
        "schema": SCHEMA,
        "date": started.isoformat(timespec="seconds"),  # when the bench started (UTC)
        "command": shlex.join(["python", "-m", "benchmarks.bench", *args.argv]),
        "argv": list(args.argv),
        "sys_argv": list(sys.argv),
        "device": device_info(device),
        "peak": peak,
        "flop_per_train_image": flop_per_image,
        "flop_basis": FLOP_BASIS,
        "forward_flop_counted": forward_flop_counted(config, len(splits.classes)),
        "data": {
            "source": splits.source,
            "train_images": len(splits.train),
            "test_images": len(splits.test),
            "classes": len(splits.classes),
        },
        "config": config.to_dict(),
        "variants": variants,
        "speedup": speedup,
        "concurrency": concurrency,
    }


def format_table(report: dict[str, Any]) -> str:
    dev, peak = report["device"], report["peak"]
    lines = [
        f"device: {dev['name']} | torch {dev['torch']} | {dev['threads']} threads | peak {peak['tflops']:.3g} "
        f"TFLOP/s ({peak['method']})",
        f"data: {report['data']['source']}: {report['data']['train_images']} train, {report['data']['test_images']} "
        f"test | width {report['config']['model']['width']} | batch {report['config']['train']['batch_size']} | "
        f"FLOP: {report['flop_basis']}",
    ]
    if report["variants"]:
        header = (
            f"{'variant':<9} {'runs':>4} {'epochs':>6} {'s/epoch':>9} {'images/s':>10} {'TFLOP/s':>8} "
            f"{'of peak':>8} {'train s':>8} {'eval s':>7} {'process s':>9} {'test acc':>8}"
        )
        lines += ["", header, "-" * len(header)]
        for v in report["variants"].values():
            process = f"{v['process_seconds']:.2f}" if v["process_seconds"] is not None else "-"
            lines.append(
                f"{v['name']:<9} {v['runs']:>4} {v['epochs']:>6} {v['seconds_per_epoch']:>9.3f} "
                f"{v['images_per_s']:>10.0f} {v['tflops']:>8.3g} {v['fraction_of_peak']:>8.1%} {v['seconds']:>8.2f} "
                f"{v['eval_seconds']:>7.2f} {process:>9} {v['test_accuracy']:>8.4f}"
            )
        if report["speedup"] is not None:
            lines.append(f"speedup (baseline / fast, seconds per epoch): {report['speedup']:.2f}x")
    conc = report["concurrency"]
    if conc:
        header = f"{'K':>3} {'trials':>6} {'wall s':>8} {'trials/h':>9} {'steady/h':>9} {'train s/trial':>13}"
        lines += ["", f"concurrency ({conc['worker_trials']} trials per process)", header, "-" * len(header)]
        for r in conc["results"]:
            steady = f"{r['steady_trials_per_hour']:.0f}" if r["steady_trials_per_hour"] is not None else "-"
            lines.append(
                f"{r['k']:>3} {r['trials']:>6} {r['wall_seconds']:>8.2f} {r['trials_per_hour']:>9.0f} "
                f"{steady:>9} {r['train_seconds_per_trial']:>13.2f}"
            )
        lines.append(f"best K: {conc['best_k']} (by {conc['ranked_by'].replace('_', ' ')})")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Path) -> Path:
    """``<out_dir>/<device-slug>-<UTC timestamp>.json``; a suffix keeps two runs in one second apart."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.fromisoformat(report["date"]).strftime("%Y%m%dT%H%M%SZ")
    base = f"{slug(report['device']['name'])}-{stamp}"
    path = out_dir / f"{base}.json"
    n = 1
    while path.exists():
        n += 1
        path = out_dir / f"{base}-{n}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """The script: 0 on success, 2 (with one ``error: ...`` line on stderr) for what the user can fix."""
    argv = list(sys.argv[1:] if argv is None else argv)
    threads_before = torch.get_num_threads()  # restored at the end: main() may be called in-process (tests)
    try:
        args = parse_args(argv)
        args.argv = argv
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        if args.worker:
            if args.result_file is None:
                raise UserError("--worker needs --result-file")
            return worker_main(args, build_config(args), process_start=PROCESS_START)
        progress: Printer = _stderr if args.json else print
        report = bench(args, out=progress)
        if not args.no_write:
            path = write_report(report, args.out_dir)
            progress(f"wrote {path}")
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(format_table(report))
        return 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads_before)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
