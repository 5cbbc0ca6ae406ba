"""Writing a fit's checkpoints off the training thread.

At an epoch end the training thread copies the model's variables (`checkpoints.snapshot`)
and hands the copy to one writer thread, which writes it crash-atomically
(`checkpoints.write`) and then, with an object store, uploads the folder, while the next
epoch trains. One write is in flight at a time: the next hand-over waits for it, so at most
one copy of the model is held besides the model itself. A write's error is raised on the
training thread, at the next hand-over or when the fit's writes are finished (`close`,
before the trial's outcome is stored), with its own type (a full disk stays an `OSError`
with its errno).

With an interval, a checkpoint is written at most once per `interval_s` seconds of the
fit, counted from its start; the fit's last epoch, and an epoch that ends with a stop
requested, are written whatever the interval (a retry of a trial killed after its last
epoch then trains none, and a stopped trial resumes from where it stopped).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from studyctl.training import checkpoints


class CheckpointWriter:
    """The writer thread of one fit's checkpoints in `folder`; `after_commit(folder)` runs
    on it after each checkpoint is committed locally (the object-store upload)."""

    def __init__(
        self,
        folder: Path,
        interval_s: float = 0.0,
        after_commit: Callable[[Path], None] | None = None,
    ) -> None:
        self.folder = folder
        self.interval_s = interval_s
        self.after_commit = after_commit
        self._pending: queue.Queue[checkpoints.Snapshot | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._last_handover = time.monotonic()

    def due(self, *, force: bool = False) -> bool:
        """Whether the checkpoint of the epoch that just ended is to be written."""
        if force or self.interval_s <= 0:
            return True
        return time.monotonic() - self._last_handover >= self.interval_s

    def submit(
        self, model: Any, epoch: int, history: dict[str, list[float]], *, force: bool = False
    ) -> bool:
        """On the training thread, at the end of the `epoch`-th epoch: wait for the write in
        flight, copy the model's state and hand it to the writer; False when the interval
        skips this epoch. Raises the error of an earlier write."""
        self._raise_error()
        if not self.due(force=force):
            return False
        self._pending.join()  # the previous write, if still going
        self._raise_error()
        snap = checkpoints.snapshot(model, epoch, history)
        self._last_handover = time.monotonic()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="studyctl-checkpoint-writer", daemon=True
            )
            self._thread.start()
        self._pending.put(snap)
        return True

    def wait(self) -> None:
        """Wait until the checkpoint handed over last is committed (and uploaded)."""
        self._pending.join()
        self._raise_error()

    def close(self) -> None:
        """Finish the write in flight and end the thread; raise a write's error here. Called
        before the trial's outcome is stored, so its last checkpoint is durable then."""
        if self._thread is not None:
            self._pending.join()
            self._pending.put(None)
            self._thread.join()
            self._thread = None
        self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            snap = self._pending.get()
            try:
                if snap is None:
                    return
                if self._error is None:  # after a failed write, write no newer one
                    checkpoints.write(snap, self.folder)
                    if self.after_commit is not None:
                        self.after_commit(self.folder)
            except BaseException as exc:  # raised on the training thread instead
                self._error = exc
            finally:
                self._pending.task_done()
