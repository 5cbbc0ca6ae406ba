"""The per-trial path at scale: revisions 0004 and 0005's indexes on Optuna's trials and the
finished counter, the claim that reads no trial of the study, a new trial numbered without
counting the study, and the queued-trial pop that asks the database; on SQLite and
PostgreSQL. Structural checks (query plans, statements issued, rows they read), no
timings."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.study._tell import _tell_with_warning
from optuna.trial import TrialState, create_trial

from studyctl.storage import StudyctlStorage, close_storage, open_storage, schema
from studyctl.storage import tables as db
from studyctl.storage.frozen_trial import read_frozen_trial
from studyctl.storage.upgrade import upgrade_storage
from studyctl.storage.waiting import pop_waiting_trial_id, use_indexed_waiting_pop

INDEX = "ix_studyctl_trials_study_state"
NUMBERING_INDEX = "ix_studyctl_trials_study_trial"


def _n_finished(engine: sa.Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT n_finished FROM studyctl_studies WHERE study_name = :n"),
                {"n": name},
            ).scalar_one()
        )


def _finished_by_count(engine: sa.Engine, name: str) -> int:
    with engine.connect() as conn:
        return db.count_finished_by_name(conn, name)


def _trial_indexes(engine: sa.Engine) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(engine).get_indexes("trials")}


def _add_trials(study: optuna.Study) -> None:
    """Trials in every state: 3 COMPLETE, 2 PRUNED, 1 FAIL, 1 RUNNING, 1 WAITING."""
    for value in (1.0, 2.0, 3.0):
        study.add_trial(create_trial(value=value))
    for _ in range(2):
        study.add_trial(create_trial(state=TrialState.PRUNED))
    study.add_trial(create_trial(state=TrialState.FAIL))
    study.ask()
    study.enqueue_trial({})


def test_upgrade_from_0003_adds_index_and_counts_existing_trials(storage_url: str) -> None:
    plain = optuna.storages.RDBStorage(storage_url)  # Optuna's tables, trials written before
    study = optuna.create_study(study_name="old", storage=plain)
    _add_trials(study)
    engine = sa.create_engine(storage_url)
    schema.upgrade_studyctl(engine, "0003")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO studyctl_studies (study_name, n_trials, spec_json, created_at, "
                "updated_at, claim_seq) VALUES ('old', 20, '{}', '2026-01-01 00:00:00', "
                "'2026-01-01 00:00:00', 8)"
            )
        )
    assert INDEX not in _trial_indexes(engine)

    schema.upgrade_studyctl(engine)
    with engine.connect() as conn:
        assert schema.current_revision(conn) == schema.head_revision() == "0005"
    assert {INDEX, NUMBERING_INDEX} <= _trial_indexes(engine)
    assert _n_finished(engine, "old") == 5 == _finished_by_count(engine, "old")

    schema.downgrade_studyctl(engine, "0004")
    assert NUMBERING_INDEX not in _trial_indexes(engine)
    assert INDEX in _trial_indexes(engine)
    schema.downgrade_studyctl(engine, "0003")
    assert INDEX not in _trial_indexes(engine)
    columns = {c["name"] for c in sa.inspect(engine).get_columns("studyctl_studies")}
    assert "n_finished" not in columns
    # The downgrade left Optuna's own index and data alone.
    assert "ix_trials_study_id" in _trial_indexes(engine)
    assert len(optuna.load_study(study_name="old", storage=plain).trials) == 8
    engine.dispose()


def test_a_new_database_has_the_indexes_and_db_upgrade_restores_them(storage_url: str) -> None:
    storage = open_storage(storage_url)
    assert {INDEX, NUMBERING_INDEX} <= _trial_indexes(storage.engine)
    # As if an Optuna migration had rebuilt `trials` without them: `db upgrade` adds them back.
    with storage.engine.begin() as conn:
        conn.execute(sa.text(f"DROP INDEX {INDEX}"))
        conn.execute(sa.text(f"DROP INDEX {NUMBERING_INDEX}"))
    close_storage(storage_url)
    upgrade_storage(storage_url)
    engine = sa.create_engine(storage_url)
    assert {INDEX, NUMBERING_INDEX} <= _trial_indexes(engine)
    engine.dispose()


def _budget_study(storage: StudyctlStorage, name: str, n_trials: int) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage)
    with db.transaction(storage.engine) as conn:
        db.upsert_study_record(conn, name, n_trials, "{}")
    return study


def test_counter_follows_every_way_a_trial_finishes(storage_url: str) -> None:
    storage = open_storage(storage_url)
    study = _budget_study(storage, "counted", 100)
    _add_trials(study)  # add_trial of finished trials, ask, enqueue
    study.tell(study.ask(), 0.5)
    study.tell(study.ask(), state=TrialState.PRUNED)
    study.tell(study.ask(), state=TrialState.FAIL)
    study.enqueue_trial({})
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    # A WAITING trial finished directly (Optuna's own transition, not studyctl's).
    assert storage.set_trial_state_values(waiting._trial_id, TrialState.COMPLETE, [0.25])
    assert (
        _n_finished(storage.engine, "counted") == 8 == _finished_by_count(storage.engine, "counted")
    )
    # A record made for a study that already has trials starts from their count.
    with db.transaction(storage.engine) as conn:
        db.delete_study_records(conn, "counted")
        db.upsert_study_record(conn, "counted", 100, "{}")
    assert _n_finished(storage.engine, "counted") == 8
    with storage.engine.connect() as conn:
        assert db.count_finished_trials(conn, study._study_id) == 8


def _as_four_workers(storage_url: str, work: Callable[[int, StudyctlStorage], None]) -> None:
    """`work(index, storage)` in four threads at once, each with its own storage (its own
    engine, as each worker process has); an error in any fails the test."""
    errors: list[BaseException] = []

    def run(index: int) -> None:
        storage = StudyctlStorage(storage_url)
        try:
            work(index, storage)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            storage.engine.dispose()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors


def test_budget_is_exact_under_concurrent_claims(storage_url: str) -> None:
    """Four storages (four engines, as four workers have) claim, run and finish trials
    at once; exactly n_trials finish and the counter equals the trials' own count."""
    n_trials = 24
    first = open_storage(storage_url)
    _budget_study(first, "race", n_trials)

    def worker(index: int, storage: StudyctlStorage) -> None:
        with db.transaction(storage.engine) as conn:
            db.insert_worker(
                conn, worker_id=f"w{index}", study_name="race", host="h", pid=index, gpus=""
            )
        study = optuna.load_study(study_name="race", storage=storage)
        while True:
            claim = storage.control.try_claim(
                study_name="race",
                study_id=study._study_id,
                worker_id=f"w{index}",
                n_trials=n_trials,
                stale_after=60.0,
            )
            if claim is None:
                return
            trial = study.ask()
            storage.control.attach_claim(claim, trial._trial_id)
            # Every fifth trial fails and frees its slot for another.
            if trial.number % 5 == 4:
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, float(trial.number))
            storage.control.release_claim(claim)

    _as_four_workers(storage_url, worker)
    assert _finished_by_count(first.engine, "race") == n_trials
    assert _n_finished(first.engine, "race") == n_trials


