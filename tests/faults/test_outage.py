"""The database goes away and comes back while `studyctl run SPEC --workers 2` runs, on a
throwaway PostgreSQL cluster the test starts itself (the shared server is never stopped).

* An outage shorter than `grace_period` and one longer than it: the run rides through
  (every process reconnects), finishes its exact budget, no finished trial is lost, no
  trial is failed as stale because of the outage, nothing is left RUNNING.
* An outage longer than `storage_outage_tolerance`: every process stops with one
  `error:` line; once the database is back, `resume` finishes the study, nothing lost.
* Keras trials train on while the database is away: their epoch reports wait in order and
  are delivered when it returns (each step once, no hole), pruning waits for them, and a
  retry of a trial that died during the outage re-reports them from its checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from studyctl.errors import SpecError, StorageError
from studyctl.spec import parse_spec

from ..conftest import DIGITS_DATA, STUDYCTL, run_cli, write_objectives, write_spec
from .conftest import ThrowawayPostgres, figures, finished_snapshot, wait_for

pytestmark = pytest.mark.slow

STEPPY_OBJECTIVE = """
import time

from studyctl import function_objective


@function_objective("steppy")
def steppy(trial, ctx):
    x = trial.suggest_float("x", -1, 1)
    for step in range(4):
        time.sleep(0.25)
        trial.report(x * x + 1 / (step + 1), step)
    return x * x
"""

OUTAGE_S = 10.0


def test_outage_tolerance_in_the_spec() -> None:
    base = {"name": "s", "objective": "quadratic", "n_trials": 1}
    assert parse_spec(base, "s.toml").worker.storage_outage_tolerance == 300
    spec = parse_spec({**base, "worker": {"storage_outage_tolerance": 0}}, "s.toml")
    assert spec.worker.storage_outage_tolerance == 0
    for bad, expected in ((-1, "expected a number >= 0"), ("5m", "expected an integer")):
        with pytest.raises(SpecError, match=f"worker.storage_outage_tolerance: {expected}"):
            parse_spec({**base, "worker": {"storage_outage_tolerance": bad}}, "s.toml")


def _count_finished(url: str, name: str) -> int:
    try:
        return len(finished_snapshot(url, name))
    except Exception:
        return 0


def _spec(tmp_path: Path, n_trials: int, grace: int, tolerance: int) -> Path:
    return write_spec(
        tmp_path / "outage.toml",
        f"""
        name = "outage"
        objective = "steppy"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        [worker]
        heartbeat_interval = 1
        grace_period = {grace}
        storage_outage_tolerance = {tolerance}
        """,
    )


def _wait_finished(proc: subprocess.Popen[str], url: str, n: int) -> None:
    """Wait until `n` trials have finished; fail with the run's output if it exits first."""
    done = wait_for(lambda: proc.poll() is not None or _count_finished(url, "outage") >= n, 90)
    if proc.poll() is not None:
        out, _ = proc.communicate()
        pytest.fail(f"the run exited ({proc.returncode}) before the outage: {out[-3000:]}")
    assert done, "no trial finished"


