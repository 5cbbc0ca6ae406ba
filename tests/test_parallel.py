"""Parallel workers: real processes on a real SQLite file."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from studyctl.errors import StudyctlError
from studyctl.execution.gpus import assign_gpu_sets, parse_gpus

from .conftest import REPO, STUDYCTL, run_cli, write_objectives, write_spec

ENV_OBJECTIVE = """
import os
import time

from studyctl import function_objective


@function_objective("env_sleep")
def env_sleep(trial, ctx):
    x = trial.suggest_float("x", -1, 1)
    time.sleep(float(os.environ.get("STUDYCTL_TEST_SLEEP", "0")))
    return x * x


@function_objective("records_env")
def records_env(trial, ctx):
    trial.set_user_attr("cuda_visible_devices", os.environ.get("CUDA_VISIBLE_DEVICES"))
    trial.set_user_attr("threads", os.environ.get("STUDYCTL_THREADS"))
    x = trial.suggest_float("x", -1, 1)
    time.sleep(float(ctx.options.get("sleep", 0)))
    return x * x
"""


def fast_spec(
    tmp_path: Path,
    n_trials: int,
    sleep: float = 0.0,
    objective: str = "quadratic",
    per_process: int = 25,
) -> Path:
    return write_spec(
        tmp_path / "par.toml",
        f"""
        name = "par"
        objective = "{objective}"
        metric = "value"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        [options]
        sleep = {sleep}
        [worker]
        trials_per_process = {per_process}
        heartbeat_interval = 2
        grace_period = 10
    """,
    )


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_parse_and_assign_gpu_sets() -> None:
    assert parse_gpus("0,1,2,3") == ["0", "1", "2", "3"]
    assert parse_gpus("0-3,6") == ["0", "1", "2", "3", "6"]
    assert assign_gpu_sets(parse_gpus("0-7"), 4, 2) == ["0,1", "2,3", "4,5", "6,7"]
    assert assign_gpu_sets(["3", "5"], 2, 1) == ["3", "5"]
    with pytest.raises(StudyctlError, match="need 6 GPUs; --gpus gives 4"):
        assign_gpu_sets(parse_gpus("0-3"), 3, 2)
    with pytest.raises(StudyctlError, match="expected ids"):
        parse_gpus("gpu0")
    with pytest.raises(StudyctlError, match="listed twice"):
        parse_gpus("0,0")


def test_three_workers_share_one_budget(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    spec = fast_spec(tmp_path, 15, sleep=0.2, per_process=4)
    result = run_cli(
        [
            "run",
            str(spec),
            "--workers",
            "3",
            "-s",
            sqlite_url,
            "--objectives-dir",
            str(objectives_dir),
            "--format",
            "json",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="par", storage=sqlite_url)
    assert len(finished(study)) == 15
    assert len(study.trials) == 15
    assert sorted(t.number for t in study.trials) == list(range(15))
    data = json.loads(result.stdout)
    workers = data["study"]["workers"]
    assert len(workers) == 3 and sum(w["trials_done"] for w in workers) == 15
    assert all(w["state"] == "stopped" for w in workers)
    # Each worker recycled its trial process after 4 trials: several pids per worker.
    pids: dict[str, set[int]] = {t.user_attrs["worker"]["worker_id"]: set() for t in study.trials}
    for t in study.trials:
        pids[t.user_attrs["worker"]["worker_id"]].add(t.user_attrs["worker"]["pid"])
    assert any(len(p) > 1 for p in pids.values())


def test_gpu_sets_reach_workers_and_too_few_is_an_error(tmp_path: Path, sqlite_url: str) -> None:
    folder = write_objectives(tmp_path / "objectives", ENV_OBJECTIVE, name="records_env.py")
    spec = fast_spec(tmp_path, 6, sleep=0.2, objective="records_env")
    too_few = run_cli(
        [
            "run",
            str(spec),
            "--workers",
            "3",
            "--gpus",
            "0,1",
            "-s",
            sqlite_url,
            "--objectives-dir",
            str(folder),
        ],
        cwd=tmp_path,
    )
    assert too_few.returncode == 2
    assert "3 workers x 1 GPU(s) need 3 GPUs; --gpus gives 2" in too_few.stderr
    assert optuna.get_all_study_names(storage=sqlite_url) == []

    ok = run_cli(
        [
            "run",
            str(spec),
            "--workers",
            "2",
            "--gpus",
            "4-7",
            "--gpus-per-worker",
            "2",
            "--threads-per-worker",
            "1",
            "-s",
            sqlite_url,
            "--objectives-dir",
            str(folder),
        ],
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    study = optuna.load_study(study_name="par", storage=sqlite_url)
    by_worker: dict[str, set[str]] = {}
    for t in study.trials:
        by_worker.setdefault(t.user_attrs["worker"]["worker_id"], set()).add(
            t.user_attrs["cuda_visible_devices"]
        )
        assert t.user_attrs["threads"] == "1"
    assert sorted(v for s in by_worker.values() for v in s) == ["4,5", "6,7"]
    assert all(len(s) == 1 for s in by_worker.values())


def test_worker_joins_a_running_study(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    spec = fast_spec(tmp_path, 16, sleep=0.6)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    first = subprocess.Popen(
        [
            *STUDYCTL,
            "run",
            str(spec),
            "--workers",
            "1",
            "-s",
            sqlite_url,
            "--objectives-dir",
            str(objectives_dir),
            "-q",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            names = optuna.get_all_study_names(storage=sqlite_url)
            if (
                names
                and len(finished(optuna.load_study(study_name="par", storage=sqlite_url))) >= 2
            ):
                break
            time.sleep(0.3)
        joined = run_cli(
            ["worker", "par", "-s", sqlite_url, "--objectives-dir", str(objectives_dir)],
            cwd=tmp_path,
        )
        assert joined.returncode == 0, joined.stderr
        first.wait(timeout=120)
    finally:
        first.kill() if first.poll() is None else None
    assert first.returncode == 0, first.stderr.read() if first.stderr else ""
    study = optuna.load_study(study_name="par", storage=sqlite_url)
    assert len(study.trials) == 16 and len(finished(study)) == 16
    workers = run_cli(["status", "par", "-s", sqlite_url, "-f", "json"], cwd=tmp_path)
    done = [w["trials_done"] for w in json.loads(workers.stdout)["workers"]]
    assert len(done) == 2 and all(d > 0 for d in done) and sum(done) == 16


def _signal_two_running_workers(
    spec: Path, url: str, objectives: Path, signum: int, extra_env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Start `run --workers 2`, wait until both workers run a trial, send `signum` to the
    launcher; return its exit code and output."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(extra_env or {})}
    proc = subprocess.Popen(
        [
            *STUDYCTL,
            "run",
            str(spec),
            "--workers",
            "2",
            "-s",
            url,
            "--objectives-dir",
            str(objectives),
        ],
        cwd=spec.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        running: list[optuna.trial.FrozenTrial] = []
        while time.monotonic() < deadline and len(running) < 2:
            time.sleep(0.3)
            if optuna.get_all_study_names(storage=url):
                # Both objectives running (params suggested), not just both trials created.
                running = [
                    t
                    for t in optuna.load_study(study_name="par", storage=url).get_trials(
                        states=(TrialState.RUNNING,)
                    )
                    if "x" in t.params
                ]
        assert len(running) == 2
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill() if proc.poll() is None else None
    return proc.returncode, out


def test_ctrl_c_leaves_no_running_trial(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    spec = fast_spec(tmp_path, 10, sleep=30)
    code, out = _signal_two_running_workers(spec, sqlite_url, objectives_dir, signal.SIGINT)
    assert code == 130, out
    trials = optuna.load_study(study_name="par", storage=sqlite_url).trials
    assert [t for t in trials if t.state == TrialState.RUNNING] == []
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.user_attrs["fail_reason"] for t in failed] == ["interrupted by SIGINT"] * 2
    # Interrupted trials are queued again with the same parameters, to be resumed.
    retries = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.params["x"] for t in retries) == sorted(t.params["x"] for t in failed)


def test_sigterm_then_resume_completes(tmp_path: Path, sqlite_url: str) -> None:
    folder = write_objectives(tmp_path / "objectives", ENV_OBJECTIVE, name="records_env.py")
    spec = fast_spec(tmp_path, 6, objective="env_sleep")
    code, out = _signal_two_running_workers(
        spec, sqlite_url, folder, signal.SIGTERM, {"STUDYCTL_TEST_SLEEP": "30"}
    )
    assert code == 143, out
    study = optuna.load_study(study_name="par", storage=sqlite_url)
    assert study.get_trials(states=(TrialState.RUNNING,)) == []
    resumed = run_cli(
        ["resume", "par", "-s", sqlite_url, "--objectives-dir", str(folder)],
        cwd=tmp_path,
        env={"STUDYCTL_TEST_SLEEP": "0"},
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    study = optuna.load_study(study_name="par", storage=sqlite_url)
    assert len(finished(study)) == 6
    # The two interrupted trials were retried with their parameters.
    interrupted = [t for t in study.trials if t.state == TrialState.FAIL]
    retried = {t.system_attrs.get("failed_trial") for t in finished(study)}
    assert {t.number for t in interrupted} <= retried


@pytest.mark.slow
def test_seed_grid_with_three_workers(tmp_path: Path, sqlite_url: str) -> None:
    text = (REPO / "studies" / "seed_grid.toml").read_text().replace("epochs = 5", "epochs = 1")
    spec = write_spec(tmp_path / "grid.toml", text)
    result = run_cli(
        [
            "run",
            str(spec),
            "--workers",
            "3",
            "--threads-per-worker",
            "1",
            "-s",
            sqlite_url,
            "--objectives-dir",
            str(REPO / "objectives"),
            "-q",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    trials = optuna.load_study(study_name="seed-grid", storage=sqlite_url).trials
    points = sorted((t.params["learning_rate"], t.params["batch_size"]) for t in trials)
    assert points == sorted(itertools.product([0.01, 0.001, 0.0001], [32, 64, 128]))
    assert len({t.user_attrs["worker"]["worker_id"] for t in trials}) >= 2


@pytest.mark.slow
def test_keras_objective_with_two_workers(tmp_path: Path, sqlite_url: str) -> None:
    text = (REPO / "studies" / "digits_mlp.toml").read_text()
    text = text.replace("n_trials = 20", "n_trials = 4").replace("epochs = 8", "epochs = 1")
    spec = write_spec(tmp_path / "mlp.toml", text)
    result = run_cli(
        [
            "run",
            str(spec),
            "--workers",
            "2",
            "--threads-per-worker",
            "1",
            "--trials-per-process",
            "1",
            "-s",
            sqlite_url,
            "--objectives-dir",
            str(REPO / "objectives"),
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="digits-mlp", storage=sqlite_url)
    assert len(finished(study)) == 4 and len(study.trials) == 4
    assert all(t.user_attrs["epochs_run"] == 1 for t in study.trials)
    assert "[study] 4/4 finished" in result.stdout
