"""URLs that reach a person or a record: the one masking function (and a stream that applies it to all the
console script prints), and SQLite paths made absolute."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TextIO

SQLITE_PREFIX = "sqlite:///"


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
    return QUERY_PASSWORD.sub(r"\g<head>***", USERINFO.sub(r"\g<head>***@", text))


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
