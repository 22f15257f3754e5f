"""Real servers on loopback and the processes a test starts: fresh PostgreSQL databases (``pg_url``), the session's
``mlflow server`` (``mlflow_server``), database outages (``Outage``), `sweeper storage serve` (``StorageProxy``),
processes stopped with their whole group whatever happens (``start_process``), waits with deadlines (``wait_for``),
and ``missing``: a prerequisite absent, skipped locally and failed in CI.

The fixtures here are seen by pytest through conftest.py, which imports them (and the autouse fixture that stops
what ``start_process`` started); this module imports no other of the tests' helper modules.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sweeper.cli import SERVER_ENV

# -- real servers on loopback ----------------------------------------------------------------------------------

PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"  # trust auth on this machine and in CI


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.3 s until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_database(prefix: str) -> str:
    """A fresh, uniquely named PostgreSQL database; returns its SQLAlchemy URL. Dropped by ``drop_database``."""
    import uuid

    import sqlalchemy

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError as err:
        missing(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {err.orig}")
    finally:
        engine.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    import sqlalchemy

    name = url.rsplit("/", 1)[1]
    engine = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """A prerequisite of this machine is absent: skip on a developer's machine, fail in CI (where it must exist)."""
    if _in_ci():
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


@pytest.fixture()
def pg_url() -> object:
    """A fresh PostgreSQL database for one test (Optuna storage)."""
    url = create_database("sweeper_test")
    yield url
    drop_database(url)


class MlflowServer:
    """``mlflow server --workers 1`` on a free loopback port, backed by its own PostgreSQL database."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend = create_database("sweeper_mlflow")
        self.proc = None

    def start(self, timeout: float = 90.0) -> None:
        import sys
        import urllib.request

        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        with open(self.root / "mlflow-server.log", "ab") as log:  # the child keeps its own copy
            # its own process group (start_new_session), so that stop() ends its gunicorn/uvicorn workers too; not a
            # start_process: a session's server outlives the test that first asked for it
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                    str(self.port), "--workers", "1", "--backend-store-uri", self.backend,
                    "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # no job-runner consumers (each would hold its own connections to the backend database), no telemetry
                env={**os.environ, **SERVER_ENV},
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited: {(self.root / 'mlflow-server.log').read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                        if resp.status == 200:
                            return
                except OSError:
                    time.sleep(0.5)
            raise RuntimeError(f"mlflow server did not answer within {timeout}s")
        except BaseException:
            self.stop()  # a server that never answered leaves no process behind either
            raise

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> object:
    """One tracking server for the whole session (it takes ~13 s to start here)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()
    drop_database(server.backend)


# -- database outages ------------------------------------------------------------------------------------------
class Outage:
    """Every connection to the PostgreSQL database at ``url`` is cut every ``every`` seconds and, with ``refuse``,
    new ones are refused, from ``start()`` (or entering the block) until ``end()``; ``cuts`` counts those cut."""

    def __init__(self, url: str, *, refuse: bool = True, every: float = 0.2) -> None:
        import sqlalchemy

        self.name = url.rsplit("/", 1)[1]
        self.refuse, self.every = refuse, every
        self.admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self.stop = threading.Event()
        self.cuts = 0
        self.thread = threading.Thread(target=self._cut, daemon=True)

    def _allow(self, allowed: bool) -> None:
        import sqlalchemy

        with self.admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))

    def start(self) -> Outage:
        if self.refuse:
            self._allow(False)
        self.thread.start()
        return self

    def _cut(self) -> None:
        import sqlalchemy

        while not self.stop.is_set():
            with self.admin.connect() as conn:
                rows = conn.execute(
                    sqlalchemy.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": self.name},
                ).fetchall()
            self.cuts += sum(1 for (ok,) in rows if ok)
            self.stop.wait(self.every)

    def end(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        if self.refuse:
            self._allow(True)
        self.admin.dispose()

    def __enter__(self) -> Outage:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.end()


# -- processes a test starts ---------------------------------------------------------------------------------------

_started: list[subprocess.Popen] = []


def start_process(args: Sequence[Any], **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen`` in a process group of its own; the group (the process and everything it started) is
    stopped when the test ends, whether it passed or not."""
    proc = subprocess.Popen([str(a) for a in args], start_new_session=True, **popen)
    _started.append(proc)
    return proc


def stop_process_group(proc: subprocess.Popen, *, grace: float = 20.0) -> None:
    """SIGTERM to the process group ``proc`` leads (it was started with start_new_session), up to ``grace``
    seconds for every member to exit, then SIGKILL to what is left. Returns when none is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None and not _group_members(proc.pid):
            return
        with contextlib.suppress(ProcessLookupError):  # the group is empty, the leader a zombie: only reaping left
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_members(proc.pid):
                return
            time.sleep(0.1)
    raise AssertionError(f"process group {proc.pid} survived SIGKILL: {_group_members(proc.pid)}")


def _group_members(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that still run (zombies excluded: an orphan waits for PID 1 to reap it)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it exited while we looked
            continue
        state, _ppid, pgrp = text.rsplit(")", 1)[1].split()[:3]  # after "pid (comm)": comm may hold ") "
        if int(pgrp) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


# -- the storage proxy -----------------------------------------------------------------------------------------


class StorageProxy:
    """`sweeper storage serve` over a database on a free loopback port, its output in ``log``; stopped (SIGTERM to
    its group) when the test ends, if the test has not stopped it."""

    def __init__(self, database: str, log: Path, *, env: dict[str, str], port: int = 0, args: Sequence[str] = ()):
        import re
        import sys

        self.log = log
        self.proc = start_process(
            [sys.executable, "-m", "sweeper", "storage", "serve", "--storage", database, "--port", port, *args],
            env={**os.environ, **env},
            stdout=open(log, "ab"),  # noqa: SIM115 - the child keeps its own descriptor
            stderr=subprocess.STDOUT,
        )
        found: list[str] = []

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"storage serve exited {self.proc.returncode}: {log.read_text()[-2000:]}")
            found[:] = re.findall(r"ready at (grpc://\S+)", log.read_text())
            return bool(found)

        wait_for(ready, 60, "storage serve's ready line")
        self.url = found[-1]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)