def _start_run(tmp_path: Path, spec: Path, url: str, objectives: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("STUDYCTL_STORAGE", None)
    return subprocess.Popen(
        [
            *STUDYCTL,
            "run",
            str(spec),
            "--storage",
            url,
            "--objectives-dir",
            str(objectives),
            "--workers",
            "1",
            "--quiet",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("grace", [30, 4], ids=["shorter-than-grace", "longer-than-grace"])
def test_run_rides_through_a_database_outage(
    tmp_path: Path, throwaway_postgres: ThrowawayPostgres, grace: int
) -> None:
    objectives = write_objectives(tmp_path / "objectives", STEPPY_OBJECTIVE, "steppy.py")
    url = throwaway_postgres.create_database("outage")
    n_trials = 24
    spec = _spec(tmp_path, n_trials, grace, tolerance=120)
    proc = _start_run(tmp_path, spec, url, objectives)
    try:
        _wait_finished(proc, url, 4)
        before = finished_snapshot(url, "outage")
        throwaway_postgres.stop()
        time.sleep(OUTAGE_S)
        throwaway_postgres.start()
        back = time.monotonic()
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(
        f"outage {OUTAGE_S:.0f}s (grace {grace}s): run finished {time.monotonic() - back:.1f}s "
        "after the database returned"
    )
    assert "Traceback" not in out, out[-4000:]
    assert proc.returncode == 0, out[-4000:]
    result = figures(
        f"database outage {OUTAGE_S:.0f}s, grace_period {grace}s", url, "outage", n_trials, before
    )
    result.assert_nothing_lost()
    # No live trial was failed as stale because the database was away.
    assert result.failed == 0, out[-4000:]


def test_outage_longer_than_the_tolerance_stops_cleanly(
    tmp_path: Path, throwaway_postgres: ThrowawayPostgres
) -> None:
    objectives = write_objectives(tmp_path / "objectives", STEPPY_OBJECTIVE, "steppy.py")
    url = throwaway_postgres.create_database("outage")
    n_trials = 16
    spec = _spec(tmp_path, n_trials, grace=4, tolerance=5)
    proc = _start_run(tmp_path, spec, url, objectives)
    try:
        _wait_finished(proc, url, 3)
        before = finished_snapshot(url, "outage")
        throwaway_postgres.stop()
        down = time.monotonic()
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        throwaway_postgres.start()
    print(f"outage past a 5s tolerance: run stopped {time.monotonic() - down:.1f}s after")
    assert "Traceback" not in out, out[-4000:]
    assert proc.returncode == 2, out[-4000:]
    errors = [line for line in out.splitlines() if "error:" in line]
    assert errors and all("unreachable" in line for line in errors), out[-4000:]
    resumed = run_cli(
        [
            "resume",
            "outage",
            "--storage",
            url,
            "--objectives-dir",
            str(objectives),
            "-q",
            "--workers",
            "2",
        ],
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    figures(
        "database outage past the tolerance, then resume", url, "outage", n_trials, before
    ).assert_nothing_lost()


# --- Keras trials through an outage -------------------------------------------------


def _keras_reporter(trial: Any, checkpoint: Path) -> Any:
    """studyctl's epoch callback on a real (unfitted) Keras model, as `fit` starts it."""
    import keras

    from studyctl.training.callbacks import make_epoch_callback

    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    callback = make_epoch_callback(trial, ("val_loss",), True, checkpoint=checkpoint)
    model.stop_training = False  # as Model.fit sets it before the first epoch
    callback.set_model(model)
    callback.on_train_begin()
    return callback


def _reports_study(throwaway_postgres: ThrowawayPostgres, name: str) -> tuple[Any, Any]:
    """A study on the throwaway cluster, opened as a trial process opens it (a 5 s
    tolerance), with one completed trial the median pruner compares against (from the
    second epoch on)."""
    import optuna

    from studyctl.storage import open_storage

    storage = open_storage(throwaway_postgres.create_database(name))
    storage.outage.tolerance_s = 5
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1),
    )
    good = study.ask()
    for step in range(6):
        good.report(0.1, step)
    study.tell(good, 0.1)
    return storage, study


def _curve(storage: Any, trial_id: int) -> list[tuple[int, float]]:
    """The trial's stored intermediate values, one row per (step), as SQL sees them."""
    import sqlalchemy as sa

    with storage.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT step, intermediate_value FROM trial_intermediate_values "
                "WHERE trial_id = :t ORDER BY step"
            ),
            {"t": trial_id},
        ).all()
    return [(int(step), float(value)) for step, value in rows]


