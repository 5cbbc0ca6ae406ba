"""Storage: URL precedence, masked passwords, clear errors, WAL, atomic trial transitions
and the budget claims that keep n_trials a study-wide total."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from studyctl import signals
from studyctl.errors import StorageError, WorkerInterrupted
from studyctl.storage import (
    StudyctlStorage,
    enable_heartbeat,
    mask_url,
    open_storage,
    resolve_storage_url,
)
from studyctl.storage import tables as db
from studyctl.storage.frozen_trial import read_frozen_trials
from studyctl.storage.reader import as_reader, open_reader
from studyctl.storage.shown_trials import read_shown_trials


def test_storage_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_storage_url(None, None) == "sqlite:///studyctl.db"
    assert resolve_storage_url(None, "sqlite:///spec.db") == "sqlite:///spec.db"
    monkeypatch.setenv("STUDYCTL_STORAGE", "sqlite:///env.db")
    assert resolve_storage_url(None, "sqlite:///spec.db") == "sqlite:///env.db"
    assert resolve_storage_url("sqlite:///cli.db", "sqlite:///spec.db") == "sqlite:///cli.db"


def test_mask_url_hides_password() -> None:
    assert mask_url("postgresql+psycopg://bob:s3cret@db:5432/hpo") == (
        "postgresql+psycopg://bob:***@db:5432/hpo"
    )
    assert "s3cret" not in mask_url("postgresql+psycopg://bob:s3cret@db:bad-port/hpo")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("not a url", "malformed"),
        ("postgres://u:pw@127.0.0.1/x", "unsupported database 'postgres'"),
        ("postgresql+psycopq://u:pw@127.0.0.1/x", "unknown database driver"),
        ("mysql+nosuchdriver://u:pw@127.0.0.1/x", "unsupported database"),
        ("postgresql+psycopg://u:topsecret@127.0.0.1:1/x", "cannot connect"),
    ],
)
def test_storage_errors_are_one_line_without_password(url: str, words: str) -> None:
    with pytest.raises(StorageError) as info:
        open_storage(url)
    message = str(info.value)
    assert words in message
    assert "topsecret" not in message and "\n" not in message


def test_sqlite_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        open_storage(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    assert not (tmp_path / "no").exists()


def test_sqlite_is_wal_and_has_studyctl_tables(sqlite_url: str, tmp_path: Path) -> None:
    open_storage(sqlite_url)
    conn = sqlite3.connect(tmp_path / "studies.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"studyctl_studies", "studyctl_workers", "studyctl_claims", "trials"} <= tables


def test_waiting_trial_is_taken_by_exactly_one_process(storage_url: str) -> None:
    """Two storage objects (two engines, as two processes have) race for one WAITING trial."""
    a = StudyctlStorage(storage_url)
    b = StudyctlStorage(storage_url)
    study = optuna.create_study(study_name="race", storage=a)
    study.enqueue_trial({"x": 1.0})
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    assert a.set_trial_state_values(waiting._trial_id, TrialState.RUNNING) is True
    assert b.set_trial_state_values(waiting._trial_id, TrialState.RUNNING) is False
    assert b.set_trial_state_values(waiting._trial_id, TrialState.COMPLETE, [1.0]) is True
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        a.set_trial_state_values(waiting._trial_id, TrialState.FAIL)
    assert study.trials[0].value == 1.0


def _new_budget_study(storage: StudyctlStorage, name: str, n_trials: int) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage)
    with db.transaction(storage.engine) as conn:
        db.upsert_study_record(conn, name, n_trials, "{}")
        db.insert_worker(conn, worker_id="w1", study_name=name, host="h", pid=1, gpus="")
    return study


def _claim(
    storage: StudyctlStorage, study: optuna.Study, n_trials: int, stale_after: float = 60.0
) -> int | None:
    return storage.control.try_claim(
        study_name=study.study_name,
        study_id=study._study_id,
        worker_id="w1",
        n_trials=n_trials,
        stale_after=stale_after,
    )


def test_claims_never_exceed_budget(storage_url: str) -> None:
    storage = open_storage(storage_url)
    study = _new_budget_study(storage, "budget", 3)
    claims = [_claim(storage, study, 3) for _ in range(5)]
    assert [c is not None for c in claims] == [True, True, True, False, False]
    first, second = claims[0], claims[1]
    assert first is not None and second is not None
    # A finished trial keeps its slot; a failed one frees it.
    done = study.ask()
    storage.control.attach_claim(first, done._trial_id)
    study.tell(done, 1.0)
    storage.control.release_claim(first)
    assert _claim(storage, study, 3) is None
    failed = study.ask()
    storage.control.attach_claim(second, failed._trial_id)
    study.tell(failed, state=TrialState.FAIL)
    assert _claim(storage, study, 3) is not None


def test_claims_of_a_dead_worker_expire(storage_url: str) -> None:
    storage = open_storage(storage_url)
    study = _new_budget_study(storage, "dead", 1)
    assert _claim(storage, study, 1) is not None
    assert _claim(storage, study, 1) is None
    # Worker w1's last heartbeat is older than the staleness limit: its claim lapses.
    assert _claim(storage, study, 1, stale_after=-1.0) is not None


def test_stale_retry_keeps_params_and_learning_curve(storage_url: str) -> None:
    storage = open_storage(storage_url)
    enable_heartbeat(storage, interval=1, grace_period=2, max_retries=1)
    study = optuna.create_study(study_name="retry", storage=storage)
    trial = study.ask()
    trial.suggest_float("a", 0, 1)
    trial.report(1.0, 0)
    trial.report(0.5, 1)
    callback = storage.heartbeat_stale_trial_callback
    assert callback is not None
    callback(study, storage.get_trial(trial._trial_id))
    retry = study.get_trials(states=(TrialState.WAITING,))[0]
    assert retry.params == trial.params
    assert retry.intermediate_values == {0: 1.0, 1: 0.5}
    assert retry.system_attrs["failed_trial"] == trial.number


def test_trials_of_lost_workers_are_failed_and_retried_once(storage_url: str) -> None:
    """studyctl's own staleness rule (the one behind the gRPC proxy): a RUNNING trial whose
    worker's heartbeat is too old is failed and queued again, exactly once however many
    sweeps race; a live worker's trial is left alone."""
    storage = open_storage(storage_url)
    study = _new_budget_study(storage, "lost", 4)
    with db.transaction(storage.engine) as conn:
        db.insert_worker(conn, worker_id="w2", study_name="lost", host="h", pid=2, gpus="")
    trials = {}
    for worker in ("w1", "w2"):
        claim = storage.control.try_claim(
            study_name="lost",
            study_id=study._study_id,
            worker_id=worker,
            n_trials=4,
            stale_after=60.0,
        )
        assert claim is not None
        trial = study.ask()
        trial.suggest_float("a", 0, 1)
        trial.report(0.7, 0)
        storage.control.attach_claim(claim, trial._trial_id)
        trials[worker] = trial
    with db.transaction(storage.engine) as conn:  # w1 stopped beating a minute ago
        db.update_worker(conn, "w1", heartbeat_at=db.utcnow() - timedelta(seconds=60))

    def sweep(worker_id: str | None = None) -> list[int]:
        return storage.control.fail_lost_trials(
            study_name="lost", grace_s=30.0, max_retries=2, worker_id=worker_id
        )

    assert sweep() == [trials["w1"].number]
    assert sweep() == []  # already failed: no second retry
    assert study.trials[trials["w1"].number].state == TrialState.FAIL
    assert study.trials[trials["w2"].number].state == TrialState.RUNNING
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.params == trials["w1"].params
    assert retry.intermediate_values == {0: 0.7}
    assert retry.system_attrs["failed_trial"] == trials["w1"].number
    # The worker_id form: w2's trial process died while w2 itself still beats.
    assert sweep(worker_id="w2") == [trials["w2"].number]
    assert study.trials[trials["w2"].number].state == TrialState.FAIL


