"""The process that trains: runs up to `--max-trials` trials of one study, then exits so
its parent (`studyctl worker`) can replace it and return TensorFlow's leaked memory.

Exit codes: 0 budget met or timeout, 3 recycle (max trials reached), 1 too many failures
in a row, 2 fatal (objective or data cannot be loaded, unknown study), 4 an unexpected error
outside a trial (e.g. the storage went away; the worker replaces the process as after a
crash), 128+N signal N. A trial process whose worker is gone (`execution.parent`: a pipe
and the parent-death signal) stops at the next batch end and claims nothing more: its
trial is recorded "interrupted: its worker process ended" and queued again, so no orphan
keeps training.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import NoReturn

from studyctl.errors import StudyctlError
from studyctl.storage.urls import STORAGE_ENV

EXIT_DONE = 0
EXIT_FAILURES = 1
EXIT_FATAL = 2
EXIT_RECYCLE = 3
EXIT_CRASH = 4


def _hangup_reason(worker_gone: bool) -> str:
    if worker_gone:
        return "interrupted: its worker process ended"
    return "interrupted: the run's launcher ended"  # the worker forwards that as SIGHUP


def main(argv: list[str] | None = None) -> int:
    from studyctl.execution.parent import watch_parent
    from studyctl.execution.spare import notice_sender, standby_fd, wait_for_go

    started_at = time.time()
    watch_parent(_hangup_reason)  # first: the worker may already be gone
    go_fd = standby_fd()  # a spare: warms up, then waits for its worker's go
    last_trial_notice = notice_sender()
    parser = argparse.ArgumentParser(prog="studyctl-trial-process")
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--max-trials", type=int, required=True)
    parser.add_argument("--trials-done", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--objectives-dir", default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.storage == "env:":  # the parent passes the URL in the environment, not in argv
        args.storage = os.environ[STORAGE_ENV]

    from studyctl.execution.progress import ProgressPrinter
    from studyctl.execution.registration import WorkerRegistration
    from studyctl.execution.trial_loop import run_trial_loop
    from studyctl.objectives import resolve_objective
    from studyctl.storage.connect import enable_heartbeat, open_worker_storage
    from studyctl.storage.studies import load_stored_spec, open_study
    from studyctl.training.devices import prewarm, use_backend

    try:
        storage = open_worker_storage(args.storage)
        spec = load_stored_spec(storage, args.study)
        if args.timeout is not None:
            spec = dataclasses.replace(spec, timeout=args.timeout)
        w = spec.worker
        enable_heartbeat(
            storage,
            interval=w.heartbeat_interval,
            grace_period=w.grace_period,
            max_retries=w.max_retries,
        )
        use_backend(spec.training.backend)  # before the objective file can import Keras
        objective = resolve_objective(spec.objective, args.objectives_dir)
        study = open_study(storage, spec, create=False).study
    except StudyctlError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_FATAL
    went_at = warm_at = started_at
    if go_fd is not None:
        prewarm(objective, spec)  # the framework and (without GPUs) the data; no devices
        warm_at = time.time()
        go = wait_for_go(go_fd)
        if go is None:  # not needed, or its worker is gone: it claimed nothing
            return EXIT_DONE
        went_at = time.time()
        args.trials_done = int(go["trials_done"])
        if go["timeout"] is not None:
            spec = dataclasses.replace(spec, timeout=float(go["timeout"]))

    registration = WorkerRegistration(
        storage, spec.name, interval=0, worker_id=args.worker_id, trials_done=args.trials_done
    )
    # On each trial's `worker` attribute: when this process started, when a spare was warm
    # and when it began to take trials (a spare: when its worker told it to go).
    registration.info["process_started_at"] = round(started_at, 3)
    registration.info["process_warm_at"] = round(warm_at, 3)
    registration.info["process_went_at"] = round(went_at, 3)

    def say(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    # Quiet (under `run --workers`, whose launcher prints the totals): no per-trial line,
    # so no per-trial totals query either.
    printer = None if args.quiet else ProgressPrinter(storage, study, spec.n_trials, say)
    try:
        result = run_trial_loop(
            storage,
            study,
            spec,
            objective,
            registration,
            max_trials=args.max_trials,
            on_trial=printer,
            on_last_trial=last_trial_notice,
        )
    except Exception as exc:
        print(f"error: trial process: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_CRASH
    if result.message:
        print(f"worker: {result.message}", file=sys.stderr, flush=True)
    return {
        "budget-met": EXIT_DONE,
        "timeout": EXIT_DONE,
        "max-trials": EXIT_RECYCLE,
        "failures": EXIT_FAILURES,
        "fatal": EXIT_FATAL,
    }.get(result.reason, 128 + int(result.signum or 2))


def exit_now(code: int) -> NoReturn:
    """End a trial process whose loop finished cleanly (budget met, timeout, or its
    `--max-trials` reached): every trial it ran is stored, its claims released and its
    heartbeat stopped, so its connections are closed and the interpreter's teardown
    (TensorFlow's: 0.3 s and more, measured) is skipped. Its worker hands over to the warm
    spare, or a run ends, as soon as this process is gone."""
    import logging

    from studyctl.storage.rdb import close_all_storages

    close_all_storages()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    code = main()
    if code in (EXIT_DONE, EXIT_RECYCLE):
        exit_now(code)
    sys.exit(code)
