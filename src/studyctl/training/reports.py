"""A trial's epoch reports, delivered in order while training goes on through a database
outage.

An epoch's report (`trial.report` of the objective metric) is queued and the queue is then
delivered in step order, each report once. While the database cannot be reached, a
delivery is one try without waiting (`OutageGuard.attempt`: no retry loop, a new connection
given up after `ATTEMPT_CONNECT_TIMEOUT_S`), so the fit goes on to the next epoch and the
reports wait in memory; the next epoch end tries again. The reports are also written to the
epoch's checkpoint (its history), which is what a retry re-reports them from if this
process dies before they are delivered (`EpochReports.reclaim`).

Pruning waits for the reports: `should_prune` is asked only once every report is
delivered, and an answer the database could not give is asked again at the next epoch end
(or once more after the last epoch, see `settle`).

Before the trial's final state is told, `settle` delivers what is left, waiting for the
database as every other storage call does (up to `storage_outage_tolerance`; past it the
process stops with its one `error:` line and the trial is left for resume).

Why a single try at the epoch end and not a thread that delivers in the background: the
pruning decision must follow the delivery of every report, and Optuna's `Trial` (its
cached intermediate values) is not shared between threads; a try costs milliseconds when the
server is down (a refused connection) and at most the short connect timeout when its host
does not answer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import optuna

from studyctl.storage.outage import DatabaseAway, guard_of

T = TypeVar("T")


def report_epoch(trial: optuna.Trial, step: int, value: float) -> None:
    """`trial.report`, except that a step the trial inherited from the attempt it retries
    is overwritten: the retry trained that epoch again (its checkpoint was older than the
    curve, or unreadable), and its own value is the one its result is computed from.
    Optuna's `Trial.report` would keep the inherited value and drop this one ("step=N is
    already reported"), leaving a curve that disagrees with the trial's value."""
    cached = trial._cached_frozen_trial.intermediate_values
    if step not in cached:
        trial.report(value, step=step)
        return
    trial.storage.set_trial_intermediate_value(trial._trial_id, step, value)
    cached[step] = value


class EpochReports:
    """The epoch reports of one trial not yet delivered, and the pruning decision they
    hold back."""

    def __init__(self, trial: optuna.Trial, prune: bool) -> None:
        self.trial = trial
        self.prune = prune
        self.pending: dict[int, float] = {}  # step -> value, delivered in step order
        self.late: set[int] = set()  # steps not delivered at their own epoch end
        self.decision_owed = False  # a pruning decision was put off
        self._guard = guard_of(trial.storage)

    def _try(self, operation: Callable[[], T], wait: bool) -> tuple[bool, T | None]:
        if wait or self._guard is None:
            return True, operation()  # waits up to the tolerance (or has no guard)
        try:
            return True, self._guard.attempt(operation)
        except DatabaseAway:
            self.late.update(self.pending)
            return False, None

    def add(self, step: int, value: float) -> None:
        self.pending[step] = float(value)

    def reclaim(self, history: list[float]) -> None:
        """Queue the epochs of a restored checkpoint's `history` that the trial's curve
        lacks: reports its original attempt could not deliver before it died (the
        checkpoint is written at every epoch end, delivered or not)."""
        reported = self.trial._cached_frozen_trial.intermediate_values
        for step, value in enumerate(history):
            if step not in reported:
                self.add(step, value)

    def deliver(self, *, wait: bool = False) -> bool:
        """Deliver the pending reports in step order; True when none is left. Without
        `wait`, the first one the database cannot take now stops the delivery."""
        for step in sorted(self.pending):
            report = functools.partial(report_epoch, self.trial, step, self.pending[step])
            done, _ = self._try(report, wait)
            if not done:
                return False
            del self.pending[step]
        return True

    def should_prune(self, *, wait: bool = False) -> bool:
        """Deliver, then (with pruning) ask the pruner; a decision the database could not
        support now (reports pending, or the pruner's reads failed) is owed, and False for
        now. Called at every epoch end, with or without pruning."""
        delivered = self.deliver(wait=wait)
        if not self.prune:
            return False
        if delivered:
            done, answer = self._try(self.trial.should_prune, wait)
            if done:
                self.decision_owed = False
                return bool(answer)
        self.decision_owed = True
        return False

    def settle(self) -> None:
        """Before the trial's state is told: deliver every pending report, waiting for the
        database (up to the tolerance)."""
        self.deliver(wait=True)
