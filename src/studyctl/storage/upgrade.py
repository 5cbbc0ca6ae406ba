"""`studyctl db upgrade` and `db version`: the schema versions of a database (Optuna's and
studyctl's) and the upgrade of both to head."""

from __future__ import annotations

from studyctl.storage.engine import require_existing_database
from studyctl.storage.rdb import close_storage, open_storage
from studyctl.storage.schema import (
    SchemaVersions,
    current_revision,
    head_revision,
    upgrade_studyctl,
)


def schema_versions(url: str) -> SchemaVersions:
    require_existing_database(url)
    storage = open_storage(url, for_upgrade=True)
    try:
        with storage.engine.connect() as conn:
            ours = current_revision(conn)
        return SchemaVersions(
            optuna_current=storage.get_current_version(),
            optuna_head=storage.get_head_version(),
            studyctl_current=ours,
            studyctl_head=head_revision(),
        )
    finally:
        storage.engine.dispose()


def upgrade_storage(url: str) -> SchemaVersions:
    """Bring Optuna's schema (through Optuna) and studyctl's (through our Alembic) to head."""
    storage = open_storage(url, for_upgrade=True)
    try:
        if storage.get_current_version() != storage.get_head_version():
            storage.upgrade()
        upgrade_studyctl(storage.engine)
    finally:
        storage.engine.dispose()
    close_storage(url)
    return schema_versions(url)
