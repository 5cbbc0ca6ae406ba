"""Riding out a database that goes away and comes back, in one place.

Every storage operation of studyctl's processes (Optuna's storage methods on
`StudyctlStorage`, every `SqlControl` operation, and every new connection of the engine)
goes through one `OutageGuard`. An error that means "the database cannot be reached" (a
refused or dropped connection, a server shutting down or starting up) is retried with
backoff until `tolerance_s` seconds have passed since the first failure; any other
database error (a full disk, a read-only file, a bad value) is not an outage and becomes
one `StorageError` line at once.

What the guard deliberately does not do:

* retry the compound operations (a sweep that fails a trial and queues its retry): each
  of their single-transaction steps is retried instead, so a step is never repeated after
  a later one succeeded;
* hide a real death: once a process has given up (past the tolerance) its later calls fail
  at once, so closing rows and exiting take no second tolerance.

A caller that has something better to do than wait (a trial that can train on while
its epoch reports wait) uses `OutageGuard.attempt`: one try of the operation, whose new
connections are not waited for either (`DatabaseAway` instead); see
`studyctl.training.reports`.

Staleness after an outage: a heartbeat that could not be written while the database was
away must not make a live trial or worker look dead when it returns (Optuna #5470: a false
"stale" verdict discards a real result). A sweep judges no heartbeat while this process
reconnected less than `grace_period` ago (`OutageGuard.recently_recovered`) or the
database server (PostgreSQL) started less than `grace_period` ago
(`server_started_within`; then every process had its heartbeat interrupted, including
those that were idle and saw nothing). `StudyctlStorage._get_stale_trial_ids` and
`SqlControl.fail_lost_trials` apply the rule.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from studyctl import signals
from studyctl.errors import StorageError

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection

T = TypeVar("T")

# The environment carries the tolerance to processes started by a run (worker, trial
# process), so one started while the database is away waits for it too.
OUTAGE_TOLERANCE_ENV = "STUDYCTL_STORAGE_OUTAGE_TOLERANCE"
FIRST_DELAY_S = 0.2
MAX_DELAY_S = 1.0  # a heartbeat lands at most this long after the database returns

# A write that met SQLite's stale-snapshot error is retried at once this many times (each
# retry on a fresh connection: `is_stale_snapshot`).
STALE_SNAPSHOT_RETRIES = 3

# A single try (`OutageGuard.attempt`) gives up on a new connection after this long
# (psycopg's connect_timeout; 2 s is its minimum), instead of the engine's 10 s.
ATTEMPT_CONNECT_TIMEOUT_S = 2

# SQLSTATEs of a server that is going away or not accepting connections yet:
# 08xxx connection exceptions, 57P01 admin shutdown, 57P02 crash shutdown,
# 57P03 cannot connect now (starting up).
_UNREACHABLE_SQLSTATES = ("57P01", "57P02", "57P03")


def _is_optuna_storage_error(exc: BaseException) -> bool:
    """Optuna's `StorageInternalError`, checked without importing Optuna: a process that
    has not imported it (an inspection command) has none to catch."""
    module = sys.modules.get("optuna.exceptions")
    return module is not None and isinstance(exc, module.StorageInternalError)


def _sqlalchemy_error(exc: BaseException, kind: str = "SQLAlchemyError") -> bool:
    """Whether `exc` is SQLAlchemy's error `kind`, checked without importing SQLAlchemy: a
    process that has not imported it (an inspection command reading through the driver)
    has none to catch."""
    module = sys.modules.get("sqlalchemy.exc")
    return module is not None and isinstance(exc, getattr(module, kind))


def _root(exc: BaseException) -> BaseException:
    """The driver's exception under SQLAlchemy's and Optuna's wrappers."""
    if _is_optuna_storage_error(exc) and exc.__cause__ is not None:
        exc = exc.__cause__
    orig = getattr(exc, "orig", None) if _sqlalchemy_error(exc, "DBAPIError") else None
    return exc if orig is None else orig


def is_stale_snapshot(exc: BaseException) -> bool:
    """True for SQLite's SQLITE_BUSY_SNAPSHOT ("database is locked" at once, not after the
    busy timeout): a write through a connection whose read snapshot is older than another
    connection's commit. Its transaction wrote nothing; on a fresh connection it succeeds
    (see `engine.tune_sqlite_connections`)."""
    return getattr(_root(exc), "sqlite_errorname", None) == "SQLITE_BUSY_SNAPSHOT"


