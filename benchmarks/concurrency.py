"""Trials per hour with K trials sharing a device: ``python -m benchmarks.bench --concurrency 1,2,4``.

K worker processes (``python -m benchmarks.bench --worker``) start together; each trains ``--worker-trials``
fast-path trials one after another and writes its timings as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipelines.config import Config
from pipelines.data import load_splits
from pipelines.reuse import RunCache
from pipelines.train import resolve_device, run

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_concurrency(args: argparse.Namespace, config: Config, *, ks: Sequence[int]) -> dict[str, Any]:
    """For each K: K worker processes (``python -m benchmarks.bench --worker``) started together, each running
    ``--worker-trials`` fast-path trials one after another; wall time from the first start to the last exit.

    ``trials_per_hour`` counts everything a fresh worker pays (interpreter, imports, data from the cache, compile);
    ``steady_trials_per_hour`` sums each worker's rate after its first trial (what a long-lived sweep worker sees).
    The best K is ranked by the steady rate when every worker ran at least two trials.
    """
    device = resolve_device(config.train.device)
    parent_threads = args.threads or torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        for k in ks:
            # CPU: the cores are split between the K processes (K x all threads would oversubscribe them).
            threads = max(1, parent_threads // k) if device.type == "cpu" else args.threads
            started = time.perf_counter()
            workers = _run_workers(args, config, k=k, threads=threads, folder=Path(tmp))
            wall = time.perf_counter() - started
            trials = k * args.worker_trials
            steady = [w["steady_trials_per_hour"] for w in workers]
            rows.append(
                {
                    "k": k,
                    "threads_per_worker": threads,
                    "trials": trials,
                    "wall_seconds": wall,
                    "trials_per_hour": trials * 3600.0 / wall,
                    "steady_trials_per_hour": sum(steady) if all(s is not None for s in steady) else None,
                    "train_seconds_per_trial": statistics.mean(s for w in workers for s in w["seconds"]),
                    "eval_seconds_per_trial": statistics.mean(s for w in workers for s in w["eval_seconds"]),
                    "process_seconds": [w["process_seconds"] for w in workers],
                    "workers": workers,
                }
            )
    key = "steady_trials_per_hour" if all(r["steady_trials_per_hour"] is not None for r in rows) else "trials_per_hour"
    best = max(rows, key=lambda r: r[key]) if rows else None
    best_k = best["k"] if best else None
    return {"worker_trials": args.worker_trials, "ranked_by": key, "best_k": best_k, "results": rows}


def _run_workers(
    args: argparse.Namespace, config: Config, *, k: int, threads: int | None, folder: Path
) -> list[dict[str, Any]]:
    """Start K workers at once, wait for all; their JSON timings. A failed worker is a bug: its log is raised."""
    procs = []
    for i in range(k):
        result_file, log_path = folder / f"k{k}-w{i}.json", folder / f"k{k}-w{i}.log"
        # Seeds 100 apart per worker: the K concurrent trials differ, as the trials of a sweep do.
        cmd = _worker_command(args, config, result_file=result_file, threads=threads, seed=args.seed + 100 * i)
        with log_path.open("wb") as log_file:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_worker_env(), stdout=log_file, stderr=subprocess.STDOUT)
        procs.append((proc, result_file, log_path))
    for proc, _, _ in procs:
        proc.wait()
    workers = []
    for i, (proc, result_file, log_path) in enumerate(procs):
        if proc.returncode != 0 or not result_file.exists():
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"concurrency worker {i} of K={k} exited {proc.returncode}:\n{tail}")
        workers.append(json.loads(result_file.read_text()))
    return workers


def _worker_command(
    args: argparse.Namespace, config: Config, *, result_file: Path, threads: int | None, seed: int
) -> list[str]:
    """The worker's argv: the resolved config travels as --set overrides, so it trains exactly ``config``."""
    seeded = config.with_overrides({"train.seed": seed})
    sets = [f"{key}={json.dumps(value)}" for key, value in _flatten(seeded.to_dict())]  # JSON values are YAML
    cmd = [sys.executable, "-m", "benchmarks.bench", "--worker", "--result-file", str(result_file)]
    cmd += ["--data", config.data.path, "--device", config.train.device, "--seed", str(seed)]
    cmd += ["--compile", "on" if config.train.compile else "off", "--worker-trials", str(args.worker_trials)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def worker_main(args: argparse.Namespace, config: Config, *, process_start: float) -> int:
    """One concurrent trial process: load the data, run --worker-trials trials of ``config``, write the timings as
    JSON; times since ``process_start`` (taken before the process imported torch)."""
    splits = load_splits(config.data)
    cache = RunCache()
    seconds, eval_seconds, accuracies, ends = [], [], [], []
    for i in range(args.worker_trials):
        seeded = config.with_overrides({"train.seed": config.train.seed + i})
        result = run(seeded, splits=splits, cache=cache, write_outputs=False)
        ends.append(time.perf_counter() - process_start)
        seconds.append(result.seconds)
        eval_seconds.append(result.eval_seconds)
        accuracies.append(result.test_accuracy)
    # Steady state: trials after the first, whose process start, data load and compile are already paid.
    steady = (len(ends) - 1) * 3600.0 / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else None
    payload = {
        "seconds": seconds,
        "eval_seconds": eval_seconds,
        "test_accuracy": accuracies,
        "trial_end_seconds": ends,  # since process_start
        "process_seconds": ends[0],
        "steady_trials_per_hour": steady,
        "threads": torch.get_num_threads(),
    }
    args.result_file.write_text(json.dumps(payload))
    return 0
