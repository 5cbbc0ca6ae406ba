"""SIGINT/SIGTERM at random instants never leave a RUNNING trial, and never hang.

A sequential `studyctl run` of a function objective whose trials take milliseconds spends
most of its time in Optuna's own machinery (creating the trial, its heartbeat thread,
telling the result) and in studyctl's claims, so a signal at a random instant lands there
far more often than in the objective: exactly where an exception raised by the signal
handler used to leave the trial RUNNING (`UnboundLocalError: ... 'updated_state'` from
Optuna's `_run_trial`, or a silent exit 143) or the process hung in `threading._shutdown`
waiting for Optuna's heartbeat thread.
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

from ..conftest import STUDYCTL, write_objectives, write_spec
from .procs import figures, snapshot_finished

pytestmark = pytest.mark.slow

ITERATIONS = 6
SEED = 13

QUICK = """
from studyctl import function_objective


@function_objective("quick")
def quick(trial, ctx):
    x = trial.suggest_float("x", -1, 1)
    trial.report(x * x, 0)
    return x * x
"""


def test_signals_at_random_instants_leave_no_running_trial(tmp_path: Path, sqlite_url: str) -> None:
    folder = write_objectives(tmp_path / "objectives", QUICK, name="quick.py")
    spec = write_spec(
        tmp_path / "quick.toml",
        """
        name = "quick"
        objective = "quick"
        n_trials = 100000
        [sampler]
        type = "random"
        [worker]
        heartbeat_interval = 1
        grace_period = 3
        """,
    )
    rng = random.Random(SEED)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    outcomes: list[str] = []
    reasons: set[str] = set()
    study: optuna.Study | None = None
    finished_before: dict[int, tuple[str, list[float] | None]] = {}
    for _ in range(ITERATIONS):
        trials_before = 0 if study is None else len(study.get_trials(deepcopy=False))
        sig = rng.choice([signal.SIGTERM, signal.SIGTERM, signal.SIGINT])
        delay = rng.uniform(0.3, 1.2)
        proc = subprocess.Popen(
            [*STUDYCTL, "run", str(spec), "-s", sqlite_url, "--objectives-dir", str(folder), "-q"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            # Wait until trials run, then signal at a random instant among them.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if study is None and optuna.get_all_study_names(storage=sqlite_url):
                    study = optuna.load_study(study_name="quick", storage=sqlite_url)
                if study is not None and len(study.get_trials(deepcopy=False)) > trials_before + 2:
                    break
                time.sleep(0.05)
            time.sleep(delay)
            proc.send_signal(sig)
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                outcomes.append("hung")
                continue
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert study is not None
        code = proc.returncode
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        outcomes.append(
            f"{signal.Signals(sig).name}->exit {code}"
            + (f", RUNNING {[t.number for t in running]}" if running else "")
        )
        assert code == 128 + sig, out
        # Optuna logs an interrupted trial's traceback with its warning; any other is a
        # crash (e.g. `UnboundLocalError` from Optuna's `_run_trial`).
        assert out.count("Traceback") <= out.count("because of the following error"), out
        assert not running, outcomes
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            reasons.add(str(t.user_attrs.get("fail_reason")))
        finished_before = snapshot_finished(study)
    print(f"[signals] {ITERATIONS} signals: {outcomes}; FAIL reasons {sorted(reasons)}")
    assert "hung" not in outcomes
    assert study is not None
    fig = figures("signals", study, budget=0, kills=ITERATIONS, finished_before=finished_before)
    fig.budget = fig.finished  # an open-ended budget: only "nothing lost" counts here
    fig.extra["hung"] = outcomes.count("hung")
    fig.check()
    # The recorded reason names the signal that stopped the trial.
    assert all(r.startswith("interrupted by SIG") for r in reasons), reasons
