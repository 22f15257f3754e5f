"""Optuna's storage: the URL (resolved and masked), the engine, reconnects, the heartbeat and stale trials.

SQLite is used as Optuna opens it. A server database (PostgreSQL) gets pre-ping and pool recycling on its
engine, a heartbeat that fails and retries the trials of dead workers (:class:`StaleTrialHandler`), and
:class:`ResilientStorage` around it: a storage call whose connection was refused, cut or lost is retried with
back-off until the database answers again, for up to $SWEEPER_DB_OUTAGE_SECONDS; then the worker stops with
one line (:class:`StorageUnavailable`), and the heartbeat of the next worker fails and retries its trial.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
from mlflow import MlflowClient
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat  # the interface Optuna checks for heartbeats; not exported
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from pipelines.errors import UserError, chain, one_line
from pipelines.paths import check_writable
from sweeper import interrupts, records
from sweeper.connections import creation_lock, engine_kwargs
from sweeper.outcome import Outcome
from sweeper.overrides import positive_int
from sweeper.retry import FIRST_DELAY, MAX_DELAY, retrying
from sweeper.spool import LogQueue
from sweeper.tracking import TrialRun, resolve_tracking_uri
from sweeper.urls import absolute_sqlite, check_password, is_proxy_url, is_sqlite, mask_url

if TYPE_CHECKING:
    from optuna.study._frozen import FrozenStudy

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///sweeper.db"
STORAGE_ENV = "SWEEPER_STORAGE"
HEARTBEAT_SECONDS = 20  # a running trial's heartbeat period ($SWEEPER_HEARTBEAT_SECONDS)
GRACE_SECONDS = 180  # no heartbeat for this long: the trial is failed and retried ($SWEEPER_GRACE_SECONDS); it
# must outlast a database outage a worker survives (see outage_seconds), or the trials of live workers get failed
MAX_RETRY = 2  # retries of a trial whose worker died
OUTAGE_SECONDS = (
    120  # how long a worker waits for a database that refuses or drops connections ($SWEEPER_DB_OUTAGE_SECONDS)
)
# While it waits, the first sleep between tries and the longest (seconds, fractions allowed; sweeper.retry's
# FIRST_DELAY and MAX_DELAY unless set): tests of outages set them small, so that seconds of outage cost seconds
RETRY_DELAY_ENV = "SWEEPER_RETRY_DELAY"
RETRY_MAX_DELAY_ENV = "SWEEPER_RETRY_MAX_DELAY"
# Connection errors that no wait will mend: credentials or a database that is gone
PERMANENT_MARKERS = (
    "password authentication failed",
    "no password supplied",
    "does not exist",
    "could not translate host name",  # a typo in the host: said at once, not waited for
    "name or service not known",
)
# What PostgreSQL clients say when an open connection is cut (not when none can be made: that is not retried)
DISCONNECT_MARKERS = (
    "closed the connection",
    "terminating connection",
    "connection already closed",
    "connection has been closed",
    "connection reset",
)


def resolve_storage_url(url: str | None) -> str:
    """--storage, else $SWEEPER_STORAGE, else sqlite:///sweeper.db (made absolute)."""
    return absolute_sqlite(url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE)


def parse_storage_url(url: str) -> sqlalchemy.engine.URL:
    check_password(url, what="storage URL")
    try:
        return sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as err:
        raise UserError(
            f"malformed storage URL {mask_url(url)!r}: expected e.g. sqlite:///sweeper.db or "
            "postgresql+psycopg2://user:pass@host:5432/db"
        ) from err


def missing_sqlite_file(url: str) -> bool:
    """True for a SQLite URL whose file does not exist yet (opening it would create it)."""
    if not is_sqlite(url):
        return False
    database = parse_storage_url(url).database
    return not database or database == ":memory:" or not Path(database).exists()


def check_creatable(url: str) -> None:
    """Raise UserError when the SQLite file of ``url`` could not be made (its folder missing or read-only),
    before anything else of a study is."""
    if is_sqlite(url) and missing_sqlite_file(url):
        database = parse_storage_url(url).database
        if database and database != ":memory:":
            folder = Path(database).parent
            if not folder.is_dir():  # SQLite makes the file, not the folders above it
                raise UserError(f"cannot make the storage file {database}: the folder {folder} does not exist")
            check_writable(Path(database), what="storage file", folder=False)