def test_progress_totals_wait_out_an_outage_then_stop_past_the_tolerance(
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    """The totals of the progress lines (the launcher's, a worker's) are read through the
    outage guard. The server stops while a read is running (held behind a table lock, so
    the stop lands between the pool's liveness check and the answer, as it did in a
    `run --workers` that died with the driver's traceback): the read waits for the
    database and answers. Past the tolerance it raises StorageError, which the launcher
    handles."""
    import threading

    import optuna
    import psycopg

    from studyctl.execution.progress import StudyTotals
    from studyctl.storage import close_storage, open_storage

    url = throwaway_postgres.create_database("totals")
    dsn = f"host=127.0.0.1 port={throwaway_postgres.port} user=root dbname=totals"
    storage = open_storage(url)
    try:
        storage.outage.tolerance_s = 60
        study = optuna.create_study(study_name="totals", storage=storage)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        totals = StudyTotals(storage, study)
        assert totals.read()[0]["COMPLETE"] == 3
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)

        answer: dict[str, Any] = {}

        def read() -> None:
            try:
                answer["totals"] = totals.read()
            except Exception as exc:
                answer["error"] = exc

        blocker = psycopg.connect(dsn)
        blocker.execute("LOCK TABLE trials IN ACCESS EXCLUSIVE MODE")
        reader = threading.Thread(target=read)
        reader.start()
        with psycopg.connect(dsn, autocommit=True) as watcher:
            assert wait_for(
                lambda: (
                    watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    ).fetchone()
                    == (1,)
                ),
                timeout=30,
            )
        throwaway_postgres.stop()  # ends the blocker's session and the waiting read
        time.sleep(2.0)
        throwaway_postgres.start()
        reader.join(timeout=60)
        assert "error" not in answer, repr(answer.get("error"))
        counts, best = answer["totals"]
        assert counts["COMPLETE"] == 4 and best.startswith("best ")
        storage.outage.tolerance_s = 2
        throwaway_postgres.stop()
        try:
            with pytest.raises(StorageError):
                totals.read()
        finally:
            throwaway_postgres.start()
    finally:
        close_storage(url)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_epochs_train_on_while_the_database_is_away(
    tmp_path: Path, throwaway_postgres: ThrowawayPostgres
) -> None:
    from studyctl.storage import close_storage

    storage, study = _reports_study(throwaway_postgres, "reports")
    url = storage.engine.url.render_as_string(hide_password=False)
    try:
        trial = study.ask()
        cb = _keras_reporter(trial, tmp_path / "ckpt")
        cb.on_epoch_end(0, {"loss": 0.5, "val_loss": 0.5})  # warm-up: not judged
        throwaway_postgres.stop()
        try:
            # Each epoch end returns at once (on a blocking report, the 5 s tolerance
            # would pass and the first one raise StorageError): the reports wait in order,
            # no pruning decision is taken on a curve the database has not got, and the
            # checkpoint still follows every epoch.
            for epoch in (1, 2, 3):
                cb.on_epoch_end(epoch, {"loss": 0.9, "val_loss": 0.9})
            assert sorted(cb.reports.pending) == [1, 2, 3]
            assert cb.reports.decision_owed and cb.pruned_epoch is None
            assert not cb.model.stop_training
            from studyctl.training import checkpoints

            cb.writer.wait()  # written off the training thread
            assert checkpoints.complete_epochs(tmp_path / "ckpt")[0] == 4
        finally:
            throwaway_postgres.start()
        # Back: the next epoch end delivers 1..4 in order, then asks the pruner, which
        # prunes this trial (0.9 is worse than the median 0.1).
        cb.on_epoch_end(4, {"loss": 0.9, "val_loss": 0.9})
        assert cb.reports.pending == {}
        assert cb.pruned_epoch == 4 and cb.model.stop_training
        cb.settle()
        assert _curve(storage, trial._trial_id) == [
            (0, 0.5),
            (1, 0.9),
            (2, 0.9),
            (3, 0.9),
            (4, 0.9),
        ]
        assert storage.get_trial(trial._trial_id).user_attrs["epochs_reported_late"] == 3
    finally:
        close_storage(url)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_retry_re_reports_what_its_original_could_not_deliver(
    tmp_path: Path, throwaway_postgres: ThrowawayPostgres
) -> None:
    """Past `storage_outage_tolerance` the original stops with StorageError (its process
    exits with one `error:` line) while epochs 1-2 are pending and its checkpoint is at
    epoch 3; its retry inherits the curve [0], resumes from the checkpoint and first
    re-reports 1-2 from the checkpoint's history: no hole, no duplicate."""
    import optuna
    from optuna.trial import TrialState

    from studyctl.storage import close_storage

    storage, study = _reports_study(throwaway_postgres, "retry")
    url = storage.engine.url.render_as_string(hide_password=False)
    try:
        original = study.ask()
        cb = _keras_reporter(original, tmp_path / "ckpt")
        cb.on_epoch_end(0, {"loss": 0.2, "val_loss": 0.05})
        storage.outage.tolerance_s = 2
        throwaway_postgres.stop()
        try:
            cb.on_epoch_end(1, {"loss": 0.2, "val_loss": 0.04})
            cb.on_epoch_end(2, {"loss": 0.2, "val_loss": 0.03})
            time.sleep(2.5)
            with pytest.raises(
                StorageError, match=r"unreachable for \d+s \(storage_outage_tolerance 2s\)"
            ):
                cb.on_epoch_end(3, {"loss": 0.2, "val_loss": 0.02})
            with pytest.raises(StorageError):  # given up: the settle fails at once
                cb.settle()
        finally:
            throwaway_postgres.start()
        assert sorted(cb.reports.pending) == [1, 2, 3]
        del cb  # the process exits: its pending reports are gone
        assert _curve(storage, original._trial_id) == [(0, 0.05)]
        storage.set_trial_user_attr(original._trial_id, "fail_reason", "lost: killed")
        storage.set_trial_state_values(original._trial_id, TrialState.FAIL)
        optuna.storages.RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(
            study, storage.get_trial(original._trial_id)
        )
        retry = study.ask()
        assert retry.number != original.number
        assert dict(retry._cached_frozen_trial.intermediate_values) == {0: 0.05}
        storage.outage.tolerance_s = 5
        again = _keras_reporter(retry, tmp_path / "ckpt")
        assert again.initial_epoch == 3
        again.on_epoch_end(3, {"loss": 0.2, "val_loss": 0.02})
        again.settle()
        assert _curve(storage, retry._trial_id) == [(0, 0.05), (1, 0.04), (2, 0.03), (3, 0.02)]
    finally:
        close_storage(url)


