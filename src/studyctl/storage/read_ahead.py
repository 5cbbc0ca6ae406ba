"""Reading the next batch while the caller handles the current one.

A trials export alternates between waiting for the database and formatting what it read.
On PostgreSQL the wait is the server's work, in another process, during which the driver
releases the GIL: read on a thread, the next batch is computed while the current one is
written (a 100,000-trial CSV export: see BENCHMARKS.md). SQLite's driver releases and takes
back the GIL at every row it steps, so there a reading thread contends with the formatting
one for each row, and the export was slower with it: `read_ahead` is for a server's reads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_POLL_S = 0.1  # how often a reader blocked on a full queue checks that the caller is gone


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """`items`, each one after the first read on a thread while the caller handles the one
    before: at most one item waits, so at most three are held at once (the caller's,
    the one waiting, the one being read). An exception raised by
    `items` is raised to the caller, in order, after the items read before it. A caller that
    stops early (an error writing, a closed pipe) leaves the thread to end on its own after
    the read it is in: it is a daemon thread and takes no further item."""
    ready: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
    gone = threading.Event()

    def offer(entry: tuple[bool, Any]) -> bool:
        while not gone.is_set():
            try:
                ready.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not offer((False, item)):
                    return
        except BaseException as exc:  # raised to the caller, not printed by the thread
            offer((True, exc))
            return
        offer((True, None))

    thread = threading.Thread(target=read, name="studyctl-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            last, item = ready.get()
            if last:
                if item is not None:
                    raise item
                break
            yield item
        thread.join()  # it has offered its last entry
    finally:
        gone.set()
