"""Trial times on a machine away from UTC: Optuna 5 stores them as naive UTC and shows them
as naive local time; studyctl's own writes and reads (which bypass Optuna's ORM) must agree
with Optuna's, or a trial's duration is off by the zone's offset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from studyctl.storage import times

# Run under TZ=America/New_York (UTC-5 in December): studyctl ends one trial it created
# and one it took from the queue (its own conditional UPDATEs of the trial's times), then
# every view of the trials is printed beside plain Optuna's.
_AWAY_FROM_UTC = """
import io, json, sys, time
from datetime import datetime
import optuna
from studyctl.inspect import summary
from studyctl.storage import open_storage
from studyctl.storage.snapshot import take_snapshot

url = sys.argv[1]
storage = open_storage(url)
study = optuna.create_study(study_name="tz", storage=storage)
trial = study.ask()
time.sleep(0.3)
study.tell(trial, 1.0)
study.enqueue_trial({})
trial = study.ask()
time.sleep(0.3)
study.tell(trial, 2.0)
plain = optuna.load_study(study_name="tz", storage=url).trials
csv = io.StringIO()
summary.write_trials_csv(storage, "tz", csv)
print(json.dumps({
    "now": datetime.now().isoformat(),
    "optuna": [[t.datetime_start.isoformat(), t.datetime_complete.isoformat()] for t in plain],
    "studyctl": [
        [t.datetime_start.isoformat(), t.datetime_complete.isoformat()]
        for t in (storage.get_trial(p._trial_id) for p in plain)
    ],
    "listed": [
        [r["datetime_start"], r["datetime_complete"]] for r in summary.list_trials(storage, "tz")
    ],
    "csv": [line.split(",")[3:5] for line in csv.getvalue().splitlines()[1:]],
    "watch": [t.duration_s for t in take_snapshot(storage.engine, "tz").recent],
}))
"""


def test_trial_times_agree_with_optunas_away_from_utc(storage_url: str) -> None:
    env = {**os.environ, "TZ": "America/New_York"}
    done = subprocess.run(
        [sys.executable, "-c", _AWAY_FROM_UTC, storage_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    now = datetime.fromisoformat(seen["now"])
    for start, complete in seen["optuna"]:
        elapsed = datetime.fromisoformat(complete) - datetime.fromisoformat(start)
        assert timedelta(seconds=0.25) < elapsed < timedelta(seconds=30), (start, complete)
        assert abs(now - datetime.fromisoformat(complete)) < timedelta(minutes=1)
    assert seen["studyctl"] == seen["optuna"]
    assert seen["listed"] == seen["optuna"]
    assert seen["csv"] == seen["optuna"]
    assert len(seen["watch"]) == 2 and all(0.25 < d < 30 for d in seen["watch"])


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local zone set by `os.environ["TZ"]` + `time.tzset`, put back after."""
    yield
    monkeypatch.undo()
    time.tzset()
    times._hour_offset.cache_clear()


@pytest.mark.parametrize(
    ("tz", "around"),
    [
        ("America/New_York", datetime(2026, 3, 8, 7)),  # 02:00 local: clocks go forward 1 h
        ("America/New_York", datetime(2026, 11, 1, 6)),  # 02:00 local: back 1 h
        ("Australia/Lord_Howe", datetime(2026, 4, 4, 15)),  # back 30 minutes
        ("Asia/Kathmandu", datetime(2026, 6, 1)),  # +05:45, no DST
    ],
)
def test_utc_to_local_is_optunas_conversion_through_a_clock_change(
    tz: str, around: datetime, zone: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    times._hour_offset.cache_clear()
    value = around - timedelta(hours=3)
    shifted = 0
    while value < around + timedelta(hours=3):
        # Optuna's own conversion (its TrialModel's datetime_start property).
        expected = value.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)
        assert times.utc_to_local(value) == expected, value
        shifted += expected != value
        value += timedelta(minutes=7, seconds=13, microseconds=5)
    assert shifted  # the zone is away from UTC: the check could fail
