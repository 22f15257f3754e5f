"""Ctrl-C and SIGTERM: the first one stops the work, the clean-up after it runs to its end, none is lost.

The CLI's signal handler calls :func:`request`: the first request raises KeyboardInterrupt where the main thread
is, later ones do not (so a second Ctrl-C cannot cut the recording of the running trial short). Python drops an
exception raised inside a finaliser or weakref callback ("Exception ignored in ..."), so the request is also
remembered, and :func:`check` raises it again at the next safe point: every training step and epoch
(:class:`InterruptCheck`) and every trial's start and end. Signals are per process, hence the module-level flag.
"""

from __future__ import annotations

import threading

from pipelines.callbacks import Callback, EpochMetrics

_requested = threading.Event()


def request() -> bool:
    """Note a stop request; True for the first one (the caller then raises KeyboardInterrupt)."""
    first = not _requested.is_set()
    _requested.set()
    return first


def requested() -> bool:
    return _requested.is_set()


def check() -> None:
    """Raise KeyboardInterrupt if a stop was requested: call it where stopping is safe."""
    if _requested.is_set():
        raise KeyboardInterrupt("stop requested")


def reset() -> None:
    """Forget a request (for tests that run several commands in one process)."""
    _requested.clear()


class InterruptCheck(Callback):
    """Stops a training run at the next step (or epoch) once a stop was requested."""

    def on_step(self, step: int, lr: float) -> None:
        check()

    def on_epoch(self, metrics: EpochMetrics) -> None:
        check()
