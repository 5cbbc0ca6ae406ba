"""kill -9 at random instants of a parallel run: workers, trial processes, the launcher.

Every scenario ends with the "nothing lost" figures (tests/faults/procs.py): finished trials
lost 0, RUNNING left 0, budget exact, retries that failed for a checkpoint 0, epochs re-run
per kill at most 1, every FAIL with a reason. The kill instants come from a seeded random
generator, so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ..conftest import STUDYCTL, digits_mlp, run_cli, write_objectives, write_spec
from .procs import (
    alive,
    children_of,
    figures,
    kill,
    ppid_of,
    running_trials,
    snapshot_finished,
    stop_tree,
    wait_gone,
)

pytestmark = pytest.mark.slow

STEPPED = """
import time

from studyctl import function_objective


@function_objective("stepped")
def stepped(trial, ctx):
    x = trial.suggest_float("x", -1, 1)
    for step in range(int(ctx.options.get("steps", 4))):
        time.sleep(float(ctx.options.get("step_s", 0.25)))
        trial.report(x * x + 1 / (step + 1), step)
    return x * x
"""

DIGITS = digits_mlp("digits")

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def stepped_spec(tmp_path: Path, name: str, n_trials: int, steps: int = 4) -> Path:
    return write_spec(
        tmp_path / f"{name}.toml",
        f"""
        name = "{name}"
        objective = "stepped"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        seed = 1
        [options]
        steps = {steps}
        step_s = 0.25
        [worker]
        heartbeat_interval = 1
        grace_period = 3
        max_retries = 10
        [artifacts]
        path = "{tmp_path / "artifacts"}"
        """,
    )


def launch(
    tmp_path: Path, spec: Path, url: str, objectives: Path, workers: int
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *STUDYCTL,
            "run",
            str(spec),
            "-s",
            url,
            "--objectives-dir",
            str(objectives),
            "--workers",
            str(workers),
            "--quiet",
        ],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_study(url: str, name: str, timeout: float = 60) -> optuna.Study:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name in optuna.get_all_study_names(storage=url):
            return optuna.load_study(study_name=name, storage=url)
        time.sleep(0.1)
    raise AssertionError(f"study {name} never appeared")


def busy_trial_process(
    study: optuna.Study, rng: random.Random, timeout: float = 40
) -> tuple[int, int]:
    """A live trial process that is training a trial right now: (pid, trial number), read
    from one snapshot (a second read may find the trial already finished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = sorted(
            (int(t.user_attrs["worker"]["pid"]), t.number)
            for t in running_trials(study)
            if "worker" in t.user_attrs and t.intermediate_values
        )
        busy = [(pid, number) for pid, number in busy if alive(pid)]
        if busy:
            return rng.choice(busy)
        time.sleep(0.05)
    raise AssertionError("no trial was training")


def test_worker_then_trial_process_double_kill(tmp_path: Path, sqlite_url: str) -> None:
    """kill -9 a busy worker's trial process, then kill -9 that worker 0-1 s later: the
    replacement trial process the worker had started meanwhile stops at once and claims
    nothing; the killed trial process's trial is FAIL with its exit signal as reason."""
    objectives = write_objectives(tmp_path / "objectives", STEPPED, name="stepped.py")
    spec = stepped_spec(tmp_path, "double", n_trials=30)
    rng = random.Random(3)
    launcher = launch(tmp_path, spec, sqlite_url, objectives, workers=3)
    orphan_lives: list[float | None] = []
    orphan_claims = 0
    killed_trials: list[int] = []
    try:
        study = wait_study(sqlite_url, "double")
        for _ in range(3):
            gap = rng.uniform(0.05, 1.0)
            victim, victim_trial = busy_trial_process(study, rng)
            worker = ppid_of(victim)
            assert worker is not None
            kill(victim)
            # A trial that finished between the snapshot and the kill was not killed.
            if study.trials[victim_trial].state not in (TrialState.COMPLETE, TrialState.PRUNED):
                killed_trials.append(victim_trial)
            time.sleep(gap)
            replacements = children_of(worker)
            kill(worker)
            killed_at = time.monotonic()
            orphan_lives.append(wait_gone(replacements, timeout=20))
            print(f"[double kill] gap {gap:.2f} s: orphans {replacements} lived {orphan_lives[-1]}")
            # Trials the replacement took after its worker was gone.
            orphan_claims += sum(
                1
                for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get("worker", {}).get("pid") in replacements
                and t.datetime_start is not None
                and t.datetime_start.timestamp()
                > time.time() - (time.monotonic() - killed_at) + 0.5
            )
            time.sleep(rng.uniform(1.0, 2.0))
        launcher.communicate(timeout=180)
    finally:
        stop_tree(launcher)
    resumed = run_cli(
        ["resume", "double", "-s", sqlite_url, "--objectives-dir", str(objectives), "-q"],
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    study = optuna.load_study(study_name="double", storage=sqlite_url)
    fig = figures("double kill", study, budget=30, kills=6)
    fig.extra["orphan lifetimes s"] = [None if x is None else round(x, 2) for x in orphan_lives]
    fig.extra["trials claimed by orphans"] = orphan_claims
    print(fig.line())
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    reasons = [by_number[n].user_attrs.get("fail_reason") for n in killed_trials]
    print(f"[double kill] reasons of the killed trial processes' trials: {reasons}")
    assert all(x is not None and x < 3 for x in orphan_lives), fig.line()
    assert orphan_claims == 0, fig.line()
    assert all(r == "trial process killed by SIGKILL" for r in reasons), reasons
    fig.check()


def test_workers_stop_when_the_launcher_is_killed(tmp_path: Path, sqlite_url: str) -> None:
    """kill -9 of `run --workers 2`: its workers and their trial processes stop at the
    next safe point (their trials queued), instead of training on as orphans; `resume`
    then completes the budget exactly."""
    objectives = write_objectives(tmp_path / "objectives", STEPPED, name="stepped.py")
    spec = stepped_spec(tmp_path, "headless", n_trials=14)
    launcher = launch(tmp_path, spec, sqlite_url, objectives, workers=2)
    try:
        study = wait_study(sqlite_url, "headless")
        busy_trial_process(study, random.Random(0))
        workers = children_of(launcher.pid)
        trial_procs = [c for w in workers for c in children_of(w)]
        finished_at_kill = len(snapshot_finished(study))
        kill(launcher.pid)
        launcher.wait(timeout=10)
        gone_after = wait_gone(workers + trial_procs, timeout=20)
        finished_after = len(snapshot_finished(study))
    finally:
        stop_tree(launcher)
        for pid in children_of(1):
            if (
                "studyctl" in Path(f"/proc/{pid}/cmdline").read_text(errors="ignore")
                and str(tmp_path) in Path(f"/proc/{pid}/cwd").resolve().as_posix()
            ):
                kill(pid)
    print(
        f"[launcher kill] workers and trial processes gone after {gone_after} s; "
        f"finished {finished_at_kill} at the kill, {finished_after} once they stopped"
    )
    assert gone_after is not None and gone_after < 10
    assert finished_after <= finished_at_kill + 2  # at most the trials in flight
    assert running_trials(study) == []
    resumed = run_cli(
        ["resume", "headless", "-s", sqlite_url, "--objectives-dir", str(objectives), "-q"],
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    fig = figures("launcher kill", study, budget=14, kills=1)
    fig.extra["FAIL reasons"] = sorted(
        str(t.user_attrs.get("fail_reason"))
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "FAIL"
    )
    fig.check()


def storm_spec(tmp_path: Path, n_trials: int) -> Path:
    return write_spec(
        tmp_path / "storm.toml",
        f"""
        name = "storm"
        objective = "digits"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        seed = 7
        [training]
        epochs = 3
        batch_size = 16
        [worker]
        heartbeat_interval = 1
        grace_period = 3
        max_retries = 20
        trials_per_process = 4
        [artifacts]
        path = "{tmp_path / "artifacts"}"
        """,
    )


STORM_S = 10.0


def test_kill_storm_then_resume(tmp_path: Path, sqlite_url: str) -> None:
    """3 workers of a Keras study; every 1.5-4 s (seeded) a kill -9 of a random worker or
    trial process for STORM_S seconds; then the run ends or is stopped, and `resume`
    completes the budget."""
    objectives = write_objectives(tmp_path / "objectives", DIGITS, name="digits.py")
    spec = storm_spec(tmp_path, n_trials=8)
    rng = random.Random(11)
    launcher = launch(tmp_path, spec, sqlite_url, objectives, workers=3)
    kills: list[str] = []
    finished_before: dict[int, tuple[str, list[float] | None]] = {}
    try:
        study = wait_study(sqlite_url, "storm")
        busy_trial_process(study, rng, timeout=120)
        storm_end = time.monotonic() + STORM_S
        while time.monotonic() < storm_end and launcher.poll() is None:
            time.sleep(rng.uniform(1.5, 4.0))
            workers = sorted(children_of(launcher.pid))
            trial_procs = sorted(c for w in workers for c in children_of(w))
            target = rng.choice(["worker", "trial process"])
            pool = workers if target == "worker" or not trial_procs else trial_procs
            if not pool:
                continue
            finished_before.update(snapshot_finished(study))
            victim = rng.choice(pool)
            if kill(victim):
                kills.append("worker" if victim in workers else "trial process")
        launcher.send_signal(signal.SIGINT)  # the storm is over: stop what is left
        launcher.communicate(timeout=120)
    finally:
        stop_tree(launcher)
    resumed = run_cli(
        ["resume", "storm", "-s", sqlite_url, "--objectives-dir", str(objectives), "-q"],
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    fig = figures("kill storm", study, budget=8, kills=len(kills), finished_before=finished_before)
    fig.extra["killed"] = {k: kills.count(k) for k in sorted(set(kills))}
    fig.check()
