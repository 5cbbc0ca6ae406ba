"""Workers on different hosts sharing one PostgreSQL study.

Each "host" is a worker process in its own UTS namespace (its own hostname) and working
directory; the artifacts path is shared, as a cluster's shared file system would be. One
host's worker is killed mid-trial; the other finishes the study and retries that trial.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from studyctl.sequential import prepare_study
from studyctl.spec import load_spec

from .conftest import run_cli, write_objectives, write_spec

pytestmark = pytest.mark.slow

SLEEPY = """
import time

from studyctl import function_objective


@function_objective("sleepy")
def sleepy(trial, ctx):
    x = trial.suggest_float("x", -1, 1)
    for step in range(4):
        time.sleep(0.5)
        trial.report(x * x + 1 / (step + 1), step)
    return x * x
"""


def _host_worker(host: str, cwd: Path, url: str, objectives: Path) -> subprocess.Popen[str]:
    command = (
        f"hostname {host} && cd {cwd} && exec {sys.executable} -m studyctl.cli worker "
        f"hosts -s {url} --objectives-dir {objectives}"
    )
    return subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", command],
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_two_hosts_one_killed_mid_trial(tmp_path: Path, postgres_url: str) -> None:
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode != 0
    ):
        pytest.skip("this sandbox does not allow UTS namespaces (unshare --uts)")
    objectives = write_objectives(tmp_path / "shared" / "objectives", SLEEPY, name="sleepy.py")
    spec = write_spec(
        tmp_path / "hosts.toml",
        f"""
        name = "hosts"
        objective = "sleepy"
        n_trials = 6
        [sampler]
        type = "random"
        [worker]
        heartbeat_interval = 1
        grace_period = 3
        [artifacts]
        path = "{tmp_path / "shared" / "artifacts"}"
    """,
    )
    prepare_study(load_spec(spec), postgres_url, objectives)
    homes = {h: tmp_path / h for h in ("host-a", "host-b")}
    for home in homes.values():
        home.mkdir()
    workers = {h: _host_worker(h, home, postgres_url, objectives) for h, home in homes.items()}
    study = optuna.load_study(study_name="hosts", storage=postgres_url)
    try:
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:
            for t in study.get_trials(states=(TrialState.RUNNING,)):
                if (
                    t.user_attrs.get("worker", {}).get("host") == "host-a"
                    and len(t.intermediate_values) >= 1
                ):
                    victim = t
            time.sleep(0.1)
        assert victim is not None, "host-a never ran a trial"
        os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)  # its trial process
        os.killpg(workers["host-a"].pid, signal.SIGKILL)  # and the worker itself
        out_b, _ = workers["host-b"].communicate(timeout=180)
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.kill()
    assert workers["host-b"].returncode == 0, out_b
    trials = optuna.load_study(study_name="hosts", storage=postgres_url).trials
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 6
    assert trials[victim.number].state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert retry.user_attrs["worker"]["host"] == "host-b"
    status = json.loads(
        run_cli(["status", "hosts", "-s", postgres_url, "-f", "json"], cwd=tmp_path).stdout
    )
    hosts = {w["host"]: w["state"] for w in status["workers"]}
    assert hosts == {"host-a": "dead", "host-b": "stopped"}