@contextmanager
def _statements(engine: sa.Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def _plan(engine: sa.Engine, sql: str, params: dict[str, Any]) -> str:
    """The query plan of `sql`, one string (SQLite's EXPLAIN QUERY PLAN, PostgreSQL's
    EXPLAIN), with the planner told the table is large."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.execute(sa.text(f"EXPLAIN QUERY PLAN {sql}"), params).all()
            return "\n".join(str(r[-1]) for r in rows)
        conn.execute(sa.text("SET enable_seqscan = off"))
        return "\n".join(str(r[0]) for r in conn.execute(sa.text(f"EXPLAIN {sql}"), params))


def _reads_trials_of_study(plan: str) -> bool:
    """Whether a plan visits `trials` other than by primary key (one row per claim)."""
    lines = [line for line in plan.splitlines() if "trials" in line and "trial_id" not in line]
    by_study = "ix_trials_study_id" in plan or "SCAN trials" in plan
    return by_study or any("Seq Scan on trials" in line for line in lines)


def test_a_claim_reads_no_trial_of_the_study_but_its_own(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    study = _budget_study(storage, "plan", 10)
    for value in range(5):
        study.add_trial(create_trial(value=float(value)))
    with db.transaction(storage.engine) as conn:
        db.insert_worker(conn, worker_id="w1", study_name="plan", host="h", pid=1, gpus="")
    with _statements(storage.engine) as seen:
        claim = storage.control.try_claim(
            study_name="plan",
            study_id=study._study_id,
            worker_id="w1",
            n_trials=10,
            stale_after=60.0,
        )
    assert claim is not None
    reading = [s for s in seen if "trials" in s]
    assert reading, seen  # the live claims' trials are read (by primary key)
    params = {"sid": study._study_id, "name": "plan", "stale_before": db.utcnow()}
    for sql in reading:
        plan = _plan(storage.engine, sql.replace("?", ":x"), {**params, "x": 0})
        assert not _reads_trials_of_study(plan), (sql, plan)


def test_running_and_waiting_queries_use_the_index(storage_url: str) -> None:
    storage = open_storage(storage_url)
    study = _budget_study(storage, "idx", 10)
    sid = study._study_id
    waiting_plan = _plan(storage.engine, db._WAITING_SQL, {"sid": sid})
    assert INDEX in waiting_plan, waiting_plan
    # Optuna's heartbeat sweep for RUNNING trials, as Optuna writes it.
    running = (
        "SELECT trial_id FROM trials WHERE trials.state = 'RUNNING' AND trials.study_id = :sid"
    )
    assert INDEX in _plan(storage.engine, running, {"sid": sid})


def test_the_loop_takes_queued_trials_without_filtering_every_cached_trial(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(storage_url)
    study = _budget_study(storage, "queue", 10)
    for value in range(3):
        study.add_trial(create_trial(value=float(value)))
    study.enqueue_trial({"x": 0.25})
    study.enqueue_trial({"x": 0.75})
    use_indexed_waiting_pop(study)
    filtered: list[Any] = []
    original = _CachedStorage.get_all_trials

    def counting(self: _CachedStorage, *args: Any, **kwargs: Any) -> Any:
        filtered.append(kwargs.get("states"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_CachedStorage, "get_all_trials", counting)
    first = study.ask()
    assert first.suggest_float("x", 0, 1) == 0.25  # the oldest queued trial, its params
    assert first.number == 3
    assert (TrialState.WAITING,) not in filtered
    # Another process already took the other queued trial: it is skipped, a new one made.
    other = StudyctlStorage(storage_url)
    queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))[0]
    assert other.set_trial_state_values(queued._trial_id, TrialState.RUNNING)
    other.engine.dispose()
    assert pop_waiting_trial_id(study) is None
    assert study.ask().number == 5


def _insert_finished_trials(engine: sa.Engine, study_id: int, n: int) -> None:
    """`n` more COMPLETE trials in the study, numbered on from its last, in one insert."""
    with engine.begin() as conn:
        first = conn.execute(
            sa.text("SELECT count(*) FROM trials WHERE study_id = :sid"), {"sid": study_id}
        ).scalar_one()
        now = db.utcnow()
        conn.execute(
            sa.text(
                "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
                "VALUES (:number, :sid, 'COMPLETE', :now, :now)"
            ),
            [{"number": first + i, "sid": study_id, "now": now} for i in range(n)],
        )


def _plan_rows(node: dict[str, Any]) -> int:
    """Rows a PostgreSQL plan node and those under it produced or filtered out."""
    rows = int(node.get("Actual Rows", 0)) * int(node.get("Actual Loops", 1))
    rows += int(node.get("Rows Removed by Filter", 0)) + int(
        node.get("Rows Removed by Index Recheck", 0)
    )
    return rows + sum(_plan_rows(child) for child in node.get("Plans", ()))


def _work_of_reads(engine: sa.Engine, statements: list[tuple[str, Any]]) -> int:
    """The work of replaying the SELECTs on `trials` among `statements`: SQLite's virtual
    machine steps, PostgreSQL's rows (EXPLAIN ANALYZE). Both grow with the rows read."""
    reads = [(sql, params) for sql, params in statements if "FROM trials" in sql]
    assert reads, statements
    work = 0
    if engine.dialect.name == "sqlite":
        raw = engine.raw_connection()
        try:
            steps = [0]

            def step() -> int:
                steps[0] += 1
                return 0

            raw.driver_connection.set_progress_handler(step, 1)  # type: ignore[union-attr]
            cursor = raw.cursor()
            for sql, params in reads:
                cursor.execute(sql, params).fetchall()
            raw.driver_connection.set_progress_handler(None, 1)  # type: ignore[union-attr]
            return steps[0]
        finally:
            raw.close()
    with engine.connect() as conn:
        for sql, params in reads:
            plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
            work += _plan_rows(plan.scalar_one()[0]["Plan"])
        conn.rollback()
    return work


def _work_of_a_new_trial(storage: StudyctlStorage, study_id: int) -> int:
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        seen.append((statement, parameters))

    sa.event.listen(storage.engine, "before_cursor_execute", record)
    try:
        storage.create_new_trial(study_id)
    finally:
        sa.event.remove(storage.engine, "before_cursor_execute", record)
    return _work_of_reads(storage.engine, seen)


def test_a_new_trial_is_numbered_without_reading_the_study(storage_url: str) -> None:
    """Creating a trial reads as many rows at 2,000 trials as at 20 (Optuna counts the
    study's trials to number it), and concurrent creators still number 0..n-1."""
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="numbered", storage=storage)
    sid = study._study_id
    _insert_finished_trials(storage.engine, sid, 20)
    small = _work_of_a_new_trial(storage, sid)
    _insert_finished_trials(storage.engine, sid, 2000)
    large = _work_of_a_new_trial(storage, sid)
    assert large <= small + 10, (small, large)

    # Four workers at once; one adds trials from a template (Optuna's path).
    def create(index: int, other: StudyctlStorage) -> None:
        for value in range(8):
            if index == 0:
                other.create_new_trial(sid, create_trial(value=float(value)))
            else:
                other.create_new_trial(sid)

    _as_four_workers(storage_url, create)
    numbers = [t.number for t in storage.get_all_trials(sid, deepcopy=False)]
    assert sorted(numbers) == list(range(2022 + 32))


