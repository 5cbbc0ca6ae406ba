"""Trials a `StudyctlStorage` keeps for the read of them that follows at once.

Two reads of a trial follow a write of this process's so closely that nothing else can
have changed the trial in between:

* `study.ask` reads the trial it just created (`Trial.__init__`): served from what the
  creation returned;
* the worker reads the trial its claim held once `study.optimize` has ended it: served
  from the trial as Optuna read it just before its end (RUNNING), with what the end stored
  (state, values, end time, deferred attributes). Another process cannot change a RUNNING
  trial without ending it, which makes this process's end lose (nothing is kept then).

Each is served once; any write to a trial through the storage drops both (`forget`).
What is kept is the calling thread's own (a `threading.local`): `studyctl proxy` serves
many workers from one storage, one request per thread.

A sweep of another process that fails this trial as lost writes its reason in the
transaction that fails it (`StudyctlStorage.defer_trial_user_attr`), so a sweep that loses
to this process's end leaves nothing on the trial. Another worker may still delete a
finished trial's artifact attributes (`forget_trial_attrs`, when a superseded best model is
removed) after the end: the kept copy then shows them, as a read just before would have.
"""

from __future__ import annotations

import copy
import json
import threading
from datetime import datetime
from typing import Any

from optuna.trial import FrozenTrial, TrialState


class RecentTrials(threading.local):
    def __init__(self) -> None:
        self._created: FrozenTrial | None = None
        self._running: FrozenTrial | None = None  # the last RUNNING trial read
        self._finished: FrozenTrial | None = None
        # What this thread's last won transition to a finished state stored besides
        # state and values: the end time and the deferred attributes.
        self.ended: tuple[datetime, dict[str, Any]] | None = None

    def forget(self) -> None:
        self._created = self._running = self._finished = None

    def created(self, trial: FrozenTrial) -> None:
        self.forget()
        self._created = copy.deepcopy(trial)

    def read(self, trial: FrozenTrial) -> None:
        """A trial read from the database: kept while RUNNING, for `ended`."""
        self._running = trial if trial.state == TrialState.RUNNING else None

    def take_running(self) -> FrozenTrial | None:
        """The last RUNNING trial read, before a write forgets it."""
        running, self._running = self._running, None
        return running

    def keep_finished(
        self,
        running: FrozenTrial,
        state: TrialState,
        values: Any,
        ended_at: datetime,
        attrs: dict[str, Any],
    ) -> None:
        """This process's transition of `running` to `state` won: keep the trial as it
        stored it."""
        trial = copy.deepcopy(running)
        trial.state = state
        trial.values = None if values is None else [float(v) for v in values]
        trial.datetime_complete = ended_at
        trial.user_attrs.update(json.loads(json.dumps(attrs)))  # as stored: JSON
        self._finished = trial

    def serve(self, trial_id: int) -> FrozenTrial | None:
        """The kept trial `trial_id`, once; None when none is kept."""
        for kept in (self._created, self._finished):
            if kept is not None and kept._trial_id == trial_id:
                self.forget()
                return kept
        self._created = self._finished = None
        return None
