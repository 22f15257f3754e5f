"""Many workers on one study: sweeper's worker path against PostgreSQL directly and through `sweeper storage serve`.

Each run starts N worker processes on one fresh study. Every worker runs sweeper's own worker path: its storage
(``sweeper.storage.make_storage``: pre-ping and outage retries directly, the lease and UNAVAILABLE retries through
the proxy), Optuna's optimize loop with its heartbeat thread, sweeper's sampler and pruner choices, the space's
suggestions and the trial's record (config, LR, each epoch's value and metrics, test accuracy, seconds), with the
training replaced by a fixed sleep (``scale_worker.SleepTrials``, a benchmark-only objective: no torch import, so 64
workers fit in memory). The workers are forked from this process once it has imported sweeper (copy-on-write: the
64 do not each pay sweeper's imports) and each opens its own storage after the fork.

The database's connection limit is set low (``--connection-limit``, 30: a real server's 100 shared by hundreds of
workers), for a role that is no superuser (PostgreSQL exempts superusers from it): ``sweeper_bench``, made here.
A kill run SIGKILLs 10 % of the workers (at least one) mid-trial; their trials must be failed and retried.

Reported per run: trials per second (complete trials over the time from the start signal to the last trial's
end), p50/p95 of asking for a trial (from the end of the previous one to the new one holding its parameters:
Optuna's stale-trial check, ask, the heartbeat's start, the suggestions) and of telling one (from the objective's
return to the after-trial callback: the heartbeat's stop, the state and values written), peak database
connections (``pg_stat_activity``, sampled every 0.1 s), errors (storage calls retried, workers that failed,
failed trials no kill explains), duplicated and lost trials, and the killed workers' trials failed and retried.

    python -m benchmarks.scale                        # N = 4, 16, 64 in both modes, and kill runs at 64
    python -m benchmarks.scale --workers 3 --kill-workers 3 --modes proxy --seconds 8 --no-write   # CI's size

Loopback only: PostgreSQL at --database (127.0.0.1) and the proxy on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from benchmarks.machine import RESULTS_DIR, cpu_model
from benchmarks.scale_worker import STUDY, WorkerSpec, worker_main
from sweeper.objective import Objective

ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"  # trust auth on loopback, as the tests use
ROLE = "sweeper_bench"  # no superuser: PostgreSQL applies a database's connection limit to it
KILL_FRACTION = 0.1  # of the workers, in a kill run (at least one)
SAMPLE_SECONDS = 0.1  # how often pg_stat_activity is read


# -- one run --------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    mode: str  # direct | proxy
    workers: int
    kill: int  # workers SIGKILLed mid-trial
    seconds: float


def admin_engine(url: str) -> sqlalchemy.engine.Engine:
    return sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)


@contextlib.contextmanager
def bench_database(admin_url: str, limit: int) -> Iterator[str]:
    """A fresh database owned by ROLE with ``limit`` connections at most; its URL for ROLE. Dropped after."""
    name = f"sweeper_scale_{uuid.uuid4().hex[:10]}"
    engine = admin_engine(admin_url)
    with engine.connect() as conn:
        if not conn.execute(sqlalchemy.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": ROLE}).first():
            conn.execute(sqlalchemy.text(f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER"))
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}" OWNER {ROLE} CONNECTION LIMIT {limit}'))
    url = sqlalchemy.engine.make_url(admin_url).set(username=ROLE, database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


class ConnectionSampler:
    """Counts the database's connections in pg_stat_activity every SAMPLE_SECONDS, from a thread; keeps the peak."""

    def __init__(self, admin_url: str, database: str) -> None:
        self.engine = admin_engine(admin_url)
        self.database = database
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db")
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                self.peak = max(self.peak, int(conn.execute(query, {"db": self.database}).scalar_one()))
                self.stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> ConnectionSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.engine.dispose()


def create_study(url: str) -> None:
    storage = optuna.storages.RDBStorage(url)
    optuna.create_study(study_name=STUDY, storage=storage, directions=Objective.val.directions)
    storage.engine.dispose()  # no connection of this process may be inherited by the forked workers


