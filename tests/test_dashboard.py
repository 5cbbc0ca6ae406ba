"""`studyctl dashboard`: optuna-dashboard's own HTTP API on the study's storage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import psutil
import pytest

from .conftest import STUDYCTL, run_cli, write_objectives, write_spec

CURVY = """
import optuna

from studyctl import function_objective


@function_objective("curvy")
def curvy(trial, ctx):
    x = trial.suggest_float("x", -10, 10)
    if x > 9:
        raise RuntimeError("x too large")
    for step in range(3):
        trial.report((x - 2) ** 2 + 1 / (step + 1), step)
        if trial.should_prune():
            trial.set_user_attr("pruned_at_epoch", step)
            raise optuna.TrialPruned()
    return (x - 2) ** 2
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def dashboard(url: str, cwd: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    proc = subprocess.Popen(
        [*STUDYCTL, "dashboard", "-s", url, "--port", str(port), "--no-token"],
        cwd=cwd,
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(f"{base}/api/studies")
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(proc.stdout.read() if proc.stdout else "") from None
                time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dashboard_api_shows_trials_and_is_bound_to_loopback(
    tmp_path: Path, sqlite_url: str
) -> None:
    folder = write_objectives(tmp_path / "objectives", CURVY, name="curvy.py")
    spec = write_spec(
        tmp_path / "c.toml",
        """
        name = "curvy"
        objective = "curvy"
        metric = "value"
        n_trials = 2
        [pruner]
        type = "median"
        n_startup_trials = 1
        n_warmup_steps = 0
        [[enqueue]]
        x = 2.0
        [[enqueue]]
        x = 9.5
        [[enqueue]]
        x = 8.0
    """,
    )
    ran = run_cli(
        ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(folder)], cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    with dashboard(sqlite_url, tmp_path) as (base, proc):
        studies = get_json(f"{base}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["curvy"]
        detail = get_json(f"{base}/api/studies/{studies[0]['study_id']}")
        trials = {t["number"]: t for t in detail["trials"]}
        assert [trials[n]["state"] for n in range(3)] == ["Complete", "Fail", "Pruned"]
        assert len(trials[0]["intermediate_values"]) == 3
        attrs = {n: {a["key"]: a["value"] for a in t["user_attrs"]} for n, t in trials.items()}
        assert "RuntimeError: x too large" in attrs[1]["fail_reason"]
        assert attrs[2]["pruned_at_epoch"] == "0"
        assert "host" in attrs[0]["worker"] and "duration_s" in attrs[0]
        listening = [
            c.laddr
            for c in psutil.Process(proc.pid).net_connections()
            if c.status == psutil.CONN_LISTEN
        ]
        assert [a.ip for a in listening] == ["127.0.0.1"]
        assert "--read-only" in run_cli(["dashboard", "--help"], cwd=tmp_path).stdout


@pytest.mark.slow
def test_dashboard_polling_sqlite_never_fails_workers(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    spec = write_spec(
        tmp_path / "q.toml",
        """
        name = "polled"
        objective = "quadratic"
        n_trials = 30
        [sampler]
        type = "random"
        [options]
        sleep = 0.1
        steps = 3
    """,
    )
    run_cli(["db", "upgrade", "-s", sqlite_url], cwd=tmp_path)
    polls = 0
    stop = threading.Event()
    with dashboard(sqlite_url, tmp_path) as (base, _):

        def poll() -> None:
            nonlocal polls
            while not stop.wait(0.1):
                for study in get_json(f"{base}/api/studies")["study_summaries"]:
                    get_json(f"{base}/api/studies/{study['study_id']}")
                polls += 1

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        result = run_cli(
            [
                "run",
                str(spec),
                "--workers",
                "2",
                "-q",
                "-s",
                sqlite_url,
                "--objectives-dir",
                str(objectives_dir),
            ],
            cwd=tmp_path,
        )
        stop.set()
        poller.join(timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="polled", storage=sqlite_url)
    assert len(study.trials) == 30
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert polls > 20
