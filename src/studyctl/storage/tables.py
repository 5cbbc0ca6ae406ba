"""studyctl's own tables (prefix ``studyctl_``), living beside Optuna's in the same database.

* ``studyctl_studies``: one row per study: the budget (`n_trials`) and the spec snapshot the
  study was created from, so that `studyctl worker` needs only a URL and a study name.
* ``studyctl_workers``: every worker process, with host, pid, GPU set and heartbeat.
* ``studyctl_claims``: budget reservations; a worker holds one while its trial runs.

All of studyctl's SQL is here: every access goes through `transaction(engine)` and queries
take the connection explicitly (`studyctl.storage.control` composes them into the
operations a worker makes). The tables are created and changed only by the Alembic
revisions in `migrations/` (`studyctl.storage.schema`); this metadata describes the head
revision. Optuna's `trials` table is read (never written) here; its columns used here
(trial_id, study_id, state) have not changed since Optuna's schema v3.2.0.a. The one write
to Optuna's tables is `delete_trial_attrs`: attributes naming an artifact that studyctl
removed (Optuna itself refuses to change a finished trial).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
# Trial states by name, in Optuna's order; a trial counts against the budget once finished.
STATES = ("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING")
FINISHED_STATES = ("COMPLETE", "PRUNED")
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
    "SELECT count(*) FROM trials WHERE study_id = :sid AND state IN "
    f"({', '.join(repr(s) for s in FINISHED_STATES)})"
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


def try_claim(
    conn: Connection,
    *,
    study_name: str,
    study_id: int,
    worker_id: str,
    n_trials: int | None,
    stale_after: float,
) -> int | None:
    """Reserve one trial of the budget for `worker_id`; None when the budget is taken.

    The first statement updates the study's row, which serialises claims of one study on
    both SQLite (write lock) and PostgreSQL (row lock), so the count and the insert that
    follow cannot interleave with another worker's.
    """
    conn.execute(
        sa.update(studies_table)
        .where(studies_table.c.study_name == study_name)
        .values(claim_seq=studies_table.c.claim_seq + 1)
    )
    if n_trials is not None:
        stale_before = db_utcnow(conn) - timedelta(seconds=stale_after)
        if count_taken(conn, study_id, study_name, stale_before) >= n_trials:
            return None
    result = conn.execute(
        sa.insert(claims_table).values(
            study_name=study_name, worker_id=worker_id, created_at=db_utcnow(conn)
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def attach_claim(conn: Connection, claim_id: int, trial_id: int) -> None:
    conn.execute(
        sa.update(claims_table).where(claims_table.c.claim_id == claim_id).values(trial_id=trial_id)
    )


def release_claim(conn: Connection, claim_id: int) -> int | None:
    """Drop the claim; return the id of the trial it was attached to (if any)."""
    trial_id = conn.execute(
        sa.select(claims_table.c.trial_id).where(claims_table.c.claim_id == claim_id)
    ).scalar_one_or_none()
    conn.execute(sa.delete(claims_table).where(claims_table.c.claim_id == claim_id))
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


def state_counts(conn: Connection, study_id: int) -> dict[str, int]:
    """Trials of the study per state name (every state present, zero when none)."""
    counts = dict.fromkeys(STATES, 0)
    rows = conn.execute(
        sa.text("SELECT state, count(*) FROM trials WHERE study_id = :sid GROUP BY state"),
        {"sid": study_id},
    )
    for state, n in rows:
        counts[str(getattr(state, "name", state))] = int(n)
    return counts


def finished_count(counts: dict[str, int]) -> int:
    """Trials that count against the budget, from `state_counts`."""
    return sum(counts.get(s, 0) for s in FINISHED_STATES)


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


def study_budgets(conn: Connection) -> dict[str, int | None]:
    """Every studyctl study's budget (`n_trials`) by name."""
    rows = conn.execute(sa.select(studies_table.c.study_name, studies_table.c.n_trials))
    return {name: n for name, n in rows}


# --- reading Optuna's trials without loading them all ---------------------------------------
# Optuna's `trials` table is indexed on study_id only (and trial_id, its key); studyctl never
# adds indexes to Optuna's tables. The queries below touch each of a study's rows at most
# once and hold at most one batch of trials in memory. Within a study, a trial's `number` is
# the count of the study's trials with a smaller trial_id, so trial_id order is number order.


def retried_trials(conn: Connection, study_id: int) -> list[dict[str, Any]]:
    """Trials that retry another (system attribute ``failed_trial``), by number:
    ``{"trial", "retry_of", "state"}``."""
    rows = conn.execute(
        sa.text(
            "SELECT t.number, t.state, a.value_json FROM trial_system_attributes a "
            "JOIN trials t ON t.trial_id = a.trial_id "
            "WHERE t.study_id = :sid AND a.key = 'failed_trial' ORDER BY t.trial_id"
        ),
        {"sid": study_id},
    )
    return [
        {"trial": int(n), "retry_of": json.loads(v), "state": str(getattr(s, "name", s))}
        for n, s, v in rows
    ]


