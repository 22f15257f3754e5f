"""The one exception type for problems the user can fix (bad config, bad data, bad paths)."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; its message is one line naming the culprit and what to do.

    The CLI prints it as ``error: <message>`` and exits 2. Anything else is a bug and keeps its traceback.
    """
