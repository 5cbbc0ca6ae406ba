"""Eight worker processes on one study: PostgreSQL and SQLite side by side."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from .conftest import PG_DSN, run_cli, write_spec

pytestmark = pytest.mark.slow

N_TRIALS = 40


def _trials_per_second(study: optuna.Study) -> float:
    trials = study.trials
    start = min(t.datetime_start for t in trials if t.datetime_start)
    end = max(t.datetime_complete for t in trials if t.datetime_complete)
    return len(trials) / (end - start).total_seconds()


def _run_eight(tmp_path: Path, url: str, objectives_dir: Path, name: str) -> optuna.Study:
    spec = write_spec(
        tmp_path / f"{name}.toml",
        f"""
        name = "{name}"
        objective = "quadratic"
        n_trials = {N_TRIALS}
        [sampler]
        type = "random"
        [options]
        sleep = 0.05
        [worker]
        trials_per_process = 1000
    """,
    )
    result = run_cli(
        [
            "run",
            str(spec),
            "--workers",
            "8",
            "-q",
            "-s",
            url,
            "--objectives-dir",
            str(objectives_dir),
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error" not in result.stdout.lower()
    study = optuna.load_study(study_name=name, storage=url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == N_TRIALS
    assert len(study.trials) == N_TRIALS
    assert sorted(t.number for t in study.trials) == list(range(N_TRIALS))
    return study


def test_eight_workers_on_postgres_and_sqlite(
    tmp_path: Path, postgres_url: str, sqlite_url: str, objectives_dir: Path
) -> None:
    import psycopg

    database = postgres_url.rsplit("/", 1)[1]
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            while not stop.wait(0.2):
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
                ).fetchone()
                peak = max(peak, row[0] if row else 0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        pg_study = _run_eight(tmp_path, postgres_url, objectives_dir, "pg8")
    finally:
        stop.set()
        sampler.join()
    sqlite_study = _run_eight(tmp_path, sqlite_url, objectives_dir, "lite8")
    # 8 workers x (worker process + trial process), each with a pool of at most 3 + 1.
    assert 0 < peak <= 8 * 2 * 4
    print(
        f"8 workers, {N_TRIALS} trials: peak PostgreSQL connections {peak}; trials/s "
        f"PostgreSQL {_trials_per_second(pg_study):.1f}, "
        f"SQLite {_trials_per_second(sqlite_study):.1f}"
    )
