"""Many workers on one study: processes on this machine (one per GPU, or N on the CPU) on a shared RDB storage.

The engine is Optuna's: every worker runs `sweeper study run NAME` against the same storage, and Optuna's
RDB storage hands out trial numbers and waiting trials atomically. There is no scheduler of our own; this
module plans the workers (a GPU each), starts them with their own CUDA_VISIBLE_DEVICES, index and log file,
waits for them while a caller-supplied ``refresh`` shows progress, stops them on the way out, and says what each
did. The parent's --n-trials is the study's total over its workers: each runs trials until the study holds that
many more than when the parent started (Optuna's ``MaxTrialsCallback``, counting running trials too), so the
trials of a worker that could not start are run by the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from optuna.trial import FrozenTrial

from pipelines.errors import UserError, one_line
from sweeper import records
from sweeper.connections import WORKER_ENV
from sweeper.overrides import positive_int
from sweeper.storage import resolve_storage_url
from sweeper.study import StudyOptions
from sweeper.urls import is_sqlite

log = logging.getLogger(__name__)

# Worker processes per GPU for `--workers auto`, by GPU model: what the concurrency measurement found best.
# H200 (issue 13's table, 2026-11-28, `python -m benchmarks.bench --concurrency 1,2,4`, 8-epoch eager trials of
# the recipe sharing one GPU): 712, 788 and 868 trials/h for 1, 2 and 4 workers, so 4. A GPU not measured gets 1.
WORKERS_PER_GPU = {"H200": 4}
STOP_SECONDS = 30.0  # after SIGINT, how long workers get to record their trials before SIGKILL
POLL_SECONDS = 1.0  # how often the parent refreshes its view while workers run


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    gpu: str | None  # CUDA_VISIBLE_DEVICES for this worker, None on the CPU


@dataclass(frozen=True)
class WorkerReport:
    """What one worker did: its exit code, the trials it ran, its last error line (if it printed one)."""

    index: int
    returncode: int
    trials: int
    error: str | None

    def __str__(self) -> str:
        ran = f"#{self.index} ran {self.trials} trial{'' if self.trials == 1 else 's'}"
        if self.returncode == 0:
            return ran
        return f"{ran} and exited {self.returncode}" + (f" ({self.error})" if self.error else "")


@dataclass(frozen=True)
class WorkersResult:
    plan: tuple[WorkerPlan, ...]
    returncodes: tuple[int, ...]
    log_dir: Path

    @property
    def failed(self) -> list[tuple[int, int]]:
        """(worker index, exit code) of each worker that did not exit 0."""
        return [(p.index, rc) for p, rc in zip(self.plan, self.returncodes, strict=True) if rc != 0]

    def reports(self, trials: Sequence[FrozenTrial]) -> list[WorkerReport]:
        """Each worker's report, its trials counted among ``trials`` (by the worker index each one recorded)."""
        ran = Counter(t.user_attrs.get(records.WORKER) for t in trials)
        return [
            WorkerReport(p.index, rc, ran[p.index], _last_error(self.log_dir / f"worker-{p.index}.log"))
            for p, rc in zip(self.plan, self.returncodes, strict=True)
        ]

    def check(self, trials: Sequence[FrozenTrial]) -> str:
        """One line saying what each worker did; UserError with that line when one of them failed."""
        line = "workers: " + "; ".join(str(r) for r in self.reports(trials))
        if self.failed:
            raise UserError(f"{line}; see {self.log_dir}/worker-N.log")
        return line


