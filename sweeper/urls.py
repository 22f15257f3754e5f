"""URLs that reach a person or a record: the one masking function, and SQLite paths made absolute."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SQLITE_PREFIX = "sqlite:///"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***: safe to log, print or store as a tag."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


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
