"""The operations a worker needs on studyctl's own tables, behind one interface, `Control`.

`SqlControl` runs them on the database (a worker with a database URL, and the storage proxy
on behalf of its clients); `studyctl.storage.grpc.RemoteControl` sends the same calls to a
`studyctl proxy` over gRPC, so a worker behind the proxy holds no database connection.

Every argument and result is plain JSON (numbers, strings, None, lists, dicts), and every
heartbeat is stamped and compared on one clock, the database server's (`tables.db_utcnow`), so
hosts whose clocks drift cannot make each other's trials look stale.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from studyctl.storage import tables as db
from studyctl.storage.outage import OutageGuard, server_started_within
from studyctl.storage.urls import mask_url, scrub_spec_json

if TYPE_CHECKING:
    from optuna.storages import RDBStorage
    from sqlalchemy.engine import Connection

T = TypeVar("T")

STATES = db.STATES


_UPDATABLE = {"current_trial", "trials_done", "state", "message"}


class Control(Protocol):
    """studyctl's operations on its own tables, as a worker makes them. Arguments and
    results are plain JSON, so the gRPC implementation carries each call unchanged."""

    def study_spec(self, study_name: str) -> dict[str, Any] | None:
        """The study's budget and stored spec (``{"n_trials", "spec_json"}``), or None."""
        ...

    def insert_worker(
        self, *, worker_id: str, study_name: str, host: str, pid: int, gpus: str
    ) -> None: ...

    def update_worker(self, worker_id: str, *, beat: bool = False, **values: Any) -> None:
        """Set `values` (current_trial, trials_done, state, message); `beat` stamps the
        heartbeat on the database's clock."""
        ...

    def worker_trials_done(self, worker_id: str) -> int: ...

    def try_claim(
        self,
        *,
        study_name: str,
        study_id: int,
        worker_id: str,
        n_trials: int | None,
        stale_after: float,
        stored_budget: bool = False,
    ) -> int | None:
        """Reserve one trial of the budget (`n_trials`, or with `stored_budget` the
        study's stored one, read in the claim's transaction); None when it is taken."""
        ...

    def attach_claim(
        self,
        claim_id: int,
        trial_id: int,
        *,
        worker_id: str | None = None,
        current_trial: int | None = None,
        worker_attr: dict[str, Any] | None = None,
    ) -> None:
        """Link the claim to its trial; with `worker_id`, set that worker's current trial
        in the same transaction, and with `worker_attr` the trial's ``worker`` user
        attribute (who runs it, for `status` and the dashboard)."""
        ...

    def release_claim(
        self, claim_id: int, *, worker_id: str | None = None, trials_done: int | None = None
    ) -> int | None:
        """Drop the claim; return the id of the trial it was attached to (if any). With
        `worker_id`, when a trial was attached, set that worker's `trials_done` and clear
        its current trial in the same transaction."""
        ...

    def release_worker_claims(self, worker_id: str) -> None: ...

    def count_finished(self, study_id: int) -> int: ...

    def state_counts(self, study_id: int) -> dict[str, int]: ...

    def fail_lost_trials(
        self,
        *,
        study_name: str,
        grace_s: float,
        max_retries: int,
        worker_id: str | None = None,
        reason: str | None = None,
    ) -> list[int]:
        """Fail the RUNNING trials whose worker is gone and queue their retries; return
        the failed trials' numbers. Each gets `reason` as its `fail_reason` (a default that
        names the stopped heartbeat, or the trial process's exit, when None)."""
        ...

    def forget_trial_attrs(
        self, *, trial_id: int, user_keys: list[str], system_keys: list[str]
    ) -> None:
        """Delete attributes of a trial, finished or not, that name an artifact studyctl
        has removed (a superseded model, a removed checkpoint folder)."""
        ...


# Operations a remote client may call (the proxy refuses any other name): the protocol's.
OPERATIONS = tuple(
    name for name, member in vars(Control).items() if not name.startswith("_") and callable(member)
)