def _state_filter(states: tuple[str, ...] | None) -> tuple[str, dict[str, Any]]:
    if not states:
        return "", {}
    names = {f"st{i}": s for i, s in enumerate(states)}
    return f" AND t.state IN ({', '.join(':' + k for k in names)})", names


def trial_columns(
    conn: Connection, study_id: int, states: tuple[str, ...] | None = None
) -> tuple[int, list[str], list[str]]:
    """(objectives, parameter names, user attribute keys) over the study's trials in
    `states` (all when None): the columns of a trials table, read without the trials."""
    where, params = _state_filter(states)
    params["sid"] = study_id
    objectives = conn.execute(
        sa.text(
            "SELECT max(v.objective) FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id "
            f"WHERE t.study_id = :sid{where}"
        ),
        params,
    ).scalar()
    names = [
        str(r[0])
        for r in conn.execute(
            sa.text(
                "SELECT DISTINCT p.param_name FROM trial_params p "
                f"JOIN trials t ON t.trial_id = p.trial_id WHERE t.study_id = :sid{where}"
            ),
            params,
        )
    ]
    keys = [
        str(r[0])
        for r in conn.execute(
            sa.text(
                "SELECT DISTINCT a.key FROM trial_user_attributes a "
                f"JOIN trials t ON t.trial_id = a.trial_id WHERE t.study_id = :sid{where}"
            ),
            params,
        )
    ]
    return (0 if objectives is None else int(objectives) + 1), sorted(names), sorted(keys)


@dataclass
class TrialRow:
    """One trial as stored (Optuna's internal representations; `summary` converts them)."""

    trial_id: int
    number: int
    state: str
    datetime_start: datetime | None
    datetime_complete: datetime | None
    # (objective, value, value_type) / (name, internal value, distribution JSON), in order.
    values: list[tuple[int, float | None, str]] = field(default_factory=list)
    params: list[tuple[str, float, str]] = field(default_factory=list)
    user_attrs: dict[str, str] = field(default_factory=dict)  # key -> JSON
    system_attrs: dict[str, str] = field(default_factory=dict)


def _enum_name(value: Any) -> str:
    return str(getattr(value, "name", value))


def _batch_children(
    conn: Connection, bounds: dict[str, int], sql: str, order: str = "c.trial_id"
) -> Any:
    """Child rows (values, params, attributes) of the trials in a trial_id range: the range
    holds a batch's trials and possibly others of the study (other states), which the
    caller skips."""
    return conn.execute(
        sa.text(
            sql + " JOIN trials t ON t.trial_id = c.trial_id WHERE t.study_id = :sid "
            f"AND c.trial_id BETWEEN :lo AND :hi ORDER BY {order}"
        ),
        bounds,
    )


def iter_trial_rows(
    engine: Engine,
    study_id: int,
    states: tuple[str, ...] | None = None,
    batch_size: int = 2000,
) -> Iterator[TrialRow]:
    """The study's trials in number order, `batch_size` at a time (keyset on trial_id), each
    batch read in its own short transaction: memory stays bounded by one batch."""
    where, params = _state_filter(states)
    after = -1
    while True:
        with transaction(engine) as conn:
            trials = conn.execute(
                sa.text(
                    "SELECT t.trial_id, t.number, t.state, t.datetime_start, "
                    "t.datetime_complete FROM trials t WHERE t.study_id = :sid AND "
                    f"t.trial_id > :after{where} ORDER BY t.trial_id LIMIT :limit"
                ),
                {**params, "sid": study_id, "after": after, "limit": batch_size},
            ).all()
            if not trials:
                return
            rows = {
                int(tid): TrialRow(int(tid), int(num), _enum_name(state), start, complete)
                for tid, num, state, start, complete in trials
            }
            bounds = {"sid": study_id, "lo": min(rows), "hi": max(rows)}
            children = functools.partial(_batch_children, conn, bounds)
            for tid, objective, value, vtype in children(
                "SELECT c.trial_id, c.objective, c.value, c.value_type FROM trial_values c"
            ):
                if (row := rows.get(int(tid))) is not None:
                    row.values.append((int(objective), value, _enum_name(vtype)))
            for tid, name, value, dist in children(
                "SELECT c.trial_id, c.param_name, c.param_value, c.distribution_json "
                "FROM trial_params c",
                "c.param_id",
            ):
                if (row := rows.get(int(tid))) is not None:
                    row.params.append((str(name), value, str(dist)))
            for tid, key, value in children(
                "SELECT c.trial_id, c.key, c.value_json FROM trial_user_attributes c"
            ):
                if (row := rows.get(int(tid))) is not None:
                    row.user_attrs[str(key)] = str(value)
            for tid, key, value in children(
                "SELECT c.trial_id, c.key, c.value_json FROM trial_system_attributes c"
            ):
                if (row := rows.get(int(tid))) is not None:
                    row.system_attrs[str(key)] = str(value)
        yield from rows.values()
        after = max(rows)