def _last_error(log: Path) -> str | None:
    """The last ``error: ...`` line a worker printed (its one-line reason for exiting 2), without the prefix."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line.removeprefix("error: ").strip() for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else None


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (its own list when it is set)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no CUDA runtime: no GPU
        return []
    inherited = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return inherited[:count] if inherited else [str(i) for i in range(count)]


def gpu_names(gpus: list[str]) -> list[str]:
    """The model names of ``gpus`` (visible_gpus() entries), e.g. "NVIDIA H200"; asked in a child process, so
    this one holds no CUDA context (and no GPU memory) while its workers train."""
    code = "import torch; print('\\n'.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("could not read the GPU models (%s): one worker per GPU", one_line(err))
        return [""] * len(gpus)
    names = out.stdout.strip().splitlines()
    return (names + [""] * len(gpus))[: len(gpus)]


def workers_per_gpu(name: str) -> int:
    """How many worker processes share a GPU of this model under `--workers auto` (WORKERS_PER_GPU)."""
    return next((count for model, count in WORKERS_PER_GPU.items() if model in name), 1)


def auto_devices(visible: list[str], names: list[str], *, n_trials: int, sqlite: bool) -> list[str | None]:
    """`--workers auto`: workers_per_gpu() workers on each visible GPU, never more workers than trials; one worker
    on the CPU, and one in all on SQLite (which cannot take several)."""
    if not visible:
        return [None]
    if sqlite:
        if len(visible) > 1 or any(workers_per_gpu(name) > 1 for name in names):
            log.info("--workers auto: one worker on SQLite; a server database lets several share the GPUs")
        return [visible[0]]
    per_gpu = [workers_per_gpu(name) for name in names]
    devices = [gpu for count in range(max(per_gpu)) for gpu, k in zip(visible, per_gpu, strict=True) if count < k]
    return devices[: max(1, n_trials)]  # a worker with no trial to run would only compile


def plan_workers(*, workers: str | None, gpus: str | None, n_trials: int, storage: str | None) -> list[WorkerPlan]:
    """The worker processes for ``n_trials`` trials in all (they share them: see :func:`run_workers`).

    ``gpus``: "0,1,3" -> one worker per listed GPU. ``workers``: a number, or "auto" (on each visible GPU as many
    as WORKERS_PER_GPU found best for its model, else 1; one on the CPU).
    """
    sqlite = is_sqlite(resolve_storage_url(storage))
    if gpus:
        devices = [g.strip() for g in gpus.split(",") if g.strip()]
        if not devices:
            raise UserError(f"--gpus {gpus!r} names no GPU; use e.g. --gpus 0,1")
        count = len(devices)
    else:
        visible = visible_gpus()
        if workers in (None, "auto"):
            devices = auto_devices(visible, gpu_names(visible) if visible else [], n_trials=n_trials, sqlite=sqlite)
            count = len(devices)
        else:
            count = positive_int(workers, name="--workers", expected="a number or auto")
            devices = [visible[i % len(visible)] for i in range(count)] if visible else [None] * count
    if count > 1 and sqlite:
        raise UserError(
            "several workers need a server database: SQLite locks and duplicates trials under concurrency; "
            "pass --storage postgresql+psycopg2://user:pass@host:5432/db (or set SWEEPER_STORAGE)"
        )
    if n_trials < count:
        raise UserError(f"--n-trials ({n_trials}) must be at least the number of workers ({count})")
    return [WorkerPlan(i, devices[i]) for i in range(count)]


def needs_processes(plan: list[WorkerPlan] | None, *, gpus: str | None) -> bool:
    """Whether the plan runs in child processes (several workers, or GPUs named), not in this process."""
    return plan is not None and (len(plan) > 1 or bool(gpus))


def worker_args(opts: StudyOptions, plan: WorkerPlan, *, n_trials: int, until: int, timeout: float | None) -> list[str]:
    """The `study run` options that make a worker run the parent's study as the parent resolved it, until the
    study holds ``until`` trials (the parent's --n-trials shared by all its workers; so a worker that could not
    start leaves its share to the others) and at most ``n_trials`` of its own."""
    args = ["--sampler", str(opts.sampler), "--pruner", str(opts.pruner), "--objective", str(opts.objective)]
    args += ["--n-trials", str(n_trials), "--trials-until", str(until)]
    if opts.seed is not None:
        args += ["--seed", str(opts.seed + plan.index)]  # distinct seeds: workers must not sample alike
    if timeout is not None:
        args += ["--timeout", str(timeout)]
    return args


def cpu_threads(workers: int) -> int:
    """torch's CPU threads for each of ``workers`` processes sharing this machine: its cores (those this process
    may run on) divided among them, at least 1. torch's default, a thread per core in every process, makes N
    workers contend for the same cores (the test suite's two xdist workers took over half again as long so)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def start_worker(
    plan: WorkerPlan,
    *,
    threads: int,
    study: str,
    storage: str | None,
    tracking_uri: str | None,
    runs_dir: Path,
    extra_args: list[str],
    log_dir: Path,
) -> subprocess.Popen:
    """`python -m sweeper study run STUDY ...` with its own CUDA_VISIBLE_DEVICES, index and log file, and
    ``threads`` CPU threads for torch (OMP_NUM_THREADS, unless set already)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env[WORKER_ENV] = str(plan.index)  # its trials record it; its database connections are named after it
    if plan.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = plan.gpu
    if storage:
        env["SWEEPER_STORAGE"] = storage
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "sweeper", "study", "run", study, "--runs-dir", str(runs_dir), "--json", *extra_args,
    ]  # fmt: skip
    with open(log_dir / f"worker-{plan.index}.log", "ab") as log_file:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)


def workers_log_dir(opts: StudyOptions) -> Path:
    """Where worker N writes worker-N.log."""
    return Path(opts.runs_dir) / opts.name / "logs"


def run_workers(
    opts: StudyOptions,
    plan: list[WorkerPlan],
    *,
    n_trials: int,
    until: int,
    timeout: float | None,
    refresh: Callable[[], None],
) -> WorkersResult:
    """Start one `study run` process per planned worker on the shared storage, together running ``n_trials``
    trials until the study holds ``until``, and wait for all of them, calling ``refresh`` every POLL_SECONDS
    (its errors are logged, never fatal) and once at the end. On the way out (Ctrl-C too) live workers are
    stopped."""
    runs_dir = Path(opts.runs_dir)
    log_dir = workers_log_dir(opts)
    threads = cpu_threads(len(plan))
    procs = [
        start_worker(
            p,
            threads=threads,
            study=opts.name,
            storage=opts.storage,
            tracking_uri=opts.tracking_uri,
            runs_dir=runs_dir,
            extra_args=worker_args(opts, p, n_trials=n_trials, until=until, timeout=timeout),
            log_dir=log_dir,
        )
        for p in plan
    ]
    try:
        while any(proc.poll() is None for proc in procs):
            _refresh(refresh)
            time.sleep(POLL_SECONDS)
        _refresh(refresh)
    finally:
        stop_workers(procs)  # no-op when all have exited; else SIGINT, then SIGKILL after a deadline
    return WorkersResult(tuple(plan), tuple(proc.returncode for proc in procs), log_dir)


def _refresh(refresh: Callable[[], None]) -> None:
    try:
        refresh()
    except Exception as err:  # noqa: BLE001 - the view must not take the workers down with it
        log.warning("could not refresh the table: %s", err)


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
        with contextlib.suppress(ProcessLookupError):  # it exited in between
            os.killpg(proc.pid, sig)