def _stored_budget_claims(
    storage: StudyctlStorage, study: optuna.Study, name: str
) -> Callable[[], int | None]:
    """Claims of worker "w1" against the study's stored budget."""

    def claim() -> int | None:
        return storage.control.try_claim(
            study_name=name,
            study_id=study._study_id,
            worker_id="w1",
            n_trials=None,
            stale_after=60.0,
            stored_budget=True,
        )

    return claim


def test_a_claim_reads_the_stored_budget_in_its_own_transaction(storage_url: str) -> None:
    """With `stored_budget` the claim counts against the study's stored budget, read from
    the row it locks (no transaction of its own): a budget raised while workers run counts
    from the next claim, and a lowered one stops the claims."""
    storage = open_storage(storage_url)
    study = _budget_study(storage, "stored", 2)
    with db.transaction(storage.engine) as conn:
        db.insert_worker(conn, worker_id="w1", study_name="stored", host="h", pid=1, gpus="")

    claim = _stored_budget_claims(storage, study, "stored")

    def set_budget(n: int) -> None:
        with db.transaction(storage.engine) as conn:
            db.upsert_study_record(conn, "stored", n, "{}")

    with _statements(storage.engine) as seen:
        assert claim() is not None
    # The budget comes back from the UPDATE that locks the row (RETURNING), not a SELECT.
    assert not any("n_trials" in q and q.lstrip().upper().startswith("SELECT") for q in seen)
    # So does PostgreSQL's clock (the claim's time): no statement of its own.
    assert not any("clock_timestamp" in q and q.lstrip().upper().startswith("SELECT") for q in seen)
    assert claim() is not None
    assert claim() is None  # 2 live claims take the budget of 2
    set_budget(3)
    assert claim() is not None
    set_budget(1)
    assert claim() is None


