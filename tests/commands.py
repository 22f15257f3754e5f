"""Sweeper's commands as the tests run them, and what the stores hold after: the CLI in this process (``invoke``,
``study_init``, the ``console_script`` fixture for `sweeper.cli.main`, the ``drawn`` fixture for its figures), the CLI
as users run it, in a process of its own (``run_sweeper``, ``start_sweeper``, ``kill_a_worker_mid_trial``), checks
of its output (``assert_user_error``, ``assert_png``, ``strict_json``), and the studies' trials, MLflow artifacts and
worker logs read back (``load_trials``, ``reported_epoch``, ``wait_until_stale``, ``artifacts``, ``count_lines``).

The fixtures here are seen by pytest through conftest.py, which imports them; this module builds on tiny.py and
servers.py, never on conftest.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from servers import start_process, wait_for
from sweeper.cli import app
from tiny import TINY

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# -- the CLI, in this process (typer's CliRunner) -------------------------------------------------------------------


def invoke(*args: object, env: Mapping[str, str] | None = None, catch_exceptions: bool = True) -> Any:
    """``sweeper ARGS...`` in this process; the result has exit_code, stdout and stderr apart."""
    from typer.testing import CliRunner

    return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=catch_exceptions)


def study_init(name: str, data: Path, storage: str, *extra: str, tracking: str = "sqlite:///mlflow.db") -> None:
    """``sweeper study init NAME`` on the shapes with TINY trials (random sampler, no pruner), in this process;
    ``extra``: more ``--set`` words (e.g. train.epochs=4)."""
    result = invoke(
        "study", "init", name, "--data", data, "--storage", storage, "--tracking-uri", tracking,
        "--sampler", "random", "--pruner", "none", "--set", *TINY, *extra, catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN and Infinity, which other JSON readers (jq, JavaScript) reject."""

    def reject(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=reject)


def assert_user_error(result: Any, *fragments: str) -> None:
    """Exit 2, one stderr line ``error: ...`` naming each fragment, no traceback, nothing on stdout."""
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def assert_png(path: Path) -> None:
    """A real PNG file, not an empty one."""
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    assert path.stat().st_size > 1024, path


