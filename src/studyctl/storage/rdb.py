"""Opening a database storage: Optuna's RDBStorage with atomic trial transitions, SQLite WAL,
one storage per process, and every connection problem turned into one clear `StorageError`.

Every Optuna storage method of `StudyctlStorage` runs through its `OutageGuard`
(`studyctl.storage.outage`): a database that goes away and comes back within
`storage_outage_tolerance` costs a wait, not a failed trial. The set-up of a new database
(Optuna's tables, studyctl's Alembic revisions) and the creation of a study are serialised
between processes (`setup_lock`), so any number of commands may open a new database at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.storages._rdb import models as optuna_models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from studyctl.errors import StorageError, one_line
from studyctl.storage import tables
from studyctl.storage.control import SqlControl
from studyctl.storage.engine import (
    POSTGRES_POOL_SIZE,
    database_url,
    engine_kwargs,
    prepare_sqlite,
    require_existing_database,
    tune_sqlite_connections,
)
from studyctl.storage.frozen_trial import read_frozen_trial
from studyctl.storage.locks import setup_lock
from studyctl.storage.outage import (
    OUTAGE_TOLERANCE_ENV,
    OutageGuard,
    install_connect_guard,
    server_started_within,
)
from studyctl.storage.rdb_init import init_current, schemas_current
from studyctl.storage.recent_trials import RecentTrials
from studyctl.storage.schema import ensure_schema
from studyctl.storage.times import utc_now, utc_to_local
from studyctl.storage.urls import mask_url

# studyctl relies on Optuna's heartbeat and stale-trial retry deliberately; their
# "experimental" warnings would only repeat in every worker's output.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class StudyctlStorage(RDBStorage):
    """Optuna's RDBStorage with atomic trial state transitions.

    Optuna reads a trial's state and then writes the new one; on SQLite (no SELECT ... FOR
    UPDATE) two workers can both take the same WAITING trial, or both fail the same stale
    trial and enqueue two retries. Here the write is one conditional UPDATE, so exactly one
    process wins each transition, on every backend.

    It also rides out database outages (every storage method through `self.outage`), keeps
    its heartbeat sweeps from mistaking an outage for dead workers, and deletes a study
    together with studyctl's rows of it, whoever deletes it (the dashboard included).
    """

    def __init__(
        self, url: str, *, outage: OutageGuard | None = None, current: bool = False, **kwargs: Any
    ) -> None:
        self.outage = outage or OutageGuard(mask_url(url), 0)
        self._has_counter = False
        # User attributes of a running trial to store in the transaction that ends it.
        self._deferred_attrs: dict[int, dict[str, Any]] = {}
        # The trials this thread just created or ended, for the read that follows.
        self.recent = RecentTrials()
        self._last_beaten: int | None = None  # the trial of the last heartbeat
        # Optuna's stale-trial sweep runs at most once per this many seconds (0: at every
        # call): a trial is stale only after `grace_period` without a heartbeat, so
        # sweeping at each trial start finds nothing sooner than once per heartbeat.
        self.stale_sweep_every_s = 0.0
        self._next_stale_sweep: dict[int, float] = {}  # study_id -> monotonic time
        if current:  # both schemas found current: no set-up or check (`rdb_init`)
            init_current(self, url, **kwargs)
        else:
            super().__init__(url, **kwargs)

    def defer_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        """Store user attribute `key` of this process's running trial in the transaction
        that ends the trial (`set_trial_state_values`) instead of one of its own. The
        attribute is lost with the trial if the process dies first."""
        self._deferred_attrs.setdefault(trial_id, {})[key] = value

    @functools.cached_property
    def control(self) -> SqlControl:
        """studyctl's own tables, for the worker's claims and heartbeats."""
        return SqlControl(self)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        recent = self.recent
        running = recent.take_running()
        recent.forget()
        try:
            changed: bool = self.outage.call(
                lambda: self._set_trial_state_values(trial_id, state, values)
            )
            ended = recent.ended
        finally:
            recent.ended = None
        if ended is not None and running is not None and running._trial_id == trial_id:
            recent.keep_finished(running, state, values, *ended)
        return changed

    def _set_trial_state_values(self, trial_id: int, state: TrialState, values: Any) -> bool:
        if state == TrialState.RUNNING:
            expected = TrialState.WAITING
        elif state.is_finished():
            expected = TrialState.RUNNING
        else:
            return super().set_trial_state_values(trial_id, state, values)
        now = utc_now()  # the column's naive UTC (Optuna's ORM converts; this update does not)
        changes: dict[str, Any] = {"state": state}
        if state == TrialState.RUNNING:
            changes["datetime_start"] = now
        else:
            changes["datetime_complete"] = now
        trial_model = optuna_models.TrialModel
        value_model = optuna_models.TrialValueModel
        deferred = self._deferred_attrs.get(trial_id) if state.is_finished() else None
        self.recent.ended = None
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(trial_model)
                .where(trial_model.trial_id == trial_id, trial_model.state == expected)
                .values(**changes)
            )
            won = result.rowcount == 1
            if won and state.is_finished():
                self.recent.ended = (utc_to_local(now), dict(deferred or {}))  # as Optuna reads it
            if won and deferred:  # this transaction ended the trial: its row is locked
                tables.write_trial_user_attrs(conn, trial_id, deferred, only_running=False)
            if won and state.name in tables.FINISHED_STATES:
                self._count_finished(conn, trial_id)
            if won:
                for objective, value in enumerate(values or ()):
                    stored, value_type = value_model.value_to_stored_repr(value)
                    conn.execute(
                        sa.insert(value_model).values(
                            trial_id=trial_id,
                            objective=objective,
                            value=stored,
                            value_type=value_type,
                        )
                    )
        if deferred is not None:
            self._deferred_attrs.pop(trial_id, None)
        if not won:
            if state == TrialState.RUNNING:
                return False
            if self.get_trial(trial_id).state.is_finished():
                raise optuna.exceptions.UpdateFinishedTrialError(
                    f"Trial#{trial_id} has already finished and can not be updated."
                )
            return self._set_and_count(trial_id, state, values)
        return True

    def _set_and_count(self, trial_id: int, state: TrialState, values: Any) -> bool:
        """Optuna's own transition (a WAITING trial told its result directly), then the
        count in the next transaction: a path no studyctl worker takes."""
        changed = super().set_trial_state_values(trial_id, state, values)
        if changed and state.name in tables.FINISHED_STATES:
            self._count_finished_now(trial_id)
        return changed

    def _count_finished(self, conn: sa.Connection, trial_id: int) -> None:
        """`tables.count_trial_finished` where studyctl's tables exist (checked until found)."""
        if not self._has_counter:
            self._has_counter = sa.inspect(conn).has_table(tables.studies_table.name)
        if self._has_counter:
            tables.count_trial_finished(conn, trial_id)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._create_new_trial(study_id, template_trial)._trial_id

    def _create_new_trial(self, study_id: int, template_trial: Any = None) -> FrozenTrial:
        """Optuna's (which `_CachedStorage` calls directly), plus the count of a trial added
        already finished (`study.add_trial`, `copy_study`), in the next transaction."""
        trial: FrozenTrial = self.outage.call(
            lambda: RDBStorage._create_new_trial(self, study_id, template_trial)
        )
        if trial.state.name in tables.FINISHED_STATES:
            self.outage.call(lambda: self._count_finished_now(trial._trial_id))
        # `study.ask` reads the new trial back at once (`Trial.__init__`): served from here.
        if template_trial is None:
            self.recent.created(trial)
        else:
            self.recent.forget()
        return trial

    def _get_prepared_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None, session: Session
    ) -> optuna_models.TrialModel:
        """Optuna's new trial, numbered from the study's previous trial instead of a count.

        Optuna inserts the trial and numbers it with the count of the study's trials created
        before it, which reads every one of them. Here the number is the previous trial's
        (the study's greatest `trial_id` below the new one) plus 1: one row, through
        `ix_studyctl_trials_study_trial` (revision 0005; on SQLite Optuna's index on
        `study_id` serves too, its entries being ordered by `trial_id`). The same number,
        since every trial's number is the count of those before it; read in Optuna's
        transaction, after the insert and under its lock on the study's row, so concurrent
        creators still never share a number. A trial from a template (`add_trial`,
        `copy_study`) keeps Optuna's path."""
        if template_trial is not None:
            return super()._get_prepared_new_trial(study_id, template_trial, session)
        trial_model = optuna_models.TrialModel
        trial = trial_model(
            study_id=study_id, number=None, state=TrialState.RUNNING, datetime_start=datetime.now()
        )
        session.add(trial)
        session.flush()  # the insert: the new trial_id, and SQLite's write lock
        previous = session.execute(
            sa.select(trial_model.number)
            .where(trial_model.study_id == study_id, trial_model.trial_id < trial.trial_id)
            .order_by(trial_model.trial_id.desc())
            .limit(1)
        ).scalar_one_or_none()
        trial.number = 0 if previous is None else previous + 1
        return trial

    def get_trial(self, trial_id: int) -> FrozenTrial:
        """Optuna's trial, read in two queries instead of six (`frozen_trial`)."""

        kept = self.recent.serve(trial_id)
        if kept is not None:
            return kept

        def read() -> FrozenTrial:
            with self.engine.connect() as conn:
                return read_frozen_trial(conn, trial_id)

        trial: FrozenTrial = self.outage.call(read)
        self.recent.read(trial)
        return trial

    def _count_finished_now(self, trial_id: int) -> None:
        with self.engine.begin() as conn:
            self._count_finished(conn, trial_id)

    def delete_study(self, study_id: int) -> None:
        """Delete the study and studyctl's rows of it (budget and spec, workers, claims) in
        one transaction, so a deleted study cannot come back from a leftover row."""

        def delete() -> None:
            session = self.scoped_session()
            try:
                study = optuna_models.StudyModel.find_or_raise_by_id(study_id, session)
                tables.delete_study_records(session.connection(), str(study.study_name))
                session.delete(study)
                session.commit()
            except BaseException:
                session.rollback()
                raise

        self.outage.call(delete)

    def record_heartbeat(self, trial_id: int) -> None:
        """Optuna's trial heartbeat in one statement (Optuna's reads the row, then inserts
        it, or reads it again for update, reads the clock and updates it): the trial's
        first beat here is an upsert, the next ones an UPDATE (an upsert takes a value of
        PostgreSQL's id sequence at every beat). The same clock as Optuna's
        (`CURRENT_TIMESTAMP`, which its stale sweep compares with)."""

        def beat() -> None:
            with self.engine.begin() as conn:
                if self._last_beaten == trial_id:
                    params = {"tid": trial_id}
                    if conn.execute(sa.text(_BEAT_AGAIN_SQL), params).rowcount == 1:
                        return
                conn.execute(sa.text(_FIRST_BEAT_SQL), {"tid": trial_id})
            self._last_beaten = trial_id

        # Optuna's heartbeat thread: past the tolerance the trial's own thread reports the
        # outage; a traceback from this thread would only repeat it.
        with contextlib.suppress(StorageError):
            self.outage.call(beat)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials, except while heartbeats cannot be judged: within
        `grace_period` of this process reconnecting or of the database server starting,
        a live trial may not have beaten yet (a false "stale" would discard its result,
        Optuna #5470). Optuna's sweep (`optuna.storages.fail_stale_trials`) fails these
        trials next and sets no reason: each gets one in the transaction that fails it
        (`defer_trial_user_attr`), so a trial that ends first is left without one."""
        grace = float(self.grace_period or 2 * (self.heartbeat_interval or 1))
        now = time.monotonic()
        if self.stale_sweep_every_s and now < self._next_stale_sweep.get(study_id, 0.0):
            return []
        self._next_stale_sweep[study_id] = now + self.stale_sweep_every_s

        def stale() -> list[int]:
            if self.outage.recently_recovered(grace):
                return []
            with self.engine.connect() as conn:
                if server_started_within(conn, grace):
                    return []
            return RDBStorage._get_stale_trial_ids(self, study_id)

        ids = self.outage.call(stale)
        if ids:  # their retries may be queued before this process's next trial
            self.control.queue_changed(study_id)
        for trial_id in ids:  # written by the transaction that fails it, if that wins
            self.defer_trial_user_attr(
                trial_id,
                "fail_reason",
                f"lost: no trial heartbeat for {grace:g} s (its process died or hung)",
            )
        return ids

    @contextlib.contextmanager
    def setup_lock(self) -> Iterator[None]:
        """Serialise a study's creation with other processes' (see `setup_lock`)."""
        with setup_lock(self.engine.url):
            yield


# Through the unique constraint on `trial_heartbeats.trial_id`.
_FIRST_BEAT_SQL = (
    "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (:tid, CURRENT_TIMESTAMP) "
    "ON CONFLICT (trial_id) DO UPDATE SET heartbeat = CURRENT_TIMESTAMP"
)
_BEAT_AGAIN_SQL = "UPDATE trial_heartbeats SET heartbeat = CURRENT_TIMESTAMP WHERE trial_id = :tid"


# Optuna's storage methods, each one transaction or read: retried across an outage by the
# storage's guard (the methods overridden above guard themselves).
_GUARDED_METHODS = (
    "create_new_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "set_trial_param",
    "get_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_all_trials",
    "get_best_trial",
)


def _guarded(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def guarded(self: StudyctlStorage, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("set_trial_"):
            self.recent.forget()  # a write to a trial kept for the next read: read it back
        return self.outage.call(lambda: method(self, *args, **kwargs))

    return guarded


for _name in _GUARDED_METHODS:
    setattr(StudyctlStorage, _name, _guarded(_name))


_STORAGES: dict[str, StudyctlStorage] = {}


def _inherited_tolerance() -> float:
    with contextlib.suppress(ValueError):
        return max(0.0, float(os.environ.get(OUTAGE_TOLERANCE_ENV, "0")))
    return 0.0


def open_storage(
    url: str, *, for_upgrade: bool = False, pool_size: int = POSTGRES_POOL_SIZE
) -> StudyctlStorage:
    """Open (once per process) the storage at `url`, creating the schema of a new database
    and refusing one whose schema (Optuna's or studyctl's) is at another version; one whose
    schemas are both current is opened without set-up (`rdb_init`).
    `for_upgrade` skips both checks, for `studyctl db upgrade` only. `pool_size` bounds a
    PostgreSQL engine's pool (plus `POSTGRES_MAX_OVERFLOW`); the storage proxy takes more.

    Raises `StorageError` with the URL's password masked for every problem a user can fix."""
    if url in _STORAGES and not for_upgrade:
        return _STORAGES[url]
    shown = mask_url(url)
    parsed = database_url(url, shown)
    backend = parsed.get_backend_name()
    # A command opens with no tolerance (a database that is down is reported at once); a
    # process started by a run inherits the run's through the environment.
    guard = OutageGuard(shown, _inherited_tolerance())

    def construct(current: bool) -> StudyctlStorage | None:
        """The storage; None if `current` and a schema is not: new, or to refuse."""
        kwargs = engine_kwargs(parsed, pool_size)
        storage = StudyctlStorage(
            url, outage=guard, current=current, engine_kwargs=kwargs,
            skip_compatibility_check=for_upgrade,
        )  # fmt: skip
        try:
            if backend == "sqlite":
                tune_sqlite_connections(storage.engine)
            if current and not schemas_current(storage.engine):
                storage.engine.dispose()
                return None
            if not current and not for_upgrade:
                ensure_schema(storage.engine, shown)
        except BaseException:
            storage.engine.dispose()
            raise
        return storage

    def build() -> StudyctlStorage:
        storage = None
        # An existing database at both heads needs no set-up, hence no set-up lock.
        if not for_upgrade and (backend != "sqlite" or os.path.isfile(parsed.database or "")):
            if backend == "sqlite":
                prepare_sqlite(parsed, shown)
            storage = construct(current=True)
        if storage is None:
            with setup_lock(parsed):
                if backend == "sqlite":
                    prepare_sqlite(parsed, shown)
                storage = construct(current=False)
            assert storage is not None  # only a `current` construct gives None
        if backend == "postgresql":
            install_connect_guard(storage.engine, guard)
        return storage

    try:
        storage = guard.call(build, convert=False)
    except sa_exc.NoSuchModuleError:
        raise StorageError(
            f"storage URL {shown!r}: unknown database driver {parsed.drivername!r}",
            hint="use sqlite:///PATH or postgresql+psycopg://user@host/db",
        ) from None
    except ImportError as exc:
        raise StorageError(
            f"storage URL {shown!r}: the database driver is not installed ({exc.__cause__ or exc})"
        ) from None
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        raise StorageError(
            f"cannot connect to storage {shown}: {one_line(exc, with_type=False)}"
        ) from None
    except sa_exc.SQLAlchemyError as exc:
        raise StorageError(f"storage {shown}: {one_line(exc, with_type=False)}") from None
    except RuntimeError as exc:
        # Optuna's schema check: the database was written by another Optuna version.
        raise StorageError(
            f"storage {shown}: {one_line(exc, with_type=False)}",
            hint=f"run `studyctl db upgrade --storage {shown}`",
        ) from None
    if not for_upgrade:
        _STORAGES[url] = storage
    return storage


def open_existing_storage(url: str) -> StudyctlStorage:
    """`open_storage` for a database that must exist already (see
    `require_existing_database`)."""
    if url not in _STORAGES:
        require_existing_database(url)
    return open_storage(url)


def close_storage(url: str) -> None:
    """Forget this process's storage for `url` and close its connections."""
    storage = _STORAGES.pop(url, None)
    if storage is not None:
        storage.engine.dispose()


def close_all_storages() -> None:
    """`close_storage` for every storage this process opened."""
    for url in list(_STORAGES):
        close_storage(url)


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True
