"""SIGINT/SIGTERM routing shared by the trial loop, the worker and the launcher."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

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
