"""Opening a database whose schemas are current without Optuna's schema work.

`RDBStorage.__init__` creates any missing table (`create_all`: a query per table), inserts
Optuna's version row when there is none, reads or stamps Alembic's revision (importing
Alembic: 0.15 s of a command's start) and checks it: the set-up of a new database, and the
check of an existing one. A database whose two revisions one query finds at head
(`schemas_current`) needs none of that: `init_current` sets what `RDBStorage.__init__`
sets, and Optuna's `_VersionManager`, which only schema upgrades use, is built on first
use. A test compares the attributes with those Optuna's own `__init__` sets, so an Optuna
release that adds one fails there, not in a user's run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import orm

from studyctl.storage.schema import VERSIONS_SQL, optuna_head_revision, versions_current

if TYPE_CHECKING:
    from optuna.storages import RDBStorage


def schemas_current(engine: sa.Engine) -> bool:
    """Both schemas (Optuna's and studyctl's revisions) at this installation's heads, read
    in one query. A connection error is raised; a database without the version tables (a
    new one) is not current."""
    optuna_head = optuna_head_revision()
    if optuna_head is None:
        return False
    with engine.connect() as conn:
        try:
            versions = conn.execute(sa.text(VERSIONS_SQL)).one()
        except sa_exc.DBAPIError:
            return False
    return versions_current(tuple(versions), optuna_head)


class LazyVersionManager:
    """Optuna's `_VersionManager` for the storage, built when first used."""

    def __init__(self, url: str, engine: sa.Engine, scoped_session: Any) -> None:
        self._args = (url, engine, scoped_session)
        self._manager: Any = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not built yet (a copy, an unpickling): not Optuna's
            raise AttributeError(name)
        if self._manager is None:
            from optuna.storages._rdb.storage import _VersionManager

            self._manager = _VersionManager(*self._args)
        return getattr(self._manager, name)


def init_current(
    storage: RDBStorage,
    url: str,
    engine_kwargs: dict[str, Any] | None = None,
    skip_compatibility_check: bool = False,
) -> None:
    """What `RDBStorage.__init__(url, engine_kwargs, skip_compatibility_check)` sets, for a
    database `schemas_current` found current (no heartbeat settings: `connect` sets those
    on the opened storage)."""
    storage.engine_kwargs = engine_kwargs or {}
    storage.url = storage._fill_storage_url_template(url)
    storage.skip_compatibility_check = skip_compatibility_check
    storage.heartbeat_interval = None
    storage.grace_period = None
    storage.heartbeat_stale_trial_callback = None
    storage.failed_trial_callback = None
    storage.engine = sa.create_engine(storage.url, **storage.engine_kwargs)
    storage.scoped_session = orm.scoped_session(orm.sessionmaker(bind=storage.engine))
    storage._version_manager = LazyVersionManager(  # type: ignore[assignment]
        storage.url, storage.engine, storage.scoped_session
    )
