"""A database engine's settings and the checks made before connecting, without Optuna:
shared by `rdb.open_storage` (Optuna's RDBStorage on the engine) and `reader` (the
inspection commands' plain SQLAlchemy reads), so both connect the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from studyctl.errors import StorageError, one_line
from studyctl.storage.urls import mask_url

SQLITE_BUSY_TIMEOUT_S = 60
# Per process: Optuna's session plus its heartbeat thread, studyctl's worker heartbeat
# thread and one spare; see docs/ARCHITECTURE.md ("Connections").
POSTGRES_POOL_SIZE = 3
POSTGRES_MAX_OVERFLOW = 1

# PostgreSQL's SQLSTATE for a right the role lacks (permission denied for table/schema).
INSUFFICIENT_PRIVILEGE = "42501"


def engine_kwargs(url: sa.engine.URL, pool_size: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"hide_parameters": True}
    if url.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    else:
        kwargs.update(
            pool_size=pool_size,
            max_overflow=POSTGRES_MAX_OVERFLOW,
            pool_pre_ping=True,
            pool_recycle=1800,
        )
        if url.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


@sa.event.listens_for(sa.Engine, "handle_error")
def _explain_missing_right(context: sa.engine.ExceptionContext) -> None:
    """A statement the database role may not run becomes one `StorageError` naming the
    role and the right, wherever it happens (opening, a command, a worker); the
    transaction is rolled back, so nothing is half-written."""
    orig = context.original_exception
    if getattr(orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE or context.engine is None:
        return
    url = context.engine.url
    what = one_line(orig, with_type=False)
    if "schema" in what:
        hint = "run `studyctl db upgrade` with the database's owner role first"
    else:
        hint = "SECURITY.md lists the rights each command needs"
    raise StorageError(
        f"storage {mask_url(url.render_as_string(hide_password=True))}: {what}: "
        f"the database role {url.username!r} lacks this right",
        hint=hint,
    )


def require_existing_database(url: str) -> None:
    """Refuse a SQLite URL whose file does not exist: commands that read or change existing
    studies never create an empty database (in a folder without `studyctl.db`,
    `studyctl studies` used to leave one behind). Other URLs are checked on connecting."""
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        return  # open_storage reports the malformed URL
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:"):
        return
    if not Path(database).expanduser().is_file():
        raise StorageError(
            f"no database at {mask_url(url)}: {database} does not exist",
            hint="run a study first (`studyctl run SPEC`), or name the database with "
            "--storage URL or $STUDYCTL_STORAGE",
        )