def make_storage(
    url: str | None,
    *,
    heartbeat: bool = True,
    tracker_uri: str | None = None,
    runs_dir: str = "runs",
    idle: bool = False,
    pool_size: int | None = None,
    stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> BaseStorage:
    """The storage at ``url`` (see :func:`resolve_storage_url`) with a heartbeat (unless ``heartbeat`` is False:
    read-only use); on a server database also with pre-ping, reconnecting calls and at most ``pool_size``
    connections (default ``connections.MAX_CONNECTIONS``; none kept between calls when ``idle``: a process that
    only reads now and then). A server that refuses connections (down, restarting, full) is waited for like any
    outage, for up to $SWEEPER_DB_OUTAGE_SECONDS; the schema is made under ``connections.creation_lock``.
    ``grpc://HOST:PORT``: the storage proxy `sweeper storage serve` runs (``sweeper.proxy``), with a lease for
    the heartbeat. ``stale_trial_callback``: what the heartbeat does with a dead worker's trial (default
    :class:`StaleTrialHandler`)."""
    url = resolve_storage_url(url)
    if is_proxy_url(url):
        from sweeper.proxy import connect  # late: sweeper.proxy builds on this module

        return connect(url, heartbeat=heartbeat)
    parse_storage_url(url)
    kwargs: dict[str, Any] = {}
    if heartbeat:  # on SQLite too: the next `study run` fails and retries the trial of a process that was killed
        kwargs.update(
            heartbeat_interval=heartbeat_seconds(),
            grace_period=grace_seconds(),
            heartbeat_stale_trial_callback=stale_trial_callback or StaleTrialHandler(tracker_uri, runs_dir=runs_dir),
        )
    server = not is_sqlite(url)
    if server:
        first, longest = retry_delays()
        patience = outage_seconds()
        policy = retrying(when=is_connection_error, deadline=patience, first_delay=first, max_delay=longest,
                          what="opening the storage")  # fmt: skip
    else:
        policy = retrying(when=is_disconnect, what="opening the storage")
    try:
        storage = policy(_open, url, engine_kwargs(url, idle=idle, pool_size=pool_size), kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, optuna.exceptions.StorageInternalError) as err:
        detail = one_line(getattr(err, "orig", None) or err, limit=200)
        raise UserError(f"cannot open storage {mask_url(url)}: {detail}") from err
    if not server:
        return storage
    # get_storage wraps an RDBStorage in Optuna's own trial cache, as create_study would; ours goes around it.
    return ResilientStorage(
        optuna.storages.get_storage(storage),
        url=mask_url(url),
        outage_seconds=patience,
        first_delay=first,
        max_delay=longest,
    )


def _open(url: str, engine: dict[str, Any], kwargs: dict[str, Any]) -> RDBStorage:
    """Optuna's RDB storage, its schema made (or checked) by one process at a time. On a server, in two steps so
    that the process never holds more than its connections: Optuna makes the schema on a throwaway storage that
    runs on the lock's one connection, then the storage used is opened without making it."""
    if is_sqlite(url):
        with creation_lock(url):
            return RDBStorage(url, engine_kwargs=engine, **kwargs)
    with creation_lock(url) as locked:  # the schema made or checked, on the lock's one connection
        RDBStorage(url, engine_kwargs=locked)
    return RDBStorage(url, engine_kwargs=engine, skip_compatibility_check=True, skip_table_creation=True, **kwargs)


class StorageUnavailable(UserError):
    """The database did not answer for $SWEEPER_DB_OUTAGE_SECONDS: the worker stops (exit 2, one line)."""


def is_connection_error(err: BaseException) -> bool:
    """True when a database call failed on its connection (refused, cut, lost, the server restarting or refusing
    new connections, a commit whose connection died) rather than on the statement or the credentials. Never for
    a Ctrl-C (whatever it interrupted), nor once a stop was requested."""
    if not isinstance(err, Exception) or interrupts.requested():
        return False
    for seen in chain(err):
        if isinstance(seen, sqlalchemy.exc.DBAPIError):
            if seen.connection_invalidated:
                return True
            if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
                return not any(marker in str(seen).lower() for marker in PERMANENT_MARKERS)
    return False


def is_disconnect(err: BaseException) -> bool:
    """True when a database call failed because its open connection was cut (a restart, pg_terminate_backend);
    a connection that cannot be made at all is not one (opening the storage then fails at once, naming it)."""
    if not isinstance(err, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError)):
        return False
    return any(
        isinstance(seen, sqlalchemy.exc.DBAPIError)
        and (seen.connection_invalidated or any(marker in str(seen).lower() for marker in DISCONNECT_MARKERS))
        for seen in chain(err)
    )


