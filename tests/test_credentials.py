"""Credentials never at rest: storage URLs are stored and sent without their password, rows
written before are scrubbed by a migration, and every output masks every URL form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from studyctl.storage import mask_url

from .conftest import run_cli, write_objectives, write_spec

SECRETS = ("SPECPW", "QUERYPW", "SSLPW", "CLIPW")

FAILING_OBJECTIVE = """
from studyctl import function_objective


@function_objective("leaky")
def leaky(trial, ctx):
    trial.suggest_float("x", 0, 1)
    raise RuntimeError(
        "cannot reach postgresql+psycopg://alice:TRACEPW@db.example/hpo?sslpassword=TRACEPW2"
    )
"""


def _quadratic_spec(tmp_path: Path, name: str, storage: str | None = None) -> Path:
    line = f'storage = "{storage}"' if storage else ""
    return write_spec(
        tmp_path / f"{name}.toml",
        f"""
        name = "{name}"
        objective = "quadratic"
        n_trials = 1
        {line}
        [sampler]
        type = "random"
        """,
    )


def _dump(url: str) -> str:
    """Every row of studyctl's tables and of Optuna's attribute tables, as one text."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            names = [
                t
                for t in sa.inspect(conn).get_table_names()
                if t.startswith("studyctl_") or "attribute" in t
            ]
            rows = [
                [str(v) for v in row]
                for t in names
                for row in conn.execute(sa.text(f"SELECT * FROM {t}"))
            ]
    finally:
        engine.dispose()
    return json.dumps(rows)


def _inject_password(url: str, study: str) -> None:
    """Put a password back into a study's stored spec, as studyctl wrote it before."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            raw = conn.execute(
                sa.text("SELECT spec_json FROM studyctl_studies WHERE study_name = :n"),
                {"n": study},
            ).scalar_one()
            spec = json.loads(raw)
            spec["storage"] = "postgresql+psycopg://alice:OLDPW@db.example/hpo?password=OLDPW2"
            conn.execute(
                sa.text("UPDATE studyctl_studies SET spec_json = :s WHERE study_name = :n"),
                {"s": json.dumps(spec), "n": study},
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://u:PW@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
        ("postgresql+psycopg://u@h/db?password=PW", "postgresql+psycopg://u@h/db?password=***"),
        (
            "postgresql+psycopg://u@h/db?sslmode=require&sslpassword=PW",
            "postgresql+psycopg://u@h/db?sslmode=require&sslpassword=***",
        ),
        ("sqlite:///studies.db", "sqlite:///studies.db"),
    ],
)
def test_mask_url_covers_every_form(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_create_and_run_store_no_password(
    tmp_path: Path, postgres_url: str, objectives_dir: Path
) -> None:
    host_part = postgres_url.split("://", 1)[1].split("@", 1)[1]
    in_spec = f"postgresql+psycopg://root:SPECPW@{host_part}?sslpassword=SSLPW"
    spec = _quadratic_spec(tmp_path, "secret-spec", in_spec)
    created = run_cli(["create", str(spec), "--objectives-dir", str(objectives_dir)], cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    on_cli = f"postgresql+psycopg://root:CLIPW@{host_part}?password=QUERYPW"
    ran = run_cli(
        ["run", str(spec), "-s", on_cli, "--objectives-dir", str(objectives_dir)], cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    for out in (created, ran):
        assert not any(s in out.stdout + out.stderr for s in SECRETS)
    stored = _dump(postgres_url)
    assert not any(s in stored for s in SECRETS), stored
    # The user name, host and database are kept: the record still says where the study is.
    assert f"postgresql+psycopg://root@{host_part}" in stored


def test_copy_carries_no_password(tmp_path: Path, sqlite_url: str, objectives_dir: Path) -> None:
    spec = _quadratic_spec(tmp_path, "copied")
    made = run_cli(
        ["create", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives_dir)],
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    _inject_password(sqlite_url, "copied")
    target = f"sqlite:///{tmp_path / 'target.db'}"
    copied = run_cli(["copy", "copied", "--from", sqlite_url, "--to", target], cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    stored = _dump(target)
    assert "copied" in stored
    assert "OLDPW" not in stored
    assert "postgresql+psycopg://alice@db.example/hpo" in stored


def test_migration_scrubs_rows_written_before(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    spec = _quadratic_spec(tmp_path, "old-row")
    made = run_cli(
        ["create", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives_dir)],
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    _inject_password(sqlite_url, "old-row")
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:  # as a database last upgraded by the previous release
        conn.execute(sa.text("UPDATE studyctl_alembic_version SET version_num = '0002'"))
    engine.dispose()
    upgraded = run_cli(["db", "upgrade", "-s", sqlite_url], cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    stored = _dump(sqlite_url)
    assert "OLDPW" not in stored
    assert "postgresql+psycopg://alice@db.example/hpo" in stored
    status = run_cli(["status", "old-row", "-s", sqlite_url], cwd=tmp_path)
    assert status.returncode == 0, status.stderr


def test_errors_mask_query_passwords(tmp_path: Path, postgres_url: str) -> None:
    missing = run_cli(
        ["status", "no-such-study", "-s", f"{postgres_url}?password=QUERYPW"], cwd=tmp_path
    )
    assert missing.returncode == 2
    assert "no study 'no-such-study'" in missing.stderr
    assert "password=***" in missing.stderr
    unreachable = run_cli(
        [
            "status",
            "x",
            "-s",
            "postgresql+psycopg://root:SPECPW@127.0.0.1:1/db?sslpassword=SSLPW&password=QUERYPW",
        ],
        cwd=tmp_path,
    )
    assert unreachable.returncode == 2
    assert "cannot connect" in unreachable.stderr
    for out in (missing, unreachable):
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert not any(s in out.stdout + out.stderr for s in SECRETS), out.stderr


def test_trial_tracebacks_are_masked(tmp_path: Path, sqlite_url: str) -> None:
    folder = write_objectives(tmp_path / "leaky", FAILING_OBJECTIVE, name="leaky.py")
    spec = write_spec(
        tmp_path / "leaky.toml",
        """
        name = "leaky"
        objective = "leaky"
        n_trials = 1
        [worker]
        max_consecutive_failures = 1
        """,
    )
    ran = run_cli(
        ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(folder)], cwd=tmp_path
    )
    assert ran.returncode == 1
    stored = _dump(sqlite_url)
    assert "RuntimeError: cannot reach postgresql+psycopg://alice:***@db.example" in stored
    assert "TRACEPW" not in stored
    assert "TRACEPW" not in ran.stdout + ran.stderr