class ScriptRun(NamedTuple):
    """What the console script did: its exit code and what it printed."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture()
def console_script(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., ScriptRun]:
    """The console script's entry point (sweeper.cli.main: masked streams, logging, signal handlers, then the
    command) run in this process: ``console_script(*args)`` -> ScriptRun. What main() sets up
    for the process is undone after each call, and pytest's log handlers step aside so that its logging.basicConfig
    writes log lines to the masked stderr, as in a process of its own."""
    import logging

    from sweeper import cli

    def run(*args: object) -> ScriptRun:
        root = logging.getLogger()
        saved = (sys.stdout, sys.stderr, sys.unraisablehook, root.handlers[:], root.level)
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        monkeypatch.setattr(sys, "argv", ["sweeper", *map(str, args)])
        capsys.readouterr()
        root.handlers.clear()
        try:
            cli.main()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        finally:
            sys.stdout, sys.stderr, sys.unraisablehook = saved[:3]
            root.handlers[:] = saved[3]
            root.setLevel(saved[4])
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        captured = capsys.readouterr()
        return ScriptRun(code, captured.out, captured.err)

    return run


@pytest.fixture()
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Path]]:
    """Every figure pipelines.plots writes during the test, as (Figure, path), in order: what a command drew."""
    from pipelines import plots

    seen: list[tuple[Any, Path]] = []
    save = plots.save_figure

    def recording(fig: Any, path: Path) -> Path:
        seen.append((fig, Path(path)))
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", recording)
    return seen


# -- the CLI as users run it: its own process ----------------------------------------------------------------------


def sweeper_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "sweeper", *map(str, args)]


def run_sweeper(
    *args: object, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m sweeper ARGS...`` to its end; ``env`` is added to this process's environment."""
    return subprocess.run(
        sweeper_command(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def start_sweeper(
    *args: object, log: Path | None = None, env: Mapping[str, str] | None = None, stdout: bool = True
) -> subprocess.Popen:
    """``python -m sweeper ARGS...`` started (see start_process): stderr, and stdout unless ``stdout`` is False,
    appended to ``log``."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - the child keeps its own copy
    try:
        return start_process(
            sweeper_command(*args), env={**os.environ, **(env or {})},
            stdout=out if stdout else subprocess.DEVNULL, stderr=out,
        )  # fmt: skip
    finally:
        if log is not None:
            out.close()


def kill_a_worker_mid_trial(
    common: Sequence[object], *, data: Path, database: str, log: Path, env: Mapping[str, str], name: str = "killed"
) -> None:
    """`study run NAME` on ``common`` (--storage ... --tracking-uri ...), SIGKILLed once its trial reported an
    epoch (read from the database at ``database``): a worker dead mid-trial, its trial left RUNNING."""
    victim = start_sweeper(
        "study", "run", name, "--data", data, "--n-trials", 1, "--pruner", "none", *common,
        "--set", *TINY, "train.epochs=40", log=log, env=env,
    )  # fmt: skip
    wait_for(lambda: reported_epoch(database, name), 120, "the victim's trial to report an epoch")
    victim.send_signal(signal.SIGKILL)
    victim.wait()


def heartbeat_env(*, heartbeat: int = 1, grace: int = 4, **more: object) -> dict[str, str]:
    """Environment for workers whose dead trials are found in seconds: a heartbeat every ``heartbeat`` s, stale after
    ``grace`` s; ``more``: further SWEEPER_* variables by lower-case suffix (outage_seconds=3 ->
    SWEEPER_DB_OUTAGE_SECONDS, retry_max_delay=0.5 -> SWEEPER_RETRY_MAX_DELAY). Unless given, the outage a worker
    waits for is the longest the grace period leaves (with the tests' back-off of at most 0.5 s)."""
    names = {"outage_seconds": "SWEEPER_DB_OUTAGE_SECONDS"}
    env = {"SWEEPER_HEARTBEAT_SECONDS": str(heartbeat), "SWEEPER_GRACE_SECONDS": str(grace)}
    env["SWEEPER_DB_OUTAGE_SECONDS"] = str(max(1, grace - heartbeat - 2))
    env.update({names.get(key, f"SWEEPER_{key.upper()}"): str(value) for key, value in more.items()})
    return env


# -- what the stores hold ------------------------------------------------------------------------------------------


def load_trials(storage: str, name: str) -> list[Any]:
    """The trials of study ``name`` in ``storage``, or [] while the study (or the storage's tables) is not made.

    Optuna makes the tables of a storage it opens; a test that polls one a command is making must not race it to
    that, so the storage is opened only once its schema is stamped."""
    import optuna
    import sqlalchemy

    url = storage
    if storage.startswith("sqlite:///"):  # read-only: connecting must not make the file
        path = storage.removeprefix("sqlite:///")
        if not Path(path).exists():
            return []
        url = f"sqlite:///file:{path}?mode=ro&uri=true"
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            if conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).first() is None:
                return []
    except sqlalchemy.exc.SQLAlchemyError:  # no database file or table yet
        return []
    finally:
        engine.dispose()
    try:
        return optuna.load_study(study_name=name, storage=storage).trials
    except (KeyError, RuntimeError, optuna.exceptions.StorageInternalError):
        return []


def reported_epoch(storage: str, name: str) -> bool:
    """A trial of ``name`` runs, has its MLflow run and has reported an epoch."""
    from optuna.trial import TrialState

    return any(
        t.state == TrialState.RUNNING and t.intermediate_values and "mlflow_run_id" in t.user_attrs
        for t in load_trials(storage, name)
    )


def wait_until_stale(storage: str, name: str, *, grace: float, timeout: float = 60) -> None:
    """Until a running trial of ``name`` has had no heartbeat for ``grace`` seconds, as the next worker will judge
    it (Optuna's own query, read-only)."""
    import optuna

    reader = optuna.storages.RDBStorage(storage, heartbeat_interval=1, grace_period=int(grace))
    try:
        study_id = reader.get_study_id_from_name(name)
        wait_for(lambda: bool(reader._get_stale_trial_ids(study_id)), timeout, f"a stale trial of {name}")
    finally:
        reader.engine.dispose()


def artifacts(client: Any, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact path of an MLflow run, folders walked."""
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        out |= artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def count_lines(path: Path, text: str) -> Callable[[], int]:
    """How many lines of the file ``path`` (a worker's log) hold ``text``, read anew at each call."""

    def count() -> int:
        return sum(text in line for line in path.read_text(errors="replace").splitlines()) if path.exists() else 0

    return count