def test_worker_and_duration_attrs_ride_on_the_claim_and_the_end(storage_url: str) -> None:
    """The trial's `worker` attribute is written in the claim's attach, and a deferred
    `duration_s` in the transaction that ends the trial: no commit of their own; a retry's
    inherited values are replaced; a trial another process ended keeps its attributes."""
    storage = open_storage(storage_url)
    study = _budget_study(storage, "attrs", 10)
    with db.transaction(storage.engine) as conn:
        db.insert_worker(conn, worker_id="w1", study_name="attrs", host="h", pid=1, gpus="")
    commits = 0

    def count(conn: Any) -> None:
        nonlocal commits
        commits += 1

    claim = storage.control.try_claim(
        study_name="attrs",
        study_id=study._study_id,
        worker_id="w1",
        n_trials=None,
        stale_after=60.0,
    )
    assert claim is not None
    trial = study.ask()
    storage.set_trial_user_attr(trial._trial_id, "duration_s", 99.0)  # as a retry inherits
    sa.event.listen(storage.engine, "commit", count)
    try:
        storage.control.attach_claim(
            claim,
            trial._trial_id,
            worker_id="w1",
            current_trial=trial.number,
            worker_attr={"host": "h", "pid": 1, "worker_id": "w1"},
        )
        storage.defer_trial_user_attr(trial._trial_id, "duration_s", 1.5)
        assert storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5])
    finally:
        sa.event.remove(storage.engine, "commit", count)
    assert commits == 2  # the attach, the end
    done = storage.get_trial(trial._trial_id)
    assert done.user_attrs == {
        "worker": {"host": "h", "pid": 1, "worker_id": "w1"},
        "duration_s": 1.5,
    }
    # A trial already ended elsewhere (failed as lost): its attributes stay as they were.
    other = study.ask()
    storage.set_trial_state_values(other._trial_id, TrialState.FAIL)
    with db.transaction(storage.engine) as conn:
        db.write_trial_user_attrs(conn, other._trial_id, {"worker": "late"})
    storage.defer_trial_user_attr(other._trial_id, "duration_s", 2.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(other._trial_id, TrialState.COMPLETE, [0.1])
    assert storage.get_trial(other._trial_id).user_attrs == {}


def _fresh(storage: StudyctlStorage, trial_id: int) -> optuna.trial.FrozenTrial:
    with storage.engine.connect() as conn:
        return read_frozen_trial(conn, trial_id)


def test_a_trial_this_process_just_ended_is_read_back_as_stored(storage_url: str) -> None:
    """The read that follows a trial's end in this process (the worker's, after its claim
    is released) is served from the trial as read before its end plus what the end
    stored: equal to a fresh read of the database for each way a trial ends, served once,
    and never after another write to the trial."""
    storage = open_storage(storage_url)
    study = _budget_study(storage, "ended", 10)
    ends: list[tuple[TrialState, float | None]] = [
        (TrialState.COMPLETE, 0.25),
        (TrialState.COMPLETE, float("inf")),
        (TrialState.PRUNED, None),
        (TrialState.FAIL, None),
    ]
    for state, value in ends:
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        trial.suggest_categorical("act", ["relu", "tanh"])
        trial.report(0.75, step=1)
        trial.set_user_attr("note", {"a": [1, 2]})
        storage.defer_trial_user_attr(trial._trial_id, "duration_s", 1.25)
        # The tell of Optuna's `study.optimize`: it reads the RUNNING trial, then ends it.
        _tell_with_warning(
            study=study, trial=trial, value_or_values=value, state=state, suppress_warning=True
        )
        with _statements(storage.engine) as seen:
            served = storage.get_trial(trial._trial_id)
        assert seen == [], state
        assert served == _fresh(storage, trial._trial_id), state
        assert served.state == state and served.user_attrs["duration_s"] == 1.25
        with _statements(storage.engine) as seen:  # served once: the next read asks
            assert storage.get_trial(trial._trial_id) == served
        assert seen
    # A write between the read and the end: the end's read goes to the database.
    trial = study.ask()
    running = storage.get_trial(trial._trial_id)
    assert running.state == TrialState.RUNNING
    storage.set_trial_user_attr(trial._trial_id, "late", 1)
    assert storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5])
    with _statements(storage.engine) as seen:
        assert storage.get_trial(trial._trial_id).user_attrs == {"late": 1}
    assert seen
    # Kept per thread (the proxy serves many workers from one storage): a trial ended
    # in another thread is read from the database here.
    other_thread = study.ask()

    def end_elsewhere() -> None:
        assert storage.get_trial(other_thread._trial_id).state == TrialState.RUNNING
        storage.set_trial_state_values(other_thread._trial_id, TrialState.COMPLETE, [0.75])

    worker = threading.Thread(target=end_elsewhere)
    worker.start()
    worker.join()
    with _statements(storage.engine) as seen:
        assert storage.get_trial(other_thread._trial_id).values == [0.75]
    assert seen
    # A trial another process ended first: this process's end loses, nothing is kept.
    other = study.ask()
    assert storage.get_trial(other._trial_id).state == TrialState.RUNNING
    open_storage(storage_url).control.in_transaction(
        lambda conn: conn.execute(
            sa.text("UPDATE trials SET state = 'FAIL' WHERE trial_id = :t"),
            {"t": other._trial_id},
        )
    )
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(other._trial_id, TrialState.COMPLETE, [0.1])
    assert storage.get_trial(other._trial_id).state == TrialState.FAIL


