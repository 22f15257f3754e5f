"""Many workers, few database connections: Optuna's gRPC storage proxy (`sweeper storage serve`) and its lease.

One process holds the database connections and serves Optuna's storage API over gRPC with Optuna's own servicer
(``optuna.storages._grpc``); workers take ``--storage grpc://HOST:PORT`` and talk to it with Optuna's own client,
``GrpcStorageProxy``. What Optuna's proxy leaves out, added here:

- **The lease.** ``GrpcStorageProxy`` implements no heartbeat, so a killed worker's trial would stay RUNNING for
  ever. Behind the proxy, a worker's heartbeat thread (Optuna's, every $SWEEPER_HEARTBEAT_SECONDS) renews its
  running trial's lease by writing the trial system attribute :data:`sweeper.records.LEASE`. The proxy does not
  store that attribute: it records the trial's heartbeat in Optuna's own heartbeat table, stamped by the
  database's clock. So workers whose clocks disagree still agree on what is stale, and workers connected
  directly and through the proxy recover each other's trials.
- **The reaper.** Inside `storage serve`, which holds the direct connection, every heartbeat period: Optuna's
  ``fail_stale_trials`` on every study. A trial whose lease is older than $SWEEPER_GRACE_SECONDS is failed, its
  MLflow run ended FAILED and the trial retried (``StaleTrialHandler``, as a worker's heartbeat does directly),
  with the study's recorded tracking URI unless ``--tracking-uri`` names one.
- **Outages.** The proxy's storage is ``make_storage``'s: a database call is retried through an outage for up to
  $SWEEPER_DB_OUTAGE_SECONDS; past that the call answers UNAVAILABLE and the server stops with one line (a
  supervisor restarts it). Workers retry an UNAVAILABLE call (the proxy restarting, or the database behind it
  gone) the same way, for up to $SWEEPER_DB_OUTAGE_SECONDS of their own.
- **Bounded connections.** The database pool is the server's threads plus one (the reaper), with no overflow.
- **Not an open door.** It binds 127.0.0.1 unless told otherwise: it has no login and no TLS (README).

Optuna's ``run_grpc_proxy_server`` itself is not used: it builds its servicer and server inside and blocks until
the process dies, with no place for the lease, the reaper, the error mapping or a clean stop. Its pieces are
(the servicer, subclassed; the generated service; the client, subclassed; ``fail_stale_trials`` and
``RetryHeartbeatStaleTrialCallback`` behind ``StaleTrialHandler``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
import optuna
from optuna.storages import BaseStorage, GrpcStorageProxy, fail_stale_trials
from optuna.storages._grpc.auto_generated import api_pb2, api_pb2_grpc  # Optuna's generated service; not exported
from optuna.storages._grpc.servicer import OptunaStorageProxyService  # Optuna's servicer; not exported
from optuna.storages._heartbeat import BaseHeartbeat  # the interface Optuna checks for heartbeats; not exported
from optuna.trial import FrozenTrial

from pipelines.errors import UserError, one_line
from sweeper import interrupts, records
from sweeper.storage import (
    ResilientStorage,
    StaleTrialHandler,
    StorageUnavailable,
    grace_seconds,
    heartbeat_seconds,
    make_storage,
    outage_seconds,
    resolve_storage_url,
    retry_delays,
)
from sweeper.urls import MASK, PROXY_PREFIX, is_proxy_url, is_sqlite, mask_url

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # loopback: another machine reaches the proxy only when told to (allow_remote)
DEFAULT_PORT = 13000  # Optuna's run_grpc_proxy_server's default port
DEFAULT_THREADS = 10  # Optuna's default thread pool; the database pool is one more (the reaper)
CONNECT_SECONDS = 10.0  # how long a client waits for the proxy to answer at all before it says none does
STOP_SECONDS = 5.0  # on Ctrl-C/SIGTERM, how long calls in flight get to finish


# -- the address ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyAddress:
    host: str
    port: int

    @property
    def target(self) -> str:
        """host:port as gRPC takes it (an IPv6 address in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return PROXY_PREFIX + self.target


def parse_proxy_url(url: str) -> ProxyAddress:
    """grpc://HOST:PORT -> its address; UserError for anything else (a user, a password, a path, options)."""
    expected = f"storage URL {mask_url(url)!r} must be grpc://HOST:PORT, the address `sweeper storage serve` prints"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as err:
        raise UserError(expected) from err
    if not parts.hostname or port is None or parts.username or parts.password or parts.path.strip("/"):
        raise UserError(expected)
    if parts.query or parts.fragment:
        raise UserError(expected)
    return ProxyAddress(parts.hostname, port)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1); a name other than localhost is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- the client: a worker behind the proxy -------------------------------------------------------------------


