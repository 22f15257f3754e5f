"""How sweeper connects to a database: few connections per process, each named, the schema made by one at a time.

- A process holds at most :data:`MAX_CONNECTIONS` connections to a server database: its engine's pool has that
  many and no overflow (the main thread's and the heartbeat thread's); a process that only reads now and then
  (the parent of ``--workers N`` while it waits, ``study show``) holds none between its queries (``NullPool``).
- Every connection names itself in ``pg_stat_activity`` (``application_name``: "sweeper worker 3 host:pid").
- Creating the schema (Optuna's tables, MLflow's local store) is done under a lock, so that any number of
  processes starting at once on an empty database all succeed: PostgreSQL's advisory lock, or a lock on a SQLite
  file's folder. Optuna's ``create_all`` and MLflow's migrations are not safe to run side by side (PostgreSQL's
  ``pg_type_typname_nsp_index`` and alembic's ``_alembic_tmp_...`` collisions).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy

from sweeper.urls import is_sqlite

MAX_CONNECTIONS = 2  # per process on a server database: the main thread's and the heartbeat's
WORKER_ENV = "SWEEPER_WORKER_INDEX"  # set by `study run --workers N` for each worker process it starts
CONNECT_SECONDS = 10  # how long one connection attempt may take (libpq connect_timeout)
# Any 64-bit number that other software on the same database is unlikely to use for pg_advisory_lock: "sweeper"
# in ASCII, as an integer
SCHEMA_LOCK_KEY = int.from_bytes(b"sweeper", "big")


_role: list[str] = []  # what this process is, when it is more than a command: set_role("storage")


def set_role(role: str) -> None:
    """Name this process's connections after ``role`` (e.g. "storage" for `sweeper storage serve`)."""
    _role[:] = [role]


def application_name() -> str:
    """What this process's connections are called in ``pg_stat_activity``: e.g. "sweeper worker 3 box:4242",
    "sweeper storage box:17", "sweeper cli box:4243" (PostgreSQL keeps 63 bytes)."""
    index = os.environ.get(WORKER_ENV)
    role = _role[0] if _role else f"worker {index}" if index else "cli"
    return f"sweeper {role} {socket.gethostname()}:{os.getpid()}"[:63]


def engine_kwargs(url: str, *, idle: bool = False, pool_size: int | None = None) -> dict[str, Any]:
    """SQLAlchemy engine settings for the database at ``url``: SQLite as Optuna opens it (with a busy timeout);
    a server with pre-ping, recycling, at most ``pool_size`` (MAX_CONNECTIONS) pooled connections (none kept
    when ``idle``) and, on PostgreSQL, a connect timeout and the application name."""
    if is_sqlite(url):
        return {"connect_args": {"timeout": 30}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if idle:
        kwargs["poolclass"] = sqlalchemy.pool.NullPool
    else:
        kwargs.update(pool_size=pool_size or MAX_CONNECTIONS, max_overflow=0, pool_recycle=300)
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.drivername.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_SECONDS}
        if "application_name" not in parsed.query:  # the URL's own name wins (the compose stack names its proxy)
            kwargs["connect_args"]["application_name"] = application_name()
    return kwargs


@contextlib.contextmanager
def creation_lock(url: str) -> Iterator[dict[str, Any]]:
    """Hold the lock under which the schema of the database at ``url`` is made (see the module's doc), and yield
    the engine settings to make it with. On PostgreSQL the lock is a session's advisory lock and the settings run
    every statement on that one locked connection (a ``StaticPool`` over it): making the schema costs the process
    one connection, whatever the library making it opens. SQLite: a lock on the file's folder, no settings.
    Anything else (MLflow's servers and folders): nothing to lock."""
    if is_sqlite(url):
        database = sqlalchemy.engine.make_url(url).database
        if not database or database == ":memory:":
            yield {}
            return
        with _folder_lock(Path(database).absolute().parent):
            yield {}
        return
    if not url.startswith("postgresql"):
        yield {}
        return
    engine = sqlalchemy.create_engine(url, **engine_kwargs(url, idle=True))
    try:
        proxy = engine.connect()  # (not raw_connection(): SQLAlchemy's wrapped errors tell a refused connection)
        dbapi = proxy.connection.driver_connection
        try:
            with dbapi.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
            dbapi.commit()
            yield {"poolclass": sqlalchemy.pool.StaticPool, "creator": functools.partial(_same, dbapi)}
        finally:
            with contextlib.suppress(Exception):  # the lock goes with the connection anyway
                dbapi.rollback()
                with dbapi.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))
                dbapi.commit()
            proxy.close()
    finally:
        engine.dispose()


def _same(connection: Any) -> Any:
    return connection


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on ``folder`` itself (no lock file left behind), released when the block ends."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
