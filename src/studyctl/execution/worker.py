"""`studyctl worker STUDY`: one worker that joins a study and leaves when its budget is met.

The worker process itself never imports TensorFlow. It registers in ``studyctl_workers``,
keeps the heartbeat, and runs trials in a child process (`studyctl.execution.trial_process`) that it
replaces every `trials_per_process` trials, so TensorFlow's per-model leak is returned to
the OS and its import is paid once per many trials. SIGINT/SIGTERM/SIGHUP are forwarded to the
child once; the child records its trial FAIL ("interrupted") and exits 130/143.
A child that crashes (killed, segfault) is replaced up to `MAX_CHILD_CRASHES` times in a row.
With `[worker] prewarm` the next child is started as a warm spare while the current one
trains its last trial, and told to go once the current one exits (`execution.spare`).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from studyctl.artifacts import check_artifact_path
from studyctl.execution.parent import watch_parent
from studyctl.execution.registration import WorkerRegistration
from studyctl.execution.spare import TrialProcessHandle, start_trial_process
from studyctl.execution.trial_process import (
    EXIT_CRASH,
    EXIT_DONE,
    EXIT_FAILURES,
    EXIT_FATAL,
    EXIT_RECYCLE,
)
from studyctl.signals import on_stop_signals
from studyctl.storage.connect import open_worker_storage, outage_env, set_outage_tolerance
from studyctl.storage.studies import load_stored_spec
from studyctl.storage.tables import WORKER_STOPPED
from studyctl.storage.urls import STORAGE_ENV
from studyctl.training.devices import THREADS_ENV, backend_environment

MAX_CHILD_CRASHES = 3


@dataclass
class WorkerOptions:
    storage_url: str
    study_name: str
    objectives_dir: Path | None = None
    gpus: str | None = None  # CUDA_VISIBLE_DEVICES for the trial process; None: inherit
    threads: int | None = None
    trials_per_process: int | None = None
    quiet: bool = False
    prewarm: bool | None = None  # None: the spec's worker.prewarm


def child_env(gpus: str | None, threads: int | None) -> dict[str, str]:
    """The trial process's environment: its GPU set and thread bound, set before TF loads."""
    env = dict(os.environ)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    if threads:
        env[THREADS_ENV] = str(threads)
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


class _Forwarder:
    """Forwards SIGINT/SIGTERM/SIGHUP to the current child and to a warm spare (whose
    default action ends it: it holds nothing); remembers the first signal."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.child: TrialProcessHandle | None = None
        self.spare: TrialProcessHandle | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum
        for process in (self.child, self.spare):
            if process is not None:
                process.send_signal(signum)


def run_worker(opts: WorkerOptions, echo: Callable[[str], None]) -> int:
    """Run trial processes until the budget is met; return the exit code.

    Started by `studyctl run --workers N`, the worker stops (and stops its trial process at
    the next batch end) once that launcher is gone (`execution.parent`); started on its own,
    it is not tied to any parent. With `[worker] prewarm`, the successor of a trial process
    is started as it begins its last trial and waits warm (`execution.spare`)."""
    watch_parent(lambda gone: "interrupted: the run's launcher ended")
    storage = open_worker_storage(opts.storage_url)
    spec = load_stored_spec(storage, opts.study_name)
    set_outage_tolerance(storage, spec.worker.storage_outage_tolerance)
    check_artifact_path(spec)
    per_process = opts.trials_per_process or spec.worker.trials_per_process
    prewarm = spec.worker.prewarm if opts.prewarm is None else opts.prewarm
    started = time.monotonic()
    registration = WorkerRegistration(
        storage, spec.name, interval=min(10.0, spec.worker.heartbeat_interval), gpus=opts.gpus
    )
    cmd = [
        sys.executable,
        "-m",
        "studyctl.execution.trial_process",
        "--study",
        spec.name,
        "--storage",
        "env:",
        "--worker-id",
        registration.worker_id,
        "--max-trials",
        str(per_process),
    ]
    if opts.objectives_dir is not None:
        cmd += ["--objectives-dir", str(opts.objectives_dir)]
    if opts.quiet:
        cmd.append("--quiet")
    env = child_env(opts.gpus, opts.threads)
    env.update(backend_environment(spec.training.backend))
    env[STORAGE_ENV] = opts.storage_url  # not on the command line: ps shows it
    env.update(outage_env(storage))

    def time_left() -> float | None:
        if spec.timeout is None:
            return None
        return max(0.0, spec.timeout - (time.monotonic() - started))

    crashes = 0
    code = EXIT_DONE
    forwarder = _Forwarder()
    with registration, on_stop_signals(forwarder):
        try:
            while forwarder.signum is None:
                child, forwarder.spare = forwarder.spare, None
                if child is None:
                    timeout = time_left()
                    extra = [] if timeout is None else ["--timeout", str(timeout)]
                    live = [*cmd, "--trials-done", str(registration.trials_done), *extra]
                    child = start_trial_process(live, env, standby=False)
                forwarder.child = child
                if forwarder.signum is not None:  # a signal just before the hand-over
                    if child.go_fd is not None:
                        forwarder.child = None
                        child.dismiss()  # a spare never told to go claimed nothing
                        break
                    child.send_signal(forwarder.signum)
                child.go(registration.trials_done, time_left())
                try:
                    if prewarm and child.wait_for_last_trial() and forwarder.signum is None:
                        forwarder.spare = start_trial_process(cmd, env, standby=True)
                    code = child.wait()
                finally:
                    child.close()
                forwarder.child = None
                # A trial still RUNNING under this worker's claim lost its only process:
                # fail it and queue its retry now instead of waiting for a heartbeat.
                storage.control.fail_lost_trials(
                    study_name=spec.name,
                    grace_s=0.0,
                    max_retries=spec.worker.max_retries,
                    worker_id=registration.worker_id,
                    reason=f"trial process {_describe(code)}",
                )
                storage.control.release_worker_claims(registration.worker_id)
                registration.trials_done = storage.control.worker_trials_done(
                    registration.worker_id
                )
                if code == EXIT_RECYCLE:
                    crashes = 0
                    continue
                if code in (EXIT_DONE, EXIT_FAILURES, EXIT_FATAL) or code >= 128:
                    break
                crashes += 1
                echo(
                    f"worker {registration.worker_id}: trial process exited with code {code} "
                    f"({_describe(code)}); crash {crashes} of {MAX_CHILD_CRASHES}"
                )
                if crashes >= MAX_CHILD_CRASHES:
                    code = EXIT_FAILURES
                    break
        finally:
            # No spare outlives its worker's loop: told nothing, it claimed nothing.
            spare, forwarder.spare = forwarder.spare, None
            if spare is not None:
                spare.dismiss()
        if forwarder.signum is not None and code < 128:
            code = 128 + forwarder.signum
        registration.final_state = {EXIT_DONE: WORKER_STOPPED}.get(code, f"exit {code}")
    return code


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == EXIT_CRASH:
        return "crashed (see its error line above)"
    return f"exited with code {code}"
