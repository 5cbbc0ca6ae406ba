"""Reading studies for the inspection commands through the database driver, without
SQLAlchemy or Optuna.

`studyctl status`, `studies`, `best` and `trials` only read. Opening Optuna's `RDBStorage`
for them imported Optuna, its ORM models and Alembic, and ran Optuna's schema check
through Alembic's migration context; importing SQLAlchemy was most of what was left.
`open_reader` connects with the stdlib's `sqlite3` or with `psycopg` (`plain.connect_plain`,
the engine's settings) and checks both schemas in one query (studyctl's revision and
Optuna's, each against the head read from the installed revision files). When both are
current it reads through that connection; a URL the driver is not given directly (another
driver, an unusual form) is read the same way through a SQLAlchemy engine; in every other
case (a new or plain-Optuna database, an old schema, a malformed URL) it opens the storage
as `open_existing_storage` does, which sets up, upgrades-or-refuses and reports exactly as
before, and reads through that storage's engine. The queries are SQL text
(`plain.rows`), the same on every path.

What only Optuna computes (the Pareto front of a multi-objective study, a constrained
study's best feasible trial) is asked of Optuna through `StudyReader.storage()`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from studyctl.errors import StorageError, StudyctlError, one_line
from studyctl.storage import plain, trial_rows
from studyctl.storage.outage import OutageGuard, is_unreachable, storage_error
from studyctl.storage.plain import PlainConnection, rows, scalar
from studyctl.storage.schema import (
    VERSIONS_SQL,
    optuna_head_revision,
    versions_current,
)
from studyctl.storage.urls import mask_url

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from studyctl.storage.plain import ReadConnection
    from studyctl.storage.rdb import StudyctlStorage

T = TypeVar("T")

# Optuna keeps a study's metric names among its system attributes under this key
# (`optuna.study.study._SYSTEM_ATTR_METRIC_NAMES`).
METRIC_NAMES_KEY = "study:metric_names"
# A trial's constraint values (`optuna.study._constrained_optimization._CONSTRAINTS_KEY`).
CONSTRAINTS_KEY = "constraints"

# Both schemas' versions in one round trip: (rows, revision) of each version table.
# `tables.workers_table`'s columns, in its order (`status --format json` shows them so).
_WORKER_COLUMNS = (
    "worker_id",
    "study_name",
    "host",
    "pid",
    "gpus",
    "started_at",
    "heartbeat_at",
    "trials_done",
    "current_trial",
    "state",
    "message",
)


def _name(value: Any) -> str:
    """An enum column's value by name (a native PostgreSQL enum or SQLite's text)."""
    return str(getattr(value, "name", value))


def _is_driver_error(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.Error) or type(exc).__module__.startswith("psycopg")


@dataclass
class StudyInfo:
    study_id: int
    name: str
    directions: list[str]  # "minimize" / "maximize", one per objective


class StudyReader:
    """Read-only access to the studies of one database: SQL text through one connection
    (the driver's own, or SQLAlchemy's), every database error one `StorageError` line (as
    the storage's guard gives it)."""

    def __init__(
        self,
        url: str,
        engine: Engine | None = None,
        storage: StudyctlStorage | None = None,
        *,
        connection: PlainConnection | None = None,
    ) -> None:
        self.url = url
        self._engine = engine
        self._connection = connection
        self._storage = storage
        self._owns_engine = storage is None
        # A storage's own guard (a run's outage tolerance); a command's reads wait for none.
        self._guard = storage.outage if storage is not None else OutageGuard(mask_url(url), 0)

    @property
    def engine(self) -> Engine:
        """A SQLAlchemy engine on the database (made on first use when the reads go through
        the driver: `watch`'s snapshot reads through one)."""
        if self._engine is None:
            self._engine = _new_engine(self.url)
        return self._engine

    @property
    def dialect(self) -> str:
        """The database's kind: "sqlite", "postgresql", ..."""
        if self._connection is not None:
            return self._connection.dialect
        return str(self.engine.dialect.name)

    def close(self) -> None:
        """Close the connections this reader made (a storage's stay open)."""
        if self._connection is not None:
            self._connection.close()
        if self._owns_engine and self._engine is not None:
            self._engine.dispose()

    def storage(self) -> StudyctlStorage:
        """Optuna's storage on the same database, opened on first use."""
        if self._storage is None:
            from studyctl.storage.rdb import open_existing_storage

            self._storage = open_existing_storage(self.url)
        return self._storage

    def read(self, query: Callable[[ReadConnection], T]) -> T:
        """`query` in one transaction."""
        if self._connection is None:
            from studyctl.storage import tables

            def run() -> T:
                with tables.transaction(self.engine) as conn:
                    return query(conn)

            return self._guard.call(run)
        try:
            result = query(self._connection)
            self._connection.commit()
        except Exception as exc:
            if not _is_driver_error(exc):
                raise
            with contextlib.suppress(Exception):
                self._connection.rollback()
            raise self._error(exc) from None
        return result

    def _error(self, exc: BaseException) -> StorageError:
        """A driver's error as the storage's guard and engine report it."""
        if getattr(exc, "sqlstate", None) == plain.INSUFFICIENT_PRIVILEGE:
            return plain.missing_right(exc, self.url, plain.postgres_user(self.url))
        if is_unreachable(exc):
            return self._guard.unreachable(exc, 0.0)
        return storage_error(exc, self._guard.shown_url)

    def study_id(self, name: str) -> int | None:
        found = self.read(
            lambda conn: scalar(
                conn, "SELECT study_id FROM studies WHERE study_name = :name", {"name": name}
            )
        )
        return None if found is None else int(found)

    def studies(self) -> list[StudyInfo]:
        """Every study with its directions, in Optuna's `get_all_studies` order."""

        def query(conn: ReadConnection) -> list[StudyInfo]:
            found: dict[int, StudyInfo] = {}
            for sid, name in rows(
                conn, "SELECT study_id, study_name FROM studies ORDER BY study_id"
            ):
                found[int(sid)] = StudyInfo(int(sid), str(name), [])
            for sid, direction in rows(
                conn, "SELECT study_id, direction FROM study_directions ORDER BY objective"
            ):
                if (info := found.get(int(sid))) is not None:
                    info.directions.append(_name(direction).lower())
            return list(found.values())

        return self.read(query)

    def directions(self, study_id: int) -> list[str]:
        return self.read(
            lambda conn: [
                _name(d).lower()
                for (d,) in rows(
                    conn,
                    "SELECT direction FROM study_directions WHERE study_id = :sid "
                    "ORDER BY objective",
                    {"sid": study_id},
                )
            ]
        )

    def metric_names(self, study_id: int) -> list[str] | None:
        found = self.read(
            lambda conn: scalar(
                conn,
                "SELECT value_json FROM study_system_attributes "
                "WHERE study_id = :sid AND key = :key",
                {"sid": study_id, "key": METRIC_NAMES_KEY},
            )
        )
        return None if found is None else json.loads(found)

    def state_counts(self, study_id: int) -> dict[str, int]:
        return self.read(lambda conn: plain.state_counts(conn, study_id))

    def budgets(self) -> dict[str, int | None]:
        """Every studyctl study's budget (`n_trials`) by name."""
        return self.read(
            lambda conn: {
                str(name): n
                for name, n in rows(conn, "SELECT study_name, n_trials FROM studyctl_studies")
            }
        )

    def best_row(self, study_id: int, *, maximize: bool) -> trial_rows.TrialRow | None:
        """The best COMPLETE trial of a one-objective study, as Optuna's storage picks it."""

        def query(conn: ReadConnection) -> trial_rows.TrialRow | None:
            trial_id = trial_rows.best_trial_id(conn, study_id, maximize=maximize)
            return None if trial_id is None else trial_rows.trial_row(conn, study_id, trial_id)

        return self.read(query)

    def trial_batches(
        self,
        study_id: int,
        states: tuple[str, ...] | None = None,
        batch_size: int = 2000,
        *,
        system_attrs: bool = True,
        after: int = -1,
    ) -> Iterator[trial_rows.TrialBatch]:
        """The study's trials (with a trial_id above `after`) in number order, one batch
        (`trial_rows.TrialBatch`, its rows as stored) in memory at a time, without their
        system attributes when `system_attrs` is false."""
        return self.read_batches(
            functools.partial(
                trial_rows.iter_trial_batches,
                study_id=study_id,
                states=states,
                batch_size=batch_size,
                system_attrs=system_attrs,
                after=after,
            )
        )

    def read_batches(self, batches: Callable[[Callable[..., Any]], Iterator[T]]) -> Iterator[T]:
        """What `batches` yields when given a function that runs a query in one short
        transaction (as `read` does). A database error is one `StorageError` (not retried:
        the batches already given stay given)."""
        if self._connection is not None:
            yield from batches(self.read)
            return
        from sqlalchemy import exc as sa_exc

        from studyctl.storage import tables

        def read(query: Callable[[ReadConnection], Any]) -> Any:
            with tables.transaction(self.engine) as conn:
                return query(conn)

        try:
            yield from batches(read)
        except sa_exc.SQLAlchemyError as exc:
            raise storage_error(exc, mask_url(self.url)) from None

    def status_rows(self, study_name: str, study_id: int) -> tuple[Any, ...]:
        """What `status` reads beside the counts, in one transaction: the study's record
        (`n_trials`, `spec_json`; None for a study studyctl did not create), its workers
        (every column of `tables.workers_table`, oldest first), the database's clock and
        the retried trials (their count and the last few)."""

        def query(conn: ReadConnection) -> tuple[Any, ...]:
            found = rows(
                conn,
                "SELECT n_trials, spec_json FROM studyctl_studies WHERE study_name = :name",
                {"name": study_name},
            )
            record = {"n_trials": found[0][0], "spec_json": found[0][1]} if found else None
            workers = []
            for row in rows(
                conn,
                f"SELECT {', '.join(_WORKER_COLUMNS)} FROM studyctl_workers "
                "WHERE study_name = :name ORDER BY started_at",
                {"name": study_name},
            ):
                worker = dict(zip(_WORKER_COLUMNS, row, strict=True))
                for key in ("started_at", "heartbeat_at"):
                    worker[key] = plain.stored_datetime(worker[key])
                workers.append(worker)
            # From the attribute rows: loading every trial for this took seconds at 10k.
            retried = trial_rows.retried_trials(conn, study_id)
            return record, workers, plain.db_utcnow(conn), retried

        return self.read(query)

    def unknown_study(self, name: str) -> StudyctlError:
        names = sorted(s.name for s in self.studies())
        return StudyctlError(
            f"no study {name!r} in {mask_url(self.url)}; studies there: "
            + (", ".join(names) if names else "none")
        )


def as_reader(source: StudyReader | StudyctlStorage) -> StudyReader:
    """A reader of a `StudyctlStorage` (its engine), or the reader itself."""
    if isinstance(source, StudyReader):
        return source
    return StudyReader(source.url, source.engine, storage=source)


def has_constraints(row: trial_rows.TrialRow) -> bool:
    return any(
        k == CONSTRAINTS_KEY or k.startswith(CONSTRAINTS_KEY + ":") for k in row.system_attrs
    )


def _new_engine(url: str) -> Engine:
    import sqlalchemy as sa

    from studyctl.storage.engine import POSTGRES_POOL_SIZE, engine_kwargs

    return sa.create_engine(url, **engine_kwargs(sa.engine.make_url(url), POSTGRES_POOL_SIZE))


def _refuse_unreachable(url: str, backend: str, exc: BaseException, connecting: bool) -> None:
    """After the version query failed: a server that cannot be reached (`connecting`: an
    operational or interface error) is reported as `open_storage` reports it (without a
    second wait for it); anything else (a table or database missing, a file that is not a
    database) is left to `open_storage`."""
    if backend != "postgresql" or "does not exist" in str(exc) or not connecting:
        return
    raise StorageError(
        f"cannot connect to storage {mask_url(url)}: {one_line(exc, with_type=False)}"
    ) from None


def _current_connection(url: str, optuna_head: str) -> PlainConnection | None:
    """The driver's connection to `url` when both schemas there are current, else None."""
    conn: PlainConnection | None = None
    try:
        conn = plain.connect_plain(url)
        if conn is None:
            return None
        versions = conn.rows(VERSIONS_SQL)[0]
    except Exception as exc:
        if not _is_driver_error(exc):
            raise
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        if url.startswith("postgresql"):
            import psycopg

            connecting = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
            _refuse_unreachable(url, "postgresql", exc, connecting)
        return None
    conn.commit()
    if not versions_current(tuple(versions), optuna_head):
        conn.close()
        return None
    return conn


def _current_engine(url: str, optuna_head: str) -> Engine | None:
    """An engine on `url` (a URL the driver is not given directly) when both schemas there
    are current, else None (the caller opens the storage, which decides what to do)."""
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc

    try:
        parsed = sa.engine.make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        return None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        return None
    try:
        engine = _new_engine(url)
    except (ImportError, sa_exc.SQLAlchemyError):
        return None
    try:
        with engine.connect() as conn:
            versions = conn.execute(sa.text(VERSIONS_SQL)).one()
    except sa_exc.SQLAlchemyError as exc:
        engine.dispose()
        connecting = isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
        _refuse_unreachable(url, parsed.get_backend_name(), exc, connecting)
        return None
    if not versions_current(tuple(versions), optuna_head):
        engine.dispose()
        return None
    return engine


def open_reader(url: str) -> StudyReader:
    """A reader of the existing database at `url` (see the module's docstring)."""
    plain.require_existing_database(url)
    optuna_head = optuna_head_revision()
    if optuna_head is not None:
        connection = _current_connection(url, optuna_head)
        if connection is not None:
            return StudyReader(url, connection=connection)
        if not plain.is_plain_url(url):
            engine = _current_engine(url, optuna_head)
            if engine is not None:
                return StudyReader(url, engine)
    from studyctl.storage.rdb import open_existing_storage

    return as_reader(open_existing_storage(url))
