"""Everything studyctl keeps in a database, behind one package; nothing here imports a layer
above it.

* `urls`: which storage a command uses, and how its URL is shown (never with a password).
* `rdb`: `StudyctlStorage` (Optuna's RDBStorage with atomic trial transitions) and
  `open_storage`, one per process, every problem a `StorageError`.
* `tables`: studyctl's own tables and all of studyctl's SQL, one transaction helper.
* `control`: the `Control` protocol, the operations a worker makes on those tables;
  `SqlControl` runs them on the database.
* `grpc`: `studyctl proxy` (server) and `ProxyStorage`/`RemoteControl` (its client).
* `connect`: a worker's storage (database or proxy) and its heartbeat settings.
* `schema`: Alembic glue for studyctl's tables and the schema checks; `upgrade`: the
  schema versions of a database and `db upgrade`.
* `outage`: riding out a database that goes away and comes back (`OutageGuard`), and the
  rule that keeps heartbeat sweeps from mistaking an outage for dead workers.
* `locks`: the set-up lock that serialises a new database's set-up and study creation.
* `studies`: studies created or loaded from a spec, deleted, copied.

The names below are imported on first use, so `studyctl.storage.urls` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from studyctl.storage.connect import (
        WorkerStorage,
        enable_heartbeat,
        open_worker_storage,
        outage_env,
        set_outage_tolerance,
    )
    from studyctl.storage.rdb import (
        StudyctlStorage,
        close_storage,
        open_storage,
        study_exists,
    )
    from studyctl.storage.upgrade import schema_versions, upgrade_storage
    from studyctl.storage.urls import DEFAULT_STORAGE, STORAGE_ENV, mask_url, resolve_storage_url

_EXPORTS = {
    "WorkerStorage": "connect",
    "enable_heartbeat": "connect",
    "open_worker_storage": "connect",
    "set_outage_tolerance": "connect",
    "outage_env": "connect",
    "StudyctlStorage": "rdb",
    "close_storage": "rdb",
    "open_storage": "rdb",
    "schema_versions": "upgrade",
    "study_exists": "rdb",
    "upgrade_storage": "upgrade",
    "DEFAULT_STORAGE": "urls",
    "STORAGE_ENV": "urls",
    "mask_url": "urls",
    "resolve_storage_url": "urls",
}

__all__ = [
    "DEFAULT_STORAGE",
    "STORAGE_ENV",
    "StudyctlStorage",
    "WorkerStorage",
    "close_storage",
    "enable_heartbeat",
    "mask_url",
    "open_storage",
    "open_worker_storage",
    "outage_env",
    "resolve_storage_url",
    "schema_versions",
    "set_outage_tolerance",
    "study_exists",
    "upgrade_storage",
]


if not TYPE_CHECKING:  # mypy checks the imports above; a name not listed there is an error

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)
