"""Schema versions of both applications in one database.

* studyctl's tables: Alembic revisions in `migrations/` (installed as
  `studyctl.migrations`), version kept in `studyctl_alembic_version`.
* Optuna's tables: Optuna's own schema version and upgrade, never touched by our Alembic.

A database without studyctl's tables is set up at head on first use. A database at another
revision makes every command stop with one line naming both revisions and the fix;
only `studyctl db upgrade` migrates.

Every command checks the revision, so the check for a current schema is one query and
imports no Alembic: the head is read from the revision files' ``revision``/
``down_revision`` lines (`head_revision`, kept equal to Alembic's by a test).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from studyctl.errors import StorageError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection, Engine

VERSION_TABLE = "studyctl_alembic_version"
# studyctl's indexes on Optuna's tables (revisions 0004 and 0005), by name: additive, and
# created again by every `upgrade_studyctl` should an Optuna migration have rebuilt the table
# without them.
OPTUNA_TABLE_INDEXES = {
    "ix_studyctl_trials_study_state": "CREATE INDEX IF NOT EXISTS ix_studyctl_trials_study_state "
    "ON trials (study_id, state)",
    "ix_studyctl_trials_study_trial": "CREATE INDEX IF NOT EXISTS ix_studyctl_trials_study_trial "
    "ON trials (study_id, trial_id)",
}
FIRST_REVISION = "0001"
# Both applications' revisions in one query: (rows, revision) of studyctl's version table,
# then of Optuna's (`alembic_version`); current is one row each, at the heads.
VERSIONS_SQL = (
    f"SELECT (SELECT count(*) FROM {VERSION_TABLE}), (SELECT max(version_num) FROM "
    f"{VERSION_TABLE}), (SELECT count(*) FROM alembic_version), "
    "(SELECT max(version_num) FROM alembic_version)"
)
_REVISION_LINE = re.compile(r"""^(down_revision|revision)\s*(?::[^=]*)?=\s*["']?(\w+)["']?""", re.M)
# Optuna's revision ids have dots ("v3.2.0.a").
_OPTUNA_REVISION_LINE = re.compile(
    r"""^(down_revision|revision)\s*(?::[^=]*)?=\s*["']?([\w.]+)["']?""", re.M
)


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("studyctl.migrations")))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def _revisions() -> dict[str, str | None]:
    """revision -> down_revision, from the files in migrations/versions."""
    chain: dict[str, str | None] = {}
    for path in (files("studyctl.migrations") / "versions").iterdir():
        if not path.name.endswith(".py") or path.name.startswith("_"):
            continue
        found = {m[1]: m[2] for m in _REVISION_LINE.finditer(path.read_text())}
        if "revision" in found:
            down = found.get("down_revision")
            chain[found["revision"]] = None if down in (None, "None") else down
    return chain


def head_revision() -> str:
    """The revision no other revision revises (Alembic's head of a linear history)."""
    chain = _revisions()
    heads = set(chain) - {d for d in chain.values() if d is not None}
    assert len(heads) == 1, f"migrations/versions has heads {sorted(heads)}"
    return heads.pop()


@functools.cache
def optuna_head_revision() -> str | None:
    """Optuna's schema head (Alembic's, as `RDBStorage.get_head_version()` gives it), read
    from the installed Optuna's revision files without importing Optuna or Alembic; None
    when they cannot be read (then only Optuna's own check decides)."""
    spec = importlib.util.find_spec("optuna")
    if spec is None or not spec.submodule_search_locations:
        return None
    chain: dict[str, str | None] = {}
    for folder in spec.submodule_search_locations:
        versions = Path(folder) / "storages" / "_rdb" / "alembic" / "versions"
        for path in versions.glob("*.py"):
            found = {m[1]: m[2] for m in _OPTUNA_REVISION_LINE.finditer(path.read_text())}
            if "revision" in found:
                down = found.get("down_revision")
                chain[found["revision"]] = None if down in (None, "None") else down
    heads = set(chain) - {d for d in chain.values() if d is not None}
    return heads.pop() if len(heads) == 1 else None


def versions_current(versions: tuple[object, ...], optuna_head: str) -> bool:
    """`VERSIONS_SQL`'s row says both schemas are at their heads."""
    return versions == (1, head_revision(), 1, optuna_head)


def known_revisions() -> set[str]:
    return set(_revisions())


def current_revision(conn: Connection) -> str | None:
    """studyctl's revision in this database (None before studyctl's first use): two cheap
    queries, without Alembic."""
    import sqlalchemy as sa

    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    if len(rows) > 1:
        raise StorageError(f"{VERSION_TABLE} holds several revisions: {sorted(r[0] for r in rows)}")
    return str(rows[0][0]) if rows else None


def _has_studyctl_tables(conn: Connection) -> bool:
    import sqlalchemy as sa

    return "studyctl_studies" in sa.inspect(conn).get_table_names()


@dataclass
class SchemaVersions:
    optuna_current: str | None
    optuna_head: str
    studyctl_current: str | None
    studyctl_head: str


def ensure_schema(engine: Engine, shown_url: str) -> None:
    """Set up a database without studyctl's tables; refuse one at another revision."""
    with engine.connect() as conn:
        current = current_revision(conn)
        tables = _has_studyctl_tables(conn)
    head = head_revision()
    if current == head:
        return
    if current is None and not tables:
        upgrade_studyctl(engine)
        return
    shown_current = current or f"{FIRST_REVISION} (unversioned)"
    if current is not None and current not in known_revisions():
        raise StorageError(
            f"storage {shown_url}: studyctl schema is at revision {shown_current}, newer than "
            f"this studyctl knows (head {head})",
            hint="upgrade studyctl (pip install -U studyctl)",
        )
    raise StorageError(
        f"storage {shown_url}: studyctl schema is at revision {shown_current}; this studyctl "
        f"needs {head}",
        hint=f"run `studyctl db upgrade --storage {shown_url}`",
    )


def upgrade_studyctl(engine: Engine, revision: str = "head") -> None:
    """Bring studyctl's tables to `revision`; tables made before versioning are adopted."""
    import sqlalchemy as sa
    from alembic import command

    with engine.begin() as conn:
        if current_revision(conn) is None and _has_studyctl_tables(conn):
            command.stamp(_config(conn), FIRST_REVISION)
        command.upgrade(_config(conn), revision)
        if revision == "head" and sa.inspect(conn).has_table("trials"):
            for ddl in OPTUNA_TABLE_INDEXES.values():
                conn.execute(sa.text(ddl))


def downgrade_studyctl(engine: Engine, revision: str) -> None:
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(_config(conn), revision)
