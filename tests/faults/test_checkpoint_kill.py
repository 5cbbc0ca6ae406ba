"""Kills timed inside checkpoint writes, and unreadable checkpoints.

The model is large (two 1536-unit layers, about 30 MB of weights and optimizer state) and
each epoch short, so a checkpoint write takes about a third of the time; the test watches
the trial process's open files (/proc/PID/fd) and kills it while a file in the checkpoint
folder is open, after a seeded random delay. A retry must never fail because of a
checkpoint: it resumes from the newest complete one, or the one before, or epoch 0, and
records why; its learning curve has no holes and no duplicates, its `history` covers every
epoch its model trained, and its value is the best of its own curve.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from ..conftest import DIGITS_DATA, STUDYCTL, run_cli, write_objectives, write_spec
from .procs import alive, figures, kill, open_files_under, running_trials, stop_tree, wait_gone

pytestmark = pytest.mark.slow

BIG_DIGITS = (
    DIGITS_DATA
    + """


@keras_objective("big_digits", load_data=load_data)
def build(trial, ctx):
    import keras

    units = int(ctx.options.get("units", 1536))
    lr = trial.suggest_float("lr", 1e-4, 1e-3, log=True)
    model = keras.Sequential([keras.Input(shape=(64,)),
                              keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss="sparse_categorical_crossentropy")
    return model
"""
)

EPOCHS = 4
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def big_spec(tmp_path: Path, name: str, n_trials: int, units: int = 1536) -> Path:
    return write_spec(
        tmp_path / f"{name}.toml",
        f"""
        name = "{name}"
        objective = "big_digits"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        seed = 5
        [options]
        units = {units}
        [training]
        epochs = {EPOCHS}
        batch_size = 128
        [worker]
        heartbeat_interval = 1
        grace_period = 3
        max_retries = 10
        [artifacts]
        path = "{tmp_path / "artifacts"}"
        """,
    )


def training_process(study: optuna.Study, timeout: float = 120) -> tuple[int, FrozenTrial]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in running_trials(study):
            pid = int(t.user_attrs.get("worker", {}).get("pid", 0))
            if pid and alive(pid) and "checkpoint_dir" in t.user_attrs:
                return pid, t
        time.sleep(0.05)
    raise AssertionError("no trial started training")


def inside_a_write(pid: int, folder: Path, writes: int, delay: float, timeout: float) -> bool:
    """Wait for the `writes`-th checkpoint write of `pid` under `folder`, then `delay` s
    into it; True if the write is still going on then."""
    deadline = time.monotonic() + timeout
    seen = 0
    was_open = False
    while time.monotonic() < deadline:
        now_open = bool(open_files_under(pid, folder))
        if now_open and not was_open:
            seen += 1
            if seen >= writes:
                time.sleep(delay)
                if open_files_under(pid, folder):
                    return True
                seen -= 1  # the write was done before the delay ran out: take the next
        was_open = now_open
        time.sleep(0.001)
    return False


def check_curves(study: optuna.Study) -> list[str]:
    """Every finished retry: a curve without holes or duplicates, a history covering every
    epoch its model trained, and a value that is the best of its own curve."""
    problems = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        steps = sorted(t.intermediate_values)
        history = t.user_attrs.get("history", {}).get("val_loss", [])
        if steps != list(range(EPOCHS)):
            problems.append(f"trial {t.number}: curve steps {steps}")
        if len(history) != EPOCHS:
            problems.append(f"trial {t.number}: history of {len(history)} epochs")
        if "failed_trial" in t.system_attrs and t.user_attrs.get(
            "history_inherited_epochs"
        ) != t.user_attrs.get("resumed_from_epoch", 0):
            problems.append(f"trial {t.number}: inherited epochs not marked")
        if t.value != min(t.intermediate_values.values()):
            problems.append(
                f"trial {t.number}: value {t.value} but its curve's best is "
                f"{min(t.intermediate_values.values())}"
            )
        if history and [round(v, 6) for v in history] != [
            round(t.intermediate_values[s], 6) for s in steps
        ]:
            problems.append(f"trial {t.number}: history and curve differ")
    return problems


def test_kills_inside_checkpoint_writes(tmp_path: Path, sqlite_url: str) -> None:
    objectives = write_objectives(tmp_path / "objectives", BIG_DIGITS, name="big_digits.py")
    spec = big_spec(tmp_path, "ckpt", n_trials=1)
    created = run_cli(
        ["create", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives)], tmp_path
    )
    assert created.returncode == 0, created.stdout + created.stderr
    study = optuna.load_study(study_name="ckpt", storage=sqlite_url)
    rng = random.Random(21)
    folder = tmp_path / "artifacts" / "ckpt"
    worker = subprocess.Popen(
        [*STUDYCTL, "worker", "ckpt", "-s", sqlite_url, "--objectives-dir", str(objectives)],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    kills: list[str] = []
    try:
        # Two kill -9 of the trial process inside a write, then a SIGTERM to the worker
        # inside a write (the stop must not fall between the save and the epoch report).
        for sig in (signal.SIGKILL, signal.SIGKILL, signal.SIGTERM):
            pid, trial = training_process(study)
            writes = rng.randint(1, 2)
            delay = rng.uniform(0.0, 0.08)
            if not inside_a_write(pid, folder, writes, delay, timeout=60):
                kills.append(f"no write of trial {trial.number} seen")
                break
            kill(pid if sig == signal.SIGKILL else worker.pid, sig)
            if sig == signal.SIGKILL:
                assert wait_gone([pid], timeout=10) is not None
            kills.append(f"{signal.Signals(sig).name} in write {writes} of trial {trial.number}")
        out, _ = worker.communicate(timeout=120)
        print(out[-3000:])
    finally:
        stop_tree(worker)
    resumed = run_cli(
        ["resume", "ckpt", "-s", sqlite_url, "--objectives-dir", str(objectives), "-q"],
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    fig = figures("kills inside checkpoint writes", study, budget=1, kills=len(kills))
    reasons = sorted(
        str(t.user_attrs.get("fail_reason"))
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    )
    fig.extra["FAIL reasons"] = reasons
    problems = check_curves(study)
    fig.extra["record problems"] = len(problems)
    print(f"[kills inside checkpoint writes] {kills}")
    fig.check()
    assert problems == [], problems


def test_unreadable_checkpoints_fall_back_and_say_why(tmp_path: Path, sqlite_url: str) -> None:
    """An interrupted trial whose every checkpoint file is then damaged: the retry starts
    from epoch 0, records why, and its record is its own (no inherited value kept for an
    epoch it trained again)."""
    objectives = write_objectives(tmp_path / "objectives", BIG_DIGITS, name="big_digits.py")
    spec = big_spec(tmp_path, "bad", n_trials=1, units=64)
    run = subprocess.Popen(
        [*STUDYCTL, "run", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives), "-q"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        study: optuna.Study | None = None
        while time.monotonic() < deadline:
            if study is None and "bad" in optuna.get_all_study_names(storage=sqlite_url):
                study = optuna.load_study(study_name="bad", storage=sqlite_url)
            if study is not None and any(
                len(t.intermediate_values) >= 3 for t in running_trials(study)
            ):
                break
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=60)
    finally:
        stop_tree(run)
    assert run.returncode == 130, out
    assert study is not None
    damaged = [p for p in (tmp_path / "artifacts" / "bad").rglob("*.weights.npz")]
    assert damaged, "no checkpoint was written"
    for path in damaged:
        path.write_bytes(path.read_bytes()[:1000])
    resumed = run_cli(
        ["resume", "bad", "-s", sqlite_url, "--objectives-dir", str(objectives), "-q"],
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    retry = study.trials[-1]
    assert retry.state == TrialState.COMPLETE, retry.user_attrs.get("fail_reason")
    assert retry.user_attrs.get("resumed_from_epoch", 0) == 0
    assert "unreadable" in retry.user_attrs["checkpoint_fallback"]
    assert check_curves(study) == []


def _tiny_model() -> Any:
    import keras

    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def test_restore_falls_back_to_the_previous_checkpoint(tmp_path: Path) -> None:
    """The newest checkpoint damaged: the one before it is restored (weights, optimizer
    state and history) and the reason names the damaged file; a write a kill interrupted
    (a temporary file) is ignored and cleaned up; only the newest two are kept."""
    import numpy as np

    from studyctl.training import checkpoints

    model = _tiny_model()
    x, y = np.ones((8, 4), "float32"), np.zeros((8, 3), "float32")
    history: dict[str, list[float]] = {"loss": []}
    saved = {}
    for epoch in (1, 2, 3):
        model.fit(x, y, epochs=1, verbose=0)
        history["loss"].append(float(epoch))
        checkpoints.save(model, tmp_path, epoch, history)
        saved[epoch] = [w.copy() for w in model.get_weights()]
    assert checkpoints.complete_epochs(tmp_path) == [3, 2]
    (tmp_path / ".tmp-1-000004.weights.npz").write_bytes(b"half a write")
    newest = checkpoints.weights_path(tmp_path, 3)
    newest.write_bytes(newest.read_bytes()[:500])

    fresh = _tiny_model()
    restored = checkpoints.restore(fresh, tmp_path)
    assert restored.epoch == 2
    assert restored.history == {"loss": [1.0, 2.0]}
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), saved[2], strict=True))
    reason = restored.fallback_reason()
    assert reason is not None and "epoch-000003.weights.npz" in reason
    assert reason.endswith("resumed from epoch 2")
    assert not list(tmp_path.glob(".tmp-*"))

    # Every checkpoint unreadable: the model as built, epoch 0, and why.
    checkpoints.weights_path(tmp_path, 2).write_bytes(b"")
    built = _tiny_model()
    before = [w.copy() for w in built.get_weights()]
    restored = checkpoints.restore(built, tmp_path)
    assert restored.epoch == 0 and restored.history == {}
    assert all(np.array_equal(a, b) for a, b in zip(built.get_weights(), before, strict=True))
    assert (restored.fallback_reason() or "").endswith("started from epoch 0")


def test_a_retry_reports_its_own_values_and_a_finished_epoch_survives_a_stop(
    tmp_path: Path,
) -> None:
    """A retry that trains an inherited step again stores its own value (Optuna's
    `Trial.report` would drop it: "step=N is already reported"); an epoch whose batches all
    ran is reported and checkpointed even when a stop request came at its end."""
    import signal as signals_module

    from studyctl import signals
    from studyctl.training import checkpoints
    from studyctl.training.callbacks import make_epoch_callback

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'cb.db'}")
    original = study.ask()
    original.report(0.9, 0)
    original.report(0.8, 1)
    study.tell(original, state=TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(
        study, study.trials[0]
    )
    retry = study.ask()
    assert retry.number == 1 and study.trials[1].intermediate_values == {0: 0.9, 1: 0.8}
    folder = tmp_path / "ckpt"
    cb = make_epoch_callback(retry, ("val_loss",), False, checkpoint=folder)
    cb.set_model(_tiny_model())
    cb.model.stop_training = False
    cb.set_params({"steps": 2, "epochs": 3})
    cb.on_train_begin()  # no checkpoint: from epoch 0, the inherited curve still there
    cb.on_epoch_begin(0)
    cb.on_epoch_end(0, {"loss": 0.5, "val_loss": 0.4})
    try:
        cb.on_epoch_begin(1)
        cb.on_train_batch_end(0)
        cb.on_train_batch_end(1)
        with signals.safe_points(lambda: None):
            signals.stop_at_safe_point(signals_module.SIGTERM, None)
            cb.on_epoch_end(1, {"loss": 0.3, "val_loss": 0.2})
    finally:
        signals.reset_stop()
    stored = study.trials[1]
    assert stored.intermediate_values == {0: 0.4, 1: 0.2}
    assert cb.history["val_loss"] == [0.4, 0.2] and cb.epochs_run == 2
    cb.settle()  # the writer thread's last write is committed
    assert checkpoints.complete_epochs(folder) == [2, 1]
