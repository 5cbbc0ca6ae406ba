"""A window of a study's trials as Optuna's `FrozenTrial`s with their values and parameters
(what `report`'s page draws), read in three statements on any `StudyReader` connection:
the driver's own where the schemas are current, so a report loads neither SQLAlchemy nor
an Optuna storage (a quarter of a 100,000-trial report's time went to loading them).
`frozen_trial.read_frozen_trials` reads the same trials on a SQLAlchemy connection, with
any child rows; the conversions are the same (Optuna's distributions, `times.utc_to_local`
for the trial times).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from optuna import distributions
from optuna.trial import FrozenTrial, TrialState

from studyctl.storage import trial_rows
from studyctl.storage.plain import stored_datetime
from studyctl.storage.times import utc_to_local

if TYPE_CHECKING:
    from studyctl.storage.plain import ReadConnection


@functools.lru_cache(maxsize=1024)
def distribution(distribution_json: str) -> distributions.BaseDistribution:
    """Distributions are immutable, and a study's trials share a few: parsed once each."""
    return distributions.json_to_distribution(distribution_json)


def read_shown_trials(
    conn: ReadConnection, study_id: int, after: int
) -> tuple[list[FrozenTrial], dict[int, float]]:
    """The study's trials with a trial_id above `after`, in number order, with their values
    and parameters (no attributes or intermediate values), as `read_frozen_trials` gives
    them with kinds VALUE and PARAM; and the seconds each finished one took, by trial_id,
    from the stored UTC times (a FrozenTrial's local times are an hour off across a DST
    change)."""
    batch = trial_rows.read_window(conn, study_id, after)
    return _frozen_trials(batch), _durations(batch)


def _durations(batch: trial_rows.TrialBatch) -> dict[int, float]:
    took = {}
    for tid, _, _, stored_start, stored_complete in batch.trials:
        start, complete = stored_datetime(stored_start), stored_datetime(stored_complete)
        if start is not None and complete is not None:
            took[int(tid)] = (complete - start).total_seconds()
    return took


def _frozen_trials(batch: trial_rows.TrialBatch) -> list[FrozenTrial]:
    values: dict[int, dict[int, float]] = {}
    for tid, objective, value, value_type in batch.values:
        values.setdefault(int(tid), {})[int(objective)] = trial_rows.stored_value(value, value_type)
    params: dict[int, dict[str, object]] = {}
    dists: dict[int, dict[str, distributions.BaseDistribution]] = {}
    for tid, name, internal, distribution_json in batch.params:
        d = distribution(str(distribution_json))
        dists.setdefault(int(tid), {})[str(name)] = d
        params.setdefault(int(tid), {})[str(name)] = d.to_external_repr(internal)
    shown = []
    for tid, number, state, start, complete in batch.trials:
        found = values.get(int(tid))
        shown.append(
            FrozenTrial(
                number=int(number),
                state=TrialState[trial_rows.enum_name(state)],
                value=None,
                values=[found[k] for k in range(len(found))] if found else None,
                datetime_start=utc_to_local(stored_datetime(start)),
                datetime_complete=utc_to_local(stored_datetime(complete)),
                params=params.get(int(tid), {}),
                distributions=dists.get(int(tid), {}),
                user_attrs={},
                system_attrs={},
                intermediate_values={},
                trial_id=int(tid),
            )
        )
    return shown
