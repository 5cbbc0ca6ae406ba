"""Fault injection with real processes: kill -9 mid-trial, then resume from the checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from studyctl.execution.prepare import prepare_study
from studyctl.spec import load_spec

from .conftest import (
    STUDYCTL,
    digits_mlp,
    prepare_sleepy_study,
    run_cli,
    write_objectives,
    write_spec,
)

pytestmark = pytest.mark.slow

SLOW_DIGITS = digits_mlp("slow_digits")


def slow_digits_spec(path: Path, name: str, artifacts: str) -> Path:
    """2 trials of 8 epochs (batch 8: about a second each); lost trials stale after 3 s."""
    return write_spec(
        path,
        f"""
        name = "{name}"
        objective = "slow_digits"
        n_trials = 2
        [sampler]
        type = "random"
        seed = 0
        [training]
        epochs = 8
        batch_size = 8
        [worker]
        heartbeat_interval = 1
        grace_period = 3
        [artifacts]
        {artifacts}
    """,
    )


def kill_mid_trial(
    study: optuna.Study,
    worker: subprocess.Popen[bytes],
    before_kill: Callable[[FrozenTrial], None] | None = None,
) -> FrozenTrial:
    """Once a trial has reported 3 epochs, kill -9 the worker and its trial process:
    nothing gets to clean up. Returns the trial as it was just before."""
    try:
        deadline = time.monotonic() + 180
        victim = None
        while time.monotonic() < deadline and victim is None:
            running = study.get_trials(states=(TrialState.RUNNING,))
            if running and len(running[0].intermediate_values) >= 3:
                victim = running[0]
            time.sleep(0.2)
        assert victim is not None, "the first trial never reached epoch 3"
        if before_kill is not None:
            before_kill(victim)
        os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    return victim


def test_kill_9_mid_trial_then_resume_from_last_epoch(tmp_path: Path, sqlite_url: str) -> None:
    folder = write_objectives(tmp_path / "objectives", SLOW_DIGITS, name="slow_digits.py")
    spec_path = slow_digits_spec(
        tmp_path / "slow.toml", "slow", f'path = "{tmp_path / "artifacts"}"'
    )
    prepare_study(load_spec(spec_path), sqlite_url, folder)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    worker = subprocess.Popen(
        [*STUDYCTL, "worker", "slow", "-s", sqlite_url, "--objectives-dir", str(folder), "-q"],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
    )
    study = optuna.load_study(study_name="slow", storage=sqlite_url)
    victim = kill_mid_trial(study, worker)
    epochs_before_kill = len(study.trials[victim.number].intermediate_values)
    assert study.trials[victim.number].state == TrialState.RUNNING

    second = run_cli(
        ["worker", "slow", "-s", sqlite_url, "--objectives-dir", str(folder)], cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr

    trials = optuna.load_study(study_name="slow", storage=sqlite_url).trials
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 2
    original = trials[victim.number]
    assert original.state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state == TrialState.COMPLETE
    assert retry.params == original.params
    resumed = retry.user_attrs["resumed_from_epoch"]
    assert 0 < resumed <= epochs_before_kill
    # The learning curve continues the original's: epochs 0..7, no gap.
    assert sorted(retry.intermediate_values) == list(range(8))
    assert retry.user_attrs["epochs_run"] == 8
    # The checkpoint is removed when the retry finished, and no trial names it any more.
    assert not (tmp_path / "artifacts" / "slow" / f"trial-{victim.number}").exists()
    assert retry.user_attrs.get("checkpoint_dir") is None
    assert original.user_attrs.get("checkpoint_dir") is None
    status = json.loads(
        run_cli(["status", "slow", "-s", sqlite_url, "-f", "json"], cwd=tmp_path).stdout
    )
    assert sorted(w["state"] for w in status["workers"]) == ["dead", "stopped"]
    assert status["retried"] == [
        {"trial": retry.number, "retry_of": victim.number, "state": "COMPLETE"}
    ]
    print(
        f"kill -9 after {epochs_before_kill} reported epochs; retry resumed at epoch "
        f"{resumed}: {epochs_before_kill - resumed} epoch(s) re-run"
    )


def test_sigint_stops_at_a_batch_end_and_resume_continues_on_two_replicas(
    tmp_path: Path, sqlite_url: str
) -> None:
    """First Ctrl-C: the fit stops at the end of the batch, the trial is recorded
    "interrupted" and queued again; `studyctl resume` resumes it from its last epoch under
    a two-replica MirroredStrategy (CPU logical devices)."""
    folder = write_objectives(tmp_path / "objectives", SLOW_DIGITS, name="slow_digits.py")
    spec_path = write_spec(
        tmp_path / "slow.toml",
        f"""
        name = "slow"
        objective = "slow_digits"
        n_trials = 1
        [training]
        epochs = 6
        batch_size = 8
        [artifacts]
        path = "{tmp_path / "artifacts"}"
    """,
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "STUDYCTL_CPU_REPLICAS": "2"}
    run = subprocess.Popen(
        [*STUDYCTL, "run", str(spec_path), "-s", sqlite_url, "--objectives-dir", str(folder), "-q"],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        epochs_seen = 0
        while time.monotonic() < deadline and epochs_seen < 2:
            time.sleep(0.2)
            if optuna.get_all_study_names(storage=sqlite_url):
                trials = optuna.load_study(study_name="slow", storage=sqlite_url).trials
                epochs_seen = len(trials[0].intermediate_values) if trials else 0
        assert epochs_seen >= 2
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, out
    study = optuna.load_study(study_name="slow", storage=sqlite_url)
    first = study.trials[0]
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"] == "interrupted by SIGINT"
    assert first.user_attrs["replicas"] == 2
    assert Path(first.user_attrs["checkpoint_dir"]).is_dir()
    assert [t.state for t in study.trials[1:]] == [TrialState.WAITING]

    resumed = run_cli(
        ["resume", "slow", "-s", sqlite_url, "--objectives-dir", str(folder)],
        cwd=tmp_path,
        env={"STUDYCTL_CPU_REPLICAS": "2"},
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    retry = optuna.load_study(study_name="slow", storage=sqlite_url).trials[1]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == first.params and retry.user_attrs["replicas"] == 2
    assert retry.user_attrs["resumed_from_epoch"] >= 2
    assert sorted(retry.intermediate_values) == list(range(6))
    again = run_cli(["resume", "slow", "-s", sqlite_url], cwd=tmp_path)
    assert "budget met (1/1 finished); nothing to run" in again.stdout


def test_worker_stops_at_once_when_objective_cannot_import(tmp_path: Path, sqlite_url: str) -> None:
    folder = write_objectives(tmp_path / "objectives", SLOW_DIGITS, name="slow_digits.py")
    spec_path = write_spec(
        tmp_path / "slow.toml",
        """
        name = "slow"
        objective = "slow_digits"
        n_trials = 3
    """,
    )
    prepare_study(load_spec(spec_path), sqlite_url, folder)
    (folder / "slow_digits.py").write_text("import a_module_that_does_not_exist_zz\n")
    result = run_cli(
        ["worker", "slow", "-s", sqlite_url, "--objectives-dir", str(folder)], cwd=tmp_path
    )
    assert result.returncode == 2
    assert "slow_digits.py failed to import" in result.stderr
    assert "a_module_that_does_not_exist_zz" in result.stderr
    assert optuna.load_study(study_name="slow", storage=sqlite_url).trials == []


def test_trial_process_of_a_killed_worker_stops_and_claims_nothing_more(
    tmp_path: Path, sqlite_url: str
) -> None:
    """kill -9 of the worker alone: its trial process (own session, so not killed with it)
    notices, stops at the next safe point instead of training on as an orphan, and takes
    no further trial."""
    objectives = prepare_sleepy_study(tmp_path, "orphan", sqlite_url, 6, tmp_path / "artifacts")
    worker = subprocess.Popen(
        [*STUDYCTL, "worker", "orphan", "-s", sqlite_url, "--objectives-dir", str(objectives)],
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    study = optuna.load_study(study_name="orphan", storage=sqlite_url)
    deadline = time.monotonic() + 60
    running: list[FrozenTrial] = []
    while not running and time.monotonic() < deadline:
        running = [
            t for t in study.get_trials(states=(TrialState.RUNNING,)) if "worker" in t.user_attrs
        ]
        time.sleep(0.1)
    assert running, "no trial started"
    child = running[0].user_attrs["worker"]["pid"]
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
        time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists(), "the trial process outlived its worker"
    trials = study.get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # It finished (or gave back) the trial it had and started no other.
    assert len(trials) <= 2, [(t.number, t.state.name) for t in trials]
