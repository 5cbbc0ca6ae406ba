"""The database goes away and comes back while `studyctl run SPEC --workers 2` runs, on a
throwaway PostgreSQL cluster the test starts itself (the shared server is never stopped).

* An outage shorter than `grace_period` and one longer than it: the run rides through
  (every process reconnects), finishes its exact budget, no finished trial is lost, no
  trial is failed as stale because of the outage, nothing is left RUNNING.
* An outage longer than `storage_outage_tolerance`: every process stops with one
  `error:` line; once the database is back, `resume` finishes the study, nothing lost.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from studyctl.errors import SpecError
from studyctl.spec import parse_spec

from ..conftest import STUDYCTL, run_cli, write_objectives, write_spec
from .conftest import ThrowawayPostgres, figures, finished_snapshot, wait_for

pytestmark = pytest.mark.slow

STEPPY_OBJECTIVE = """
import time

from studyctl import function_objective


@function_objective("steppy")
def steppy(trial, ctx):
    x = trial.suggest_float("x", -1, 1)
    for step in range(4):
        time.sleep(0.25)
        trial.report(x * x + 1 / (step + 1), step)
    return x * x
"""

OUTAGE_S = 10.0


def test_outage_tolerance_in_the_spec() -> None:
    base = {"name": "s", "objective": "quadratic", "n_trials": 1}
    assert parse_spec(base, "s.toml").worker.storage_outage_tolerance == 300
    spec = parse_spec({**base, "worker": {"storage_outage_tolerance": 0}}, "s.toml")
    assert spec.worker.storage_outage_tolerance == 0
    for bad, expected in ((-1, "expected a number >= 0"), ("5m", "expected an integer")):
        with pytest.raises(SpecError, match=f"worker.storage_outage_tolerance: {expected}"):
            parse_spec({**base, "worker": {"storage_outage_tolerance": bad}}, "s.toml")


def _count_finished(url: str, name: str) -> int:
    try:
        return len(finished_snapshot(url, name))
    except Exception:
        return 0


def _spec(tmp_path: Path, n_trials: int, grace: int, tolerance: int) -> Path:
    return write_spec(
        tmp_path / "outage.toml",
        f"""
        name = "outage"
        objective = "steppy"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        [worker]
        heartbeat_interval = 1
        grace_period = {grace}
        storage_outage_tolerance = {tolerance}
        """,
    )


def _wait_finished(proc: subprocess.Popen[str], url: str, n: int) -> None:
    """Wait until `n` trials have finished; fail with the run's output if it exits first."""
    done = wait_for(lambda: proc.poll() is not None or _count_finished(url, "outage") >= n, 90)
    if proc.poll() is not None:
        out, _ = proc.communicate()
        pytest.fail(f"the run exited ({proc.returncode}) before the outage: {out[-3000:]}")
    assert done, "no trial finished"


def _start_run(tmp_path: Path, spec: Path, url: str, objectives: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("STUDYCTL_STORAGE", None)
    return subprocess.Popen(
        [
            *STUDYCTL,
            "run",
            str(spec),
            "--storage",
            url,
            "--objectives-dir",
            str(objectives),
            "--workers",
            "2",
            "--quiet",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("grace", [30, 4], ids=["shorter-than-grace", "longer-than-grace"])
def test_run_rides_through_a_database_outage(
    tmp_path: Path, throwaway_postgres: ThrowawayPostgres, grace: int
) -> None:
    objectives = write_objectives(tmp_path / "objectives", STEPPY_OBJECTIVE, "steppy.py")
    url = throwaway_postgres.create_database("outage")
    n_trials = 24
    spec = _spec(tmp_path, n_trials, grace, tolerance=120)
    proc = _start_run(tmp_path, spec, url, objectives)
    try:
        _wait_finished(proc, url, 4)
        before = finished_snapshot(url, "outage")
        throwaway_postgres.stop()
        time.sleep(OUTAGE_S)
        throwaway_postgres.start()
        back = time.monotonic()
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(
        f"outage {OUTAGE_S:.0f}s (grace {grace}s): run finished {time.monotonic() - back:.1f}s "
        "after the database returned"
    )
    assert "Traceback" not in out, out[-4000:]
    assert proc.returncode == 0, out[-4000:]
    result = figures(
        f"database outage {OUTAGE_S:.0f}s, grace_period {grace}s", url, "outage", n_trials, before
    )
    result.assert_nothing_lost()
    # No live trial was failed as stale because the database was away.
    assert result.failed == 0, out[-4000:]


def test_outage_longer_than_the_tolerance_stops_cleanly(
    tmp_path: Path, throwaway_postgres: ThrowawayPostgres
) -> None:
    objectives = write_objectives(tmp_path / "objectives", STEPPY_OBJECTIVE, "steppy.py")
    url = throwaway_postgres.create_database("outage")
    n_trials = 16
    spec = _spec(tmp_path, n_trials, grace=4, tolerance=5)
    proc = _start_run(tmp_path, spec, url, objectives)
    try:
        _wait_finished(proc, url, 3)
        before = finished_snapshot(url, "outage")
        throwaway_postgres.stop()
        down = time.monotonic()
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        throwaway_postgres.start()
    print(f"outage past a 5s tolerance: run stopped {time.monotonic() - down:.1f}s after")
    assert "Traceback" not in out, out[-4000:]
    assert proc.returncode == 2, out[-4000:]
    errors = [line for line in out.splitlines() if "error:" in line]
    assert errors and all("unreachable" in line for line in errors), out[-4000:]
    resumed = run_cli(
        [
            "resume",
            "outage",
            "--storage",
            url,
            "--objectives-dir",
            str(objectives),
            "-q",
            "--workers",
            "2",
        ],
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    figures(
        "database outage past the tolerance, then resume", url, "outage", n_trials, before
    ).assert_nothing_lost()