def outage_seconds() -> int:
    """How long a worker waits for the database: $SWEEPER_DB_OUTAGE_SECONDS (120), at most what the heartbeat's
    grace period leaves. A worker that comes back must record a heartbeat before others find its trial stale:
    grace > heartbeat + outage + the last back-off sleep (the longest, :func:`retry_delays`, rounded up)."""
    heartbeat, grace = heartbeat_seconds(), grace_seconds()
    last_sleep = math.ceil(retry_delays()[1])
    limit = max(1, grace - heartbeat - last_sleep - 1)
    if os.environ.get("SWEEPER_DB_OUTAGE_SECONDS"):
        wanted = env_seconds("SWEEPER_DB_OUTAGE_SECONDS", OUTAGE_SECONDS)
        if wanted > limit:
            raise UserError(
                f"SWEEPER_DB_OUTAGE_SECONDS ({wanted}) must leave the heartbeat time to resume before its grace "
                f"period ends: at most SWEEPER_GRACE_SECONDS - SWEEPER_HEARTBEAT_SECONDS - {last_sleep + 1} "
                f"= {limit}; raise SWEEPER_GRACE_SECONDS or lower it"
            )
        return wanted
    return min(OUTAGE_SECONDS, limit)


def heartbeat_seconds() -> int:
    """How often a running trial's heartbeat (or lease) is recorded: $SWEEPER_HEARTBEAT_SECONDS (HEARTBEAT_SECONDS)."""
    return env_seconds("SWEEPER_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS)


def grace_seconds() -> int:
    """How long without a heartbeat makes a running trial stale: $SWEEPER_GRACE_SECONDS (GRACE_SECONDS)."""
    return env_seconds("SWEEPER_GRACE_SECONDS", GRACE_SECONDS)


def retry_delays() -> tuple[float, float]:
    """The first and the longest sleep (seconds) between the tries of a storage call during an outage:
    $SWEEPER_RETRY_DELAY and $SWEEPER_RETRY_MAX_DELAY, else sweeper.retry's FIRST_DELAY and MAX_DELAY."""
    first = env_delay(RETRY_DELAY_ENV, FIRST_DELAY)
    longest = env_delay(RETRY_MAX_DELAY_ENV, max(MAX_DELAY, first))
    if longest < first:
        raise UserError(f"{RETRY_MAX_DELAY_ENV} ({longest:g}) must be at least {RETRY_DELAY_ENV} ({first:g})")
    return first, longest


def env_seconds(name: str, default: int) -> int:
    """A whole number of seconds >= 1 from the environment variable ``name``, else ``default``."""
    text = os.environ.get(name)
    return positive_int(text, name=name, expected="a whole number of seconds") if text else default


def env_delay(name: str, default: float) -> float:
    """A number of seconds > 0 (fractions allowed: 0.2) from the environment variable ``name``, else ``default``."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError as err:
        raise UserError(f"{name} must be a number of seconds, got {text!r}") from err
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"{name} must be a number of seconds > 0, got {text!r}")
    return value


class StaleTrialHandler:
    """Heartbeat callback for a trial whose worker died: end its MLflow run as FAILED, then retry the trial."""

    def __init__(self, tracker_uri: str | None, *, runs_dir: str = "runs") -> None:
        self.tracker_uri = tracker_uri
        self.runs_dir = runs_dir
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=False)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = records.run_id(trial, study.user_attrs)
        if run_id:
            # No time is logged: the worker's last moment is unknown here (it went silent up to a grace period
            # ago, or days ago on SQLite), and MLflow keeps the run's start and end. Straight to a log queue,
            # which spools when MLflow is down too; the retry below must happen either way.
            spool = Path(self.runs_dir) / study.study_name / "spool"
            try:
                queue = LogQueue(MlflowClient(tracking_uri=resolve_tracking_uri(self.tracker_uri)), spool)
                TrialRun(queue, run_id, fed_here=False).finish(Outcome.FAILED, reason="worker lost (no heartbeat)")
            except Exception as err:  # noqa: BLE001 - an unusable tracking URI: the retry still happens
                log.warning("could not end the MLflow run %s of stale trial %d: %s", run_id, trial.number, err)
        self.retry(study, trial)


class ResilientStorage(BaseStorage, BaseHeartbeat):
    """A storage that delegates every call to ``backend`` (Optuna's cached RDB storage) and retries a call whose
    database connection failed (:func:`is_connection_error`), with back-off (sleeping ``first_delay`` seconds,
    doubled after each try up to ``max_delay``), for up to ``outage_seconds``, on a fresh connection each time
    (pre-ping replaces the dead ones in the pool). Past that, it raises :class:`StorageUnavailable`, and so does
    every later call, at once. A failed heartbeat is logged, never raised: the heartbeat thread must outlive an
    outage.

    Optuna's writes are one transaction each, so a retried call either did nothing or is repeated whole. A state
    change whose commit landed before the connection died is recognised on retry (the trial is then finished).
    The one non-idempotent call, creating a trial, could at worst leave one extra trial if its reply was lost.
    """

    def __init__(
        self,
        backend: BaseStorage,
        *,
        url: str,
        outage_seconds: float = OUTAGE_SECONDS,
        when: Callable[[BaseException], bool] = is_connection_error,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
    ) -> None:
        if not isinstance(backend, BaseHeartbeat):
            raise TypeError(f"{type(backend).__name__} has no heartbeat interface")
        self._backend = backend
        self._url = url  # masked: it goes into messages
        self._outage_seconds = outage_seconds
        self._when = when  # which errors are an outage (is_connection_error; the proxy's: sweeper.proxy)
        self._first_delay, self._max_delay = first_delay, max_delay
        self._unavailable: StorageUnavailable | None = None
        self._heartbeat_lost = False  # warned once that heartbeats are not recorded

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._unavailable is not None:
            raise self._unavailable
        method: Callable[..., Any] = getattr(self._backend, name)
        tries = 0

        def attempt() -> Any:
            nonlocal tries
            tries += 1
            try:
                return method(*args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if tries > 1 and name == "set_trial_state_values":
                    return True  # our first try committed before the connection died
                raise

        try:
            policy = retrying(
                when=self._when,
                deadline=self._outage_seconds,
                first_delay=self._first_delay,
                max_delay=self._max_delay,
                what=f"storage call {name}",
            )
            return policy(attempt)
        except Exception as err:
            if not self._when(err):
                raise
            self._unavailable = StorageUnavailable(
                f"the database at {self._url} did not answer for {self._outage_seconds:g} s "
                f"(SWEEPER_DB_OUTAGE_SECONDS; {type(err).__name__}): stopped; the running trial is failed and retried "
                "by the next `sweeper study run` once the database is back"
            )
            raise self._unavailable from err

    # -- studies
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self._call("create_new_study", directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._call("delete_study", study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call("set_study_user_attr", study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call("set_study_system_attr", study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._call("get_study_id_from_name", study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._call("get_study_name_from_id", study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._call("get_study_directions", study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call("get_study_user_attrs", study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call("get_study_system_attrs", study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._call("get_all_studies")

    # -- trials
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._call("create_new_trial", study_id, template_trial)

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        self._call("set_trial_param", trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._call("get_trial_id_from_study_id_trial_number", study_id, trial_number)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._call("get_best_trial", study_id)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        return self._call("set_trial_state_values", trial_id, state, values)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._call("set_trial_intermediate_value", trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call("set_trial_user_attr", trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call("set_trial_system_attr", trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._call("get_trial", trial_id)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._call("get_all_trials", study_id, deepcopy=deepcopy, states=states)

    # -- heartbeat (BaseHeartbeat's interface, _get_stale_trial_ids included)
    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self._call("record_heartbeat", trial_id)
        except StorageUnavailable:  # the heartbeat thread must not die: the main thread reports the outage
            if not self._heartbeat_lost:
                log.warning("heartbeats are not recorded: the database at %s is unavailable", self._url)
            self._heartbeat_lost = True

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self._call("_get_stale_trial_ids", study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self._backend.get_heartbeat_interval()  # type: ignore[attr-defined]

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._backend.get_heartbeat_stale_trial_callback()  # type: ignore[attr-defined]
