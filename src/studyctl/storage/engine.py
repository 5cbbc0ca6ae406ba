"""A database engine's settings and the checks made before connecting, without Optuna:
shared by `rdb.open_storage` (Optuna's RDBStorage on the engine) and `reader` (the
inspection commands' plain SQLAlchemy reads), so both connect the same way."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from studyctl.errors import StorageError
from studyctl.storage.outage import is_stale_snapshot

# Shared with the reads made through the driver itself (`plain`).
from studyctl.storage.plain import (
    INSUFFICIENT_PRIVILEGE,
    POSTGRES_CONNECT_TIMEOUT_S,
    missing_right,
)
from studyctl.storage.plain import SQLITE_BUSY_TIMEOUT_S as SQLITE_BUSY_TIMEOUT_S
from studyctl.storage.plain import require_existing_database as require_existing_database

# Per process: Optuna's session plus its heartbeat thread, studyctl's worker heartbeat
# thread and one spare; see docs/ARCHITECTURE.md ("Connections").
POSTGRES_POOL_SIZE = 3
POSTGRES_MAX_OVERFLOW = 1


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
            kwargs["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
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
    raise missing_right(orig, url.render_as_string(hide_password=True), url.username)


def prepare_sqlite(url: sa.engine.URL, shown: str) -> None:
    """Check the file's folder exists and switch the database to WAL (persistent)."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    folder = Path(database).expanduser().resolve().parent
    if not folder.is_dir():
        raise StorageError(
            f"cannot open SQLite storage {shown}: folder {folder} does not exist",
            hint="create it or use another path",
        )
    try:
        conn = sqlite3.connect(database, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"cannot open SQLite storage {shown}: {exc}") from None


def tune_sqlite_connections(engine: sa.Engine) -> None:
    """synchronous=NORMAL on every connection: in WAL mode the database stays consistent
    after a crash, and a commit no longer waits for an fsync (studyctl commits a dozen times
    per trial); only the last commits before a power loss can be lost."""

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    sa.event.listen(engine, "connect", on_connect)
    sa.event.listen(engine, "handle_error", _drop_stale_snapshot)
    engine.dispose()  # connections made before the listener reconnect with it


def _drop_stale_snapshot(context: sa.engine.ExceptionContext) -> None:
    """A write that fails at once with SQLITE_BUSY_SNAPSHOT came through a connection still
    holding an old read: a statement left open when an exception (a stop signal raised in
    the objective) cut a read short, which Python 3.11's rollback no longer resets. The
    connection is dropped like a broken one, so the write's retry (`outage.OutageGuard`)
    runs on a fresh connection; nothing of the failed transaction was written."""
    if is_stale_snapshot(context.original_exception):
        context.is_disconnect = True


def database_url(url: str, shown: str) -> sa.engine.URL:
    """`url` parsed, if it names a database studyctl opens (SQLite or PostgreSQL); else one
    `StorageError` (`shown`: the URL with its password masked)."""
    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise StorageError(
            f"storage URL {shown!r} is malformed",
            hint="expected e.g. sqlite:///studyctl.db or postgresql+psycopg://user@host:5432/db",
        ) from None
    backend = parsed.get_backend_name()
    if backend in ("grpc", "grpcs"):
        raise StorageError(
            f"storage URL {shown!r} is a studyctl storage proxy, which serves workers only",
            hint="give this command the database URL the proxy was started with",
        )
    if backend not in ("sqlite", "postgresql"):
        raise StorageError(
            f"storage URL {shown!r}: unsupported database {backend!r}",
            hint="use sqlite:///PATH or postgresql+psycopg://user@host/db",
        )
    return parsed
