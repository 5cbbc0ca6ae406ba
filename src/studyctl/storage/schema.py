"""Schema versions of both applications in one database.

* studyctl's tables: Alembic revisions in `migrations/` (installed as
  `studyctl.migrations`), version kept in `studyctl_alembic_version`.
* Optuna's tables: Optuna's own schema version and upgrade, never touched by our Alembic.

A database without studyctl's tables is set up at head on first use. A database at another
revision makes every command stop with one line naming both revisions and the fix;
only `studyctl db upgrade` migrates.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from studyctl.errors import StorageError

VERSION_TABLE = "studyctl_alembic_version"
FIRST_REVISION = "0001"


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(files("studyctl.migrations")))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}


def current_revision(conn: Connection) -> str | None:
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _has_studyctl_tables(conn: Connection) -> bool:
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
    with engine.begin() as conn:
        if current_revision(conn) is None and _has_studyctl_tables(conn):
            command.stamp(_config(conn), FIRST_REVISION)
        command.upgrade(_config(conn), revision)


def downgrade_studyctl(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.downgrade(_config(conn), revision)
