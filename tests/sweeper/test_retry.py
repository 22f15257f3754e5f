"""sweeper.retry: the one back-off policy: which errors it retries, how long it sleeps, and when it gives up."""

from __future__ import annotations

import logging
import time

import pytest

from sweeper.retry import FIRST_DELAY, MAX_DELAY, RETRY_DELAYS, retrying


class Flaky:
    """A call that fails with ``error`` ``failures`` times (or always), then returns "done"; counts its tries."""

    def __init__(self, failures: int | None, error: type[Exception] = ConnectionError) -> None:
        self.failures, self.error, self.tries = failures, error, 0

    def __call__(self) -> str:
        self.tries += 1
        if self.failures is None or self.tries <= self.failures:
            raise self.error(f"try {self.tries}")
        return "done"


def sleeps_of(policy) -> list[float]:
    """Record the policy's sleeps instead of sleeping them."""
    slept: list[float] = []
    policy.sleep = slept.append
    return slept


def retried(err: BaseException) -> bool:
    return isinstance(err, ConnectionError)


def test_without_a_deadline_each_delay_is_slept_in_turn_then_the_last_error_is_raised():
    policy = retrying(when=retried, delays=(0.5, 1.0, 2.0))
    slept = sleeps_of(policy)
    call = Flaky(failures=None)
    with pytest.raises(ConnectionError, match="try 4"):  # the last error, as it was
        policy(call)
    assert call.tries == 4 and slept == [0.5, 1.0, 2.0]
    assert RETRY_DELAYS == (0.5, 1.0, 2.0, 4.0)  # the default: ~7.5 s of patience


def test_a_call_that_recovers_returns_its_value():
    policy = retrying(when=retried)
    slept = sleeps_of(policy)
    assert policy(Flaky(failures=2)) == "done" and slept == [0.5, 1.0]


def test_an_error_the_predicate_refuses_is_raised_at_once():
    policy = retrying(when=retried)
    slept = sleeps_of(policy)
    call = Flaky(failures=None, error=ValueError)
    with pytest.raises(ValueError):
        policy(call)
    assert call.tries == 1 and slept == []


@pytest.mark.parametrize(
    ("first", "longest", "expected"), [(0.1, 0.5, [0.1, 0.2, 0.4, 0.5, 0.5]), (1, 8, [1, 2, 4, 8, 8])]
)
def test_until_a_deadline_the_sleep_starts_at_first_delay_and_doubles_up_to_max_delay(first, longest, expected):
    policy = retrying(when=retried, deadline=60, first_delay=first, max_delay=longest)
    slept = sleeps_of(policy)
    assert policy(Flaky(failures=5)) == "done"
    assert slept == pytest.approx(expected)


def test_the_default_back_off_until_a_deadline_is_half_a_second_doubled_up_to_eight():
    policy = retrying(when=retried, deadline=60)
    slept = sleeps_of(policy)
    policy(Flaky(failures=6))
    assert (FIRST_DELAY, MAX_DELAY) == (0.5, 8.0) and slept == [0.5, 1, 2, 4, 8, 8]


def test_the_deadline_is_never_slept_past():
    policy = retrying(when=retried, deadline=0.5, first_delay=0.2, max_delay=1.0)
    call = Flaky(failures=None)
    start = time.monotonic()
    with pytest.raises(ConnectionError):
        policy(call)
    assert call.tries == 2  # tried at 0 s and 0.2 s; the next sleep (0.4 s) would end past 0.5 s
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize(("first", "longest"), [(0, 1), (-1, 1), (2, 1)])
def test_a_back_off_that_cannot_work_is_refused(first, longest):
    with pytest.raises(ValueError, match="first_delay"):
        retrying(when=retried, deadline=10, first_delay=first, max_delay=longest)


def test_each_retry_is_logged_naming_the_call_the_error_and_the_wait(caplog):
    policy = retrying(when=retried, delays=(0.25,), what="storage call get_trial")
    sleeps_of(policy)
    with caplog.at_level(logging.WARNING, logger="sweeper.retry"):
        policy(Flaky(failures=1))
    assert caplog.messages == ["storage call get_trial failed (ConnectionError); retrying in 0.2s"]
