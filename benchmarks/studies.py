"""What the study benchmarks (``benchmarks.spaces``, ``benchmarks.mo_pruning``) share: their CPU-scale arguments
(data, model width, batch, device, where results go), the config and data they train, and the JSON record of a
result (schema, date, command, machine, protocol, config, data, seconds) written beside its PNG.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from benchmarks.machine import RESULTS_DIR, cpu_model, default_data
from pipelines.config import Config
from pipelines.data import Splits, load_splits
from pipelines.train import check_data

SCHEMA = 1


def add_scale_args(
    parser: argparse.ArgumentParser, *, train_limit: int, val_size: int, width: float, batch_size: int
) -> None:
    """The data, model and output options every study benchmark takes (--epochs is each one's own)."""
    parser.add_argument("--data", default=default_data())
    parser.add_argument("--train-limit", type=int, default=train_limit)
    parser.add_argument("--val-size", type=int, default=val_size)
    parser.add_argument("--test-limit", type=int, default=val_size)
    parser.add_argument("--width", type=float, default=width)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)


def load_scale(args: argparse.Namespace, *, epochs: int) -> tuple[Config, Splits]:
    """The recipe at the arguments' scale training ``epochs`` epochs, and its data, loaded and checked (UserError);
    Optuna's and the libraries' logs quieted to warnings."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING)
    config = Config().with_overrides(scale_overrides(args, epochs=epochs))
    splits = load_splits(config.data)
    check_data(config, splits)
    return config, splits


def scale_overrides(args: argparse.Namespace, *, epochs: int) -> dict[str, Any]:
    """The options of :func:`add_scale_args` (and ``epochs``) as config overrides (dotted keys)."""
    overrides = {
        "data.path": args.data, "data.train_limit": args.train_limit, "data.val_size": args.val_size,
        "data.test_limit": args.test_limit, "model.width": args.width, "train.epochs": epochs,
        "train.batch_size": args.batch_size, "train.device": args.device,
    }  # fmt: skip
    if args.cache_dir:
        overrides["data.cache_dir"] = args.cache_dir
    return overrides


def spread(values: list[float]) -> dict[str, float]:
    """Mean, min and max of ``values`` (over seeds)."""
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def result_name(prefix: str) -> tuple[str, datetime.datetime]:
    """A result's file stem, e.g. ``spaces-20261129T020500Z``, and its moment."""
    stamp = datetime.datetime.now(datetime.UTC)
    return f"{prefix}-{stamp:%Y%m%dT%H%M%SZ}", stamp


def write_record(
    args: argparse.Namespace,
    argv: list[str] | None,
    *,
    module: str,
    name: str,
    stamp: datetime.datetime,
    config: Config,
    splits: Splits,
    started: float,
    body: dict[str, Any],
) -> Path:
    """``<out-dir>/<name>.json``: the header every study benchmark writes (seconds: since ``started``, a
    perf_counter), ``body`` (protocol, runs, table, plot) after it; says where it wrote it and its plot."""
    seconds = time.perf_counter() - started
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else cpu_model()
    versions = {"torch": torch.__version__, "optuna": optuna.__version__, "python": platform.python_version()}
    record = {
        "schema": SCHEMA,
        "date": stamp.isoformat(timespec="seconds"),
        "command": f"python -m {module} " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "device": {"name": device, "threads": torch.get_num_threads(), **versions},
        "config": config.to_dict(),
        "data": {
            "source": splits.source,
            "train": len(splits.train),
            "val": len(splits.val) if splits.val is not None else 0,
            "test": len(splits.test),
        },
        "seconds": round(seconds, 1),
        **body,
    }
    path = args.out_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=float))
    print(f"wrote {path} and {body.get('plot')} in {seconds:.1f} s")
    return path