def test_a_claim_that_sees_no_queued_trial_spares_the_next_pop(storage_url: str) -> None:
    """The claim's budget count also says whether the study has a queued trial; when it
    has none, the trial that follows takes no queued-trial query. A trial queued since is
    taken by the next claim's trial."""
    storage = open_storage(storage_url)
    study = _budget_study(storage, "queue", 10)
    use_indexed_waiting_pop(study)
    with db.transaction(storage.engine) as conn:
        db.insert_worker(conn, worker_id="w1", study_name="queue", host="h", pid=1, gpus="")

    claim = _stored_budget_claims(storage, study, "queue")

    assert claim() is not None
    with _statements(storage.engine) as seen:
        assert pop_waiting_trial_id(study) is None
    assert seen == []
    with _statements(storage.engine) as seen:  # no claim since: the database is asked
        assert pop_waiting_trial_id(study) is None
    assert any("WAITING" in q for q in seen)
    study.enqueue_trial({"x": 0.5})
    queued = study.get_trials(states=(TrialState.WAITING,))[0]
    assert claim() is not None
    assert pop_waiting_trial_id(study) == queued._trial_id
    # A budget taken: no claim, and no answer kept for a pop.
    storage.control.in_transaction(lambda conn: db.upsert_study_record(conn, "queue", 0, "{}"))
    assert claim() is None
    study.enqueue_trial({"x": 0.25})
    assert pop_waiting_trial_id(study) is not None


