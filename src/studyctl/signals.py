"""SIGINT/SIGTERM handling shared by the trial loop, the worker, the launcher and the Keras
callbacks (a leaf module: it imports nothing of studyctl but its errors).

In a process that trains, the first signal asks the running Keras fit to stop after the
current batch (a safe point: the trial is then recorded "interrupted" and keeps its
last epoch's checkpoint); outside a fit, or on a second signal, it raises at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from studyctl.errors import WorkerInterrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
Handler = Callable[[int, FrameType | None], None]


@contextmanager
def on_stop_signals(handler: Handler) -> Iterator[None]:
    """Send SIGINT and SIGTERM to `handler` while the block runs, then restore the previous
    handlers. Python delivers signals to the main thread only; elsewhere this does nothing."""
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _StopState:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.on_request: Callable[[], None] | None = None  # set while a fit runs


_STOP = _StopState()


def reset_stop() -> None:
    _STOP.signum = None
    _STOP.on_request = None


def stop_requested() -> int | None:
    """The signal that asked this process to stop, if any."""
    return _STOP.signum


def stop_at_safe_point(signum: int, frame: FrameType | None) -> None:
    """Signal handler: the first signal during an armed fit is a request; else raise."""
    if _STOP.signum is None and _STOP.on_request is not None:
        _STOP.signum = signum
        _STOP.on_request()
        return
    _STOP.signum = _STOP.signum or signum
    raise WorkerInterrupted(signum)


@contextmanager
def safe_points(request_stop: Callable[[], None]) -> Iterator[None]:
    """Within the block (a Keras fit) the first signal calls `request_stop` (which sets
    `model.stop_training`, honoured by Keras after the current batch) instead of raising."""
    _STOP.on_request = request_stop
    try:
        yield
    finally:
        _STOP.on_request = None
