"""Several studyctl commands opening a brand-new database at the same instant (how Optuna
users parallelise: the same command on several machines). Set-up of Optuna's tables,
studyctl's tables and the study itself must happen exactly once, whoever comes first."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from ..conftest import PG_DSN, PG_URL, STUDYCTL, write_objectives, write_spec
from .conftest import figures

pytestmark = pytest.mark.slow

N_TRIALS = 6
# Repetitions per batch size (CI keeps the suite short; RELIABILITY.md's figures were taken
# with STUDYCTL_FAULT_REPEAT=3).
REPEAT = int(os.environ.get("STUDYCTL_FAULT_REPEAT", "0"))
REPETITIONS = {2: REPEAT or 2, 4: REPEAT or 1}


@pytest.fixture
def new_postgres_databases() -> Iterator[list[str]]:
    """URLs of databases that do not exist yet on the local server (created empty right
    before each use, dropped afterwards)."""
    import psycopg

    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    names: list[str] = []
    for _ in range(max(REPETITIONS.values())):
        name = f"studyctl_first_{uuid.uuid4().hex[:10]}"
        admin.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
    try:
        yield [PG_URL.format(name=n) for n in names]
    finally:
        for name in names:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


def _start_together(commands: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("STUDYCTL_STORAGE", None)
    procs = [
        subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for cmd in commands
    ]
    results = []
    for cmd, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=180)
        results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    return results


def _commands(n: int, spec: Path, url: str, objectives: Path) -> list[list[str]]:
    run = [*STUDYCTL, "run", str(spec), "--storage", url, "--objectives-dir", str(objectives), "-q"]
    # One command of each batch is a read-only one, racing the runs' set-up.
    status = [*STUDYCTL, "status", "first", "--storage", url]
    return [run] * (n - 1) + [status] if n > 2 else [run] * n


def _check(results: list[subprocess.CompletedProcess[str]], url: str, label: str) -> None:
    for r in results:
        assert "Traceback" not in r.stderr, f"{label}: {r.args[3]}: {r.stderr[-2000:]}"
        if r.args[3] == "status":
            # A status that wins the race finds no database or no study yet: one clean
            # line, exit 2.
            assert r.returncode in (0, 2), r.stderr
            if r.returncode == 2:
                assert r.stderr.startswith(("error: no study 'first'", "error: no database at")), (
                    r.stderr
                )
            continue
        assert r.returncode == 0, f"{label}: exit {r.returncode}: {r.stderr[-2000:]}"
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
    try:
        studies = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    finally:
        storage.engine.dispose()
    assert studies == ["first"], studies
    figures(label, url, "first", N_TRIALS).assert_nothing_lost()


@pytest.mark.parametrize("n", [2, 4])
def test_commands_opening_a_new_sqlite_database_at_once(tmp_path: Path, n: int) -> None:
    objectives = write_objectives(tmp_path / "objectives")
    spec = write_spec(
        tmp_path / "first.toml",
        f"""
        name = "first"
        objective = "quadratic"
        n_trials = {N_TRIALS}
        [sampler]
        type = "random"
        """,
    )
    started = time.monotonic()
    for i in range(REPETITIONS[n]):
        url = f"sqlite:///{tmp_path / f'new-{i}.db'}"
        results = _start_together(_commands(n, spec, url, objectives), tmp_path)
        _check(results, url, f"first open sqlite x{n} #{i}")
    print(
        f"first open sqlite x{n}: {REPETITIONS[n]} repetitions in {time.monotonic() - started:.1f}s"
    )


@pytest.mark.parametrize("n", [2, 4])
def test_commands_opening_a_new_postgres_database_at_once(
    tmp_path: Path, n: int, new_postgres_databases: list[str]
) -> None:
    objectives = write_objectives(tmp_path / "objectives")
    spec = write_spec(
        tmp_path / "first.toml",
        f"""
        name = "first"
        objective = "quadratic"
        n_trials = {N_TRIALS}
        [sampler]
        type = "random"
        """,
    )
    started = time.monotonic()
    for i, url in enumerate(new_postgres_databases[: REPETITIONS[n]]):
        results = _start_together(_commands(n, spec, url, objectives), tmp_path)
        _check(results, url, f"first open postgresql x{n} #{i}")
    print(
        f"first open postgresql x{n}: {REPETITIONS[n]} repetitions in "
        f"{time.monotonic() - started:.1f}s"
    )