def test_a_trial_heartbeat_is_one_statement(storage_url: str) -> None:
    """studyctl's trial heartbeat is one upsert (Optuna's takes two to four statements),
    one row per trial, on the clock Optuna's stale sweep compares with."""
    storage = open_storage(storage_url)
    study = _budget_study(storage, "beats", 10)
    trial = study.ask()
    storage.heartbeat_interval, storage.grace_period = 60, 120  # as `study.optimize` runs
    sequence = "SELECT last_value FROM trial_heartbeats_trial_heartbeat_id_seq"
    ids_taken = []
    for beat in range(3):
        with _statements(storage.engine) as seen:
            storage.record_heartbeat(trial._trial_id)
        assert len(seen) == 1
        # The first beat inserts (an upsert); the next ones update, taking no id.
        assert seen[0].lstrip().upper().startswith("INSERT" if beat == 0 else "UPDATE")
        if storage.engine.dialect.name == "postgresql":
            with storage.engine.connect() as conn:
                ids_taken.append(conn.execute(sa.text(sequence)).scalar_one())
    assert len(set(ids_taken)) <= 1
    with storage.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t"),
            {"t": trial._trial_id},
        ).scalar_one()
    assert rows == 1
    assert RDBStorage._get_stale_trial_ids(storage, study._study_id) == []
    # Beaten 10 minutes ago: Optuna's sweep finds it stale.
    older = (
        "heartbeat - INTERVAL '600 seconds'"
        if storage.engine.dialect.name == "postgresql"
        else "datetime(heartbeat, '-600 seconds')"
    )
    storage.control.in_transaction(
        lambda conn: conn.execute(
            sa.text(f"UPDATE trial_heartbeats SET heartbeat = {older} WHERE trial_id = :t"),
            {"t": trial._trial_id},
        )
    )
    assert RDBStorage._get_stale_trial_ids(storage, study._study_id) == [trial._trial_id]
    storage.record_heartbeat(trial._trial_id)  # beats again: live
    assert RDBStorage._get_stale_trial_ids(storage, study._study_id) == []
