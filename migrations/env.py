"""Alembic environment for studyctl's own tables.

It runs only through `studyctl.storage.schema` (which passes the connection), keeps its version in
`studyctl_alembic_version`, and never reads, changes or stamps Optuna's tables: Optuna keeps
its schema version in the default `alembic_version` table and is upgraded only by Optuna.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from studyctl.storage.tables import metadata

VERSION_TABLE = "studyctl_alembic_version"


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    if type_ == "table":
        return bool(name) and str(name).startswith("studyctl_")
    return True


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    include_name=include_name,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
