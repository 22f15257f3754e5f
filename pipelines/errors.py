"""The one exception type for problems the user can fix, and the one-line rendering of any error."""

from __future__ import annotations

import errno
from collections.abc import Iterator


class UserError(Exception):
    """A problem the user can fix (bad config, bad data, bad paths); its message is one line naming the culprit and
    what to do.

    Front ends show the message as is (the sweeper CLI prints ``error: <message>`` and exits 2). Anything else is a
    bug and keeps its traceback.
    """


def one_line(err: BaseException, *, limit: int | None = None, with_type: bool = False) -> str:
    """``err``'s message on one line: every run of whitespace (newlines included) becomes one space.

    ``with_type`` puts the exception's type name first (``"ValueError: bad value"``); the type name alone stands
    for an empty message (``KeyError()`` -> ``"KeyError"``). Cut to its first ``limit`` characters when given.
    The project's one way of quoting a foreign error inside a one-line message.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    message = " ".join(str(err).split())
    kind = type(err).__name__
    text = (f"{kind}: {message}" if with_type else message) if message else kind
    return text if limit is None else text[:limit]


def chain(err: BaseException) -> Iterator[BaseException]:
    """``err``, then what caused it (``__cause__``, else ``__context__``), and so on: the one walk over an
    exception chain (a database driver's error sits a few links under SQLAlchemy's and Optuna's). Stops at a
    cycle."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


FULL_MARKERS = ("database or disk is full",)  # SQLite's words for ENOSPC
FREE_SPACE = "free space and run the command again"


def out_of_space(err: BaseException) -> str | None:
    """When ``err`` (or what caused it) is a full disk, one line saying so and naming the file; else None."""
    for seen in chain(err):
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f": {seen.filename}" if seen.filename else ""
            return f"no space left on the device{where}; {FREE_SPACE}"
        if isinstance(seen, UserError) and "No space left on device" in str(seen):
            return str(seen) if str(seen).endswith(FREE_SPACE) else f"{seen}; {FREE_SPACE}"
        if any(marker in str(seen) for marker in FULL_MARKERS):
            return f"the database or disk is full (SQLite); {FREE_SPACE}"
    return None
