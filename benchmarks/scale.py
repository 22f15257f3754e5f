"""The settings the study-sized benchmarks share (``spaces``, ``tricks``): which data, how much of it, how big a
model, how long a run, on which device, and where the result goes; as command-line options and as config
overrides."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.machine import RESULTS_DIR, default_data


def add_scale_options(parser: argparse.ArgumentParser, *, train_limit: int, epochs: int) -> None:
    """--data, --train-limit (the validation split included), --val-size, --test-limit, --width, --epochs,
    --batch-size, --device, --cache-dir, --out-dir; the defaults are the CPU scale (width 0.25, batch 128)."""
    add = parser.add_argument
    add("--data", default=default_data())
    add("--train-limit", type=int, default=train_limit, help="training images, the validation split included")
    add("--val-size", type=int, default=1000)
    add("--test-limit", type=int, default=1000)
    add("--width", type=float, default=0.25)
    add("--epochs", type=int, default=epochs)
    add("--batch-size", type=int, default=128)
    add("--device", default="auto")
    add("--cache-dir", default=None)
    add("--out-dir", type=Path, default=RESULTS_DIR)


def scale_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The options of :func:`add_scale_options` as config overrides (dotted keys)."""
    overrides = {
        "data.path": args.data, "data.train_limit": args.train_limit, "data.val_size": args.val_size,
        "data.test_limit": args.test_limit, "model.width": args.width, "train.epochs": args.epochs,
        "train.batch_size": args.batch_size, "train.device": args.device,
    }  # fmt: skip
    if args.cache_dir:
        overrides["data.cache_dir"] = args.cache_dir
    return overrides
