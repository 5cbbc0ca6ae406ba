"""A worker's row in ``studyctl_workers``, kept fresh by a heartbeat thread."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from typing import Any

from studyctl.storage.connect import WorkerStorage
from studyctl.storage.tables import WORKER_STOPPED


def worker_info(gpus: str | None = None) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "gpus": gpus if gpus is not None else os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }


class WorkerRegistration:
    """A worker's row in ``studyctl_workers``, kept fresh by a heartbeat thread.

    Used as a context manager by the process that owns the row (`studyctl run`, the
    `studyctl worker` parent). A trial process constructed with its parent's `worker_id`
    only updates the row (current trial, trials done); the parent keeps the heartbeat.
    """

    def __init__(
        self,
        storage: WorkerStorage,
        study_name: str,
        *,
        interval: float,
        gpus: str | None = None,
        worker_id: str | None = None,
        trials_done: int = 0,
    ) -> None:
        self.control = storage.control
        self.study_name = study_name
        self.interval = interval
        self.info = worker_info(gpus)
        self.worker_id = worker_id or (
            f"{self.info['host']}-{self.info['pid']}-{uuid.uuid4().hex[:8]}"
        )
        self.trials_done = trials_done
        self.final_state = WORKER_STOPPED
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WorkerRegistration:
        self.control.insert_worker(
            worker_id=self.worker_id,
            study_name=self.study_name,
            host=self.info["host"],
            pid=self.info["pid"],
            gpus=self.info["gpus"],
        )
        self._thread = threading.Thread(target=self._beat, name="studyctl-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a missed beat is retried next interval
                self.update(beat=True)

    def update(self, *, beat: bool = False, **values: Any) -> None:
        self.control.update_worker(self.worker_id, beat=beat, **values)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.update(state=self.final_state, beat=True, current_trial=None)
