"""`studyctl run` and `studyctl resume` as one library call: `run_study` decides whether
there is anything to run, runs the study here or in worker processes, and returns a
`RunOutcome` that says how it stopped and with which exit code. The CLI only formats it.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from studyctl.execution.prepare import PreparedStudy, prepare_study
from studyctl.execution.trial_loop import FATAL_ATTR
from studyctl.inspect.summary import study_status
from studyctl.spec import StudySpec
from studyctl.storage.studies import delete_study
from studyctl.storage.urls import mask_url

# Exit codes of `studyctl run`/`resume` (and of a worker): see docs/ARCHITECTURE.md.
EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_FATAL = 2


@dataclass
class RunOutcome:
    """How a run ended.

    `stopped`: ``budget-met`` (also when there was nothing to run), ``timeout``,
    ``max-trials``, ``interrupted``, ``failures`` (too many in a row), ``fatal`` (the
    objective or its data cannot be loaded; `message` says why) or ``workers-exited``.
    """

    spec: StudySpec
    created: bool
    status: dict[str, Any]
    stopped: str
    exit_code: int
    trials_run: int = 0
    message: str = ""
    nothing_to_run: bool = False
    # With workers: each worker's exit code by label (w0, w1, ...).
    workers: dict[str, int] | None = None
    signum: int | None = None

    @property
    def fatal(self) -> bool:
        return self.stopped == "fatal"


def fatal_message(study: optuna.Study) -> str | None:
    """The reason of the first trial failed by a user error (`FATAL_ATTR`), if any."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.system_attrs.get(FATAL_ATTR):
            return str(t.user_attrs.get("fail_reason") or "fatal error")
    return None


def discard_fatal_start(prepared: PreparedStudy) -> bool:
    """Delete the study again when this run created it and every trial it has failed on a
    user error (a metric the model does not log, a grid axis nothing suggests, data that
    cannot load): the run leaves nothing behind but its error line, as a spec rejected
    before any trial does. Optuna cannot delete one trial, so in a study that existed
    before, such a trial stays, FAIL with its reason (and `FATAL_ATTR`)."""
    trials = prepared.study.get_trials(deepcopy=False)
    if not prepared.created or not trials:
        return False
    if not all(t.state == TrialState.FAIL and t.system_attrs.get(FATAL_ATTR) for t in trials):
        return False
    delete_study(prepared.storage, prepared.spec.name)
    _remove_empty_folders(Path(prepared.spec.artifacts.path) / prepared.spec.name)
    return True


def _remove_empty_folders(root: Path) -> None:
    """Remove `root` and the folders under it that hold no file (checkpoint folders of
    the deleted trials are already gone); never a file."""
    if not root.is_dir():
        return
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


def _signal_exit(signum: int | None) -> int:
    return 128 + int(signum or signal.SIGINT)


def run_study(
    spec: StudySpec,
    storage_url: str,
    *,
    objectives_dir: Path | None = None,
    workers: int = 0,
    gpu_sets: list[str | None] | None = None,
    threads_per_worker: int | None = None,
    trials_per_process: int | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = lambda _line: None,
) -> RunOutcome:
    """Create or continue `spec`'s study and run it to its budget: in this process, or in
    `workers` worker processes (one GPU set each from `gpu_sets`). `echo` gets the progress
    lines (none when `quiet`)."""
    from studyctl.execution.progress import ProgressPrinter
    from studyctl.execution.sequential import run_sequential

    say = (lambda _m: None) if quiet else echo
    prepared = prepare_study(spec, storage_url, objectives_dir)
    status = study_status(prepared.storage, spec.name)
    if status["complete"]:
        return RunOutcome(
            spec=spec,
            created=prepared.created,
            status=status,
            stopped="budget-met",
            exit_code=EXIT_OK,
            nothing_to_run=True,
        )
    verb = "created" if prepared.created else "continuing"
    budget = "-" if status["n_trials"] is None else status["n_trials"]
    say(
        f"study {spec.name} ({verb}) on {mask_url(storage_url)}: {status['finished']}/"
        f"{budget} finished, objective {spec.objective}, "
        f"sampler {spec.sampler.type}, pruner {spec.pruner.type}"
    )
    if workers:
        from studyctl.execution.launcher import launch_workers

        launched = launch_workers(
            prepared.storage,
            storage_url,
            spec.name,
            spec.n_trials,
            gpu_sets or [None] * workers,
            threads=threads_per_worker,
            objectives_dir=objectives_dir,
            trials_per_process=trials_per_process,
            echo=say,
            quiet=quiet,
        )
        bad = [c for c in launched.exit_codes.values() if c != 0]
        if launched.signum:
            code = _signal_exit(launched.signum)
        elif bad:
            code = EXIT_FATAL if EXIT_FATAL in bad else EXIT_FAILURES
        else:
            code = EXIT_OK
        # A worker stopped by a user error (a spec that does not fit the objective) says
        # why in its own output; the run reports the first such reason as its error.
        message = fatal_message(prepared.study) if code == EXIT_FATAL else None
        status = study_status(prepared.storage, spec.name)
        if message is not None:
            discard_fatal_start(prepared)
        return RunOutcome(
            spec=spec,
            created=prepared.created,
            status=status,
            stopped="interrupted"
            if launched.signum
            else ("fatal" if message is not None else "workers-exited"),
            exit_code=code,
            message=message or "",
            workers=launched.exit_codes,
            signum=launched.signum,
        )
    printer = ProgressPrinter(prepared.storage, prepared.study, spec.n_trials, say)
    result = run_sequential(prepared, objectives_dir, on_trial=printer)
    code = {
        "interrupted": _signal_exit(result.signum),
        "fatal": EXIT_FATAL,
        "failures": EXIT_FAILURES,
    }.get(result.reason, EXIT_OK)
    status = study_status(prepared.storage, spec.name)
    if result.reason == "fatal":
        discard_fatal_start(prepared)
    return RunOutcome(
        spec=spec,
        created=prepared.created,
        status=status,
        stopped=result.reason,
        exit_code=code,
        trials_run=result.trials_run,
        message=result.message,
        signum=result.signum,
    )
