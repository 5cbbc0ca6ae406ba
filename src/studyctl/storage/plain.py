"""SQL text on a plain DB-API connection or on a SQLAlchemy one, the same text for both.

The inspection commands only read. Importing SQLAlchemy was most of their start-up, so
`reader.open_reader` reads through the driver itself (the stdlib's `sqlite3`, `psycopg`),
connected as the engine would be (`connect_plain`). The read queries they share with the
rest of studyctl (`trial_rows`, `state_counts`, ...) take either connection and run their
SQL through `rows`: ``:name`` parameters, as SQLAlchemy's `text()` writes them (turned
into psycopg's ``%(name)s`` for PostgreSQL), and the driver's own values back on both
paths (SQLAlchemy's `text()` converts no column), so both give the same answers.

This module imports neither SQLAlchemy nor a driver until a connection is made.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from studyctl.errors import StorageError, one_line
from studyctl.storage.urls import mask_url

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

# What the shared read queries take: SQLAlchemy's connection or a plain one.
ReadConnection: TypeAlias = "Connection | PlainConnection"

SQLITE_BUSY_TIMEOUT_S = 60
POSTGRES_CONNECT_TIMEOUT_S = 10
# PostgreSQL's SQLSTATE for a right the role lacks (permission denied for table/schema).
INSUFFICIENT_PRIVILEGE = "42501"

# Trial states by name, in Optuna's order; a trial counts against the budget once finished.
STATES = ("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING")
FINISHED_STATES = ("COMPLETE", "PRUNED")
WORKER_RUNNING = "running"
WORKER_STOPPED = "stopped"

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
# The URLs read without SQLAlchemy: a SQLite file, and psycopg's URL of a PostgreSQL
# server (user, password, host, port, database, libpq's query parameters). Anything else
# (another driver, an in-memory or `file:` database, percent-escapes) goes to SQLAlchemy.
_SQLITE_URL = re.compile(r"sqlite:///(?P<path>[^?%~:][^?%:]*)")
_POSTGRES_URL = re.compile(
    r"postgresql\+psycopg://(?P<rest>(?:(?P<user>[\w.-]+)(?::[^@/?#%]*)?@)?[\w.-]+(?::\d+)?/[\w.-]+"
    r"(?:\?[\w=&.-]*)?)"
)


class PlainConnection:
    """A DB-API connection (sqlite3 or psycopg) and its dialect's name."""

    def __init__(self, raw: Any, dialect: str) -> None:
        self.raw = raw
        self.dialect = dialect

    def rows(
        self, sql: str, params: Mapping[str, Any] | None = None, *, binary: bool = False
    ) -> list[tuple[Any, ...]]:
        """`sql`'s rows; with `binary`, PostgreSQL sends them in its binary format, which
        the driver reads faster (timestamps, floats) but which it reads an enum column of
        as bytes: cast those to text."""
        if self.dialect == "postgresql":
            assert "%" not in sql, "psycopg reads % as a placeholder"
            sql = _PARAM.sub(r"%(\1)s", sql)
            cursor = self.raw.cursor(binary=binary)
        else:
            cursor = self.raw.cursor()
        try:
            cursor.execute(sql, dict(params or {}))
            return [tuple(r) for r in cursor.fetchall()]
        finally:
            cursor.close()

    def commit(self) -> None:
        self.raw.commit()

    def rollback(self) -> None:
        self.raw.rollback()

    def close(self) -> None:
        self.raw.close()


def is_plain_url(url: str) -> bool:
    """Whether `connect_plain` connects to `url` (else SQLAlchemy does)."""
    return bool(_SQLITE_URL.fullmatch(url) or _POSTGRES_URL.fullmatch(url))


def connect_plain(url: str) -> PlainConnection | None:
    """A DB-API connection to `url` with the engine's settings, or None for a URL that is
    not read without SQLAlchemy. Connection errors are the driver's."""
    if (sqlite := _SQLITE_URL.fullmatch(url)) is not None:
        import sqlite3

        return PlainConnection(
            sqlite3.connect(sqlite["path"], timeout=SQLITE_BUSY_TIMEOUT_S), "sqlite"
        )
    if (postgres := _POSTGRES_URL.fullmatch(url)) is not None:
        import psycopg

        raw = psycopg.connect(
            "postgresql://" + postgres["rest"], connect_timeout=POSTGRES_CONNECT_TIMEOUT_S
        )
        return PlainConnection(raw, "postgresql")
    return None


