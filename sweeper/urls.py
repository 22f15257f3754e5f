"""URLs that reach a person or a record: the one masking function (and a stream that applies it to all the
console script prints), and SQLite paths made absolute."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

SQLITE_PREFIX = "sqlite:///"
MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default (its --host and --port)
# The UI's address for a browser where the tracking URI is not one (a container reaching `http://mlflow:5000`
# by its service name): docker-compose.yml sets it to the published port.
UI_ENV = "SWEEPER_MLFLOW_UI"
MASK = "***"  # what a password becomes


# The password of a URL in free text (or of one missing the colon after its scheme): from the ":" after the user
# name to the first "@", the one SQLAlchemy and libpq split at, whatever lies between (/ # ? : % spaces quotes).
USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*:?//[^\s:/@'\"<>]*:)[^@\n]*@")
# A password given as a query parameter (libpq reads ?password=...).
QUERY_PASSWORD = re.compile(r"(?P<head>[?&;]password=)[^&\s'\"<>]*", re.IGNORECASE)


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ***: safe to log, print or store.

    The one masking function: a URL's userinfo password (``user:***@``) and a ``password=`` query parameter.
    A raw ``@`` inside a password splits it where every URL parser splits (see :func:`check_password`).
    """
    return QUERY_PASSWORD.sub(rf"\g<head>{MASK}", USERINFO.sub(rf"\g<head>{MASK}@", text))


def check_password(url: str, *, what: str) -> None:
    """Refuse a URL whose password holds a raw ``@``: drivers would take the rest for the host, and name it (and
    so part of the password) in their errors. The message does not show the URL."""
    _, slashes, rest = url.partition("//")
    if slashes and rest.count("@") > 1 and ":" in rest.split("@", 1)[0]:  # a password, and an @ after it
        from pipelines.errors import UserError  # late: this module is imported by the CLI at start-up

        raise UserError(f"the password of the {what} holds a raw '@': write it percent-encoded as %40")


def absolute_sqlite(url: str) -> str:
    """sqlite:///relative.db -> sqlite:////abs/dir/relative.db; other URLs unchanged.

    Optuna and MLflow each cache one engine per URL, so one relative URL must not name two files when the
    working directory changes.
    """
    if url.startswith(SQLITE_PREFIX) and not url.startswith(SQLITE_PREFIX + "/") and url != SQLITE_PREFIX + ":memory:":
        return SQLITE_PREFIX + str(Path(url[len(SQLITE_PREFIX) :]).absolute())
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


PROXY_PREFIX = "grpc://"  # a storage URL naming the storage proxy (`sweeper storage serve`): grpc://HOST:PORT


def is_proxy_url(url: str) -> bool:
    return url.startswith(PROXY_PREFIX)


@dataclass(frozen=True)
class RunsLink:
    """Where a person sees an experiment's runs: ``url`` in a browser, once ``serve`` (a shell command, None for
    a server) has started the MLflow UI over a local store."""

    url: str
    serve: str | None = None


def runs_view(experiment_id: str) -> str:
    """The MLflow UI's fragment for an experiment's runs table. MLflow 3 opens an experiment in its GenAI view
    (an empty Traces overview, runs under "Evaluations") unless the link asks for the machine-learning one."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def runs_link(tracking_uri: str, experiment_id: str) -> RunsLink | None:
    """The experiment's runs view for a tracking URI: an http(s) URI is the UI itself (its user name and password
    left out: the browser asks), or $SWEEPER_MLFLOW_UI where that is set; a local store (SQLite, a folder, a
    database URL) is seen through `mlflow ui` at :data:`MLFLOW_UI`. None for a store no `mlflow ui` can open
    (Databricks)."""
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("http", "https"):
        own = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"  # no user info
        base = os.environ.get(UI_ENV, "").strip() or own
        return RunsLink(f"{base.rstrip('/')}/{runs_view(experiment_id)}")
    if tracking_uri.startswith(("databricks", "uc:")):  # "databricks", "databricks://profile", "databricks-uc"
        return None
    serve = f"mlflow ui --backend-store-uri {shlex.quote(mask_url(tracking_uri))}"
    return RunsLink(f"{MLFLOW_UI}/{runs_view(experiment_id)}", serve=serve)


class MaskingStream:
    """A text stream that masks URL passwords in everything written to it (see :func:`mask_url`).

    The console script wraps stdout and stderr in it, so log lines, warnings, tracebacks and the libraries' own
    messages are masked too, not only the messages our code builds (those mask their URLs themselves).
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(mask_url(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding ...: the wrapped stream's
        return getattr(self._stream, name)
