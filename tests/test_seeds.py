"""A seeded sampler reproduces a study and never makes workers collide.

Every trial samples with a seed derived from the spec's seed and the trial's number (unique
in the study), so N workers, or one worker whose trial process is replaced, never draw the
same stream twice, and a sequential study run again with the same seed repeats its points.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest

from .conftest import run_cli, write_objectives, write_spec

pytestmark = pytest.mark.slow


def seeded_spec(tmp_path: Path, name: str, sampler: str, n_trials: int, extra: str = "") -> Path:
    return write_spec(
        tmp_path / f"{name}.toml",
        f"""
        name = "{name}"
        objective = "quadratic"
        metric = "value"
        n_trials = {n_trials}
        [sampler]
        type = "{sampler}"
        seed = 1
        {extra}
        [worker]
        heartbeat_interval = 2
        grace_period = 10
        """,
    )


def params_by_number(url: str, name: str) -> list[float]:
    trials = optuna.load_study(study_name=name, storage=url).trials
    return [t.params["x"] for t in sorted(trials, key=lambda t: t.number)]


def test_seeded_workers_draw_distinct_points(tmp_path: Path, sqlite_url: str) -> None:
    objectives = write_objectives(tmp_path / "objectives")
    # Two trials per trial process: a replaced process must not start its stream over either.
    spec = seeded_spec(tmp_path, "seeded", "tpe", 6)
    result = run_cli(
        [
            "run",
            str(spec),
            "--workers",
            "2",
            "--trials-per-process",
            "2",
            "-s",
            sqlite_url,
            "--objectives-dir",
            str(objectives),
            "-q",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    xs = params_by_number(sqlite_url, "seeded")
    assert len(xs) == 6
    assert len(set(xs)) == len(xs), f"repeated points: {xs}"


def test_sequential_rerun_with_the_same_seed_repeats_the_sequence(tmp_path: Path) -> None:
    objectives = write_objectives(tmp_path / "objectives")
    spec = seeded_spec(tmp_path, "again", "tpe", 6, "n_startup_trials = 3")
    runs = []
    for i in range(2):
        url = f"sqlite:///{tmp_path / f'run{i}.db'}"
        result = run_cli(
            ["run", str(spec), "-s", url, "--objectives-dir", str(objectives), "-q"], cwd=tmp_path
        )
        assert result.returncode == 0, result.stdout + result.stderr
        runs.append(params_by_number(url, "again"))
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 6


def test_seeded_grid_with_workers_visits_every_point_once(tmp_path: Path, sqlite_url: str) -> None:
    objectives = write_objectives(
        tmp_path / "objectives",
        """
        from studyctl import function_objective


        @function_objective("grid_xy")
        def grid_xy(trial, ctx):
            return trial.suggest_float("x", 0, 10) + trial.suggest_int("y", 0, 10)
        """,
        "grid_xy.py",
    )
    spec = write_spec(
        tmp_path / "grid.toml",
        """
        name = "grid"
        objective = "grid_xy"
        metric = "value"
        [sampler]
        type = "grid"
        seed = 1
        [sampler.grid]
        x = [1.0, 2.0]
        y = [1, 2]
        """,
    )
    result = run_cli(
        [
            "run",
            str(spec),
            "--workers",
            "2",
            "-s",
            sqlite_url,
            "--objectives-dir",
            str(objectives),
            "-q",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    trials = optuna.load_study(study_name="grid", storage=sqlite_url).trials
    points = sorted((t.params["x"], t.params["y"]) for t in trials)
    assert points == sorted(itertools.product([1.0, 2.0], [1, 2]))
