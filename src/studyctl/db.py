"""studyctl's own tables (prefix ``studyctl_``), living beside Optuna's in the same database.

* ``studyctl_studies``: one row per study: the budget (`n_trials`) and the spec snapshot the
  study was created from, so that `studyctl worker` needs only a URL and a study name.
* ``studyctl_workers``: every worker process, with host, pid, GPU set and heartbeat.
* ``studyctl_claims``: budget reservations; a worker holds one while its trial runs.

All access goes through `transaction(engine)`; queries take the connection explicitly.
The tables are created and changed only by the Alembic revisions in `migrations/`
(`studyctl.schema`); this metadata describes the head revision.
Optuna's `trials` table is read (never written) here and in `studyctl.control`, which holds
the operations a worker makes on these tables; its columns there (trial_id, study_id,
state) have not changed since Optuna's schema v3.2.0.a.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

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

WORKER_RUNNING = "running"
WORKER_STOPPED = "stopped"


def utcnow() -> datetime:
    """Naive UTC, the form stored in every timestamp column."""
    return datetime.now(UTC).replace(tzinfo=None)


def db_utcnow(conn: Connection) -> datetime:
    """Naive UTC from the database server's clock (PostgreSQL), so heartbeats written by
    workers on different hosts are stamped and compared on one clock; SQLite serves one
    machine, whose clock this process reads."""
    if conn.dialect.name == "postgresql":
        value = conn.execute(sa.text("SELECT timezone('UTC', clock_timestamp())")).scalar_one()
        return value.replace(tzinfo=None) if isinstance(value, datetime) else utcnow()
    return utcnow()


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
            )
        )


def _version() -> str:
    from studyctl import __version__

    return f"studyctl {__version__}"


def delete_study_records(conn: Connection, study_name: str) -> None:
    for table in (claims_table, workers_table, studies_table):
        conn.execute(sa.delete(table).where(table.c.study_name == study_name))


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


def list_workers(conn: Connection, study_name: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.select(workers_table)
        .where(workers_table.c.study_name == study_name)
        .order_by(workers_table.c.started_at)
    ).mappings()
    return [dict(r) for r in rows]


# --- budget claims -----------------------------------------------------------------------


_FINISHED_SQL = (
    "SELECT count(*) FROM trials WHERE study_id = :sid AND state IN ('COMPLETE', 'PRUNED')"
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


def count_finished_trials(conn: Connection, study_id: int) -> int:
    return int(conn.execute(sa.text(_FINISHED_SQL), {"sid": study_id}).scalar_one())


def count_taken(conn: Connection, study_id: int, study_name: str, stale_before: datetime) -> int:
    """Finished trials plus live claims, read in ONE statement.

    Under PostgreSQL's READ COMMITTED each statement has its own snapshot: counting finished
    trials and live claims in two statements misses a trial that finished (and released its
    claim) between them, and lets one trial too many start (seen: 41 of 40 with 8 workers).
    """
    return int(
        conn.execute(
            sa.text(f"SELECT ({_FINISHED_SQL}) + ({_LIVE_CLAIMS_SQL})"),
            {"sid": study_id, "name": study_name, "stale_before": stale_before},
        ).scalar_one()
    )
