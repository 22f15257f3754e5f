"""Serve Optuna Dashboard on 0.0.0.0:8080 for the storage URL in OPTUNA_STORAGE, with gunicorn's threads.

OPTUNA_STORAGE=grpc://HOST:PORT names the stack's storage proxy (`sweeper storage serve`, docker-compose.yml's
`storage` service): the dashboard reads and writes through it with Optuna's own client, as the workers do, so
PostgreSQL sees the proxy's connections only and this container holds no database password.

The entrypoint of docker/dashboard.Dockerfile. optuna-dashboard's own ``run_server`` is wsgiref's
single-threaded server: one slow request (a study's trials while workers write) holds up every other
one, the healthcheck included. This runs its WSGI app (``optuna_dashboard.wsgi``) in gunicorn's
threaded worker instead, as a custom application (gunicorn's documented ``BaseApplication``), so the
configuration stays in this file. The URL comes from the environment, without a password (libpq reads
PGPASSWORD, which docker/secrets-env.sh sets from a secret file), so no password shows in the process
list or in the container's configuration.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import optuna_dashboard
from gunicorn.app.base import BaseApplication

PORT = 8080  # the container port docker-compose.yml publishes
THREADS = 8  # requests served at once; one process, so one storage cache


class DashboardServer(BaseApplication):  # type: ignore[misc]  # gunicorn has no type hints
    def __init__(self, storage: str) -> None:
        self.storage = storage
        super().__init__()

    def load_config(self) -> None:
        settings = {
            "bind": f"0.0.0.0:{PORT}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": THREADS,
            "timeout": 120,
            "accesslog": None,
            "errorlog": "-",
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return optuna_dashboard.wsgi(storage_of(self.storage))


def storage_of(url: str) -> Any:
    """Optuna's gRPC client for grpc://HOST:PORT (optuna-dashboard takes a storage object as well as a URL);
    any other URL as it is."""
    if not url.startswith("grpc://"):
        return url
    from urllib.parse import urlsplit

    from optuna.storages import GrpcStorageProxy

    parts = urlsplit(url)
    if not parts.hostname or parts.port is None:
        sys.exit(f"dashboard-serve: OPTUNA_STORAGE {url!r} must be grpc://HOST:PORT")
    return GrpcStorageProxy(host=parts.hostname, port=parts.port)


def main() -> None:
    storage = os.environ.get("OPTUNA_STORAGE", "")
    if not storage:
        sys.exit("dashboard-serve: set OPTUNA_STORAGE to the Optuna storage URL")
    DashboardServer(storage).run()


if __name__ == "__main__":
    main()