def test_a_sweep_that_loses_to_the_trials_end_leaves_no_reason(storage_url: str) -> None:
    """A lost-trial sweep writes its `fail_reason` in the transaction that fails the
    trial: a worker that ends its trial between the sweep's query and that transaction
    keeps a COMPLETE trial with no "lost" reason (the reason used to be written first)."""
    storage = open_storage(storage_url)
    study = _new_budget_study(storage, "late", 4)
    claim = storage.control.try_claim(
        study_name="late", study_id=study._study_id, worker_id="w1", n_trials=4, stale_after=60.0
    )
    assert claim is not None
    late, lost = study.ask(), study.ask()
    storage.control.attach_claim(claim, late._trial_id)
    claim = storage.control.try_claim(
        study_name="late", study_id=study._study_id, worker_id="w1", n_trials=4, stale_after=60.0
    )
    assert claim is not None
    storage.control.attach_claim(claim, lost._trial_id)
    with db.transaction(storage.engine) as conn:  # w1 stopped beating a minute ago
        db.update_worker(conn, "w1", heartbeat_at=db.utcnow() - timedelta(seconds=60))
    transition = storage.set_trial_state_values

    def ended_first(trial_id: int, state: TrialState, values: Any = None) -> bool:
        if trial_id == late._trial_id:  # the worker's own end commits first
            with db.transaction(storage.engine) as conn:
                conn.execute(
                    sa.text("UPDATE trials SET state = 'COMPLETE' WHERE trial_id = :t"),
                    {"t": trial_id},
                )
        return transition(trial_id, state, values)

    storage.set_trial_state_values = ended_first  # type: ignore[method-assign]
    try:
        failed = storage.control.fail_lost_trials(study_name="late", grace_s=30.0, max_retries=1)
    finally:
        del storage.set_trial_state_values
    assert failed == [lost.number]
    assert "fail_reason" not in storage.get_trial(late._trial_id).user_attrs
    assert storage.get_trial(late._trial_id).state == TrialState.COMPLETE
    reason = storage.get_trial(lost._trial_id).user_attrs["fail_reason"]
    assert reason.startswith("lost: its worker's heartbeat stopped")
    # Optuna's stale-trial sweep: the reason is kept for the transition that fails it.
    stale = storage.get_trial(storage.create_new_trial(study._study_id))  # not the retry
    storage.heartbeat_interval, storage.grace_period = 1, 2
    older = (
        "heartbeat - INTERVAL '60 seconds'"
        if storage.engine.dialect.name == "postgresql"
        else "datetime(heartbeat, '-60 seconds')"
    )
    storage.record_heartbeat(stale._trial_id)
    with db.transaction(storage.engine) as conn:
        conn.execute(
            sa.text(f"UPDATE trial_heartbeats SET heartbeat = {older} WHERE trial_id = :t"),
            {"t": stale._trial_id},
        )
    assert storage._get_stale_trial_ids(study._study_id) == [stale._trial_id]
    assert "fail_reason" not in storage.get_trial(stale._trial_id).user_attrs
    optuna.storages.fail_stale_trials(study)
    failed_stale = storage.get_trial(stale._trial_id)
    assert failed_stale.state == TrialState.FAIL
    assert failed_stale.user_attrs["fail_reason"].startswith("lost: no trial heartbeat")


