"""Database commits per trial, counted with a SQLAlchemy event listener on a real run.

Every commit is a round trip (and on SQLite a turn at the write lock that all workers of a
study share), so the trial loop's bookkeeping is kept to a fixed, small number of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

import studyctl

from .conftest import write_spec

NOOP = """
from studyctl import function_objective


@function_objective("noop")
def noop(trial, ctx):
    return trial.suggest_float("x", 0, 1)
"""

# A trial's commits: Optuna's inside `study.optimize` (create, heartbeat, a parameter,
# tell) and studyctl's claim, attach (with the `worker` attribute), release and progress
# read; `duration_s` rides on tell's transaction, the budget on the claim's, the claim says
# whether a queued trial needs popping, and the two heartbeat sweeps run once per heartbeat
# interval, not per trial. Before the claim carried the worker's row: 21; before each of a
# trial's three reads (`get_trial`) stopped committing: 18.35; before the sweeps, budget
# and attributes were folded in: 15.35; before the claim answered for the queue: 10.4.
MAX_COMMITS_PER_TRIAL = 10


def test_commits_per_trial_of_a_sequential_run(tmp_path: Path) -> None:
    (tmp_path / "objectives").mkdir()
    (tmp_path / "objectives" / "noop.py").write_text(NOOP)
    url = f"sqlite:///{tmp_path / 'trips.db'}"
    commits = 0

    def count(conn: object) -> None:
        nonlocal commits
        commits += 1

    per_run = []
    event.listen(Engine, "commit", count)
    try:
        for n_trials in (10, 30):  # the second run adds 20 trials to the same study
            spec = write_spec(
                tmp_path / "trips.toml",
                f"""
                name = "trips"
                objective = "noop"
                metric = "value"
                n_trials = {n_trials}
                [sampler]
                type = "random"
                [artifacts]
                path = "{tmp_path / "artifacts"}"
                """,
            )
            before = commits
            study = studyctl.run(
                str(spec), storage=url, objectives_dir=str(tmp_path / "objectives"), quiet=True
            )
            per_run.append(commits - before)
    finally:
        event.remove(Engine, "commit", count)
    assert len(study.trials) == 30
    # The second run's start-up (open, schema check, study load) is amortized over 20.
    per_trial = per_run[1] / 20
    print(f"commits per trial: {per_trial:.2f} (runs: {per_run})")
    assert per_trial <= MAX_COMMITS_PER_TRIAL
    assert per_trial == pytest.approx(per_run[0] / 10, abs=2.5)
