"""Ctrl-C and SIGTERM: the first one stops the work, the clean-up after it runs to its end, none is lost.

The CLI's signal handler calls :func:`request`. Where a KeyboardInterrupt may land anywhere (loading data,
training, a command without trials), the first request raises it at once; later ones never do, so a second
Ctrl-C cannot cut the recording of the running trial short. While a study runs trials, Optuna's own calls (asking
for a trial, telling its result, the storage underneath) must not be cut in the middle: :func:`deferred` makes a
request only a note there, and :func:`allowed` opens the training itself to immediate interrupts again.

Python also drops an exception raised inside a finaliser or weakref callback ("Exception ignored in ..."), so a
request is always remembered, and :func:`check` raises it at the next safe point: every training step and epoch
(:class:`InterruptCheck`) and every trial's start and end. Signals are per process, hence the module-level state.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from pipelines.callbacks import Callback, EpochMetrics

_requested = threading.Event()
_deferred = 0  # nesting depth of deferred() blocks
_allowed = 0  # nesting depth of allowed() blocks inside them


def request() -> bool:
    """Note a stop request; True when the caller (the signal handler) should raise KeyboardInterrupt now: the
    first request, outside a deferred block or inside an allowed one."""
    first = not _requested.is_set()
    _requested.set()
    return first and (_deferred == 0 or _allowed > 0)


def requested() -> bool:
    return _requested.is_set()


def reset() -> None:
    """Forget every request and leave every block: for a process that goes on after a stop (the tests, which run
    many stops in one process)."""
    global _deferred, _allowed
    _requested.clear()
    _deferred = _allowed = 0


def check() -> None:
    """Raise KeyboardInterrupt if a stop was requested: call it where stopping is safe."""
    if _requested.is_set():
        raise KeyboardInterrupt("stop requested")


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block (a study's trial loop) where a stop request waits for the next safe point."""
    global _deferred
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1


@contextlib.contextmanager
def allowed() -> Iterator[None]:
    """A block inside a deferred one (a trial's training) where a stop request interrupts at once; a request
    that arrived before it is raised on entry."""
    global _allowed
    check()
    _allowed += 1
    try:
        yield
    finally:
        _allowed -= 1


class InterruptCheck(Callback):
    """Stops a training run at the next step (or epoch) once a stop was requested."""

    def on_step(self, step: int, lr: float) -> None:
        check()

    def on_epoch(self, metrics: EpochMetrics) -> None:
        check()
