"""Serve Optuna Dashboard on 0.0.0.0:8080 for the storage URL in OPTUNA_STORAGE.

The entrypoint of docker/dashboard.Dockerfile. It reads the URL from the environment rather than
taking it as an argument of `optuna-dashboard`, so the database password never shows in the
process list of the host (`ps` there lists container processes with their arguments).
"""

from __future__ import annotations

import os
import sys

import optuna_dashboard

PORT = 8080  # the container port docker-compose.yml publishes


def main() -> None:
    storage = os.environ.get("OPTUNA_STORAGE", "")
    if not storage:
        sys.exit("dashboard-serve: set OPTUNA_STORAGE to the Optuna storage URL")
    optuna_dashboard.run_server(storage, host="0.0.0.0", port=PORT)


if __name__ == "__main__":
    main()
