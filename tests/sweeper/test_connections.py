"""sweeper.connections: few connections per process, each named, the schema made by one process at a time; and a
server that refuses connections at start waited for like any outage."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import sqlalchemy

from conftest import PG_ADMIN_URL, TINY, heartbeat_env, start_sweeper, wait_for
from sweeper import connections
from sweeper.connections import MAX_CONNECTIONS, application_name, engine_kwargs


def test_a_process_pools_at_most_two_connections_and_an_idle_one_keeps_none() -> None:
    url = "postgresql://postgres@127.0.0.1:5432/test"
    busy = engine_kwargs(url)
    assert (busy["pool_size"], busy["max_overflow"]) == (MAX_CONNECTIONS, 0) and MAX_CONNECTIONS == 2
    assert engine_kwargs(url, idle=True)["poolclass"] is sqlalchemy.pool.NullPool
    assert "pool_size" not in engine_kwargs("sqlite:////tmp/x.db")  # SQLite as Optuna opens it


def test_every_connection_names_the_process_unless_the_url_names_it(monkeypatch) -> None:
    monkeypatch.setattr(connections, "_role", [])  # no role left by a `storage serve` run in this test process
    monkeypatch.setenv(connections.WORKER_ENV, "3")
    name = application_name()
    assert name.startswith("sweeper worker 3 ") and name.endswith(f":{__import__('os').getpid()}")
    assert engine_kwargs("postgresql://u@h/db")["connect_args"]["application_name"] == name
    named = engine_kwargs("postgresql://u@h/db?application_name=sweeper-storage")
    assert "application_name" not in named["connect_args"]  # the URL's own wins (the compose stack's proxy)


def _start_init(name: str, data: Path, storage: str, tracking: str, log: Path, env: dict[str, str]):
    return start_sweeper(
        "study", "init", name, "--data", data, "--storage", storage, "--tracking-uri", tracking,
        "--set", *TINY, log=log, env=env,
    )  # fmt: skip


def test_processes_starting_at_once_on_an_empty_database_and_a_new_store_all_succeed(image_folder, pg_url, tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a new local MLflow store, migrated by the first to come
    procs = [_start_init("race", image_folder, pg_url, tracking, tmp_path / f"init-{i}.log", env={}) for i in range(4)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * 4, "\n".join((tmp_path / f"init-{i}.log").read_text()[-1500:] for i in range(4))
    assert [s.study_name for s in optuna.get_all_study_summaries(pg_url)] == ["race"]


def test_a_server_with_no_free_connection_at_start_is_waited_for(image_folder, pg_url, tmp_path):
    """A role allowed two connections (what one process may hold), both held by someone else: `study init` waits
    (back-off passed in small) and succeeds once they are free, instead of exiting at once."""
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    database = pg_url.rsplit("/", 1)[1]
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text("DROP ROLE IF EXISTS sweeper_one"))
        conn.execute(sqlalchemy.text("CREATE ROLE sweeper_one LOGIN CONNECTION LIMIT 2"))
        conn.execute(sqlalchemy.text(f'GRANT ALL ON DATABASE "{database}" TO sweeper_one'))
        conn.execute(sqlalchemy.text(f'ALTER DATABASE "{database}" OWNER TO sweeper_one'))
    limited = pg_url.replace("postgres@", "sweeper_one@")
    blocker = sqlalchemy.create_engine(limited, poolclass=sqlalchemy.pool.NullPool)
    held = [blocker.connect() for _ in range(MAX_CONNECTIONS)]  # every slot the role has
    released = threading.Event()
    try:
        env = heartbeat_env(heartbeat=1, grace=60, outage_seconds=30, retry_delay=0.2, retry_max_delay=0.5)
        log = tmp_path / "init.log"
        proc = _start_init("full", image_folder, limited, f"sqlite:///{tmp_path / 'mlflow.db'}", log, env)
        wait_for(lambda: "opening the storage failed" in log.read_text(), 60, "init to wait: " + str(log))
        time.sleep(1)
        for conn in held:
            conn.close()
        released.set()
        assert proc.wait(timeout=120) == 0, log.read_text()[-2000:]
    finally:
        if not released.is_set():
            for conn in held:
                conn.close()
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'ALTER DATABASE "{database}" OWNER TO postgres'))
            conn.execute(sqlalchemy.text(f'REVOKE ALL ON DATABASE "{database}" FROM sweeper_one'))
        admin.dispose()
