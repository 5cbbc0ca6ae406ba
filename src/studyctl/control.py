"""The operations a worker needs on studyctl's own tables, behind one interface.

`SqlControl` runs them on the database (a worker with a database URL, and the storage proxy
on behalf of its clients); `studyctl.proxy.RemoteControl` sends the same calls to a
`studyctl proxy` over gRPC, so a worker behind the proxy holds no database connection.

Every argument and result is plain JSON (numbers, strings, None, lists, dicts), and every
heartbeat is stamped and compared on one clock, the database server's (`db.db_utcnow`), so
hosts whose clocks drift cannot make each other's trials look stale.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy as sa
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from studyctl import db

if TYPE_CHECKING:
    from studyctl.storage import StudyctlStorage

STATES = [s.name for s in TrialState]


# Operations a remote client may call (the proxy refuses any other name).
OPERATIONS = (
    "study_spec",
    "insert_worker",
    "update_worker",
    "worker_trials_done",
    "try_claim",
    "attach_claim",
    "release_claim",
    "release_worker_claims",
    "count_finished",
    "state_counts",
    "fail_lost_trials",
)

_UPDATABLE = {"current_trial", "trials_done", "state", "message"}

# RUNNING trials whose claim belongs to a worker that stopped beating (or to one worker).
_LOST_SQL = (
    "SELECT c.trial_id FROM studyctl_claims c "
    "JOIN trials t ON t.trial_id = c.trial_id "
    "JOIN studyctl_workers w ON w.worker_id = c.worker_id "
    "WHERE c.study_name = :name AND t.state = 'RUNNING' AND "
)


class SqlControl:
    """studyctl's operations on the database behind `storage`. Their arguments and results
    are plain JSON, so `proxy.RemoteControl` can carry each of them unchanged."""

    def __init__(self, storage: StudyctlStorage) -> None:
        self.storage = storage
        self.engine = storage.engine

    def study_spec(self, study_name: str) -> dict[str, Any] | None:
        with db.transaction(self.engine) as conn:
            record = db.get_study_record(conn, study_name)
        if record is None:
            return None
        return {"n_trials": record["n_trials"], "spec_json": record["spec_json"]}

    def insert_worker(
        self, *, worker_id: str, study_name: str, host: str, pid: int, gpus: str
    ) -> None:
        with db.transaction(self.engine) as conn:
            db.insert_worker(
                conn, worker_id=worker_id, study_name=study_name, host=host, pid=pid, gpus=gpus
            )

    def update_worker(self, worker_id: str, *, beat: bool = False, **values: Any) -> None:
        unknown = set(values) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update worker field(s) {sorted(unknown)}")
        with db.transaction(self.engine) as conn:
            if beat:
                values["heartbeat_at"] = db.db_utcnow(conn)
            db.update_worker(conn, worker_id, **values)

    def worker_trials_done(self, worker_id: str) -> int:
        with db.transaction(self.engine) as conn:
            row = db.get_worker(conn, worker_id)
        return int(row["trials_done"]) if row else 0

    def try_claim(
        self,
        *,
        study_name: str,
        study_id: int,
        worker_id: str,
        n_trials: int | None,
        stale_after: float,
    ) -> int | None:
        """Reserve one trial of the budget for `worker_id`; None when the budget is taken.

        The first statement updates the study's row, which serialises claims of one study
        on both SQLite (write lock) and PostgreSQL (row lock), so the count and the insert
        that follow cannot interleave with another worker's.
        """
        studies, claims = db.studies_table, db.claims_table
        with db.transaction(self.engine) as conn:
            conn.execute(
                sa.update(studies)
                .where(studies.c.study_name == study_name)
                .values(claim_seq=studies.c.claim_seq + 1)
            )
            if n_trials is not None:
                stale_before = db.db_utcnow(conn) - timedelta(seconds=stale_after)
                if db.count_taken(conn, study_id, study_name, stale_before) >= n_trials:
                    return None
            result = conn.execute(
                sa.insert(claims).values(
                    study_name=study_name, worker_id=worker_id, created_at=db.db_utcnow(conn)
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    def attach_claim(self, claim_id: int, trial_id: int) -> None:
        claims = db.claims_table
        with db.transaction(self.engine) as conn:
            conn.execute(
                sa.update(claims).where(claims.c.claim_id == claim_id).values(trial_id=trial_id)
            )

    def release_claim(self, claim_id: int) -> int | None:
        """Drop the claim; return the id of the trial it was attached to (if any)."""
        claims = db.claims_table
        with db.transaction(self.engine) as conn:
            trial_id = conn.execute(
                sa.select(claims.c.trial_id).where(claims.c.claim_id == claim_id)
            ).scalar_one_or_none()
            conn.execute(sa.delete(claims).where(claims.c.claim_id == claim_id))
        return None if trial_id is None else int(trial_id)

    def release_worker_claims(self, worker_id: str) -> None:
        """Drop the claims a worker's trial process left behind (it exited or crashed); a
        claim whose trial is still RUNNING stays until that trial is failed as lost."""
        with db.transaction(self.engine) as conn:
            conn.execute(
                sa.text(
                    "DELETE FROM studyctl_claims WHERE worker_id = :wid AND (trial_id IS NULL "
                    "OR trial_id NOT IN (SELECT trial_id FROM trials WHERE state = 'RUNNING'))"
                ),
                {"wid": worker_id},
            )

    def count_finished(self, study_id: int) -> int:
        with db.transaction(self.engine) as conn:
            return db.count_finished_trials(conn, study_id)

    def state_counts(self, study_id: int) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        with db.transaction(self.engine) as conn:
            rows = conn.execute(
                sa.text("SELECT state, count(*) FROM trials WHERE study_id = :sid GROUP BY state"),
                {"sid": study_id},
            )
            for state, n in rows:
                counts[str(getattr(state, "name", state))] = int(n)
        return counts

    def fail_lost_trials(
        self,
        *,
        study_name: str,
        grace_s: float,
        max_retries: int,
        worker_id: str | None = None,
    ) -> list[int]:
        """Fail the RUNNING trials whose worker is gone and queue their retries (same
        params, the original's learning curve, so they resume from its checkpoint).

        Gone means: the worker's heartbeat in ``studyctl_workers`` is older than `grace_s`,
        or, with `worker_id`, that worker's trial process exited while its trial ran. This
        is studyctl's own staleness rule; unlike Optuna's trial heartbeat it also works
        for workers behind the gRPC storage proxy, which carries no heartbeat. Each
        transition is one conditional UPDATE, so when several processes sweep at once
        exactly one fails (and retries) each trial. Returns the failed trials' numbers.
        """
        params: dict[str, Any]
        with db.transaction(self.engine) as conn:
            if worker_id is not None:
                sql, params = _LOST_SQL + "c.worker_id = :wid", {"wid": worker_id}
            else:
                stale_before = db.db_utcnow(conn) - timedelta(seconds=grace_s)
                sql, params = _LOST_SQL + "w.heartbeat_at < :before", {"before": stale_before}
            ids = [int(r[0]) for r in conn.execute(sa.text(sql), {"name": study_name, **params})]
        if not ids:
            return []
        study = optuna.load_study(
            study_name=study_name, storage=self.storage, sampler=optuna.samplers.RandomSampler()
        )
        retry = RetryHeartbeatStaleTrialCallback(
            max_retry=max_retries, inherit_intermediate_values=True
        )
        failed = []
        for trial_id in ids:
            try:
                won = self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                won = False  # finished or failed by another process meanwhile
            if not won:
                continue
            trial = copy.deepcopy(self.storage.get_trial(trial_id))
            retry(study, trial)
            failed.append(trial.number)
        return failed
