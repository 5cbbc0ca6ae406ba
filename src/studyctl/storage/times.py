"""Trial times as Optuna 5 keeps them: its RDB storage stores a trial's start and end as
naive UTC (the `trials` table's `datetime_start` / `datetime_complete`) and shows them as
naive local time (`TrialModel.datetime_start`, hence every `FrozenTrial`). studyctl writes
and reads those columns without Optuna's ORM, so it converts here: UTC to the columns,
local time to whatever stands for a `FrozenTrial` or is shown as Optuna shows it.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import overload


def utc_now() -> datetime:
    """Now, as a trial time column holds it (naive UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


@functools.lru_cache(maxsize=4096)
def _hour_offset(year: int, month: int, day: int, hour: int) -> timedelta | None:
    """The local zone's UTC offset throughout the UTC hour that starts at the time given,
    or None when it changes within that hour (a DST switch, which some zones make on the
    half hour): one `astimezone` per hour of a study instead of one per timestamp."""
    first = datetime(year, month, day, hour, tzinfo=UTC)
    last = first + timedelta(hours=1, microseconds=-1)
    offset = first.astimezone().utcoffset()
    return offset if offset == last.astimezone().utcoffset() else None


@overload
def utc_to_local(value: datetime) -> datetime: ...
@overload
def utc_to_local(value: None) -> None: ...
def utc_to_local(value: datetime | None) -> datetime | None:
    """A stored (naive UTC) trial time as Optuna shows it: naive local time."""
    if value is None:
        return None
    offset = _hour_offset(value.year, value.month, value.day, value.hour)
    if offset is None:
        return value.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)
    return value + offset if offset else value
