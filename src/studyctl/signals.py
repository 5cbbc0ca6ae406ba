"""SIGINT/SIGTERM/SIGHUP handling shared by the trial loop, the worker, the launcher and the
Keras callbacks (a leaf module: it imports nothing of studyctl but its errors).

A signal handler runs between any two bytecodes of the main thread. An exception raised
there is safe only inside the objective, where Optuna records it (the trial FAIL). Raised
anywhere else, in Optuna's own trial bookkeeping (creating the trial, its heartbeat thread,
telling the result) or in studyctl's claims, it left the trial RUNNING (Optuna's
`_run_trial` then failed with `UnboundLocalError: ... 'updated_state'`) or left Optuna's
non-daemon heartbeat thread waiting forever, so the process hung at exit. So:

* in a Keras fit (`safe_points`) the first signal asks the fit to stop after the current
  batch (the trial is then recorded interrupted and keeps its last epoch's checkpoint); a
  second one raises there;
* in a function objective (`interruptible`) a signal raises at once, or, during a
  database operation (`deferred`), as soon as that operation returns;
* anywhere else it is only recorded; the trial loop stops at its next check, and a trial
  about to start raises as it enters the objective.

SIGHUP means "the process this one belongs to is gone" (`studyctl.execution.parent`: the
parent-death signal and the closed pipe both raise it); the trial's recorded reason says so
instead of naming a signal nobody sent.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from studyctl.errors import WorkerInterrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
Handler = Callable[[int, FrameType | None], None]


@contextmanager
def on_stop_signals(handler: Handler) -> Iterator[None]:
    """Send SIGINT, SIGTERM and SIGHUP to `handler` while the block runs, then restore the
    previous handlers. Python delivers signals to the main thread only; elsewhere this does
    nothing."""
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
        self.reason: str | None = None
        self.on_request: Callable[[], None] | None = None  # set while a fit runs
        self.raise_ok = False  # inside the objective: raising is recorded by Optuna
        self.deferring = False  # in `deferred`: a signal that would raise is held instead
        self.held: int | None = None  # that signal, raised when the operation ends


_STOP = _StopState()
# What SIGHUP means in this process (set by `execution.parent.watch_parent`).
_hangup_reason: Callable[[], str] | None = None


def set_hangup_reason(describe: Callable[[], str] | None) -> None:
    global _hangup_reason
    _hangup_reason = describe


def reset_stop() -> None:
    _STOP.signum = None
    _STOP.reason = None
    _STOP.on_request = None
    _STOP.raise_ok = False
    _STOP.deferring = False
    _STOP.held = None


def stop_requested() -> int | None:
    """The signal that asked this process to stop, if any."""
    return _STOP.signum


def stop_reason() -> str:
    """Why this process stops, as recorded on an interrupted trial ("interrupted by
    SIGTERM", or for SIGHUP what went away)."""
    return _STOP.reason or "interrupted"


def describe_signal(signum: int) -> str:
    if signum == signal.SIGHUP and _hangup_reason is not None:
        return _hangup_reason()
    try:
        return f"interrupted by {signal.Signals(signum).name}"
    except ValueError:
        return f"interrupted by signal {signum}"


def stop_at_safe_point(signum: int, frame: FrameType | None) -> None:
    """Signal handler: record the stop; in a fit, the first signal is a request; raise only
    where the objective runs (see the module docstring)."""
    first = _STOP.signum is None
    if first:
        _STOP.signum = signum
        _STOP.reason = describe_signal(signum)
        if _STOP.on_request is not None:
            _STOP.on_request()
            return
    if _STOP.raise_ok:
        raise WorkerInterrupted(_STOP.signum or signum)
    if _STOP.deferring:
        _STOP.held = _STOP.signum or signum


@contextmanager
def interruptible() -> Iterator[None]:
    """The objective's own code: a stop signal raises here, at once (or on entry, if one
    came while Optuna was setting the trial up)."""
    if _STOP.signum is not None:
        raise WorkerInterrupted(_STOP.signum)
    _STOP.raise_ok = True
    try:
        yield
    finally:
        _STOP.raise_ok = False


@contextmanager
def deferred() -> Iterator[None]:
    """One database operation inside the objective (`outage.OutageGuard.call` runs each
    try in this): a stop signal that would raise during it (not a fit's first signal,
    which only asks the fit to stop) raises once the operation has ended, not inside the
    database driver, and in place of the operation's own error if it failed. Raised in the
    driver, it could cut a read short and leave its statement open on a pooled connection
    (SQLite: an old snapshot that cannot write), or end a transaction half-way through the
    pool's bookkeeping. Outside the objective it does nothing, and so in any thread but the
    main one (the only one signals raise in)."""
    if not _STOP.raise_ok or threading.current_thread() is not threading.main_thread():
        yield
        return
    _STOP.raise_ok = False
    _STOP.deferring = True
    _STOP.held = None
    try:
        yield
    except BaseException as exc:
        held = _end_deferral()
        if held is not None and isinstance(exc, Exception):  # not over a SystemExit
            raise WorkerInterrupted(held) from None
        raise
    held = _end_deferral()
    if held is not None:
        raise WorkerInterrupted(held)


def _end_deferral() -> int | None:
    """Leave `deferred`: raising allowed again; the signal held meanwhile, if any."""
    _STOP.raise_ok = True
    _STOP.deferring = False
    held, _STOP.held = _STOP.held, None
    return held


@contextmanager
def safe_points(request_stop: Callable[[], None]) -> Iterator[None]:
    """Within the block (a Keras fit) the first signal calls `request_stop` (which sets
    `model.stop_training`, honoured by Keras after the current batch) instead of raising."""
    _STOP.on_request = request_stop
    try:
        yield
    finally:
        _STOP.on_request = None
