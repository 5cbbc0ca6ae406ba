"""studyctl's own tables (prefix ``studyctl_``), living beside Optuna's in the same database.

* ``studyctl_studies``: one row per study: the budget (`n_trials`) and the spec snapshot the
  study was created from, so that `studyctl worker` needs only a URL and a study name.
* ``studyctl_workers``: every worker process, with host, pid, GPU set and heartbeat.
* ``studyctl_claims``: budget reservations; a worker holds one while its trial runs.

All of studyctl's SQL is here, but for the few reads the inspection commands make through
the driver itself (`reader`: a study's budget and spec, its workers): every access goes
through `transaction(engine)` and queries take the connection explicitly
(`studyctl.storage.control` composes them into the operations a worker makes). The tables
are created and changed only by the Alembic revisions in `migrations/`
(`studyctl.storage.schema`); this metadata describes the head revision. Optuna's `trials`
table is read (never written) here; its columns used here (trial_id, study_id, state) have
not changed since Optuna's schema v3.2.0.a. The one write to Optuna's tables is
`delete_trial_attrs`: attributes naming an artifact that studyctl removed (Optuna itself
refuses to change a finished trial).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

# The trial states, the workers' running state, the database's clock and the state counts
# are shared with the reads made without SQLAlchemy (`plain`).
from studyctl.storage.plain import FINISHED_STATES as FINISHED_STATES
from studyctl.storage.plain import STATES as STATES
from studyctl.storage.plain import WORKER_RUNNING as WORKER_RUNNING
from studyctl.storage.plain import WORKER_STOPPED as WORKER_STOPPED
from studyctl.storage.plain import db_utcnow as db_utcnow
from studyctl.storage.plain import finished_count as finished_count
from studyctl.storage.plain import state_counts as state_counts
from studyctl.storage.plain import utcnow as utcnow

metadata = sa.MetaData()

studies_table = sa.Table(
    "studyctl_studies",
    metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("n_trials", sa.Integer, nullable=True),
    sa.Column("spec_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    # Bumped by every claim: the UPDATE takes the row lock (PostgreSQL) or the write lock
    # (SQLite) that makes counting and reserving one atomic step.
    sa.Column("claim_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_by", sa.String(64), nullable=False, server_default="unknown"),
    # The study's COMPLETE and PRUNED trials, kept in the same transaction as each trial's
    # end (`count_trial_finished`), so a claim reads one row, not every trial of the study.
    sa.Column("n_finished", sa.Integer, nullable=False, server_default="0"),
)

workers_table = sa.Table(
    "studyctl_workers",
    metadata,
    sa.Column("worker_id", sa.String(64), primary_key=True),
    sa.Column("study_name", sa.String(512), nullable=False, index=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("gpus", sa.String(255), nullable=False, server_default=""),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("heartbeat_at", sa.DateTime, nullable=False),
    sa.Column("trials_done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("current_trial", sa.Integer, nullable=True),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=True),
)

claims_table = sa.Table(
    "studyctl_claims",
    metadata,
    sa.Column("claim_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_name", sa.String(512), nullable=False, index=True),
    sa.Column("worker_id", sa.String(64), nullable=False),
    sa.Column("trial_id", sa.Integer, nullable=True, index=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
)


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """The one transaction helper: commit on success, roll back on any error."""
    with engine.begin() as conn:
        yield conn


# --- studies -----------------------------------------------------------------------------


def get_study_record(conn: Connection, study_name: str) -> dict[str, Any] | None:
    row = (
        conn.execute(sa.select(studies_table).where(studies_table.c.study_name == study_name))
        .mappings()
        .first()
    )
    return dict(row) if row else None


def upsert_study_record(
    conn: Connection, study_name: str, n_trials: int | None, spec_json: str
) -> None:
    now = utcnow()
    updated = conn.execute(
        sa.update(studies_table)
        .where(studies_table.c.study_name == study_name)
        .values(n_trials=n_trials, spec_json=spec_json, updated_at=now)
    )
    if updated.rowcount == 0:
        conn.execute(
            sa.insert(studies_table).values(
                study_name=study_name,
                n_trials=n_trials,
                spec_json=spec_json,
                created_at=now,
                updated_at=now,
                claim_seq=0,
                created_by=_version(),
                n_finished=count_finished_by_name(conn, study_name),
            )
        )


def _version() -> str:
    from studyctl import __version__

    return f"studyctl {__version__}"


def delete_study_records(conn: Connection, study_name: str) -> None:
    """Delete the study's rows in studyctl's tables. A table with none is only read, so a
    role without DELETE rights there (a worker role, SECURITY.md) can create a new study."""
    for table in (claims_table, workers_table, studies_table):
        where = table.c.study_name == study_name
        if conn.execute(sa.select(sa.literal(1)).where(where).limit(1)).first() is not None:
            conn.execute(sa.delete(table).where(where))


# --- workers -----------------------------------------------------------------------------


def insert_worker(conn: Connection, **values: Any) -> None:
    now = db_utcnow(conn)
    conn.execute(
        sa.insert(workers_table).values(
            started_at=now, heartbeat_at=now, trials_done=0, state=WORKER_RUNNING, **values
        )
    )


def update_worker(conn: Connection, worker_id: str, **values: Any) -> None:
    conn.execute(
        sa.update(workers_table).where(workers_table.c.worker_id == worker_id).values(**values)
    )


def get_worker(conn: Connection, worker_id: str) -> dict[str, Any] | None:
    row = (
        conn.execute(sa.select(workers_table).where(workers_table.c.worker_id == worker_id))
        .mappings()
        .first()
    )
    return dict(row) if row else None


# --- budget claims -----------------------------------------------------------------------


_FINISHED_SQL = (
    "SELECT count(*) FROM trials WHERE study_id = :sid AND state IN "
    f"({', '.join(repr(s) for s in FINISHED_STATES)})"
)
_FINISHED_BY_NAME_SQL = (
    "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
    "WHERE s.study_name = :name AND t.state IN "
    f"({', '.join(repr(s) for s in FINISHED_STATES)})"
)
# The counter kept in studyctl_studies (`n_finished`), by Optuna's study id.
_COUNTER_SQL = (
    "SELECT c.n_finished FROM studyctl_studies c JOIN studies s ON s.study_name = c.study_name "
    "WHERE s.study_id = :sid"
)
# A claim counts while its trial is running (even if its worker died: the trial stays
# RUNNING until the heartbeat marks it failed, and its retry then takes a claim of its own),
# or, before its trial exists, while its worker is alive.
_LIVE_CLAIMS_SQL = (
    "SELECT count(*) FROM studyctl_claims c "
    "LEFT JOIN trials t ON t.trial_id = c.trial_id "
    "LEFT JOIN studyctl_workers w ON w.worker_id = c.worker_id "
    "WHERE c.study_name = :name AND ("
    "  (c.trial_id IS NOT NULL AND t.state IN ('RUNNING', 'WAITING'))"
    "  OR (c.trial_id IS NULL AND w.heartbeat_at >= :stale_before))"
)


# Optuna's trial attribute tables, by the two columns `delete_trial_attrs` needs.
_TRIAL_ATTR_TABLES = {
    kind: sa.table(f"trial_{kind}_attributes", sa.column("trial_id"), sa.column("key"))
    for kind in ("user", "system")
}


def delete_trial_attrs(
    conn: Connection, trial_id: int, *, user_keys: list[str], system_keys: list[str]
) -> None:
    for kind, keys in (("user", user_keys), ("system", system_keys)):
        if keys:
            table = _TRIAL_ATTR_TABLES[kind]
            conn.execute(
                sa.delete(table).where(table.c.trial_id == trial_id, table.c.key.in_(keys))
            )


_RUNNING_TRIAL = "EXISTS (SELECT 1 FROM trials WHERE trial_id = :tid AND state = 'RUNNING')"


def write_trial_user_attrs(
    conn: Connection, trial_id: int, attrs: dict[str, Any], *, only_running: bool = True
) -> None:
    """Set user attributes of a RUNNING trial inside the caller's transaction, as Optuna's
    `set_trial_user_attr` stores them (one JSON row per key; the trial_id, key and
    value_json columns have not changed since Optuna's schema v3.2.0.a). A trial that is
    no longer RUNNING is left as it is, as Optuna leaves a finished trial, unless
    `only_running` is false (the caller's transaction has just ended the trial itself).
    The attributes ride on a transaction the worker makes anyway (a claim's attach, the
    trial's end) instead of costing a commit each."""
    # SQLite and PostgreSQL (the only databases studyctl opens) upsert on Optuna's unique
    # (trial_id, key).
    running = _RUNNING_TRIAL if only_running else "1 = 1"
    for key, value in attrs.items():
        conn.execute(
            sa.text(
                "INSERT INTO trial_user_attributes (trial_id, key, value_json) "
                f"SELECT :tid, :key, :value WHERE {running} "
                "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json"
            ),
            {"tid": trial_id, "key": key, "value": json.dumps(value)},
        )


def count_finished_trials(conn: Connection, study_id: int) -> int:
    """The study's COMPLETE and PRUNED trials: studyctl's counter (one row), or a count of
    its trials for a study studyctl does not manage."""
    kept = conn.execute(sa.text(_COUNTER_SQL), {"sid": study_id}).scalar_one_or_none()
    if kept is not None:
        return int(kept)
    return int(conn.execute(sa.text(_FINISHED_SQL), {"sid": study_id}).scalar_one())


def count_finished_by_name(conn: Connection, study_name: str) -> int:
    """The study's COMPLETE and PRUNED trials, counted over its trials (0 before Optuna's
    study exists): the counter's first value."""
    if not sa.inspect(conn).has_table("trials"):
        return 0
    return int(conn.execute(sa.text(_FINISHED_BY_NAME_SQL), {"name": study_name}).scalar_one())


# Every statement that finishes a trial calls this in its own transaction: the counter
# and the trial's state change commit together.
_COUNT_FINISHED_SQL = (
    "UPDATE studyctl_studies SET n_finished = n_finished + 1 WHERE study_name = ("
    "SELECT s.study_name FROM studies s JOIN trials t ON t.study_id = s.study_id "
    "WHERE t.trial_id = :tid)"
)


def count_trial_finished(conn: Connection, trial_id: int) -> None:
    """Count trial `trial_id`, which this transaction moved to COMPLETE or PRUNED, in its
    study's `n_finished` (a study studyctl does not manage has no row: nothing changes)."""
    conn.execute(sa.text(_COUNT_FINISHED_SQL), {"tid": trial_id})


# A claim's count: the trials that take the budget (finished, the study's `n_finished`,
# plus live claims), and whether the study has a queued (WAITING) trial, in one statement.
_TAKEN_AND_QUEUED_SQL = (
    "SELECT coalesce((SELECT n_finished FROM studyctl_studies WHERE study_name = :name), 0) + "
    f"({_LIVE_CLAIMS_SQL}), "
    "(SELECT count(*) FROM (SELECT 1 FROM trials WHERE study_id = :sid AND state = 'WAITING' "
    "LIMIT 1) q)"
)


@dataclass
class Claim:
    """A claim's id (None: the budget is taken) and whether the study had a queued trial
    when it was made (None: not looked at)."""

    claim_id: int | None
    queued: bool | None = None


def claim_trial(
    conn: Connection,
    *,
    study_name: str,
    study_id: int,
    worker_id: str,
    n_trials: int | None,
    stale_after: float,
    stored_budget: bool = False,
) -> Claim:
    """Reserve one trial of the budget for `worker_id`.

    The budget is `n_trials` (None: no budget), or with `stored_budget` the study's own
    (``studyctl_studies.n_trials``, as `studyctl run` last set it), read from the row this
    transaction locks: a budget extended while workers run counts from their next claim,
    at no extra round trip. On PostgreSQL the same statement reads the server's clock.
    The budget's count also says whether the study has a queued trial (`Claim.queued`),
    so a worker need not ask again before its trial when none is.

    The first statement updates the study's row, which serialises claims of one study on
    both SQLite (write lock) and PostgreSQL (row lock), so the count and the insert that
    follow cannot interleave with another worker's. The count is finished trials (the
    study's `n_finished`, one row) plus live claims in ONE statement, whose cost does not
    grow with the study's trials: under PostgreSQL's READ COMMITTED each statement has its
    own snapshot, and counting the two in two statements misses a trial that finished (and
    released its claim) between them, letting one trial too many start (seen: 41 of 40
    with 8 workers). No trial end (which updates the study's row too) commits until the
    claim does.
    """
    bump = (
        sa.update(studies_table)
        .where(studies_table.c.study_name == study_name)
        .values(claim_seq=studies_table.c.claim_seq + 1)
    )
    postgres = conn.dialect.name == "postgresql"
    now: datetime | None = None
    if stored_budget and conn.dialect.update_returning:
        read: list[Any] = [studies_table.c.n_trials]
        if postgres:  # the server's clock, as `db_utcnow` reads it
            read.append(sa.func.timezone("UTC", sa.func.clock_timestamp()))
        row = conn.execute(bump.returning(*read)).one_or_none()
        n_trials = None if row is None else row[0]
        if row is not None and postgres and isinstance(row[1], datetime):
            now = row[1].replace(tzinfo=None)
    elif stored_budget:
        conn.execute(bump)
        n_trials = conn.execute(
            sa.select(studies_table.c.n_trials).where(studies_table.c.study_name == study_name)
        ).scalar_one_or_none()
    else:
        conn.execute(bump)
    if now is None:
        now = db_utcnow(conn)
    queued: bool | None = None
    if n_trials is not None:
        stale_before = now - timedelta(seconds=stale_after)
        taken, waiting = conn.execute(
            sa.text(_TAKEN_AND_QUEUED_SQL),
            {"sid": study_id, "name": study_name, "stale_before": stale_before},
        ).one()
        if int(taken) >= n_trials:
            return Claim(None)
        queued = bool(waiting)
    result = conn.execute(
        sa.insert(claims_table).values(study_name=study_name, worker_id=worker_id, created_at=now)
    )
    key = result.inserted_primary_key
    assert key is not None
    return Claim(int(key[0]), queued)


def attach_claim(conn: Connection, claim_id: int, trial_id: int) -> None:
    conn.execute(
        sa.update(claims_table).where(claims_table.c.claim_id == claim_id).values(trial_id=trial_id)
    )


def release_claim(conn: Connection, claim_id: int) -> int | None:
    """Drop the claim; return the id of the trial it was attached to (if any)."""
    where = claims_table.c.claim_id == claim_id
    if conn.dialect.delete_returning:  # one statement (PostgreSQL; SQLite 3.35+)
        trial_id = conn.execute(
            sa.delete(claims_table).where(where).returning(claims_table.c.trial_id)
        ).scalar_one_or_none()
    else:
        found = conn.execute(sa.select(claims_table.c.trial_id).where(where))
        trial_id = found.scalar_one_or_none()
        conn.execute(sa.delete(claims_table).where(where))
    return None if trial_id is None else int(trial_id)


def release_idle_claims(conn: Connection, worker_id: str) -> None:
    """Drop a worker's claims whose trial is not RUNNING (or never started)."""
    conn.execute(
        sa.text(
            "DELETE FROM studyctl_claims WHERE worker_id = :wid AND (trial_id IS NULL "
            "OR trial_id NOT IN (SELECT trial_id FROM trials WHERE state = 'RUNNING'))"
        ),
        {"wid": worker_id},
    )


# RUNNING trials whose claim belongs to a worker that stopped beating (or to one worker).
_LOST_SQL = (
    "SELECT c.trial_id FROM studyctl_claims c "
    "JOIN trials t ON t.trial_id = c.trial_id "
    "JOIN studyctl_workers w ON w.worker_id = c.worker_id "
    "WHERE c.study_name = :name AND t.state = 'RUNNING' AND "
)


def lost_trial_ids(
    conn: Connection,
    study_name: str,
    *,
    worker_id: str | None = None,
    stale_before: datetime | None = None,
) -> list[int]:
    """RUNNING trials claimed by `worker_id`, or by workers whose heartbeat is older than
    `stale_before`."""
    params: dict[str, Any] = {"name": study_name}
    if worker_id is not None:
        sql, params["wid"] = _LOST_SQL + "c.worker_id = :wid", worker_id
    else:
        sql, params["before"] = _LOST_SQL + "w.heartbeat_at < :before", stale_before
    return [int(r[0]) for r in conn.execute(sa.text(sql), params)]


# Through `ix_studyctl_trials_study_state` (revision 0004): the study's WAITING rows only.
_WAITING_SQL = (
    "SELECT trial_id FROM trials WHERE study_id = :sid AND state = 'WAITING' ORDER BY number"
)


def waiting_trial_ids(conn: Connection, study_id: int) -> list[int]:
    """The study's WAITING trials (enqueued trials and retries), oldest first."""
    return [int(r[0]) for r in conn.execute(sa.text(_WAITING_SQL), {"sid": study_id})]