@contextlib.contextmanager
def storage_proxy(url: str, args: argparse.Namespace, folder: Path) -> Iterator[str]:
    """`sweeper storage serve` over ``url`` on a free loopback port; its grpc:// URL."""
    log = folder / "serve.log"
    cmd = [sys.executable, "-m", "sweeper", "storage", "serve", "--storage", url, "--port", "0"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*cmd, "--threads", str(args.threads)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while not (found := re.findall(r"ready at (grpc://\S+)", log.read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"storage serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield found[-1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def events(path: Path) -> list[dict[str, Any]]:
    """The events a worker logged; a last line still being written is left out."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            found.append(json.loads(line))
    return found


def in_flight(path: Path) -> dict[str, Any] | None:
    """The trial the worker logging to ``path`` is inside (an epoch reported, no end yet), or None."""
    seen = events(path)
    if not seen or seen[-1]["event"] != "epoch":
        return None
    return seen[-1]


def run_once(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    with bench_database(args.database, args.connection_limit) as url, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        create_study(url)
        database = sqlalchemy.engine.make_url(url).database
        with contextlib.ExitStack() as stack:
            storage = stack.enter_context(storage_proxy(url, args, folder)) if run.mode == "proxy" else url
            ctx = multiprocessing.get_context("fork")  # before any thread of this process: the sampler's come after
            ready, go = ctx.SimpleQueue(), ctx.Event()  # SimpleQueue: no feeder thread that os._exit could cut
            specs = [
                WorkerSpec(i, storage, folder / f"worker-{i}.jsonl", args.trial_seconds, args.epochs, run.seconds)
                for i in range(run.workers)
            ]
            procs = [ctx.Process(target=worker_main, args=(spec, ready, go)) for spec in specs]
            for proc in procs:
                proc.start()
            sampler = stack.enter_context(ConnectionSampler(args.database, database))
            wait_ready(ready, len(procs))
            started = time.time()
            go.set()
            killed = kill_victims(procs[: run.kill], specs[: run.kill], timeout=run.seconds)
            for proc in procs:
                proc.join()
            if run.mode == "proxy":
                time.sleep(1)  # the reaper's pass that saw the last lease expire has ended its retries
        peak = sampler.peak
        return measure(url, specs, procs, killed, started=started, peak=peak, run=run)


def wait_ready(ready: Any, count: int, *, timeout: float = 600) -> None:
    """Until ``count`` workers have opened their storage (or failed to)."""
    deadline = time.monotonic() + timeout
    while count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers did not open their storage within {timeout:g} s")
        if ready.empty():
            time.sleep(0.05)
            continue
        ready.get()
        count -= 1


def kill_victims(procs: Sequence[Any], specs: Sequence[WorkerSpec], *, timeout: float) -> dict[int, dict[str, Any]]:
    """SIGKILL each victim while it is inside a trial (an epoch reported); the in-flight event of each."""
    killed: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(killed) < len(procs) and time.monotonic() < deadline:
        for proc, spec in zip(procs, specs, strict=True):
            if spec.index not in killed and (event := in_flight(spec.log)) is not None:
                os.kill(proc.pid, signal.SIGKILL)
                killed[spec.index] = event
        time.sleep(0.05)
    return killed


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def measure(
    url: str,
    specs: Sequence[WorkerSpec],
    procs: Sequence[Any],
    killed: dict[int, dict[str, Any]],
    *,
    started: float,
    peak: int,
    run: Run,
) -> dict[str, Any]:
    """The run's numbers and its checks, from the workers' logs and the study as the database holds it."""
    storage = optuna.storages.RDBStorage(url)
    db_trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    storage.engine.dispose()
    by_id = {t._trial_id: t for t in db_trials}
    logs = {spec.index: events(spec.log) for spec in specs}
    ends = [e for seen in logs.values() for e in seen if e["event"] == "end"]
    complete = [e for e in ends if e["state"] == "COMPLETE"]
    starters: dict[int, set[int]] = {}
    for index, seen in logs.items():
        for e in seen:
            if e["event"] == "start":
                starters.setdefault(e["trial_id"], set()).add(index)
    numbers = [t.number for t in db_trials]
    duplicated = sum(len(who) - 1 for who in starters.values()) + len(numbers) - len(set(numbers))
    lost = [e["number"] for e in complete if by_id.get(e["trial_id"]) is None
            or by_id[e["trial_id"]].state.name != "COMPLETE" or by_id[e["trial_id"]].value != e["value"]]  # fmt: skip
    stuck = [t.number for t in db_trials if t.state.name == "RUNNING"]
    killed_ids = {e["trial_id"] for e in killed.values()}
    retries = {t.system_attrs.get("failed_trial"): t for t in db_trials if "failed_trial" in t.system_attrs}
    killed_trials = [by_id[i] for i in killed_ids if i in by_id]
    retried = [t for t in killed_trials if t.state.name == "FAIL" and t.number in retries]
    retried_complete = [t for t in retried if retries[t.number].state.name == "COMPLETE"]
    unexplained_fail = [t.number for t in db_trials if t.state.name == "FAIL" and t._trial_id not in killed_ids]
    victims = set(killed)
    failed_workers = [
        (spec.index, proc.exitcode) for spec, proc in zip(specs, procs, strict=True)
        if spec.index not in victims and proc.exitcode != 0
    ]  # fmt: skip
    errors = [e["error"] for seen in logs.values() for e in seen if e["event"] == "error"]
    retried_calls = sum(
        spec.log.with_suffix(".log").read_text().count("retrying")
        for spec in specs
        if spec.log.with_suffix(".log").exists()
    )
    last = max((e["t"] for e in ends), default=started)
    asks = [e["ask"] for seen in logs.values() for e in seen if e["event"] == "start"]
    tells = [e["tell"] for e in complete]
    wall = last - started
    return {
        "mode": run.mode,
        "workers": run.workers,
        "killed_workers": len(killed),
        "seconds": round(wall, 2),
        "complete_trials": len(complete),
        "trials_per_second": round(len(complete) / wall, 2) if wall > 0 else None,
        "ask_p50_ms": _ms(percentile(asks, 50)),
        "ask_p95_ms": _ms(percentile(asks, 95)),
        "tell_p50_ms": _ms(percentile(tells, 50)),
        "tell_p95_ms": _ms(percentile(tells, 95)),
        "peak_db_connections": peak,
        "storage_calls_retried": retried_calls,
        "failed_workers": failed_workers,
        "worker_errors": sorted(set(errors))[:5],
        "unexplained_failed_trials": unexplained_fail,
        "duplicated_trials": duplicated,
        "lost_trials": lost,
        "stuck_running_trials": stuck,
        "waiting_trials_left": sum(t.state.name == "WAITING" for t in db_trials),
        "killed_trials": len(killed_trials),
        "killed_trials_failed_and_retried": len(retried),
        "killed_trials_retried_and_complete": len(retried_complete),
        "db_trials": len(db_trials),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


# -- the whole benchmark ------------------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[Run]:
    runs = [Run(mode, n, 0, args.seconds) for n in args.workers for _ in range(args.repeat) for mode in args.modes]
    for n in args.kill_workers:
        kill = max(1, round(KILL_FRACTION * n))
        # long enough for the killed trials' leases to expire, the reaper to fail them and a survivor to rerun them
        seconds = args.seconds + args.grace + 2 * args.heartbeat + 2 * args.trial_seconds
        runs += [Run(mode, n, kill, seconds) for mode in args.modes]
    return runs


COLUMNS = (
    ("mode", "mode"), ("workers", "N"), ("killed_workers", "killed"), ("trials_per_second", "trials/s"),
    ("ask_p50_ms", "ask p50 ms"), ("ask_p95_ms", "ask p95 ms"), ("tell_p50_ms", "tell p50 ms"),
    ("tell_p95_ms", "tell p95 ms"), ("peak_db_connections", "peak DB conn"), ("errors", "errors"),
    ("duplicated_trials", "dup"), ("lost", "lost"), ("retried", "killed: failed+retried"),
)  # fmt: skip


def row(result: dict[str, Any]) -> dict[str, Any]:
    errors = (
        f"{result['storage_calls_retried']} retried calls, {len(result['failed_workers'])} workers failed, "
        f"{len(result['unexplained_failed_trials'])} trials failed"
    )
    lost = len(result["lost_trials"]) + len(result["stuck_running_trials"])
    retried = (
        f"{result['killed_trials_failed_and_retried']}/{result['killed_trials']} "
        f"({result['killed_trials_retried_and_complete']} rerun)"
        if result["killed_workers"]
        else "-"
    )
    return {**result, "errors": errors, "lost": lost, "retried": retried}


def table(results: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    lines = [head, rule]
    for result in results:
        shown = row(result)
        lines.append("| " + " | ".join("-" if shown[key] is None else str(shown[key]) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import grpc

    engine = admin_engine(args.database)
    with engine.connect() as conn:
        server = conn.execute(sqlalchemy.text("SHOW server_version")).scalar_one()
        max_connections = conn.execute(sqlalchemy.text("SHOW max_connections")).scalar_one()
    engine.dispose()
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "optuna": optuna.__version__,
        "grpcio": grpc.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "postgresql": server,
        "max_connections": max_connections,
        "platform": platform.platform(),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    def numbers(text: str) -> list[int]:
        return [int(part) for part in text.split(",") if part.strip()]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=numbers, default=[4, 16, 64], help="worker counts of the plain runs")
    parser.add_argument("--kill-workers", type=numbers, default=[64], help="worker counts of the kill runs")
    parser.add_argument("--modes", type=lambda t: t.split(","), default=["direct", "proxy"], help="direct,proxy")
    parser.add_argument("--seconds", type=float, default=30.0, help="a plain run's length (Optuna's timeout)")
    parser.add_argument("--repeat", type=int, default=1, help="plain runs of each size and mode, alternating")
    parser.add_argument("--trial-seconds", type=float, default=1.0, help="the sleep standing in for training")
    parser.add_argument("--epochs", type=int, default=2, help="reports per trial")
    parser.add_argument("--heartbeat", type=int, default=2, help="SWEEPER_HEARTBEAT_SECONDS of workers and proxy")
    parser.add_argument("--grace", type=int, default=20, help="SWEEPER_GRACE_SECONDS of workers and proxy")
    parser.add_argument("--threads", type=int, default=10, help="`storage serve --threads`")
    parser.add_argument("--connection-limit", type=int, default=30, help="the database's CONNECTION LIMIT")
    parser.add_argument("--database", default=ADMIN_URL, help="a superuser's URL on loopback (makes the databases)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-write", action="store_true", help="print only, write no results file")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    args = parser.parse_args(argv)
    if not set(args.modes) <= {"direct", "proxy"}:
        parser.error(f"--modes takes direct and proxy, got {','.join(args.modes)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the heartbeat, the proxy
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.update(  # read by the workers (forked) and the proxy (a child) alike
        SWEEPER_HEARTBEAT_SECONDS=str(args.heartbeat),
        SWEEPER_GRACE_SECONDS=str(args.grace),
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    os.environ.pop("SWEEPER_DB_OUTAGE_SECONDS", None)  # the longest the grace period leaves, not an inherited one
    payload: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.scale " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "database"},
        "environment": environment(args),
        "runs": [],
    }
    for run in plan(args):
        print(f"scale: {run.mode}, {run.workers} workers, {run.kill} killed, {run.seconds:g} s", file=sys.stderr)
        payload["runs"].append(run_once(run, args))
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(table(payload["runs"]))
    if not args.no_write:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        args.out_dir.mkdir(parents=True, exist_ok=True)
        path = args.out_dir / f"scale-{stamp}.json"
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"scale: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
