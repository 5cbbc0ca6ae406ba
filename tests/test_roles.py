"""Least privilege on the real PostgreSQL: an owner that migrates, a worker role without
DDL or study deletion, a read-only role for inspection; scripts/postgres/roles.sql grants
them, and each command a role may not run stops with one clear line."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from .conftest import PG_DSN, REPO, run_cli, write_spec
from .test_dashboard_security import serve


@dataclass
class Roles:
    database: str
    owner: str
    worker: str
    reader: str

    def url(self, role: str) -> str:
        return f"postgresql+psycopg://{role}@127.0.0.1:5432/{self.database}"


@pytest.fixture
def roles() -> Iterator[Roles]:
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    tag = uuid.uuid4().hex[:10]
    r = Roles(f"studyctl_roles_{tag}", f"sc_owner_{tag}", f"sc_worker_{tag}", f"sc_reader_{tag}")
    for role in (r.owner, r.worker, r.reader):
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    admin.execute(f'CREATE DATABASE "{r.database}" OWNER "{r.owner}"')
    try:
        yield r
    finally:
        admin.execute(f'DROP DATABASE "{r.database}" WITH (FORCE)')
        for role in (r.owner, r.worker, r.reader):
            admin.execute(f'DROP ROLE "{role}"')
        admin.close()


def _grant(r: Roles) -> None:
    subprocess.run(
        [
            "psql", "-q", "-h", "127.0.0.1", "-U", "root", "-d", r.database,
            "-v", f"owner={r.owner}", "-v", f"worker={r.worker}", "-v", f"reader={r.reader}",
            "-f", str(REPO / "scripts" / "postgres" / "roles.sql"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip


def _one_clear_line(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_owner_worker_and_reader_roles(tmp_path: Path, roles: Roles, objectives_dir: Path) -> None:
    spec = write_spec(
        tmp_path / "r.toml",
        """
        name = "roles"
        objective = "quadratic"
        n_trials = 2
        [sampler]
        type = "random"
        """,
    )
    worker, reader = roles.url(roles.worker), roles.url(roles.reader)

    # No role but the owner may create the schema.
    early = run_cli(["status", "roles", "-s", worker], cwd=tmp_path)
    _one_clear_line(early, "permission denied", roles.worker, "db upgrade")
    upgraded = run_cli(["db", "upgrade", "-s", roles.url(roles.owner)], cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    _grant(roles)

    # The worker role runs studies...
    ran = run_cli(
        ["run", str(spec), "-s", worker, "--objectives-dir", str(objectives_dir), "-q"],
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # ...but cannot delete one, nor change the schema.
    deleted = run_cli(["delete", "roles", "--yes", "-s", worker], cwd=tmp_path)
    _one_clear_line(deleted, "permission denied", roles.worker)
    assert optuna.get_all_study_names(storage=roles.url(roles.owner)) == ["roles"]

    # The read-only role inspects...
    for args in (["status", "roles"], ["trials", "roles", "--format", "json"]):
        shown = run_cli([*args, "-s", reader], cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
    report = run_cli(
        ["report", "roles", "-s", reader, "-o", str(tmp_path / "r.html")], cwd=tmp_path
    )
    assert report.returncode == 0, report.stderr
    with serve(reader, tmp_path, "--read-only") as board:
        status, _, body = board.request("GET", "/api/studies")
        assert status == 200 and b'"roles"' in body
    # ...and may not run anything.
    refused = run_cli(
        ["run", str(spec), "-s", reader, "--objectives-dir", str(objectives_dir), "-q"],
        cwd=tmp_path,
    )
    _one_clear_line(refused, "permission denied", roles.reader)
    study = optuna.load_study(study_name="roles", storage=roles.url(roles.owner))
    assert len(study.trials) == 2
