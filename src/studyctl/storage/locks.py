"""The set-up lock of a database: creating tables (Optuna's `create_all`, studyctl's
Alembic revisions) and creating a study are check-then-write steps that race when several
commands open a new database at once (`table ... already exists`, duplicate
`alembic_version` rows, `pg_type_typname_nsp_index`); under this lock each runs once and
the others find its result."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

# pg_advisory_lock key serialising set-up and study creation in one PostgreSQL database
# (any fixed 64-bit number; this one reads "studyctl").
SETUP_LOCK_KEY = 0x7374_7564_7963_746C


@contextlib.contextmanager
def setup_lock(url: sa.engine.URL) -> Iterator[None]:
    """Hold the database's set-up lock: a session advisory lock on PostgreSQL, an
    exclusive `flock` on `<file>.lock` beside a SQLite file. Creating tables (Optuna's
    `create_all`, our Alembic revisions) and creating a study are check-then-write steps
    that race when several commands open a new database at once (`table ... already
    exists`, duplicate `alembic_version` rows, `pg_type_typname_nsp_index`); under the
    lock each runs once and the others find its result."""
    backend = url.get_backend_name()
    if backend == "postgresql":
        engine = sa.create_engine(
            url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 10}
        )
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": SETUP_LOCK_KEY})
                conn.commit()
                try:
                    yield
                finally:
                    with contextlib.suppress(sa_exc.SQLAlchemyError):
                        conn.execute(
                            sa.text("SELECT pg_advisory_unlock(:k)"), {"k": SETUP_LOCK_KEY}
                        )
                        conn.commit()
        finally:
            engine.dispose()  # closing the session releases the lock in any case
        return
    lock_path = _sqlite_lock_path(url)
    if lock_path is None:
        yield
        return
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield  # a read-only folder: nothing can be set up there anyway
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _sqlite_lock_path(url: sa.engine.URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database).expanduser()
    return path.with_name(path.name + ".lock")