_UNFINISHED = ("RUNNING", "WAITING")
# One statement (one snapshot, also under PostgreSQL's READ COMMITTED): per finished state
# its count and largest trial_id, and each unfinished trial on its own row.
_TALLY_SQL = (
    "SELECT state, count(*), max(trial_id), 0 FROM trials WHERE study_id = :sid AND state "
    "NOT IN ('RUNNING', 'WAITING') GROUP BY state UNION ALL "
    "SELECT state, 1, trial_id, 1 FROM trials WHERE study_id = :sid "
    "AND state IN ('RUNNING', 'WAITING')"
)
_TALLY_ROWS_SQL = (
    "SELECT t.trial_id, t.number, t.state, v.value, v.value_type FROM trials t "
    "LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
    "WHERE t.study_id = :sid AND "
)
_BEST_SQL = (
    "SELECT t.number, v.value, v.value_type FROM trials t "
    "JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
    "WHERE t.study_id = :sid AND t.state = 'COMPLETE' ORDER BY "
    "CASE v.value_type WHEN 'INF_NEG' THEN -1 WHEN 'FINITE' THEN 0 ELSE 1 END {order}, "
    "v.value {order} LIMIT 1"
)


def stored_value(value: float | None, value_type: Any) -> float:
    kind = _enum_name(value_type)
    if kind == "INF_POS":
        return float("inf")
    if kind == "INF_NEG":
        return float("-inf")
    return float(value if value is not None else "nan")


class StudyTally:
    """Trial counts per state and the best value (first objective) of one study, kept up to
    date by reading only the trials created since the last read and those unfinished then.

    A finished state (COMPLETE, PRUNED, FAIL) is final, so a study of 100,000 trials costs
    one aggregate query at the start and then a few rows per refresh, where `state_counts`
    and Optuna's best-trial query read every trial of the study each time. A full recount
    every `RESYNC_EVERY` refreshes bounds any drift (a trial whose id was allocated before,
    but committed after, a refresh).
    """

    RESYNC_EVERY = 500

    def __init__(self, study_id: int, *, maximize: bool) -> None:
        self.study_id = study_id
        self.maximize = maximize
        self.counts: dict[str, int] = dict.fromkeys(STATES, 0)
        self.best: tuple[float, int] | None = None  # (value, trial number)
        self._last_id = 0
        self._unfinished: dict[int, str] = {}  # trial_id -> state
        self._refreshes = 0

    def refresh(self, conn: Connection) -> None:
        if self._refreshes % self.RESYNC_EVERY == 0:
            self._load(conn)
        else:
            self._update(conn)
        self._refreshes += 1

    def _load(self, conn: Connection) -> None:
        self.counts = dict.fromkeys(STATES, 0)
        self._unfinished = {}
        self._last_id = 0
        for state, n, max_id, unfinished in conn.execute(
            sa.text(_TALLY_SQL), {"sid": self.study_id}
        ):
            name = _enum_name(state)
            self.counts[name] = self.counts.get(name, 0) + int(n)
            self._last_id = max(self._last_id, int(max_id))
            if unfinished:
                self._unfinished[int(max_id)] = name
        order = "DESC" if self.maximize else "ASC"
        row = conn.execute(sa.text(_BEST_SQL.format(order=order)), {"sid": self.study_id}).first()
        self.best = None
        if row is not None:
            self._offer(stored_value(row[1], row[2]), int(row[0]))

    def _offer(self, value: float, number: int) -> None:
        if self.best is None or (value > self.best[0] if self.maximize else value < self.best[0]):
            self.best = (value, number)

    def _update(self, conn: Connection) -> None:
        rows = list(
            conn.execute(
                sa.text(_TALLY_ROWS_SQL + "t.trial_id > :after"),
                {"sid": self.study_id, "after": self._last_id},
            )
        )
        if self._unfinished:
            ids = sorted(self._unfinished)
            names = {f"id{i}": v for i, v in enumerate(ids)}
            rows += conn.execute(
                sa.text(_TALLY_ROWS_SQL + f"t.trial_id IN ({', '.join(':' + k for k in names)})"),
                {"sid": self.study_id, **names},
            ).all()
        # The two reads are disjoint: new trials (id > last) and unfinished ones (id <= last).
        for trial_id, number, state, value, value_type in rows:
            tid, name = int(trial_id), _enum_name(state)
            before = self._unfinished.pop(tid, None)
            if before is not None:
                self.counts[before] -= 1
            self.counts[name] = self.counts.get(name, 0) + 1
            if name in _UNFINISHED:
                self._unfinished[tid] = name
            elif name == "COMPLETE" and value_type is not None:
                self._offer(stored_value(value, value_type), int(number))
        self._last_id = max([self._last_id, *(int(r[0]) for r in rows)])
