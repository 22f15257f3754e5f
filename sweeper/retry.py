"""Retry with back-off: the one policy for every call sweeper retries (storage calls, MLflow operations).

Built on tenacity rather than a hand-written loop: attempts, waits, the retry predicate and logging are its
well-tested parts. Each caller names what may pass (a dropped database connection, an unreachable server).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import tenacity

log = logging.getLogger(__name__)

RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)  # seconds slept before the 2nd..5th try: ~7.5 s of patience in all


def retrying(
    *, when: Callable[[BaseException], bool], delays: Sequence[float] = RETRY_DELAYS, what: str | None = None
) -> tenacity.Retrying:
    """A tenacity policy: retry while ``when(error)`` holds, sleeping ``delays`` in turn; then re-raise the last
    error as it is. ``what``, if given, names the call in a warning logged before each sleep."""

    def warn(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s failed (%s); retrying in %.1fs", what, type(error).__name__, wait)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(when),
        wait=tenacity.wait_chain(*(tenacity.wait_fixed(d) for d in delays)) if delays else tenacity.wait_none(),
        stop=tenacity.stop_after_attempt(len(delays) + 1),
        before_sleep=warn if what else None,
        reraise=True,
    )
