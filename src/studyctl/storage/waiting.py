"""The next WAITING trial of a study, found with one indexed query.

Optuna's `Study.ask` takes a queued trial with `Study._pop_waiting_trial_id`, which filters
every trial the process has cached for WAITING ones: at 100,000 trials that is the largest
cost of starting a trial, in plain Optuna as well. On studyctl's database storage the trial
loop's study asks the database instead (`waiting_trial_ids`, through the index on
`trials (study_id, state)` of revision 0004) and takes the first trial it wins, with the
same conditional transition Optuna uses (`set_trial_state_values(..., RUNNING)`), so a
trial queued by any process is still taken by exactly one. Any other storage (the proxy)
keeps Optuna's own method.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import optuna
from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import TrialState

from studyctl.storage import tables
from studyctl.storage.rdb import StudyctlStorage

_logger = logging.getLogger(__name__)


def _database_of(study: optuna.Study) -> tuple[_CachedStorage, StudyctlStorage] | None:
    cached = study._storage
    if isinstance(cached, _CachedStorage) and isinstance(cached._backend, StudyctlStorage):
        return cached, cached._backend
    return None


def pop_waiting_trial_id(study: optuna.Study) -> int | None:
    """Move the study's oldest WAITING trial this process wins to RUNNING; its id, or None
    when no trial is queued. Optuna's own method where the storage is not a database."""
    found = _database_of(study)
    if found is None:
        return optuna.Study._pop_waiting_trial_id(study)
    cached, database = found
    study_id = study._study_id
    if database.control.nothing_queued(study_id):  # this trial's claim just looked
        return None
    waiting = database.control.in_transaction(lambda conn: tables.waiting_trial_ids(conn, study_id))
    if not waiting:
        return None
    # The trial must be in the process's cache before its parameters are set; this reads
    # only the trials created or unfinished since the last read, as Optuna's method does.
    cached._read_trials_from_remote_storage(study_id)
    for trial_id in waiting:
        try:
            if not cached.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        _logger.debug("Trial %d popped from the trial queue.", trial_id)
        return trial_id
    return None


def use_indexed_waiting_pop(study: optuna.Study) -> None:
    """Make `study.ask` (and so `study.optimize`) take queued trials with
    `pop_waiting_trial_id`."""
    pop: Callable[[], int | None] = lambda: pop_waiting_trial_id(study)  # noqa: E731
    study._pop_waiting_trial_id = pop  # type: ignore[method-assign]
