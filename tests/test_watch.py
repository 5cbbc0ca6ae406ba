"""`studyctl watch STUDY`: the snapshot's queries stay few and bounded however many trials
a study has, the view shows what a person needs, and the command follows a running study
to its budget, on a terminal (driven through tmux, as a person sees it) and through a pipe."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from rich.console import Console
from typer.testing import CliRunner

from studyctl.cli import app
from studyctl.inspect.watch import plain_line, render_snapshot
from studyctl.storage import open_storage
from studyctl.storage.snapshot import TrialView, WatchSnapshot, WorkerView, take_snapshot

from .conftest import SLEEPY_OBJECTIVE, STUDYCTL, write_objectives, write_spec

runner = CliRunner()


def _create(tmp_path: Path, url: str, name: str, n_trials: int, objective: str = "sleepy") -> Path:
    objectives = write_objectives(tmp_path / "objectives", SLEEPY_OBJECTIVE, "sleepy.py")
    spec = write_spec(
        tmp_path / f"{name}.toml",
        f"""
        name = "{name}"
        objective = "{objective}"
        metric = "loss"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        seed = 3
        [training]
        epochs = 4
        [worker]
        heartbeat_interval = 1
        grace_period = 10
        """,
    )
    result = runner.invoke(
        app, ["create", str(spec), "-s", url, "--objectives-dir", str(objectives)]
    )
    assert result.exit_code == 0, result.output
    return objectives


def _add_trials(url: str, name: str, n: int) -> None:
    study = optuna.load_study(study_name=name, storage=url)
    dist = optuna.distributions.FloatDistribution(-1, 1)
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={"x": i / n},
                distributions={"x": dist},
                value=(i / n) ** 2 + 0.01,
                intermediate_values={0: 1.0, 1: 0.5},
            )
            for i in range(n)
        ]
    )


class _Statements:
    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        self.rows = 0
        self.engine = engine

    def __enter__(self) -> _Statements:
        sa.event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def _on(self, *args: Any) -> None:
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._on)


def test_a_refresh_is_a_few_bounded_queries(tmp_path: Path, storage_url: str) -> None:
    """On SQLite and PostgreSQL: the same dozen statements at 5 and 40 trials."""
    _create(tmp_path, storage_url, "big", 500)
    engine = open_storage(storage_url).engine
    counts = []
    for n in (5, 35):
        _add_trials(storage_url, "big", n)
        with _Statements(engine) as seen:
            snap = take_snapshot(engine, "big")
        counts.append(seen.count)
    # 12 statements; PostgreSQL also reads its clock (heartbeat ages on the server's time).
    assert counts[0] == counts[1] <= 13, counts
    assert snap.finished == 40 and snap.n_trials == 500
    assert len(snap.recent) == 8 and snap.recent[0].number == 39
    assert snap.best is not None and snap.best.number == 0
    assert snap.best_params == {"x": 0.0}
    assert snap.metrics == ("loss",)
    # A failed trial and its retry: the notes say why and of which trial.
    study = optuna.load_study(study_name="big", storage=storage_url)
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL, user_attrs={"fail_reason": "boom"}
        )
    )
    failed = study.trials[-1]
    study.add_trial(
        optuna.trial.create_trial(value=3.0, system_attrs={"failed_trial": failed._trial_id})
    )
    snap = take_snapshot(engine, "big")
    assert (snap.recent[0].note, snap.recent[1].note) == (f"retry of #{failed.number}", "boom")
    assert snap.retries == 1 and snap.counts["FAIL"] == 1


def _snapshot(**over: Any) -> WatchSnapshot:
    base: dict[str, Any] = {
        "study": "digits-mlp",
        "directions": ("minimize",),
        "metrics": ("val_loss",),
        "n_trials": 20,
        "epochs": 8,
        "counts": {"COMPLETE": 10, "PRUNED": 2, "FAIL": 1, "RUNNING": 2, "WAITING": 0},
        "retries": 1,
        "best": TrialView(7, "COMPLETE", (0.123456789,), 12.5),
        "best_params": {"units": 64, "learning_rate": 0.00123, "activation": "relu"},
        "workers": (
            WorkerView("gpu-node-1-77-aa", "gpu-node-1", "0,1", "running", 2.0, 6, 13, 3),
            WorkerView("gpu-node-2-78-bb", "gpu-node-2", "2,3", "dead", 400.0, 5, None, None),
        ),
        "recent": (
            TrialView(14, "RUNNING", None, 31.0),
            TrialView(13, "FAIL", None, 3.0, "retry of #9; RuntimeError: boom"),
            TrialView(12, "PRUNED", (0.9,), 4.0, "pruned at epoch 2"),
        ),
        "elapsed_s": 300.0,
        "eta_s": 200.0,
        "taken_at": datetime(2026, 11, 29, 12, 0, 1),
    }
    base.update(over)
    return WatchSnapshot(**base)


def _text(renderable: Any, width: int = 100) -> str:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def test_the_view_shows_budget_workers_best_and_last_trials() -> None:
    text = _text(render_snapshot(_snapshot(), footer="q or Ctrl-C quits"))
    for part in (
        "study digits-mlp (minimize val_loss)",
        "12/20 finished",
        "2 pruned, 1 failed, 2 running, 1 retried",
        "ETA 0:03:20",
        "#7 0.123457",
        "units=64",
        "learning_rate=0.00123",
        "gpu-node-1",
        "0,1",
        "#13",
        "3/8",  # the current trial's epoch of the spec's 8
        "dead",
        "retry of #9; RuntimeError: boom",
        "pruned at epoch 2",
        "q or Ctrl-C quits",
    ):
        assert part in text, (part, text)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "━" in text  # the progress bar
    done = _text(render_snapshot(_snapshot(counts={"COMPLETE": 20}, eta_s=0.0)))
    assert "20/20 finished" in done and "ETA done" in done
    empty = _text(render_snapshot(_snapshot(best=None, best_params={}, workers=(), recent=())))
    assert "no completed trial yet" in empty and "none registered" in empty
    line = plain_line(_snapshot())
    assert line.startswith("12:00:01 digits-mlp: 12/20 finished")
    assert "1 worker;" in line and "best #7 0.123457" in line


def _studyctl(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "STUDYCTL_STORAGE"}
    return subprocess.Popen(
        [*STUDYCTL, *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


QUICK_OBJECTIVE = """
import time

