"""`studyctl run SPEC --workers N`: start N `studyctl worker` processes on the study's
storage, give each its GPU set, show live progress, forward signals, restart crashes.

The launcher never imports TensorFlow; workers are started before TF exists anywhere.
A worker process that dies unexpectedly (not a clean exit, not "too many failures", not a
fatal error, not a signal we forwarded) is restarted up to `MAX_WORKER_RESTARTS` times.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import optuna

from studyctl.errors import StorageError
from studyctl.execution.parent import ChildLink, link_child
from studyctl.execution.progress import StudyTotals, eta_text, format_duration
from studyctl.signals import on_stop_signals
from studyctl.storage.connect import outage_env
from studyctl.storage.rdb import StudyctlStorage
from studyctl.storage.tables import finished_count
from studyctl.storage.urls import STORAGE_ENV

MAX_WORKER_RESTARTS = 3
POLL_S = 1.0


@dataclass
class WorkerSlot:
    label: str
    gpus: str | None
    proc: subprocess.Popen[str] | None = None
    restarts: int = 0
    exit_code: int | None = None
    reader: threading.Thread | None = None
    link: ChildLink | None = None


@dataclass
class LaunchResult:
    exit_codes: dict[str, int] = field(default_factory=dict)
    signum: int | None = None


def _pump(label: str, stream: IO[str], echo: Callable[[str], None], ended: threading.Event) -> None:
    try:
        for line in stream:
            echo(f"[{label}] {line.rstrip()}")
    finally:
        ended.set()  # end of its output: the worker is exiting; the launcher looks now


def launch_workers(
    storage: StudyctlStorage,
    storage_url: str,
    study_name: str,
    n_trials: int | None,
    gpu_sets: list[str | None],
    *,
    threads: int | None,
    objectives_dir: Path | None,
    trials_per_process: int | None,
    echo: Callable[[str], None],
    quiet: bool = False,
) -> LaunchResult:
    slots = [WorkerSlot(label=f"w{i}", gpus=g) for i, g in enumerate(gpu_sets)]
    result = LaunchResult()
    ended = threading.Event()  # a worker's output ended: it exits

    def start(slot: WorkerSlot) -> None:
        cmd = [sys.executable, "-m", "studyctl.cli", "worker", study_name]
        if slot.gpus is not None:
            cmd += ["--gpus", slot.gpus]
        if threads:
            cmd += ["--threads", str(threads)]
        if objectives_dir is not None:
            cmd += ["--objectives-dir", str(objectives_dir)]
        if trials_per_process:
            cmd += ["--trials-per-process", str(trials_per_process)]
        if quiet:
            cmd.append("--quiet")
        # The worker stops (its trial at the next batch end) if this launcher is killed.
        slot.link = link_child()
        env = {
            **os.environ,
            STORAGE_ENV: storage_url,
            "PYTHONUNBUFFERED": "1",
            **slot.link.env,
            **outage_env(storage),
        }
        slot.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            pass_fds=slot.link.pass_fds,
        )
        slot.link.started()
        assert slot.proc.stdout is not None
        slot.reader = threading.Thread(
            target=_pump, args=(slot.label, slot.proc.stdout, echo, ended), daemon=True
        )
        slot.reader.start()
        echo(f"[{slot.label}] started (pid {slot.proc.pid}, GPUs {slot.gpus or 'none'})")

    def forward(signum: int, frame: FrameType | None) -> None:
        result.signum = result.signum or signum
        for slot in slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signum)

    with on_stop_signals(forward):
        for slot in slots:
            start(slot)
        started = time.monotonic()
        last_finished = -1
        totals = StudyTotals(storage, optuna.load_study(study_name=study_name, storage=storage))
        at_start = finished_count(totals.read()[0])
        lost: StorageError | None = None
        while any(s.proc is not None for s in slots):
            if ended.wait(POLL_S):
                ended.clear()
                for slot in slots:  # its output ends just before it exits
                    _reap(slot)
            for slot in slots:
                if slot.proc is None or slot.proc.poll() is None:
                    continue
                code = slot.proc.returncode
                if slot.link is not None:
                    slot.link.close()
                if slot.reader is not None:
                    slot.reader.join(timeout=5)
                slot.proc = None
                if code < 0 and result.signum is None and slot.restarts < MAX_WORKER_RESTARTS:
                    slot.restarts += 1
                    echo(
                        f"[{slot.label}] died ({signal.Signals(-code).name}); restarting "
                        f"({slot.restarts}/{MAX_WORKER_RESTARTS})"
                    )
                    start(slot)
                    continue
                slot.exit_code = code
                result.exit_codes[slot.label] = code
                echo(f"[{slot.label}] exited with code {code}")
            if lost is not None:
                continue
            try:
                counts, best = totals.read()
                finished = finished_count(counts)
                if finished != last_finished and not quiet:
                    last_finished = finished
                    echo(_totals_line(counts, best, n_trials, started, at_start))
            except StorageError as exc:
                # The database is gone past the tolerance: the workers find out too and
                # stop; wait for them rather than leave them without a parent.
                lost = exc
    if lost is not None:
        raise lost
    return result


def _reap(slot: WorkerSlot) -> None:
    """Wait briefly for a worker whose output ended (it is exiting), so the loop sees its
    exit now rather than at its next poll."""
    if slot.proc is None or slot.reader is None:
        return
    slot.reader.join(timeout=0.01)
    if not slot.reader.is_alive():
        with contextlib.suppress(subprocess.TimeoutExpired):
            slot.proc.wait(timeout=POLL_S)


def _totals_line(
    counts: dict[str, int],
    best: str,
    n_trials: int | None,
    started: float,
    at_start: int,
) -> str:
    finished = finished_count(counts)
    done_here = finished - at_start
    elapsed = time.monotonic() - started
    eta = eta_text(elapsed, done_here, None if n_trials is None else n_trials - finished)
    return (
        f"[study] {finished}/{n_trials or '?'} finished, {counts['RUNNING']} running, "
        f"{counts['FAIL']} failed | {best} | elapsed {format_duration(elapsed)}{eta}"
    )
