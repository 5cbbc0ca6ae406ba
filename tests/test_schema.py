"""Migrations of studyctl's tables, schema-version checks, and moving studies between
storages; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from studyctl.cli import app
from studyctl.storage import close_storage, schema

from .conftest import run_cli, write_spec

runner = CliRunner()


def _optuna_version_row(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT version_num FROM alembic_version")))


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_revisions_upgrade_with_data_and_downgrade(storage_url: str) -> None:
    optuna.storages.RDBStorage(storage_url)  # Optuna's own tables and alembic_version
    engine = sa.create_engine(storage_url)
    optuna_version = _optuna_version_row(engine)
    assert optuna_version  # Optuna stamped its default version table

    schema.upgrade_studyctl(engine, "0001")
    with engine.begin() as conn:
        assert schema.current_revision(conn) == "0001"
        conn.execute(
            sa.text(
                "INSERT INTO studyctl_studies (study_name, n_trials, spec_json, created_at, "
                "updated_at, claim_seq) VALUES ('old', 7, '{\"x\": 1}', '2026-01-01 00:00:00', "
                "'2026-01-01 00:00:00', 3)"
            )
        )
    schema.upgrade_studyctl(engine)
    with engine.connect() as conn:
        assert schema.current_revision(conn) == schema.head_revision() == "0005"
        row = conn.execute(sa.text("SELECT * FROM studyctl_studies")).mappings().one()
    assert (row["study_name"], row["n_trials"], row["spec_json"], row["claim_seq"]) == (
        "old",
        7,
        '{"x": 1}',
        3,
    )
    assert row["created_by"] == "unknown"
    assert "ix_studyctl_claims_trial_id" in {
        i["name"] for i in sa.inspect(engine).get_indexes("studyctl_claims")
    }
    assert _optuna_version_row(engine) == optuna_version

    schema.downgrade_studyctl(engine, "0001")
    assert "created_by" not in {
        c["name"] for c in sa.inspect(engine).get_columns("studyctl_studies")
    }
    schema.downgrade_studyctl(engine, "base")
    assert not {
        t for t in _tables(engine) if t.startswith("studyctl_") and t != "studyctl_alembic_version"
    }
    assert {"trials", "studies", "alembic_version"} <= _tables(engine)
    assert _optuna_version_row(engine) == optuna_version
    engine.dispose()


def test_unversioned_tables_are_adopted_by_db_upgrade(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    optuna.storages.RDBStorage(sqlite_url)
    schema.upgrade_studyctl(engine, "0001")
    with engine.begin() as conn:  # tables made before versioning: no version row
        conn.execute(sa.text("DELETE FROM studyctl_alembic_version"))
    result = runner.invoke(app, ["db", "upgrade", "-s", sqlite_url, "-f", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["studyctl"] == {"current": "0005", "head": "0005"}
    engine.dispose()


def test_schema_mismatch_stops_run_and_worker_before_any_trial(
    tmp_path: Path, storage_url: str, objectives_dir: Path
) -> None:
    spec = write_spec(
        tmp_path / "q.toml",
        """
        name = "q"
        objective = "quadratic"
        n_trials = 2
    """,
    )
    common = ["-s", storage_url, "--objectives-dir", str(objectives_dir)]
    assert runner.invoke(app, ["run", str(spec), *common, "-q"]).exit_code == 0
    close_storage(storage_url)
    engine = sa.create_engine(storage_url)
    schema.downgrade_studyctl(engine, "0001")
    spec.write_text(spec.read_text().replace("n_trials = 2", "n_trials = 4"))
    older = run_cli(["run", str(spec), *common], cwd=tmp_path)
    worker = run_cli(["worker", "q", *common], cwd=tmp_path)
    for result in (older, worker):
        assert result.returncode == 2
        line = result.stderr.strip()
        assert "\n" not in line
        assert "studyctl schema is at revision 0001; this studyctl needs 0005" in line
        assert "run `studyctl db upgrade --storage" in line
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE studyctl_alembic_version SET version_num = '9999'"))
    newer = run_cli(["status", "q", "-s", storage_url], cwd=tmp_path)
    assert newer.returncode == 2
    assert "revision 9999, newer than this studyctl knows" in newer.stderr
    assert len(optuna.load_study(study_name="q", storage=storage_url).trials) == 2

    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE studyctl_alembic_version SET version_num = '0001'"))
    assert run_cli(["db", "upgrade", "-s", storage_url], cwd=tmp_path).returncode == 0
    again = run_cli(["run", str(spec), *common, "-q"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(optuna.load_study(study_name="q", storage=storage_url).trials) == 4
    engine.dispose()


def _comparable(study: optuna.Study) -> list[dict[str, Any]]:
    return [
        {
            "number": t.number,
            "state": t.state,
            "values": t.values,
            "params": t.params,
            "distributions": t.distributions,
            "intermediate": t.intermediate_values,
            "user_attrs": t.user_attrs,
            "system_attrs": t.system_attrs,
            "start": t.datetime_start,
            "complete": t.datetime_complete,
        }
        for t in study.trials
    ]


def test_copy_round_trip_sqlite_postgres_sqlite(
    tmp_path: Path, sqlite_url: str, postgres_url: str, objectives_dir: Path
) -> None:
    spec = write_spec(
        tmp_path / "q.toml",
        """
        name = "q"
        objective = "quadratic"
        n_trials = 5
        [pruner]
        type = "median"
        n_startup_trials = 1
        [options]
        steps = 3
    """,
    )
    assert (
        runner.invoke(
            app, ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives_dir), "-q"]
        ).exit_code
        == 0
    )
    source = optuna.load_study(study_name="q", storage=sqlite_url)
    source.set_user_attr("team", "vision")
    back_url = f"sqlite:///{tmp_path / 'back.db'}"
    first = runner.invoke(app, ["copy", "q", "--from", sqlite_url, "--to", postgres_url])
    assert first.exit_code == 0, first.output
    refused = runner.invoke(app, ["copy", "q", "--from", sqlite_url, "--to", postgres_url])
    assert refused.exit_code == 2 and "already exists" in refused.output
    assert "--overwrite" in refused.output
    assert (
        runner.invoke(
            app, ["copy", "q", "--from", sqlite_url, "--to", postgres_url, "--overwrite"]
        ).exit_code
        == 0
    )
    assert (
        runner.invoke(app, ["copy", "q", "--from", postgres_url, "--to", back_url]).exit_code == 0
    )
    for url in (postgres_url, back_url):
        copied = optuna.load_study(study_name="q", storage=url)
        assert _comparable(copied) == _comparable(source)
        assert copied.user_attrs == source.user_attrs
        assert copied.metric_names == source.metric_names
    status = json.loads(runner.invoke(app, ["status", "q", "-s", back_url, "-f", "json"]).output)
    assert status["n_trials"] == 5 and status["complete"] is True
    close_storage(back_url)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql+psycopg://root:pw@127.0.0.1:5432/no_such_db_zz", "does not exist"),
        ("postgresql+pg8000://root:pw@127.0.0.1:5432/postgres", "driver is not installed"),
    ],
)
def test_postgres_errors_are_one_line(url: str, words: str) -> None:
    result = runner.invoke(app, ["studies", "-s", url])
    assert result.exit_code == 2
    assert words in result.output and "pw@" not in result.output
    assert result.output.count("\n") == 1


def test_a_current_database_opens_without_optunas_schema_work(storage_url: str) -> None:
    """A database whose two schemas are at head opens without Optuna's table creation,
    version row and Alembic revision check (`rdb_init`): the storage has every attribute
    Optuna's own `RDBStorage.__init__` sets, with the same values, and works as one."""
    from optuna.storages import RDBStorage

    from studyctl.storage import open_storage
    from studyctl.storage.rdb_init import LazyVersionManager

    created = open_storage(storage_url)  # a new database: the set-up path
    assert not isinstance(created._version_manager, LazyVersionManager)
    close_storage(storage_url)
    opened = open_storage(storage_url)
    assert isinstance(opened._version_manager, LazyVersionManager)
    plain = RDBStorage(storage_url, engine_kwargs=opened.engine_kwargs)
    try:
        mine, optunas = vars(opened), vars(plain)
        assert set(optunas) <= set(mine)
        built = {"engine", "scoped_session", "_version_manager"}
        for name in set(optunas) - built:
            assert mine[name] == optunas[name], name
        assert opened.get_current_version() == plain.get_current_version()
        assert opened.get_head_version() == plain.get_head_version()
        study = optuna.create_study(study_name="current", storage=opened)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        again = optuna.load_study(study_name="current", storage=plain)
        assert [t.params for t in again.trials] == [t.params for t in study.trials]
    finally:
        plain.engine.dispose()


def test_a_database_a_revision_behind_is_still_refused(sqlite_url: str) -> None:
    """The quick open finds the schema not current and leaves the decision to the set-up
    path, which refuses the database with the fix."""
    from studyctl.errors import StorageError
    from studyctl.storage import open_storage

    storage = open_storage(sqlite_url)
    with storage.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {schema.VERSION_TABLE} SET version_num = '0001'"))
    close_storage(sqlite_url)
    with pytest.raises(StorageError, match="studyctl db upgrade"):
        open_storage(sqlite_url)