from studyctl import function_objective


@function_objective("quick")
def quick(trial, ctx):
    x = trial.suggest_float("x", -1, 1)
    for step in range(3):
        time.sleep(0.4)
        trial.report(x * x + 1 / (step + 1), step)
    return x * x
"""


def _tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", "-L", "studyctl-test", *args], capture_output=True, text=True, check=True
    ).stdout


def _in_pane(command: list[str], status_file: Path) -> str:
    """`command` for a tmux pane, under a shell that writes its exit status to `status_file`.

    The status comes from the file, not from tmux's ``#{pane_dead_status}``: a tmux server
    can miss the SIGCHLD of its pane's process and then reports nothing for a command that
    has exited (seen with tmux 3.3a, even for a plain ``sleep``)."""
    quoted = " ".join(shlex.quote(part) for part in command)
    return f"sh -c {shlex.quote(f'{quoted}; echo $? > {shlex.quote(str(status_file))}')}"


def _exit_status(status_file: Path, timeout: float) -> str:
    """The exit status the pane's command wrote once it exited ("" if it has not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if status_file.exists() and (status := status_file.read_text().strip()):
            return status
        time.sleep(0.2)
    return ""


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_watch_follows_a_running_study_on_a_terminal_and_through_a_pipe(
    tmp_path: Path, sqlite_url: str
) -> None:
    """One worker runs 4 trials of 3 epochs; two watches follow it, one in a tmux pane (what
    a person sees) and one into a pipe (a line per change), and both exit at the budget."""
    write_objectives(tmp_path / "objectives", QUICK_OBJECTIVE, "quick.py")
    objectives = _create(tmp_path, sqlite_url, "live", 4, objective="quick")
    worker = _studyctl(
        ["worker", "live", "-s", sqlite_url, "--objectives-dir", str(objectives), "-q"], tmp_path
    )
    piped = _studyctl(["watch", "live", "-s", sqlite_url, "--interval", "0.5"], tmp_path)
    status_file = tmp_path / "watch.status"
    command = _in_pane(
        [sys.executable, "-m", "studyctl.cli", "watch", "live", "-s", sqlite_url], status_file
    )
    _tmux("new-session", "-d", "-s", "w", "-x", "110", "-y", "40", "-c", str(tmp_path))
    try:
        _tmux("set-option", "-t", "w", "remain-on-exit", "on")
        _tmux("respawn-pane", "-k", "-t", "w", command)
        seen = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = _tmux("capture-pane", "-p", "-t", "w")
            if "workers (1 running)" in seen and "running" in seen.split("last trials")[-1]:
                break
            time.sleep(0.3)
        assert "study live (minimize loss)" in seen, seen
        assert "/4 finished" in seen and "ETA" in seen, seen
        assert "q or Ctrl-C quits" in seen
        # It follows the study to its budget, then exits on its own.
        status = _exit_status(status_file, 90)
        final = _tmux("capture-pane", "-p", "-t", "w")
        assert status == "0", final
        assert "4/4 finished (100%)" in final and "budget met" in final, final
        assert "ETA done" in final and "x=" in final
    finally:
        subprocess.run(["tmux", "-L", "studyctl-test", "kill-server"], capture_output=True)
        out, err = piped.communicate(timeout=120)
        try:
            worker.communicate(timeout=60)  # it leaves once the budget is met
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.communicate()
    assert piped.returncode == 0, err
    lines = out.splitlines()
    assert lines[-1] == "live: budget met", out
    assert "4/4 finished" in lines[-2] and "best #" in lines[-2]
    assert len(lines) >= 4  # a line per change: trials finishing one by one
    assert "\x1b" not in out  # no terminal codes in a pipe
    assert worker.returncode == 0


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_watch_quits_on_q(tmp_path: Path, sqlite_url: str) -> None:
    _create(tmp_path, sqlite_url, "idle", 3)
    status_file = tmp_path / "watch.status"
    command = _in_pane(
        [sys.executable, "-m", "studyctl.cli", "watch", "idle", "-s", sqlite_url], status_file
    )
    _tmux("new-session", "-d", "-s", "q", "-x", "100", "-y", "30", "-c", str(tmp_path))
    try:
        _tmux("set-option", "-t", "q", "remain-on-exit", "on")
        _tmux("respawn-pane", "-k", "-t", "q", command)
        deadline = time.monotonic() + 30
        while "q or Ctrl-C quits" not in _tmux("capture-pane", "-p", "-t", "q"):
            assert time.monotonic() < deadline, _tmux("capture-pane", "-p", "-t", "q")
            time.sleep(0.3)
        assert "0/3 finished" in _tmux("capture-pane", "-p", "-t", "q")
        _tmux("send-keys", "-t", "q", "q")
        assert _exit_status(status_file, 10) == "0", "watch did not quit on q"
    finally:
        subprocess.run(["tmux", "-L", "studyctl-test", "kill-server"], capture_output=True)