class SqlControl(Control):
    """`Control` on the database behind `storage` (every worker with a database URL, and
    the storage proxy on behalf of its clients).

    Each operation is one transaction run through the storage's `OutageGuard`: it waits
    out a database outage (up to `storage_outage_tolerance`) and is then run again whole,
    which is safe because a transaction that failed was rolled back."""

    def __init__(self, storage: RDBStorage) -> None:
        self.storage = storage
        self.engine = storage.engine
        # Studies whose last claim here saw no queued trial (`nothing_queued`).
        self._nothing_queued: set[int] = set()
        guard = getattr(storage, "outage", None)
        self.outage: OutageGuard = (
            guard if isinstance(guard, OutageGuard) else OutageGuard(mask_url(storage.url), 0)
        )

    def in_transaction(self, operation: Callable[[Connection], T]) -> T:
        """`operation(conn)` in one transaction, run again whole after a database outage."""

        def attempt() -> T:
            with db.transaction(self.engine) as conn:
                return operation(conn)

        return self.outage.call(attempt)

    def study_spec(self, study_name: str) -> dict[str, Any] | None:
        record = self.in_transaction(lambda conn: db.get_study_record(conn, study_name))
        if record is None:
            return None
        # Scrubbed again on the way out: a row written by an older studyctl may still hold
        # a password, and this answer can travel through the proxy.
        return {"n_trials": record["n_trials"], "spec_json": scrub_spec_json(record["spec_json"])}

    def insert_worker(
        self, *, worker_id: str, study_name: str, host: str, pid: int, gpus: str
    ) -> None:
        def insert(conn: Connection) -> None:
            # A retry after a commit whose answer the outage swallowed finds the row.
            if db.get_worker(conn, worker_id) is None:
                db.insert_worker(
                    conn, worker_id=worker_id, study_name=study_name, host=host, pid=pid, gpus=gpus
                )

        self.in_transaction(insert)

    def update_worker(self, worker_id: str, *, beat: bool = False, **values: Any) -> None:
        unknown = set(values) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update worker field(s) {sorted(unknown)}")

        def update(conn: Connection) -> None:
            changes = dict(values)
            if beat:
                changes["heartbeat_at"] = db.db_utcnow(conn)
            db.update_worker(conn, worker_id, **changes)

        self.in_transaction(update)

    def worker_trials_done(self, worker_id: str) -> int:
        row = self.in_transaction(lambda conn: db.get_worker(conn, worker_id))
        return int(row["trials_done"]) if row else 0

    def try_claim(
        self,
        *,
        study_name: str,
        study_id: int,
        worker_id: str,
        n_trials: int | None,
        stale_after: float,
        stored_budget: bool = False,
    ) -> int | None:
        claim = self.in_transaction(
            lambda conn: db.claim_trial(
                conn,
                study_name=study_name,
                study_id=study_id,
                worker_id=worker_id,
                n_trials=n_trials,
                stale_after=stale_after,
                stored_budget=stored_budget,
            )
        )
        if claim.claim_id is not None and claim.queued is False:
            self._nothing_queued.add(study_id)
        else:
            self._nothing_queued.discard(study_id)
        return claim.claim_id

    def nothing_queued(self, study_id: int) -> bool:
        """Whether this process's last claim of the study found no queued (WAITING) trial;
        answered once, so a later call asks the database again (`waiting.py`)."""
        if study_id in self._nothing_queued:
            self._nothing_queued.discard(study_id)
            return True
        return False

    def queue_changed(self, study_id: int) -> None:
        """This process queued a trial of the study (a stale trial's retry): ask again."""
        self._nothing_queued.discard(study_id)

    def attach_claim(
        self,
        claim_id: int,
        trial_id: int,
        *,
        worker_id: str | None = None,
        current_trial: int | None = None,
        worker_attr: dict[str, Any] | None = None,
    ) -> None:
        def attach(conn: Connection) -> None:
            db.attach_claim(conn, claim_id, trial_id)
            if worker_id is not None:
                db.update_worker(conn, worker_id, current_trial=current_trial)
            if worker_attr is not None:
                db.write_trial_user_attrs(conn, trial_id, {"worker": worker_attr})

        self.in_transaction(attach)

    def release_claim(
        self, claim_id: int, *, worker_id: str | None = None, trials_done: int | None = None
    ) -> int | None:
        def release(conn: Connection) -> int | None:
            trial_id = db.release_claim(conn, claim_id)
            if trial_id is not None and worker_id is not None:
                done = {} if trials_done is None else {"trials_done": trials_done}
                db.update_worker(conn, worker_id, current_trial=None, **done)
            return trial_id

        return self.in_transaction(release)

    def release_worker_claims(self, worker_id: str) -> None:
        """Drop the claims a worker's trial process left behind (it exited or crashed); a
        claim whose trial is still RUNNING stays until that trial is failed as lost."""
        self.in_transaction(lambda conn: db.release_idle_claims(conn, worker_id))

    def count_finished(self, study_id: int) -> int:
        return self.in_transaction(lambda conn: db.count_finished_trials(conn, study_id))

    def state_counts(self, study_id: int) -> dict[str, int]:
        return self.in_transaction(lambda conn: db.state_counts(conn, study_id))

    def sweep_paused(self, conn: Connection, grace_s: float) -> bool:
        """Whether heartbeats cannot be judged now: the database (or this process's link to
        it) came back less than `grace_s` ago, so a live worker may not have beaten since."""
        return self.outage.recently_recovered(grace_s) or server_started_within(conn, grace_s)

    def fail_lost_trials(
        self,
        *,
        study_name: str,
        grace_s: float,
        max_retries: int,
        worker_id: str | None = None,
        reason: str | None = None,
    ) -> list[int]:
        """Fail the RUNNING trials whose worker is gone and queue their retries (same
        params, the original's learning curve, so they resume from its checkpoint).

        Gone means: the worker's heartbeat in ``studyctl_workers`` is older than `grace_s`,
        or, with `worker_id`, that worker's trial process exited while its trial ran. This
        is studyctl's own staleness rule; unlike Optuna's trial heartbeat it also works
        for workers behind the gRPC storage proxy, which carries no heartbeat. Each
        transition is one conditional UPDATE, so when several processes sweep at once
        exactly one fails (and retries) each trial. No heartbeat is judged within
        `grace_s` of a database outage (`sweep_paused`). Returns the failed trials'
        numbers.
        """

        def find(conn: Connection) -> list[int]:
            if worker_id is not None:
                return db.lost_trial_ids(conn, study_name, worker_id=worker_id)
            if self.sweep_paused(conn, grace_s):
                return []
            stale_before = db.db_utcnow(conn) - timedelta(seconds=grace_s)
            return db.lost_trial_ids(conn, study_name, stale_before=stale_before)

        # Each step below (the query, each trial's transition, each retry) is retried on
        # its own; retrying the sweep whole would repeat steps that already succeeded.
        ids = self.in_transaction(find)
        if not ids:
            return []
        study = optuna.load_study(
            study_name=study_name, storage=self.storage, sampler=optuna.samplers.RandomSampler()
        )
        retry = RetryHeartbeatStaleTrialCallback(
            max_retry=max_retries, inherit_intermediate_values=True
        )
        failed = []
        if reason is None:
            reason = (
                "lost: its trial process ended while the trial ran"
                if worker_id is not None
                else f"lost: its worker's heartbeat stopped (none for {grace_s:g} s)"
            )
        # The reason rides on the transaction that fails the trial, if that wins (a
        # worker that ends its trial first leaves it without one); on another storage it
        # is written first, while the trial is RUNNING.
        defer = getattr(self.storage, "defer_trial_user_attr", None)
        for trial_id in ids:
            try:
                if defer is not None:
                    defer(trial_id, "fail_reason", reason[:1000])
                else:
                    self.storage.set_trial_user_attr(trial_id, "fail_reason", reason[:1000])
                won = self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                won = False  # finished or failed by another process meanwhile
            if not won:
                continue
            trial = copy.deepcopy(self.storage.get_trial(trial_id))
            retry(study, trial)
            failed.append(trial.number)
        return failed

    def forget_trial_attrs(
        self, *, trial_id: int, user_keys: list[str], system_keys: list[str]
    ) -> None:
        """Delete attributes of a trial that name an artifact studyctl has removed.

        Optuna refuses to change a finished trial's attributes, and a superseded best
        model is deleted after its trial finished, so this is one DELETE on Optuna's
        attribute tables (their trial_id and key columns have not changed since Optuna's
        schema v3.2.0.a). A process that cached the finished trial (Optuna's
        `_CachedStorage`, a running dashboard) shows the old attributes until it reloads.
        """
        with db.transaction(self.engine) as conn:
            db.delete_trial_attrs(conn, trial_id, user_keys=user_keys, system_keys=system_keys)