def test_get_trial_reads_what_optunas_reads(storage_url: str) -> None:
    """StudyctlStorage's two-query `get_trial` returns Optuna's FrozenTrial, field for field
    and in the same order: values (multi-objective, infinite), every kind of parameter,
    attributes, intermediate values (NaN, infinite), a trial with none of them."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )
    from optuna.storages import RDBStorage

    storage = open_storage(storage_url)
    sid = storage.create_new_study(
        [optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MAXIMIZE], "read"
    )
    full = storage.create_new_trial(sid)
    space = {
        "lr": (FloatDistribution(1e-4, 1.0, log=True), 0.01),
        "units": (IntDistribution(1, 64, step=3), 7.0),
        "act": (CategoricalDistribution([None, "relu", 1.5]), 1.0),
    }
    for name, (distribution, internal) in space.items():
        storage.set_trial_param(full, name, internal, distribution)
    storage.set_trial_user_attr(full, "worker", {"host": "h", "pid": 1})
    storage.set_trial_user_attr(full, "note", "ü")
    storage.set_trial_system_attr(full, "retry_history", [0, 1])
    for step, value in enumerate((0.5, float("nan"), float("inf"), float("-inf"))):
        storage.set_trial_intermediate_value(full, step, value)
    storage.set_trial_state_values(full, TrialState.COMPLETE, [1.25, float("-inf")])
    bare = storage.create_new_trial(sid)

    def fields(t: optuna.trial.FrozenTrial) -> str:
        """Every field; parameters in their order (Optuna's, by id), attributes and steps
        sorted (Optuna leaves their order to the database); NaN equal to NaN."""
        return repr(
            (
                t.number,
                t.state,
                t.values,
                t.datetime_start,
                t.datetime_complete,
                list(t.params.items()),
                list(t.distributions.items()),
                sorted(t.user_attrs.items()),
                sorted(t.system_attrs.items()),
                sorted(t.intermediate_values.items()),
                t._trial_id,
            )
        )

    for trial_id in (full, bare):
        assert fields(storage.get_trial(trial_id)) == fields(
            RDBStorage.get_trial(storage, trial_id)
        )
    assert storage.get_trial(full).params == {"lr": 0.01, "units": 7, "act": "relu"}
    with pytest.raises(KeyError):
        storage.get_trial(bare + 100)
    # A trial just created is read back from what its creation returned (`study.ask` reads
    # it at once): the same as Optuna's read of it.
    fresh = storage.create_new_trial(sid)
    assert fields(storage.get_trial(fresh)) == fields(RDBStorage.get_trial(storage, fresh))
    # ... but not once it was written to: then it is read.
    written = storage.create_new_trial(sid)
    storage.set_trial_param(written, "lr", 0.5, space["lr"][0])
    assert storage.get_trial(written).params == {"lr": 0.5}
    # Many trials in two queries (a report's or a dashboard's window) as Optuna reads them.
    other = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "other")
    storage.create_new_trial(other)  # another study's trial inside the id range: left out
    last = storage.create_new_trial(sid)
    with storage.engine.connect() as conn:
        for after in (-1, full, bare):
            ours = read_frozen_trials(conn, sid, after)
            optunas = RDBStorage._get_trials(storage, sid, None, set(), after)
            assert [fields(t) for t in ours] == [fields(t) for t in optunas]
            assert [t._trial_id for t in ours][-1] == last

    def drawn(t: optuna.trial.FrozenTrial) -> str:
        """What a report reads of a trial: all but its attributes and intermediate values."""
        return fields(
            optuna.trial.FrozenTrial(
                number=t.number,
                state=t.state,
                value=None,
                values=t.values,
                datetime_start=t.datetime_start,
                datetime_complete=t.datetime_complete,
                params=t.params,
                distributions=t.distributions,
                user_attrs={},
                system_attrs={},
                intermediate_values={},
                trial_id=t._trial_id,
            )
        )

    # The report's trials, on the driver's own connection (`open_reader`, the schemas being
    # current) and on SQLAlchemy's (a storage's reader).
    storage.set_trial_state_values(bare, TrialState.FAIL)
    plain_reader = open_reader(storage_url)
    for reader in (plain_reader, as_reader(storage)):
        for after in (-1, full, bare):
            shown, took = reader.read(lambda conn: read_shown_trials(conn, sid, after))  # noqa: B023
            optunas = RDBStorage._get_trials(storage, sid, None, set(), after)
            assert [drawn(t) for t in shown] == [drawn(t) for t in optunas]
            assert took == {
                t._trial_id: t.duration.total_seconds() for t in optunas if t.duration is not None
            }
            if after == -1:  # the finished trials have durations; running ones have none
                assert {full, bare} <= set(took) and fresh not in took
    plain_reader.close()


def test_a_window_read_skips_a_trial_committed_between_its_two_queries(storage_url: str) -> None:
    """`read_frozen_trials` reads the trials, then their child rows; another process's trial
    committed in between (READ COMMITTED: each statement sees the latest commits) is left
    for the next read instead of failing this one."""
    from optuna.distributions import FloatDistribution
    from sqlalchemy import event

    storage = open_storage(storage_url)
    sid = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "window")
    first = storage.create_new_trial(sid)
    storage.set_trial_param(first, "x", 0.5, FloatDistribution(0, 1))
    other = optuna.storages.RDBStorage(storage_url)  # another process's engine
    added: list[int] = []

    def before(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "UNION ALL" in statement and not added:
            added.append(other.create_new_trial(sid))
            other.set_trial_param(added[0], "x", 0.25, FloatDistribution(0, 1))

    try:
        with storage.engine.connect() as conn:
            event.listen(conn, "before_cursor_execute", before)
            trials = read_frozen_trials(conn, sid, -1)
    finally:
        other.engine.dispose()
    assert added, "the other trial was not added"
    assert [(t._trial_id, t.params) for t in trials] == [(first, {"x": 0.5})]
    with storage.engine.connect() as conn:
        assert [t._trial_id for t in read_frozen_trials(conn, sid, -1)] == [first, added[0]]


def test_the_stale_sweep_limit_is_per_study_and_off_by_default(storage_url: str) -> None:
    """With `stale_sweep_every_s` a study's stale trials are looked for at most once per
    that many seconds; another study's sweep does not count; 0 (the default) sweeps at
    every call."""
    storage = open_storage(storage_url)
    enable_heartbeat(storage, interval=1, grace_period=1, max_retries=0)
    studies = [
        storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
        for name in ("a", "b")
    ]
    stale = []
    for sid in studies:
        stale.append(storage.create_new_trial(sid))
        storage.record_heartbeat(stale[-1])
    time.sleep(2.5)  # older than the grace period (SQLite stamps heartbeats to the second)
    assert storage._get_stale_trial_ids(studies[0]) == [stale[0]]
    storage.stale_sweep_every_s = 60
    assert storage._get_stale_trial_ids(studies[0]) == [stale[0]]
    assert storage._get_stale_trial_ids(studies[1]) == [stale[1]]
    assert storage._get_stale_trial_ids(studies[0]) == []  # within the 60 s
    storage.stale_sweep_every_s = 0
    assert storage._get_stale_trial_ids(studies[0]) == [stale[0]]


def test_a_read_left_open_by_an_interrupt_does_not_fail_the_next_write(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A stop signal raised inside the objective can land while Optuna reads through a
    pooled SQLite connection, leaving that read's statement open after the connection went
    back to the pool (Python 3.11's rollback no longer resets statements). The connection
    then holds an old snapshot, and its next write fails at once with "database is locked"
    (SQLITE_BUSY_SNAPSHOT) if anything was written since, e.g. the interrupted trial's
    own FAIL. Seen as a worker that exited 2 instead of 130 after SIGINT. The write is
    retried on a fresh connection instead."""
    storage = open_storage(sqlite_url)
    study = optuna.create_study(storage=storage, study_name="snap")
    trial_id = study.ask()._trial_id
    storage.engine.dispose()
    with storage.engine.connect() as conn:  # the pool's only connection
        left_open = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        left_open.execute("SELECT trial_id FROM trials UNION ALL SELECT 0")
        assert left_open.fetchone() is not None  # a row still to come: the read stays open
    other = sqlite3.connect(tmp_path / "studies.db")
    other.execute("UPDATE studies SET study_name = study_name")  # written since that read
    other.commit()
    other.close()

    storage.set_trial_user_attr(trial_id, "after", 1)  # through the poisoned connection
    storage.set_trial_state_values(trial_id, TrialState.FAIL)

    trial = storage.get_trial(trial_id)
    assert (trial.user_attrs, trial.state) == ({"after": 1}, TrialState.FAIL)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        left_open.fetchone()  # the connection holding the old read was dropped


def test_a_stop_signal_during_a_storage_call_in_the_objective_raises_after_it(
    storage_url: str,
) -> None:
    """Inside the objective a stop signal raises at once, but not inside a database
    operation: one arriving while the driver writes an attribute lets the write finish and
    raises as the call returns. Raised inside the driver, it rolled the write back and
    could leave a pooled connection holding an open read (see the test above)."""
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name="signal")
    trial_id = study.ask()._trial_id

    def signal_now(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "trial_user_attributes" in statement and not statement.startswith("SELECT"):
            os.kill(os.getpid(), signal.SIGTERM)

    sa.event.listen(storage.engine, "after_cursor_execute", signal_now)
    signals.reset_stop()
    try:
        with (
            signals.on_stop_signals(signals.stop_at_safe_point),
            pytest.raises(WorkerInterrupted) as raised,
            signals.interruptible(),
        ):
            storage.set_trial_user_attr(trial_id, "written", 1)
    finally:
        sa.event.remove(storage.engine, "after_cursor_execute", signal_now)
        signals.reset_stop()
    assert traceback.extract_tb(raised.tb)[-1].name == "deferred"  # raised as the call returned
    assert storage.get_trial(trial_id).user_attrs == {"written": 1}


def _signal_then(error: BaseException | None) -> Any:
    """A guarded operation that receives SIGTERM, then fails with `error` (or succeeds)."""
    tries: list[int] = []

    def operation() -> str:
        tries.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
        if error is not None:
            raise error
        return "done"

    operation.tries = tries  # type: ignore[attr-defined]
    return operation


def test_a_stop_signal_is_not_held_across_a_failing_operation() -> None:
    """A stop signal in the objective during a database operation that fails raises at
    once, in place of the error: not after an outage's retries (up to
    storage_outage_tolerance: a scheduler's SIGTERM ignored until its SIGKILL), nor as the
    error's own `StorageError`."""
    import psycopg
    from sqlalchemy import exc as sa_exc

    from studyctl.storage.outage import OutageGuard

    refused = sa_exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("refused"))
    guard = OutageGuard("postgresql://db/x", tolerance_s=30)
    signals.reset_stop()
    try:
        for error in (refused, ValueError("bad value")):
            operation = _signal_then(error)
            started = time.monotonic()
            with (
                signals.on_stop_signals(signals.stop_at_safe_point),
                pytest.raises(WorkerInterrupted),
                signals.interruptible(),
            ):
                guard.call(operation)
            assert len(operation.tries) == 1 and time.monotonic() - started < 5
            signals.reset_stop()
    finally:
        signals.reset_stop()


