"""Helpers of the fault-injection suite: a throwaway PostgreSQL cluster that a test may stop
and start (never the shared server on 5432), and the "nothing lost" figures every scenario
prints and asserts.

Each scenario prints one line, `figures <scenario>: ...`, the numbers RELIABILITY.md quotes
(`pytest tests/faults -s` shows them).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ThrowawayPostgres:
    """A PostgreSQL cluster of its own (initdb in a temporary folder, its own port, run as
    the `postgres` user), so a test can take the database away and bring it back."""

    bin: Path
    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://root@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                *args,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=60"
        )
        self._ctl("-o", opts, "-l", str(self.data / "server.log"), "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: open sessions are terminated, like a database server restart."""
        self._ctl("-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=root dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://root@127.0.0.1:{self.port}/{name}"


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    bin_dir = _pg_bin()
    if bin_dir is None or shutil.which("runuser") is None or os.geteuid() != 0:
        if os.environ.get("CI"):
            raise RuntimeError("the fault tests need PostgreSQL's initdb/pg_ctl and root")
        pytest.skip("PostgreSQL server binaries or root not available")
    # Outside pytest's tmp_path: the postgres user must be able to enter the folder.
    base = Path(tempfile.mkdtemp(prefix="studyctl-pg-"))
    data = base / "data"
    data.mkdir()
    shutil.chown(base, "postgres")
    shutil.chown(data, "postgres")
    os.chmod(base, 0o755)
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "root",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    cluster = ThrowawayPostgres(bin=bin_dir, data=data, port=_free_port())
    cluster.start()
    try:
        yield cluster
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Figures:
    """The "nothing lost" figures of one study after a fault and its recovery."""

    scenario: str
    finished: int
    budget: int | None
    lost: int  # trials finished before the fault and not finished (identically) after
    running: int
    failed: int
    failed_without_reason: int

    def line(self) -> str:
        return (
            f"figures {self.scenario}: finished {self.finished}/{self.budget}, "
            f"finished trials lost {self.lost}, RUNNING left {self.running}, "
            f"FAIL {self.failed} (without a reason {self.failed_without_reason}), "
            f"budget exact {self.finished == self.budget}"
        )

    def assert_nothing_lost(self) -> None:
        assert self.lost == 0, self.line()
        assert self.running == 0, self.line()
        assert self.failed_without_reason == 0, self.line()
        if self.budget is not None:
            assert self.finished == self.budget, self.line()


def finished_snapshot(url: str, study_name: str) -> dict[int, tuple[str, list[float] | None]]:
    """Number -> (state, values) of the study's finished trials, for `figures`' lost count."""
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        return {
            t.number: (t.state.name, t.values)
            for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        }
    finally:
        storage.engine.dispose()


def figures(
    scenario: str,
    url: str,
    study_name: str,
    budget: int | None,
    before: dict[int, tuple[str, list[float] | None]] | None = None,
) -> Figures:
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
    try:
        trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
    finally:
        storage.engine.dispose()
    after = {
        t.number: (t.state.name, t.values)
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    }
    failed = [t for t in trials if t.state == TrialState.FAIL]
    result = Figures(
        scenario=scenario,
        finished=len(after),
        budget=budget,
        lost=sum(1 for n, v in (before or {}).items() if after.get(n) != v),
        running=sum(1 for t in trials if t.state == TrialState.RUNNING),
        failed=len(failed),
        failed_without_reason=sum(1 for t in failed if not t.user_attrs.get("fail_reason")),
    )
    print(result.line(), flush=True)
    return result


def wait_for(predicate: object, timeout: float, poll: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(poll)
    return False
