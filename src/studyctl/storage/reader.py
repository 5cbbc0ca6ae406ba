"""Reading studies for the inspection commands with plain SQLAlchemy, without Optuna.

`studyctl status`, `studies`, `best` and `trials` only read. Opening Optuna's `RDBStorage`
for them imported Optuna, its ORM models and Alembic, and ran Optuna's schema check
through Alembic's migration context: most of a command's second. `open_reader` connects
with the same engine settings as `open_storage` and checks both schemas in one query
(studyctl's revision and Optuna's, each against the head read from the installed
revision files). When both are current it reads through that engine; in every other case
(a new or plain-Optuna database, an old schema, a malformed URL) it opens the storage as
`open_existing_storage` does, which sets up, upgrades-or-refuses and reports exactly as
before, and reads through that storage's engine.

What only Optuna computes (the Pareto front of a multi-objective study, a constrained
study's best feasible trial) is asked of Optuna through `StudyReader.storage()`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url

from studyctl.errors import StorageError, StudyctlError, one_line
from studyctl.storage import tables, trial_rows
from studyctl.storage.engine import POSTGRES_POOL_SIZE, engine_kwargs, require_existing_database
from studyctl.storage.outage import OutageGuard, storage_error
from studyctl.storage.schema import VERSION_TABLE, head_revision, optuna_head_revision
from studyctl.storage.urls import mask_url

if TYPE_CHECKING:
    from studyctl.storage.rdb import StudyctlStorage

T = TypeVar("T")

# Optuna keeps a study's metric names among its system attributes under this key
# (`optuna.study.study._SYSTEM_ATTR_METRIC_NAMES`).
METRIC_NAMES_KEY = "study:metric_names"
# A trial's constraint values (`optuna.study._constrained_optimization._CONSTRAINTS_KEY`).
CONSTRAINTS_KEY = "constraints"

# Both schemas' versions in one round trip: (rows, revision) of each version table.
_VERSIONS_SQL = (
    f"SELECT (SELECT count(*) FROM {VERSION_TABLE}), (SELECT max(version_num) FROM "
    f"{VERSION_TABLE}), (SELECT count(*) FROM alembic_version), "
    "(SELECT max(version_num) FROM alembic_version)"
)


def _name(value: Any) -> str:
    """An enum column's value by name (a native PostgreSQL enum or SQLite's text)."""
    return str(getattr(value, "name", value))


@dataclass
class StudyInfo:
    study_id: int
    name: str
    directions: list[str]  # "minimize" / "maximize", one per objective


class StudyReader:
    """Read-only access to the studies of one database: SQL through one engine, every
    database error one `StorageError` line (as the storage's guard gives it)."""

    def __init__(self, url: str, engine: Engine, storage: StudyctlStorage | None = None) -> None:
        self.url = url
        self.engine = engine
        self._storage = storage
        self._owns_engine = storage is None
        # A storage's own guard (a run's outage tolerance); a command's reads wait for none.
        self._guard = storage.outage if storage is not None else OutageGuard(mask_url(url), 0)

    def close(self) -> None:
        """Close the connections of an engine this reader made (a storage's stay open)."""
        if self._owns_engine:
            self.engine.dispose()

    def storage(self) -> StudyctlStorage:
        """Optuna's storage on the same database, opened on first use."""
        if self._storage is None:
            from studyctl.storage.rdb import open_existing_storage

            self._storage = open_existing_storage(self.url)
        return self._storage

    def read(self, query: Callable[[Connection], T]) -> T:
        """`query` in one transaction."""

        def run() -> T:
            with tables.transaction(self.engine) as conn:
                return query(conn)

        return self._guard.call(run)

    def study_id(self, name: str) -> int | None:
        found = self.read(
            lambda conn: conn.execute(
                sa.text("SELECT study_id FROM studies WHERE study_name = :name"), {"name": name}
            ).scalar()
        )
        return None if found is None else int(found)

    def studies(self) -> list[StudyInfo]:
        """Every study with its directions, in Optuna's `get_all_studies` order."""

        def query(conn: Connection) -> list[StudyInfo]:
            found: dict[int, StudyInfo] = {}
            for sid, name in conn.execute(
                sa.text("SELECT study_id, study_name FROM studies ORDER BY study_id")
            ):
                found[int(sid)] = StudyInfo(int(sid), str(name), [])
            for sid, direction in conn.execute(
                sa.text("SELECT study_id, direction FROM study_directions ORDER BY objective")
            ):
                if (info := found.get(int(sid))) is not None:
                    info.directions.append(_name(direction).lower())
            return list(found.values())

        return self.read(query)

    def directions(self, study_id: int) -> list[str]:
        return self.read(
            lambda conn: [
                _name(d).lower()
                for (d,) in conn.execute(
                    sa.text(
                        "SELECT direction FROM study_directions WHERE study_id = :sid "
                        "ORDER BY objective"
                    ),
                    {"sid": study_id},
                )
            ]
        )

    def metric_names(self, study_id: int) -> list[str] | None:
        found = self.read(
            lambda conn: conn.execute(
                sa.text(
                    "SELECT value_json FROM study_system_attributes "
                    "WHERE study_id = :sid AND key = :key"
                ),
                {"sid": study_id, "key": METRIC_NAMES_KEY},
            ).scalar()
        )
        return None if found is None else json.loads(found)

    def state_counts(self, study_id: int) -> dict[str, int]:
        return self.read(lambda conn: tables.state_counts(conn, study_id))

    def best_row(self, study_id: int, *, maximize: bool) -> trial_rows.TrialRow | None:
        """The best COMPLETE trial of a one-objective study, as Optuna's storage picks it."""

        def query(conn: Connection) -> trial_rows.TrialRow | None:
            trial_id = trial_rows.best_trial_id(conn, study_id, maximize=maximize)
            return None if trial_id is None else trial_rows.trial_row(conn, study_id, trial_id)

        return self.read(query)

    def trial_rows(
        self, study_id: int, states: tuple[str, ...] | None = None, batch_size: int = 2000
    ) -> Iterator[trial_rows.TrialRow]:
        """The study's trials in number order, one batch in memory at a time. A database
        error is one `StorageError` (not retried: the rows already given stay given)."""
        try:
            yield from trial_rows.iter_trial_rows(self.engine, study_id, states, batch_size)
        except sa_exc.SQLAlchemyError as exc:
            raise storage_error(exc, mask_url(self.url)) from None

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


def _current_engine(url: str) -> Engine | None:
    """An engine on `url` when both schemas there are at this installation's heads, else
    None (the caller opens the storage, which decides what to do)."""
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        return None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        return None
    optuna_head = optuna_head_revision()
    if optuna_head is None:
        return None
    try:
        engine = sa.create_engine(url, **engine_kwargs(parsed, POSTGRES_POOL_SIZE))
    except (ImportError, sa_exc.SQLAlchemyError):
        return None
    try:
        with engine.connect() as conn:
            ours, our_rev, theirs, their_rev = conn.execute(sa.text(_VERSIONS_SQL)).one()
    except sa_exc.SQLAlchemyError as exc:
        engine.dispose()
        # A server that cannot be reached is reported as `open_storage` reports it (without
        # a second wait for it); anything else (a table or database missing, a file that is
        # not a database) is left to `open_storage`.
        if parsed.get_backend_name() != "postgresql" or "does not exist" in str(exc):
            return None
        if not isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
            return None
        raise StorageError(
            f"cannot connect to storage {mask_url(url)}: {one_line(exc, with_type=False)}"
        ) from None
    if (ours, our_rev, theirs, their_rev) != (1, head_revision(), 1, optuna_head):
        engine.dispose()
        return None
    return engine


def open_reader(url: str) -> StudyReader:
    """A reader of the existing database at `url` (see the module's docstring)."""
    require_existing_database(url)
    engine = _current_engine(url)
    if engine is None:
        from studyctl.storage.rdb import open_existing_storage

        return as_reader(open_existing_storage(url))
    return StudyReader(url, engine)