def test_a_fits_stop_request_does_not_raise_from_a_storage_call() -> None:
    """In a Keras fit the first signal only asks the fit to stop; the database operations
    that follow (the epoch's report, the trial's last attributes) still run."""
    from studyctl.storage.outage import OutageGuard

    guard = OutageGuard("sqlite:///x.db", tolerance_s=0)
    requested: list[int] = []
    signals.reset_stop()
    try:
        with signals.on_stop_signals(signals.stop_at_safe_point), signals.interruptible():
            with signals.safe_points(lambda: requested.append(1)):
                assert guard.call(_signal_then(None)) == "done"  # the request, during a call
                assert guard.call(lambda: "after") == "after"
            assert guard.call(lambda: "after the fit") == "after the fit"
        assert requested == [1] and signals.stop_requested() == signal.SIGTERM
    finally:
        signals.reset_stop()


def test_a_stale_snapshot_past_its_retries_is_one_error_not_an_outage() -> None:
    from sqlalchemy import exc as sa_exc

    from studyctl.storage.outage import STALE_SNAPSHOT_RETRIES, OutageGuard

    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorname = "SQLITE_BUSY_SNAPSHOT"
    error = sa_exc.OperationalError("UPDATE t", {}, locked, connection_invalidated=True)
    tries: list[int] = []

    def operation() -> None:
        tries.append(1)
        raise error

    started = time.monotonic()
    with pytest.raises(StorageError, match="database is locked") as raised:
        OutageGuard("sqlite:///x.db", tolerance_s=30).call(operation)
    assert "unreachable" not in str(raised.value)
    assert len(tries) == STALE_SNAPSHOT_RETRIES + 1 and time.monotonic() - started < 5
