"""`sweeper storage ...`: the storage proxy many workers share (sweeper.proxy)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sweeper.cli._common import STORE_PANEL, StorageOpt, user_errors

if TYPE_CHECKING:
    from sweeper.proxy import Serving

storage_app = typer.Typer(
    help="Serve one database to many workers: Optuna's gRPC storage proxy, with a lease for dead workers.",
    no_args_is_help=True,
)

PROXY_PANEL = "Proxy"


@storage_app.command("serve")
@user_errors
def serve_cmd(
    storage: StorageOpt = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on; one that is not loopback needs --allow-remote.",
            rich_help_panel=PROXY_PANEL,
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", help="Port to listen on (0: a free one).", rich_help_panel=PROXY_PANEL)
    ] = 13000,
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            help="Calls served at once; the database pool is one more (the reaper).",
            rich_help_panel=PROXY_PANEL,
        ),
    ] = 10,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Listen on a non-loopback --host. The proxy has no login and no TLS: only on a private network "
            "or behind a TLS-terminating sidecar (README).",
            rich_help_panel=PROXY_PANEL,
        ),
    ] = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking URI where a dead worker's trial run is ended FAILED; default: each study's "
            "recorded one, else $MLFLOW_TRACKING_URI.",
            show_default=False,
            rich_help_panel=STORE_PANEL,
        ),
    ] = None,
    runs_dir: Annotated[
        Path,
        typer.Option(
            "--runs-dir",
            help="Where those MLflow updates wait while MLflow is down (<runs-dir>/<study>/spool).",
            rich_help_panel=STORE_PANEL,
        ),
    ] = Path("runs"),
) -> None:
    """Serve the storage at --storage to workers started with --storage grpc://HOST:PORT, until Ctrl-C or SIGTERM.

    One process holds the database connections (at most --threads + 1). A worker behind it renews a lease on
    its running trial every $SWEEPER_HEARTBEAT_SECONDS; a trial whose lease is older than $SWEEPER_GRACE_SECONDS
    is failed, its MLflow run ended FAILED, and it is retried.

    Example: sweeper storage serve --storage postgresql+psycopg2://user@db-host:5432/optuna
    """
    from sweeper.connections import set_role
    from sweeper.proxy import serve

    set_role("storage")  # its connections are "sweeper storage host:pid" in pg_stat_activity
    try:
        serve(
            storage,
            host=host,
            port=port,
            threads=threads,
            allow_remote=allow_remote,
            tracking_uri=tracking_uri,
            runs_dir=str(runs_dir),
            ready=_ready,
        )
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the normal end of a server
        typer.echo("storage proxy stopped")


def _ready(serving: Serving) -> None:
    """The one line a person (or a script waiting for it) reads once the proxy listens."""
    typer.echo(  # the database's URL first: a grpc:// URL before an "@" on one line would be masked up to it
        f"storage proxy for {serving.storage_url} ready at {serving.address} ({serving.threads} threads, at most "
        f"{serving.threads + 1} database connections; leases renewed every {serving.heartbeat_seconds} s, "
        f"expired after {serving.grace_seconds} s)"
    )
    sys.stdout.flush()  # a pipe buffers: whoever waits for this line must get it now