def is_unreachable(exc: BaseException) -> bool:
    """True when `exc` means the database could not be reached (worth waiting for), not
    that the statement or the database itself is at fault."""
    if is_stale_snapshot(exc):
        return False  # its connection was dropped on purpose (`engine`), not lost
    wrapped = exc.__cause__ if _is_optuna_storage_error(exc) else exc
    if (
        wrapped is not None
        and _sqlalchemy_error(wrapped, "DBAPIError")
        and getattr(wrapped, "connection_invalidated", False)
    ):
        return True
    orig = _root(exc)
    if type(orig).__module__.startswith("sqlite3"):
        return False  # a file: no outage to wait for (locks wait in the busy timeout)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - PostgreSQL URLs need psycopg
        return False
    if not isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    sqlstate = getattr(orig, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in _UNREACHABLE_SQLSTATES


def describe(exc: BaseException) -> str:
    """The first line of the driver's message."""
    text = str(_root(exc)).strip().splitlines()
    return text[0] if text else type(_root(exc)).__name__


def storage_error(exc: BaseException, shown_url: str) -> StorageError:
    """A database error that is not an outage, as one line with the fix where known."""
    line = describe(exc)
    lowered = line.lower()
    hint = None
    if "disk is full" in lowered or "no space left" in lowered or "could not extend" in lowered:
        hint = "free space on the database's disk, then `studyctl resume` the study"
    elif "readonly" in lowered or "read-only" in lowered:
        hint = "make the database file and its folder writable"
    elif "out of range" in lowered or "too large" in lowered:
        hint = "a number is too large for the database"
    return StorageError(f"storage {shown_url}: {line}", hint=hint)


class DatabaseAway(Exception):
    """Within `OutageGuard.attempt`: the database cannot be reached now; the operation was
    not done (its transaction, if any, rolled back) and may be tried again later."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(describe(cause))
        self.cause = cause


class OutageGuard:
    """Retries operations on one database across an outage of up to `tolerance_s`."""

    def __init__(self, shown_url: str, tolerance_s: float) -> None:
        self.shown_url = shown_url
        self.tolerance_s = tolerance_s
        self.gave_up = False
        self._recovered_at: float | None = None  # monotonic time of the last reconnection
        self._lock = threading.Lock()
        self._local = threading.local()  # .single_try: this thread is in `attempt`
        self._away_since: float | None = None  # first failed `attempt` since one succeeded

    @property
    def single_try(self) -> bool:
        return bool(getattr(self._local, "single_try", False))

    @contextlib.contextmanager
    def _single_try(self) -> Iterator[None]:
        outer = self.single_try
        self._local.single_try = True
        try:
            yield
        finally:
            self._local.single_try = outer

    def attempt(self, operation: Callable[[], T]) -> T:
        """Run `operation` once, without waiting for the database: an unreachable database
        (at any storage call or new connection inside it) raises `DatabaseAway` at once
        instead of being retried; other errors are what `call` makes of them. For work
        that can be put off (`studyctl.training.reports`), never for a trial's state.

        The tolerance still holds: once attempts have found the database away for
        `tolerance_s` since the last one that succeeded (or the process has given up),
        the attempt raises the same `StorageError` as `call`."""
        try:
            with self._single_try():
                result = self.call(operation)
        except DatabaseAway as away:
            now = time.monotonic()
            if self._away_since is None:
                self._away_since = now
            waited = now - self._away_since
            if self.gave_up or waited >= self.tolerance_s:
                self.gave_up = True
                raise self.unreachable(away.cause, waited) from None
            raise
        self._away_since = None
        return result

    def unreachable(self, exc: BaseException, waited: float) -> StorageError:
        if self.tolerance_s <= 0:
            return StorageError(f"cannot connect to storage {self.shown_url}: {describe(exc)}")
        return StorageError(
            f"storage {self.shown_url} unreachable for {waited:.0f}s "
            f"(storage_outage_tolerance {self.tolerance_s:.0f}s): {describe(exc)}",
            hint="the study's trials are kept; `studyctl resume` it once the database is back",
        )

    def call(self, operation: Callable[[], T], *, convert: bool = True) -> T:
        """Run `operation`, again after each unreachable-database error until it succeeds
        or the tolerance is spent; other database errors become `StorageError` at once
        (with `convert`; else they are raised as they are)."""
        first_failure: float | None = None
        delay = FIRST_DELAY_S
        snapshot_retries = 0
        while True:
            try:
                with signals.deferred():  # a stop signal raises after the try, not inside it
                    result = operation()
            except (StorageError, DatabaseAway):
                raise
            except Exception as exc:
                if not _sqlalchemy_error(exc) and not _is_optuna_storage_error(exc):
                    raise
                if is_stale_snapshot(exc) and snapshot_retries < STALE_SNAPSHOT_RETRIES:
                    snapshot_retries += 1  # its connection was dropped: retry at once
                    continue
                if not is_unreachable(exc):
                    if not convert:
                        raise
                    raise storage_error(exc, self.shown_url) from None
                if self.single_try:
                    raise DatabaseAway(exc) from None
                now = time.monotonic()
                first_failure = first_failure if first_failure is not None else now
                waited = now - first_failure
                if self.gave_up or waited >= self.tolerance_s:
                    self.gave_up = True
                    raise self.unreachable(exc, waited) from None
                time.sleep(min(delay, self.tolerance_s - waited))
                delay = min(delay * 2, MAX_DELAY_S)
                continue
            if first_failure is not None or self.gave_up:
                with self._lock:
                    self._recovered_at = time.monotonic()
                    self.gave_up = False
            return result

    def connect(self, connect: Callable[[], Any]) -> Any:
        """A new DBAPI connection, waiting for the database (the engine's do_connect)."""
        first_failure: float | None = None
        delay = FIRST_DELAY_S
        while True:
            try:
                conn = connect()
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                if self.single_try:
                    raise DatabaseAway(exc) from None
                now = time.monotonic()
                first_failure = first_failure if first_failure is not None else now
                waited = now - first_failure
                if self.gave_up or waited >= self.tolerance_s:
                    self.gave_up = True
                    raise self.unreachable(exc, waited) from None
                time.sleep(min(delay, self.tolerance_s - waited))
                delay = min(delay * 2, MAX_DELAY_S)
                continue
            if first_failure is not None:
                with self._lock:
                    self._recovered_at = time.monotonic()
                    self.gave_up = False
            return conn

    def recently_recovered(self, grace_s: float) -> bool:
        recovered = self._recovered_at
        return recovered is not None and time.monotonic() - recovered < grace_s


def guard_of(storage: Any) -> OutageGuard | None:
    """The guard of an Optuna storage (through Optuna's `_CachedStorage` wrapper), or None
    for a storage without one (the studyctl proxy's client)."""
    backend = getattr(storage, "_backend", storage)
    guard = getattr(backend, "outage", None)
    return guard if isinstance(guard, OutageGuard) else None


def server_started_within(conn: Connection, seconds: float) -> bool:
    """Whether the database server (PostgreSQL) started less than `seconds` ago."""
    import sqlalchemy as sa

    if conn.dialect.name != "postgresql":
        return False
    return bool(
        conn.execute(
            sa.text(
                "SELECT pg_postmaster_start_time() > clock_timestamp() - make_interval(secs => :s)"
            ),
            {"s": float(seconds)},
        ).scalar_one()
    )


def install_connect_guard(engine: sa.Engine, guard: OutageGuard) -> None:
    """Every new connection of `engine` waits for an unreachable database (up to the
    guard's tolerance), so every caller, Optuna's and Alembic's included, rides an outage
    out at its next connection; pool_pre_ping replaces connections the outage broke."""
    import sqlalchemy as sa

    def do_connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> Any:
        params = cparams
        if guard.single_try and "connect_timeout" in cparams:
            params = {
                **cparams,
                "connect_timeout": min(int(cparams["connect_timeout"]), ATTEMPT_CONNECT_TIMEOUT_S),
            }
        return guard.connect(lambda: dialect.connect(*cargs, **params))

    sa.event.listen(engine, "do_connect", do_connect)