class LeasedProxy(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC storage client with a lease for the heartbeat it lacks: Optuna's heartbeat thread calls
    :meth:`record_heartbeat` every ``heartbeat_seconds`` while a trial runs (None: no heartbeat, read-only use).
    Stale trials are found by the reaper in `storage serve`, not here."""

    def __init__(self, address: ProxyAddress, *, heartbeat_seconds: int | None) -> None:
        self._heartbeat_seconds = heartbeat_seconds
        host = f"[{address.host}]" if ":" in address.host else address.host
        super().__init__(host=host, port=address.port)

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, records.LEASE, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return []  # the reaper inside `storage serve` fails them; the database's heartbeat table is not seen here

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_seconds

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return None


def is_proxy_outage(err: BaseException) -> bool:
    """True when a call through the proxy failed because the proxy (or the database behind it) is unavailable
    for now: the proxy restarting or unreachable, or the database down past the proxy's own patience. Never for
    a Ctrl-C, nor once a stop was requested."""
    if not isinstance(err, Exception) or interrupts.requested():
        return False
    return isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def connect(url: str, *, heartbeat: bool = True) -> BaseStorage:
    """The storage behind the proxy at ``url`` (grpc://HOST:PORT), with a lease renewed every
    $SWEEPER_HEARTBEAT_SECONDS (unless ``heartbeat`` is False: read-only use) and calls retried while the proxy
    is unavailable, for up to $SWEEPER_DB_OUTAGE_SECONDS. UserError when no proxy answers there."""
    address = parse_proxy_url(url)
    seconds = heartbeat_seconds() if heartbeat else None
    patience = outage_seconds()  # checked before anything connects
    proxy = LeasedProxy(address, heartbeat_seconds=seconds)
    try:
        proxy.wait_server_ready(timeout=CONNECT_SECONDS)
    except ConnectionError as err:
        proxy.close()
        raise UserError(
            f"cannot open storage {address}: no storage proxy answered within {CONNECT_SECONDS:g} s "
            "(start one with `sweeper storage serve --storage postgresql://...`)"
        ) from err
    first_delay, max_delay = retry_delays()
    return ResilientStorage(
        proxy, url=str(address), outage_seconds=patience, when=is_proxy_outage, first_delay=first_delay,
        max_delay=max_delay,
    )  # fmt: skip


# -- the server ---------------------------------------------------------------------------------------------------


class LeaseServicer(OptunaStorageProxyService):
    """Optuna's servicer, with the lease: a worker's :data:`records.LEASE` write becomes the trial's heartbeat."""

    def __init__(self, storage: BaseStorage) -> None:
        super().__init__(storage)
        self._storage = storage

    def SetTrialSystemAttribute(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.key != records.LEASE:
            return super().SetTrialSystemAttribute(request, context)
        self._storage.record_heartbeat(request.trial_id)  # type: ignore[attr-defined]
        return api_pb2.SetTrialSystemAttributeReply()


class OutageInterceptor(grpc.ServerInterceptor):
    """A call that failed because the database stayed away past the proxy's patience answers UNAVAILABLE (one
    line, no password), which clients retry, instead of gRPC's UNKNOWN with a traceback in the server's log."""

    def __init__(self, unavailable: type[Exception]) -> None:
        self.unavailable = unavailable

    def intercept_service(self, continuation: Callable[..., Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        unavailable = self.unavailable

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return inner(request, context)
            except unavailable as err:
                context.abort(grpc.StatusCode.UNAVAILABLE, mask_url(str(err)))

        return handler._replace(unary_unary=unary_unary)  # Optuna's handlers are grpc's namedtuples


class Reaper:
    """The stale-trial callback of `storage serve`: end the dead worker's MLflow run FAILED and retry the trial
    (:class:`StaleTrialHandler`), with ``tracking_uri``, else the study's recorded URI (when it carries no masked
    password), else $MLFLOW_TRACKING_URI; with none of them the trial is retried and its run left as it was."""

    def __init__(self, tracking_uri: str | None, *, runs_dir: str) -> None:
        self.tracking_uri = tracking_uri
        self.runs_dir = runs_dir

    def uri_for(self, study: optuna.Study) -> str | None:
        recorded = study.user_attrs.get(records.TRACKING_URI)
        usable = recorded if recorded and MASK not in recorded else None
        return self.tracking_uri or usable or os.environ.get("MLFLOW_TRACKING_URI") or None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        uri = self.uri_for(study)
        handler = StaleTrialHandler(uri, runs_dir=self.runs_dir)
        if uri is None:
            handler.retry(study, trial)
        else:
            handler(study, trial)
        note = "" if uri is not None else "; its MLflow run is left as it was (no tracking URI: pass --tracking-uri)"
        log.warning("trial %d of study %r lost its worker (no lease): failed and retried%s", trial.number,
                    study.study_name, note)  # fmt: skip

    def reap(self, storage: BaseStorage) -> None:
        """One pass over every study: fail and retry the trials whose lease ran out (Optuna's fail_stale_trials,
        which calls this object for each)."""
        for summary in storage.get_all_studies():
            fail_stale_trials(optuna.Study(study_name=summary.study_name, storage=storage))


@dataclass(frozen=True)
class Serving:
    """What `storage serve` is serving, for its ready line."""

    address: ProxyAddress
    storage_url: str  # masked
    threads: int
    heartbeat_seconds: int
    grace_seconds: int


def check_serve_options(url: str, *, host: str, threads: int, allow_remote: bool) -> None:
    """UserError for a storage the proxy cannot front, a thread count below 1, or a non-loopback ``host`` without
    ``allow_remote``."""
    if is_proxy_url(url):
        raise UserError(f"--storage {mask_url(url)} is a storage proxy already: give the database's URL")
    if is_sqlite(url):
        raise UserError(
            "the storage proxy fronts a server database (many workers): give --storage postgresql://..., "
            "not SQLite, which its threads would lock"
        )
    if threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    if not allow_remote and not is_loopback(host):
        raise UserError(
            f"--host {host} is not a loopback address: the proxy has no login and no TLS, and anyone who reaches "
            "it can read and change every study; pass --allow-remote only on a private network, or behind a "
            "TLS-terminating sidecar (README, Many workers)"
        )


def serve(
    url: str | None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    threads: int = DEFAULT_THREADS,
    allow_remote: bool = False,
    tracking_uri: str | None = None,
    runs_dir: str = "runs",
    ready: Callable[[Serving], None],
) -> None:
    """Serve the storage at ``url`` (None: $SWEEPER_STORAGE) on host:port (port 0: a free one) until a stop
    request (KeyboardInterrupt, from the CLI's Ctrl-C/SIGTERM handler); ``ready`` hears once it listens. The main
    thread reaps stale trials every heartbeat period; calls in flight get STOP_SECONDS to finish on the way out.
    Raises StorageUnavailable when the database stayed away past $SWEEPER_DB_OUTAGE_SECONDS."""
    url = resolve_storage_url(url)
    check_serve_options(url, host=host, threads=threads, allow_remote=allow_remote)
    reaper = Reaper(tracking_uri, runs_dir=runs_dir)
    storage = make_storage(url, runs_dir=runs_dir, pool_size=threads + 1, stale_trial_callback=reaper)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="storage-proxy"),
        interceptors=[OutageInterceptor(StorageUnavailable)],
    )
    api_pb2_grpc.add_StorageServiceServicer_to_server(LeaseServicer(storage), server)
    address = ProxyAddress(host, port)
    try:
        bound = server.add_insecure_port(address.target)
    except RuntimeError as err:
        raise UserError(f"cannot listen on {address.target}: {one_line(err)} (is the port in use?)") from err
    address = ProxyAddress(host, bound)
    heartbeat = heartbeat_seconds()
    server.start()
    try:
        ready(Serving(address, mask_url(url), threads, heartbeat, grace_seconds()))
        while True:
            with interrupts.deferred():  # a stop waits for the pass to end: no trial failed and left unretried
                try:
                    reaper.reap(storage)
                except Exception:
                    if not interrupts.requested():  # a stop cut a database call short: stopping is what is left
                        raise
            interrupts.check()
            time.sleep(heartbeat)  # a stop request interrupts the sleep at once
    finally:
        server.stop(grace=STOP_SECONDS).wait()
