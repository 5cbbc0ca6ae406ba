"""The warm spare (`execution.spare`): a worker starts its next trial process while the
current one trains its last trial, hands over when it exits, and leaves no spare behind
(budget met, kill -9 of the worker, SIGINT/SIGTERM). Real processes, real SQLite."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from .conftest import DIGITS_DATA, STUDYCTL, run_cli, write_objectives, write_spec
from .faults.procs import alive, children_of, cmdline, wait_gone

DIGITS = (
    DIGITS_DATA
    + """
import time

from studyctl import function_objective


@keras_objective("tiny_digits", load_data=load_data)
def build(trial, ctx):
    import keras

    units = trial.suggest_int("units", 4, 16)
    model = keras.Sequential([keras.Input(shape=(64,)),
                              keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


@function_objective("slow")
def slow(trial, ctx):
    x = trial.suggest_float("x", -1, 1)
    time.sleep(float(ctx.options.get("sleep", 0)))
    return x * x
"""
)

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def make_study(
    tmp_path: Path,
    url: str,
    name: str,
    objective: str,
    n_trials: int,
    *,
    prewarm: bool = True,
    sleep: float = 0.0,
) -> Path:
    objectives = write_objectives(tmp_path / "objectives", DIGITS, name="digits.py")
    spec = write_spec(
        tmp_path / f"{name}.toml",
        f"""
        name = "{name}"
        objective = "{objective}"
        metric = "val_loss"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        seed = 3
        [training]
        epochs = 2
        batch_size = 128
        [options]
        sleep = {sleep}
        [worker]
        trials_per_process = 1
        prewarm = {"true" if prewarm else "false"}
        heartbeat_interval = 1
        grace_period = 5
        [artifacts]
        path = "{tmp_path / "artifacts"}"
        checkpoints = false
        keep_best_model = false
        """,
    )
    run_cli(["create", str(spec), "-s", url, "--objectives-dir", str(objectives)], tmp_path)
    return objectives


def start_worker(tmp_path: Path, url: str, name: str, objectives: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*STUDYCTL, "worker", name, "-s", url, "--objectives-dir", str(objectives), "-q"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def trial_processes_of(name: str) -> list[int]:
    """Live trial processes of study `name` on this machine, whoever their parent is."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            line = cmdline(int(entry))
            ours = "studyctl.execution.trial_process" in line and f"--study {name} " in line
            if ours and alive(int(entry)):
                found.append(int(entry))
    return found


def stamp(when: datetime | None) -> float:
    assert when is not None
    return when.timestamp()  # Optuna's naive local times, as time.time() counts


def by_number(url: str, name: str) -> list[FrozenTrial]:
    return sorted(optuna.load_study(study_name=name, storage=url).trials, key=lambda t: t.number)


def test_keras_recycle_hands_over_to_a_spare_started_during_the_last_trial(
    tmp_path: Path, sqlite_url: str
) -> None:
    objectives = make_study(tmp_path, sqlite_url, "warm", "tiny_digits", 3)
    worker = start_worker(tmp_path, sqlite_url, "warm", objectives)
    out, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, out
    trials = by_number(sqlite_url, "warm")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    pids = [t.user_attrs["worker"]["pid"] for t in trials]
    assert len(set(pids)) == 3  # one trial process per trial
    for before, after in itertools.pairwise(trials):
        info = after.user_attrs["worker"]
        # The successor was started while its predecessor still trained (so before that
        # process exited), and it took its trial only after the predecessor's trial ended.
        assert info["process_started_at"] < stamp(before.datetime_complete)
        assert info["process_went_at"] >= stamp(before.datetime_complete) - 0.01
        assert stamp(after.datetime_start) >= info["process_went_at"] - 0.01
    # The spare started during the last trial was dismissed when the budget was met.
    assert trial_processes_of("warm") == []


def test_without_prewarm_the_successor_starts_after_its_predecessor(
    tmp_path: Path, sqlite_url: str
) -> None:
    objectives = make_study(tmp_path, sqlite_url, "cold", "slow", 3, prewarm=False, sleep=0.5)
    worker = start_worker(tmp_path, sqlite_url, "cold", objectives)
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0, out
    trials = by_number(sqlite_url, "cold")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for before, after in itertools.pairwise(trials):
        info = after.user_attrs["worker"]
        assert info["process_started_at"] >= stamp(before.datetime_complete)
        assert info["process_went_at"] == info["process_started_at"]


def wait_for_spare(worker: subprocess.Popen[str], timeout: float = 60) -> tuple[int, int]:
    """(training process, spare) once the worker has both."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = sorted(children_of(worker.pid))  # pids grow: the spare came second
        if len(kids) == 2:
            time.sleep(1.0)  # the spare gets into its standby wait
            return kids[0], kids[1]
        time.sleep(0.05)
    raise AssertionError("the worker never started a spare")


def test_kill_9_of_the_worker_leaves_no_spare(tmp_path: Path, sqlite_url: str) -> None:
    objectives = make_study(tmp_path, sqlite_url, "orphan", "slow", 4, sleep=30)
    worker = start_worker(tmp_path, sqlite_url, "orphan", objectives)
    try:
        current, spare = wait_for_spare(worker)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        assert wait_gone([current, spare], timeout=20) is not None
    finally:
        worker.kill()
    trials = by_number(sqlite_url, "orphan")
    assert [t.user_attrs["worker"]["pid"] for t in trials if t.datetime_start] == [current]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert trials[0].user_attrs["fail_reason"].startswith("interrupted: ")
    assert trial_processes_of("orphan") == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_leaves_no_running_trial_and_no_spare(
    tmp_path: Path, sqlite_url: str, sig: signal.Signals
) -> None:
    objectives = make_study(tmp_path, sqlite_url, "stop", "slow", 4, sleep=30)
    worker = start_worker(tmp_path, sqlite_url, "stop", objectives)
    try:
        current, spare = wait_for_spare(worker)
        os.kill(worker.pid, sig)
        out, _ = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode == 128 + sig, out
    assert wait_gone([current, spare], timeout=10) is not None
    trials = by_number(sqlite_url, "stop")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # The trial in flight was interrupted and queued again; the spare took none.
    assert [t.user_attrs["worker"]["pid"] for t in trials if t.datetime_start] == [current]
    assert trials[0].state == TrialState.FAIL
    assert [t.state for t in trials[1:]] == [TrialState.WAITING]
    assert "Traceback" not in out
    assert trial_processes_of("stop") == []


def test_prewarm_is_a_worker_option_of_the_spec(tmp_path: Path) -> None:
    from studyctl.errors import SpecError
    from studyctl.spec import StudySpec, load_spec

    body = 'name = "p"\nobjective = "x"\nn_trials = 1\n[worker]\nprewarm = {}\n'
    assert load_spec(write_spec(tmp_path / "on.toml", body.format("true"))).worker.prewarm
    off = load_spec(write_spec(tmp_path / "off.toml", body.format("false")))
    assert off.worker.prewarm is False
    assert StudySpec.from_dict(off.to_dict()).worker.prewarm is False  # the stored snapshot
    with pytest.raises(SpecError, match="prewarm"):
        load_spec(write_spec(tmp_path / "bad.toml", body.format('"yes"')))


def test_launcher_wakes_when_a_worker_output_ends() -> None:
    """The launcher reads each worker's output in a thread; the end of that output (the
    worker exiting) wakes its loop at once instead of at its next poll."""
    import threading

    from studyctl.execution.launcher import _pump

    proc = subprocess.Popen(
        ["python3", "-c", "print('one'); print('two')"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    ended = threading.Event()
    lines: list[str] = []
    reader = threading.Thread(target=_pump, args=("w0", proc.stdout, lines.append, ended))
    reader.start()
    assert ended.wait(timeout=10)
    reader.join(timeout=10)
    proc.wait(timeout=10)
    assert lines == ["[w0] one", "[w0] two"]
