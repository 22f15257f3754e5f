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
import time
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
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (its own list when it is set)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no CUDA runtime: no GPU
        return []
    inherited = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return inherited[:count] if inherited else [str(i) for i in range(count)]


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
    cmd = [
        sys.executable, "-m", "sweeper", "study", "run", study,
        "--n-trials", str(plan.n_trials), "--runs-dir", str(runs_dir), "--json", *extra_args,
    ]
    with open(log_dir / f"worker-{plan.index}.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


STOP_SECONDS = 30.0  # after SIGINT, how long workers get to record their trials before SIGKILL


def stop_workers(procs: list[subprocess.Popen], *, grace: float = STOP_SECONDS) -> None:
    """SIGINT every live worker (each records its running trial as interrupted), SIGKILL what is left after
    one shared deadline. Workers run in their own sessions, so a terminal's Ctrl-C reaches only the parent."""
    for proc in procs:
        _signal(proc, signal.SIGINT)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait()


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
