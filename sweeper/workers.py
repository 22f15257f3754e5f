"""Many workers on one study: one process per GPU (or N on the CPU), all on a shared RDB storage.

The engine is Optuna's: every worker runs `sweeper study run NAME` against the same storage, and Optuna's
RDB storage hands out trial numbers and waiting trials atomically. There is no scheduler of our own; this
module only starts the processes (CUDA_VISIBLE_DEVICES each) and reads the storage for one combined view.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import UserError
from sweeper.study import is_sqlite, resolve_storage_url


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    gpu: str | None  # CUDA_VISIBLE_DEVICES for this worker, None on the CPU
    n_trials: int


def visible_gpus() -> list[str]:
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no CUDA runtime: no GPU
        return []


def plan_workers(*, workers: str | None, gpus: str | None, n_trials: int, storage: str | None) -> list[WorkerPlan]:
    """Split ``n_trials`` over the workers (Optuna's n_trials is per process, so the total is exact).

    ``gpus``: "0,1,3" -> one worker per listed GPU. ``workers``: a number, or "auto" (one per visible GPU, else 1).
    """
    if gpus:
        devices = [g.strip() for g in gpus.split(",") if g.strip()]
        if not devices:
            raise UserError(f"--gpus {gpus!r} names no GPU; use e.g. --gpus 0,1")
        count = len(devices)
    else:
        visible = visible_gpus()
        if workers in (None, "auto"):
            count = max(1, len(visible))
        else:
            try:
                count = int(workers)
            except ValueError as err:
                raise UserError(f"--workers must be a number or auto, got {workers!r}") from err
            if count < 1:
                raise UserError(f"--workers must be >= 1, got {count}")
        devices = [visible[i % len(visible)] for i in range(count)] if visible else [None] * count
    if count > 1 and is_sqlite(resolve_storage_url(storage)):
        raise UserError(
            "several workers need a server database: SQLite locks and duplicates trials under concurrency; "
            "pass --storage postgresql+psycopg2://user:pass@host:5432/db (or set SWEEPER_STORAGE)"
        )
    if n_trials < count:
        raise UserError(f"--n-trials ({n_trials}) must be at least the number of workers ({count})")
    share, extra = divmod(n_trials, count)
    return [WorkerPlan(i, devices[i], share + (1 if i < extra else 0)) for i in range(count)]


def start_worker(
    plan: WorkerPlan,
    *,
    study: str,
    storage: str | None,
    tracking_uri: str | None,
    runs_dir: Path,
    extra_args: list[str],
    log_dir: Path,
) -> subprocess.Popen:
    """`python -m sweeper study run STUDY --n-trials K ...` with its own CUDA_VISIBLE_DEVICES and log file."""
    env = dict(os.environ)
    if plan.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = plan.gpu
    if storage:
        env["SWEEPER_STORAGE"] = storage
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"worker-{plan.index}.log", "ab")  # noqa: SIM115 - owned by the child process
    cmd = [
        sys.executable, "-m", "sweeper", "study", "run", study,
        "--n-trials", str(plan.n_trials), "--runs-dir", str(runs_dir), "--json", *extra_args,
    ]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def interrupt(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
