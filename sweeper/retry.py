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
FIRST_DELAY = RETRY_DELAYS[0]  # seconds: the first sleep when retrying until a deadline, doubled after each try
MAX_DELAY = 8.0  # seconds: the longest sleep between tries when retrying until a deadline


def retrying(
    *,
    when: Callable[[BaseException], bool],
    delays: Sequence[float] = RETRY_DELAYS,
    deadline: float | None = None,
    first_delay: float = FIRST_DELAY,
    max_delay: float = MAX_DELAY,
    what: str | None = None,
) -> tenacity.Retrying:
    """A tenacity policy: retry while ``when(error)`` holds, then re-raise the last error as it is.

    Without ``deadline``: one try more than ``delays``, sleeping each in turn. With ``deadline`` (seconds): tries
    until that much time has passed since the first, sleeping ``first_delay`` seconds, doubling up to
    ``max_delay``. ``what``, if given, names the call in a warning logged before each sleep.
    """
    if not 0 < first_delay <= max_delay:
        raise ValueError(f"need 0 < first_delay <= max_delay, got {first_delay} and {max_delay}")

    def warn(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s failed (%s); retrying in %.1fs", what, type(error).__name__, wait)

    if deadline is not None:
        wait: tenacity.wait.wait_base = tenacity.wait_exponential(
            multiplier=first_delay, min=first_delay, max=max_delay
        )
        stop: tenacity.stop.stop_base = tenacity.stop_before_delay(deadline)  # never sleeps past it
    else:
        wait = tenacity.wait_chain(*(tenacity.wait_fixed(d) for d in delays)) if delays else tenacity.wait_none()
        stop = tenacity.stop_after_attempt(len(delays) + 1)
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(when),
        wait=wait,
        stop=stop,
        before_sleep=warn if what else None,
        reraise=True,
    )