TIMED_DIGITS = (
    DIGITS_DATA
    + """
import os
import time
from pathlib import Path


@keras_objective("timed_digits", load_data=load_data)
def build(trial, ctx):
    import keras

    units = trial.suggest_int("units", 8, 32)
    model = keras.Sequential([keras.Input(shape=(64,)),
                              keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss="sparse_categorical_crossentropy")
    log = Path(os.environ["EPOCH_LOG_DIR"]) / f"trial-{trial.number}.txt"

    def epoch_end(epoch, logs):
        # After studyctl's recorder (its callback runs first): the time this epoch's
        # report let training go on. The sleep makes an epoch last long enough.
        with log.open("a") as f:
            f.write(f"{epoch} {time.time()}\\n")
        time.sleep(float(os.environ["EPOCH_SLEEP_S"]))

    fit = model.fit

    def timed_fit(*args, callbacks=None, **kwargs):
        timer = keras.callbacks.LambdaCallback(on_epoch_end=epoch_end)
        return fit(*args, callbacks=[*(callbacks or []), timer], **kwargs)

    model.fit = timed_fit
    return model
"""
)

KERAS_EPOCHS = 10
KERAS_OUTAGE_S = 8.0


def test_keras_trials_train_on_through_an_outage(
    tmp_path: Path, throwaway_postgres: ThrowawayPostgres
) -> None:
    """`run --workers 1` (a worker and its trial process) of Keras trials on digits; the
    database is stopped for 8 s while a trial is mid-fit. Epochs keep ending during the
    outage; afterwards every trial's curve is steps 0..E-1, each once, and the budget is
    exact with nothing lost."""
    import optuna
    from optuna.trial import TrialState

    objectives = write_objectives(tmp_path / "objectives", TIMED_DIGITS, "timed_digits.py")
    url = throwaway_postgres.create_database("keras_outage")
    n_trials = 2
    spec = write_spec(
        tmp_path / "keras_outage.toml",
        f"""
        name = "keras_outage"
        objective = "timed_digits"
        metric = "val_loss"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        seed = 0
        [pruner]
        type = "median"
        n_startup_trials = 100
        [training]
        epochs = {KERAS_EPOCHS}
        batch_size = 64
        [worker]
        heartbeat_interval = 1
        grace_period = 4
        storage_outage_tolerance = 120
        [artifacts]
        path = "{tmp_path / "artifacts"}"
        keep_best_model = false
        """,
    )
    epoch_log = tmp_path / "epochs"
    epoch_log.mkdir()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "EPOCH_LOG_DIR": str(epoch_log)}
    env["EPOCH_SLEEP_S"] = "0.25"
    env.pop("STUDYCTL_STORAGE", None)
    proc = subprocess.Popen(
        [
            *STUDYCTL,
            "run",
            str(spec),
            "--storage",
            url,
            "--objectives-dir",
            str(objectives),
            "--workers",
            "1",
            "--quiet",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def epochs_logged() -> list[tuple[str, int, float]]:
        found = []
        for path in epoch_log.glob("trial-*.txt"):
            for line in path.read_text().splitlines():
                epoch, at = line.split()
                found.append((path.stem, int(epoch), float(at)))
        return found

    began = time.monotonic()
    try:
        # Mid-fit: some trial has ended 2 epochs (its reports delivered).
        started = wait_for(
            lambda: proc.poll() is not None or any(e >= 1 for _, e, _ in epochs_logged()), 180
        )
        if proc.poll() is not None:
            out, _ = proc.communicate()
            pytest.fail(f"the run exited ({proc.returncode}) before the outage: {out[-3000:]}")
        assert started, "no trial trained an epoch"
        throwaway_postgres.stop()
        down = time.time()
        began_wall = down - (time.monotonic() - began)
        time.sleep(KERAS_OUTAGE_S)
        up = time.time()
        throwaway_postgres.start()
        back = time.monotonic()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in out, out[-4000:]
    assert proc.returncode == 0, out[-4000:]

    during: dict[str, list[int]] = {}
    for trial_name, epoch, at in sorted(epochs_logged(), key=lambda e: e[2]):
        if down < at < up:
            during.setdefault(trial_name, []).append(epoch)
    late_attrs: dict[int, int] = {}
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
    try:
        trials = optuna.load_study(study_name="keras_outage", storage=storage).get_trials()
        with storage.engine.connect() as conn:
            import sqlalchemy as sa

            rows = conn.execute(
                sa.text(
                    "SELECT trial_id, step, count(*) FROM trial_intermediate_values "
                    "GROUP BY trial_id, step"
                )
            ).all()
    finally:
        storage.engine.dispose()
    print(
        f"outage {KERAS_OUTAGE_S:.0f}s after {down - began_wall:.1f}s: epochs ended while the "
        f"database was down: {during}; run ended {time.monotonic() - back:.1f}s after it "
        "returned"
    )
    # A report that blocks lets at most one epoch end per trial in the window (one whose
    # report was delivered just before the server went); here training went on.
    assert max((len(e) for e in during.values()), default=0) >= 3, (during, out[-3000:])
    counts = {(int(t), int(s)): int(n) for t, s, n in rows}
    assert all(n == 1 for n in counts.values()), counts
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == list(range(KERAS_EPOCHS)), (t.number, t)
            assert t.user_attrs["epochs_run"] == KERAS_EPOCHS
            assert t.value == min(t.intermediate_values.values())
        if "epochs_reported_late" in t.user_attrs:
            late_attrs[t.number] = t.user_attrs["epochs_reported_late"]
    assert late_attrs, "no trial recorded a report delivered late"
    result = figures(
        f"Keras trials through a {KERAS_OUTAGE_S:.0f}s database outage",
        url,
        "keras_outage",
        n_trials,
    )
    result.assert_nothing_lost()
    assert result.failed == 0, out[-4000:]
