"""What `studyctl watch` shows, read from the database in a few small queries.

A refresh runs a fixed number of statements, each bounded by the study's id and a LIMIT
(or an aggregate), whatever the number of trials: the watch can poll a large study every
second from any machine without loading its trials. Optuna's tables are read, never
written; their columns used here have not changed since Optuna's schema v3.2.0.a.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from studyctl.errors import StudyctlError
from studyctl.storage import tables as db
from studyctl.storage.times import utc_now
from studyctl.storage.trial_rows import stored_param

RECENT_TRIALS = 8
MAX_WORKERS_SHOWN = 16
# Finished trials whose durations estimate the time left.
ETA_WINDOW = 20


@dataclass(frozen=True)
class WorkerView:
    worker_id: str
    host: str
    gpus: str
    state: str  # running | dead (running, but its heartbeat is stale) | stopped | ...
    heartbeat_age_s: float
    trials_done: int
    current_trial: int | None
    epoch: int | None  # epochs finished by the current trial, when it reports them


@dataclass(frozen=True)
class TrialView:
    number: int
    state: str
    values: tuple[float, ...] | None
    duration_s: float | None
    note: str | None = None  # fail reason, pruned epoch, retry of #n


@dataclass(frozen=True)
class WatchSnapshot:
    study: str
    directions: tuple[str, ...]
    metrics: tuple[str, ...]
    n_trials: int | None
    epochs: int | None
    counts: dict[str, int]
    retries: int
    best: TrialView | None
    best_params: dict[str, Any]
    workers: tuple[WorkerView, ...]
    recent: tuple[TrialView, ...]
    elapsed_s: float | None
    eta_s: float | None
    taken_at: datetime = field(default_factory=datetime.now)

    @property
    def finished(self) -> int:
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0)

    @property
    def complete(self) -> bool:
        """The budget is met and no trial is left running."""
        return (
            self.n_trials is not None
            and self.finished >= self.n_trials
            and not self.counts.get("RUNNING", 0)
        )

    @property
    def live_workers(self) -> int:
        return sum(1 for w in self.workers if w.state == db.WORKER_RUNNING)


_STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")

_COUNTS_SQL = sa.text("SELECT state, count(*) FROM trials WHERE study_id = :sid GROUP BY state")
# One statement for the scalars of a refresh: retries and when the study's first trial
# started (its elapsed time).
_SCALARS_SQL = sa.text(
    "SELECT"
    " (SELECT count(*) FROM trial_system_attributes a JOIN trials t"
    "   ON t.trial_id = a.trial_id WHERE t.study_id = :sid AND a.key = 'failed_trial')"
    " AS retries,"
    " (SELECT min(datetime_start) FROM trials WHERE study_id = :sid) AS first_start"
).columns(sa.column("retries", sa.Integer), sa.column("first_start", sa.DateTime))
_RECENT_SQL = sa.text(
    "SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials"
    " WHERE study_id = :sid ORDER BY trial_id DESC LIMIT :n"
).columns(
    sa.column("trial_id", sa.Integer),
    sa.column("number", sa.Integer),
    sa.column("state", sa.String),
    sa.column("datetime_start", sa.DateTime),
    sa.column("datetime_complete", sa.DateTime),
)
_FINISHED_TIMES_SQL = sa.text(
    "SELECT datetime_start, datetime_complete FROM trials"
    " WHERE study_id = :sid AND state IN ('COMPLETE', 'PRUNED')"
    " ORDER BY trial_id DESC LIMIT :n"
).columns(sa.column("datetime_start", sa.DateTime), sa.column("datetime_complete", sa.DateTime))
_EPOCHS_SQL = sa.text(
    "SELECT t.number, max(iv.step) FROM trials t"
    " JOIN trial_intermediate_values iv ON iv.trial_id = t.trial_id"
    " WHERE t.study_id = :sid AND t.state = 'RUNNING' GROUP BY t.number"
)


def _best_sql(direction: str) -> sa.TextualSelect:
    order = "DESC" if direction == "maximize" else "ASC"
    return sa.text(
        "SELECT t.trial_id, t.number, t.datetime_start, t.datetime_complete, v.value"
        " FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0"
        " WHERE t.study_id = :sid AND t.state = 'COMPLETE' AND v.value_type = 'FINITE'"
        f" ORDER BY v.value {order}, t.number ASC LIMIT 1"
    ).columns(
        sa.column("trial_id", sa.Integer),
        sa.column("number", sa.Integer),
        sa.column("datetime_start", sa.DateTime),
        sa.column("datetime_complete", sa.DateTime),
        sa.column("value", sa.Float),
    )


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _study_row(conn: Connection, name: str) -> tuple[int, tuple[str, ...]]:
    rows = conn.execute(
        sa.text(
            "SELECT s.study_id, d.direction FROM studies s"
            " LEFT JOIN study_directions d ON d.study_id = s.study_id"
            " WHERE s.study_name = :name ORDER BY d.objective"
        ),
        {"name": name},
    ).all()
    if not rows:
        names = [r[0] for r in conn.execute(sa.text("SELECT study_name FROM studies LIMIT 21"))]
        shown = ", ".join(sorted(names)[:20]) + (", ..." if len(names) > 20 else "")
        raise StudyctlError(f"no study {name!r}; studies there: {shown or 'none'}")
    directions = tuple(
        str(d).lower().removeprefix("studydirection.") for _sid, d in rows if d is not None
    )
    return int(rows[0][0]), directions


def _params(conn: Connection, trial_id: int) -> dict[str, Any]:
    """The trial's parameters as its objective saw them (without Optuna for the kinds
    `trial_rows.stored_param` knows)."""
    out: dict[str, Any] = {}
    for name, value, dist in conn.execute(
        sa.text(
            "SELECT param_name, param_value, distribution_json FROM trial_params"
            " WHERE trial_id = :tid ORDER BY param_id"
        ),
        {"tid": trial_id},
    ):
        try:
            out[name] = stored_param(value, dist)
        except Exception:  # an unknown distribution: show the stored number
            out[name] = value
    return out


def _notes(conn: Connection, trial_ids: list[int]) -> dict[int, str]:
    """A short note per trial: why it failed, where it was pruned, which trial it retries."""
    if not trial_ids:
        return {}
    notes: dict[int, str] = {}
    retries: dict[int, int] = {}
    # Optuna's `failed_trial` holds the original's trial_id; the note shows its number.
    rows = conn.execute(
        sa.text(
            "SELECT trial_id, key, value_json, NULL FROM trial_user_attributes"
            " WHERE trial_id IN :ids AND key IN ('fail_reason', 'pruned_at_epoch')"
            " UNION ALL"
            " SELECT a.trial_id, a.key, NULL, o.number FROM trial_system_attributes a"
            " JOIN trials o ON o.trial_id = CAST(a.value_json AS INTEGER)"
            " WHERE a.trial_id IN :ids AND a.key = 'failed_trial'"
        ).bindparams(sa.bindparam("ids", expanding=True)),
        {"ids": trial_ids},
    )
    for tid, key, value_json, original in rows:
        if key == "failed_trial":
            retries[tid] = int(original)
            continue
        value = json.loads(value_json)
        if value is not None:
            notes[tid] = str(value) if key == "fail_reason" else f"pruned at epoch {value}"
    for tid, original in retries.items():
        notes[tid] = f"retry of #{original}" + (f"; {notes[tid]}" if tid in notes else "")
    return notes


def _values(conn: Connection, trial_ids: list[int]) -> dict[int, tuple[float, ...]]:
    if not trial_ids:
        return {}
    rows = conn.execute(
        sa.text(
            "SELECT trial_id, objective, value, value_type FROM trial_values"
            " WHERE trial_id IN :ids ORDER BY trial_id, objective"
        ).bindparams(sa.bindparam("ids", expanding=True)),
        {"ids": trial_ids},
    )
    out: dict[int, list[float]] = {}
    for tid, _objective, value, value_type in rows:
        kind = str(value_type).upper()
        if "INF_POS" in kind:
            value = math.inf
        elif "INF_NEG" in kind:
            value = -math.inf
        out.setdefault(tid, []).append(float(value))
    return {k: tuple(v) for k, v in out.items()}


def _workers(
    conn: Connection, name: str, now: datetime, stale_after: float, epochs: dict[int, int]
) -> tuple[WorkerView, ...]:
    t = db.workers_table
    rows = conn.execute(
        sa.select(t)
        .where(t.c.study_name == name)
        .order_by(
            sa.case((t.c.state == db.WORKER_RUNNING, 0), else_=1),
            t.c.heartbeat_at.desc(),
        )
        .limit(MAX_WORKERS_SHOWN)
    ).mappings()
    out = []
    for w in rows:
        age = max(0.0, (now - w["heartbeat_at"]).total_seconds())
        state = w["state"]
        if state == db.WORKER_RUNNING and age >= stale_after:
            state = "dead"
        current = w["current_trial"] if state == db.WORKER_RUNNING else None
        out.append(
            WorkerView(
                worker_id=w["worker_id"],
                host=w["host"],
                gpus=w["gpus"] or "",
                state=state,
                heartbeat_age_s=age,
                trials_done=int(w["trials_done"] or 0),
                current_trial=current,
                epoch=None if current is None else epochs.get(current),
            )
        )
    return tuple(out)


def _eta(conn: Connection, sid: int, remaining: int | None, parallel: int) -> float | None:
    if not remaining:
        return 0.0 if remaining == 0 else None
    durations = [
        d
        for d in (
            _seconds(s, e)
            for s, e in conn.execute(_FINISHED_TIMES_SQL, {"sid": sid, "n": ETA_WINDOW})
        )
        if d is not None
    ]
    if not durations:
        return None
    return sum(durations) / len(durations) * remaining / max(1, parallel)


def take_snapshot(engine: Engine, name: str, *, stale_after: float | None = None) -> WatchSnapshot:
    """One refresh of the watch: a fixed handful of bounded queries in one transaction.

    `stale_after` (seconds) marks a running worker dead; default: the study's
    `[worker] grace_period`.
    """
    with db.transaction(engine) as conn:
        sid, directions = _study_row(conn, name)
        record = db.get_study_record(conn, name)
        spec = json.loads(record["spec_json"]) if record else {}
        n_trials = record["n_trials"] if record else None
        grace = float(
            stale_after
            if stale_after is not None
            else spec.get("worker", {}).get("grace_period", 120)
        )
        counts = dict.fromkeys(_STATES, 0)
        for state, n in conn.execute(_COUNTS_SQL, {"sid": sid}):
            counts[str(state).upper().removeprefix("TRIALSTATE.")] = int(n)
        retries, first_start = conn.execute(_SCALARS_SQL, {"sid": sid}).one()
        epochs = {
            int(number): int(step) + 1
            for number, step in conn.execute(_EPOCHS_SQL, {"sid": sid})
            if step is not None
        }
        now = db.db_utcnow(conn)
        workers = _workers(conn, name, now, grace, epochs)
        recent_rows = list(conn.execute(_RECENT_SQL, {"sid": sid, "n": RECENT_TRIALS}))
        best_row = None
        if len(directions) == 1:
            best_row = conn.execute(_best_sql(directions[0]), {"sid": sid}).first()
        ids = [r[0] for r in recent_rows] + ([best_row[0]] if best_row is not None else [])
        values = _values(conn, ids)
        notes = _notes(conn, [r[0] for r in recent_rows])
        best_params = _params(conn, best_row[0]) if best_row is not None else {}
        finished = counts["COMPLETE"] + counts["PRUNED"]
        remaining = None if n_trials is None else max(0, n_trials - finished)
        parallel = sum(1 for w in workers if w.state == db.WORKER_RUNNING) or counts["RUNNING"]
        eta = _eta(conn, sid, remaining, parallel)
    trial_now = utc_now()  # trial times are naive UTC (`times`)
    recent = tuple(
        TrialView(
            number=int(number),
            state=str(state).upper().removeprefix("TRIALSTATE."),
            values=values.get(tid),
            duration_s=_seconds(start, complete or (trial_now if start else None)),
            note=notes.get(tid),
        )
        for tid, number, state, start, complete in recent_rows
    )
    best = None
    if best_row is not None:
        tid, number, start, complete, _value = best_row
        best = TrialView(
            number=int(number),
            state="COMPLETE",
            values=values.get(tid),
            duration_s=_seconds(start, complete),
        )
    return WatchSnapshot(
        study=name,
        directions=directions,
        metrics=tuple(spec.get("metrics", ())),
        n_trials=n_trials,
        epochs=spec.get("training", {}).get("epochs"),
        counts=counts,
        retries=int(retries or 0),
        best=best,
        best_params=best_params,
        workers=workers,
        recent=recent,
        # Trial times come from the clock of the process that ran them, as UTC.
        elapsed_s=_seconds(first_start, trial_now),
        eta_s=eta,
    )