def postgres_user(url: str) -> str | None:
    """The user name of a PostgreSQL URL `connect_plain` reads (None without one)."""
    found = _POSTGRES_URL.fullmatch(url)
    return None if found is None else found["user"]


def missing_right(orig: BaseException, url: str, username: str | None) -> StorageError:
    """A statement the database role may not run (SQLSTATE 42501), as one line naming the
    role and the right."""
    what = one_line(orig, with_type=False)
    if "schema" in what:
        hint = "run `studyctl db upgrade` with the database's owner role first"
    else:
        hint = "SECURITY.md lists the rights each command needs"
    return StorageError(
        f"storage {mask_url(url)}: {what}: the database role {username!r} lacks this right",
        hint=hint,
    )


def require_existing_database(url: str) -> None:
    """Refuse a SQLite URL whose file does not exist: commands that read or change existing
    studies never create an empty database (in a folder without `studyctl.db`,
    `studyctl studies` used to leave one behind). Other URLs are checked on connecting."""
    sqlite = _SQLITE_URL.fullmatch(url)
    if sqlite is not None:
        database: str | None = sqlite["path"]
    elif _POSTGRES_URL.fullmatch(url) is not None:
        return
    else:
        from sqlalchemy import exc as sa_exc
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(url)
        except (sa_exc.ArgumentError, ValueError):
            return  # open_storage reports the malformed URL
        database = parsed.database
        if parsed.get_backend_name() != "sqlite":
            return
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    if not Path(database).expanduser().is_file():
        raise StorageError(
            f"no database at {mask_url(url)}: {database} does not exist",
            hint="run a study first (`studyctl run SPEC`), or name the database with "
            "--storage URL or $STUDYCTL_STORAGE",
        )


def dialect_of(conn: Connection | PlainConnection) -> str:
    return conn.dialect if isinstance(conn, PlainConnection) else conn.dialect.name


def rows(
    conn: Connection | PlainConnection,
    sql: str,
    params: Mapping[str, Any] | None = None,
    *,
    binary: bool = False,
) -> list[tuple[Any, ...]]:
    """`sql` (``:name`` parameters) on either connection: its rows as tuples (`binary`: see
    `PlainConnection.rows`; SQLAlchemy's connections read text)."""
    if isinstance(conn, PlainConnection):
        return conn.rows(sql, params, binary=binary)
    import sqlalchemy as sa

    return [tuple(r) for r in conn.execute(sa.text(sql), dict(params or {}))]


def driver_rows(
    conn: Connection | PlainConnection, sql: str, params: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """`rows`, through the driver's own cursor also on a SQLAlchemy connection (in its
    transaction), for a read of many rows: SQLAlchemy's rows cost 0.2 s of 90,000 on
    PostgreSQL. An error is the driver's, not SQLAlchemy's."""
    if not isinstance(conn, PlainConnection):
        conn = PlainConnection(conn.connection.driver_connection, conn.dialect.name)
    return conn.rows(sql, params)


def scalar(
    conn: Connection | PlainConnection, sql: str, params: Mapping[str, Any] | None = None
) -> Any:
    """The first column of the first row, or None without rows."""
    found = rows(conn, sql, params)
    return found[0][0] if found else None


def stored_datetime(value: datetime | str | None) -> datetime | None:
    """A timestamp column's value: SQLite's driver gives the text SQLAlchemy stored."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def utcnow() -> datetime:
    """Naive UTC, the form stored in every timestamp column."""
    return datetime.now(UTC).replace(tzinfo=None)


def db_utcnow(conn: Connection | PlainConnection) -> datetime:
    """Naive UTC from the database server's clock (PostgreSQL), so heartbeats written by
    workers on different hosts are stamped and compared on one clock; SQLite serves one
    machine, whose clock this process reads."""
    if dialect_of(conn) == "postgresql":
        value = scalar(conn, "SELECT timezone('UTC', clock_timestamp())")
        return value.replace(tzinfo=None) if isinstance(value, datetime) else utcnow()
    return utcnow()


def state_counts(conn: Connection | PlainConnection, study_id: int) -> dict[str, int]:
    """Trials of the study per state name (every state present, zero when none)."""
    counts = dict.fromkeys(STATES, 0)
    found = rows(
        conn,
        "SELECT state, count(*) FROM trials WHERE study_id = :sid GROUP BY state",
        {"sid": study_id},
    )
    for state, n in found:
        counts[str(getattr(state, "name", state))] = int(n)
    return counts


def finished_count(counts: dict[str, int]) -> int:
    """Trials that count against the budget, from `state_counts`."""
    return sum(counts.get(s, 0) for s in FINISHED_STATES)
