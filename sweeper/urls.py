"""URLs that reach a person or a record: the one masking function (and a stream that applies it to all the
console script prints), and SQLite paths made absolute."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TextIO

SQLITE_PREFIX = "sqlite:///"


URL = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*:?//[^\s'"<>]+""")  # a URL in free text, or one missing its colon


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ***: safe to log, print or store.

    The one masking function. The password runs from the first ``:`` after the user name to the last ``@`` of the
    URL, so one holding ``/ # ? : %`` (percent-encoded or not) or even a raw ``@`` is masked whole, where a URL
    parser would stop early and leave the rest in the host or path.
    """
    return URL.sub(_mask_one, text)


def _mask_one(match: re.Match[str]) -> str:
    url = match.group(0)
    scheme, slashes, rest = url.partition("//")
    userinfo, at, host = rest.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not at or not colon or "/" in user:
        return url
    return f"{scheme}{slashes}{user}:***@{host}"


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
