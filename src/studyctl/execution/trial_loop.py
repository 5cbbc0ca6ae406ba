"""The trial loop: claim a slot of the budget, run one trial through `study.optimize`
(so Optuna's heartbeat covers it), record the outcome, repeat.

The same loop serves `studyctl run` (in the CLI's process) and every worker process.
TensorFlow is imported only by `studyctl.training`, when the first Keras trial trains.
Its decisions (fatal error or not, when to stop for failures, what a finished trial's
outcome is) are small functions, unit-tested without a database.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from studyctl.errors import (
    StudyctlError,
    TrialFailed,
    WorkerInterrupted,
    mask_secrets_in_logs,
    one_line,
)
from studyctl.execution.registration import WorkerRegistration
from studyctl.execution.trial_end import (
    fail_unfinished,
    forget_removed_checkpoint,
    retry_if_interrupted,
)
from studyctl.objectives import KerasObjective, Objective, TrialContext
from studyctl.signals import (
    interruptible,
    on_stop_signals,
    reset_stop,
    stop_at_safe_point,
    stop_reason,
    stop_requested,
)
from studyctl.spec import StudySpec
from studyctl.storage.connect import WorkerStorage
from studyctl.storage.rdb import StudyctlStorage
from studyctl.storage.urls import mask_secrets
from studyctl.storage.waiting import use_indexed_waiting_pop
from studyctl.training.checkpoints import discard_checkpoint
from studyctl.training.devices import get_strategy, warm_up
from studyctl.verbosity import configure_optuna_logging

# How long a worker without a claim waits before looking again while others' trials run.
# At the end of a study every worker but one waits here for the last trial; the run ends
# when the last of them sees the budget met (2 s cost a 2-worker run about 1 s on average).
IDLE_POLL_S = 0.5
# A retry carries its original's user attributes; these describe the original only.
INHERITED_ATTRS = (
    "fail_reason",
    "traceback",
    "pruned_at_epoch",
    "resumed_from_epoch",
    "checkpoint_fallback",
    "history_inherited_epochs",
)
# System attribute of a trial failed by a StudyctlError (a user error no retry can fix).
FATAL_ATTR = "studyctl:fatal"
# The logger of Optuna's "Trial N failed with parameters ..." warnings.
OPTUNA_OPTIMIZE_LOGGER = "optuna.study._optimize"


@dataclass
class TrialOutcome:
    number: int
    state: TrialState
    values: list[float] | None
    duration_s: float
    reason: str | None = None


@dataclass
class LoopResult:
    reason: str  # budget-met | timeout | max-trials | interrupted | failures | fatal
    trials_run: int = 0
    message: str = ""
    signum: int | None = None


class _TrialRunner:
    """The function handed to `study.optimize`: links the claim, runs the objective and
    records why a trial failed or was pruned on the trial itself."""

    def __init__(
        self,
        spec: StudySpec,
        objective: Objective,
        storage: WorkerStorage,
        registration: WorkerRegistration,
    ) -> None:
        self.spec = spec
        self.objective = objective
        self.storage = storage
        self.registration = registration
        self.claim_id: int | None = None
        self.last_error: BaseException | None = None

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        self.last_error = None
        info = self.registration.info
        worker_attr = {**info, "worker_id": self.registration.worker_id}
        # On the database itself the trial's `worker` attribute rides on the attach; behind
        # a `studyctl proxy` (which may be older than this worker) it is written on its own.
        direct = isinstance(self.storage, StudyctlStorage)
        if self.claim_id is not None:  # the worker's current trial in the same commit
            self.storage.control.attach_claim(
                self.claim_id,
                trial._trial_id,
                worker_id=self.registration.worker_id,
                current_trial=trial.number,
                worker_attr=worker_attr if direct else None,
            )
        else:
            self.registration.update(current_trial=trial.number)
        if self.claim_id is None or not direct:
            trial.set_user_attr("worker", worker_attr)
        else:  # stored by the attach: the objective's `trial.user_attrs` shows it too
            trial._cached_frozen_trial.user_attrs["worker"] = worker_attr
        for inherited in INHERITED_ATTRS:
            # A retry carries its original's attributes; these describe the original only.
            if trial.user_attrs.get(inherited) is not None:
                trial.set_user_attr(inherited, None)
        ctx = TrialContext(
            trial=trial,
            spec=self.spec,
            objective=self.objective,
            worker=info,
            strategy_provider=get_strategy,
            forget_attrs=self._forget_attrs,
        )
        start = time.monotonic()
        try:
            result: Any
            # Only here may a stop signal raise (signals.interruptible); elsewhere in
            # Optuna's bookkeeping it is recorded and the loop stops at its next check.
            with interruptible():
                if isinstance(self.objective, KerasObjective):
                    from studyctl.training.trial import run_keras_trial

                    result = run_keras_trial(ctx, self.objective)
                else:
                    result = self.objective.func(trial, ctx)
                    ctx.check_grid_axes()
                    ctx.warn_unsuggested()
            return _check_result(result, self.spec)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt as exc:
            self.last_error = exc
            trial.set_user_attr("fail_reason", stop_reason())
            raise
        except StudyctlError as exc:
            # The user's to fix (a spec that does not fit the objective, data that cannot
            # load): one line, no traceback, and a mark, so a run that created the study
            # for nothing but this deletes it again (study_run.discard_fatal_start).
            self.last_error = exc
            trial.set_user_attr("fail_reason", str(exc)[:1000])
            trial.study._storage.set_trial_system_attr(trial._trial_id, FATAL_ATTR, True)
            raise
        except Exception as exc:
            self.last_error = exc
            trial.set_user_attr("fail_reason", _failure_reason(exc)[:1000])
            trial.set_user_attr("traceback", mask_secrets(traceback.format_exc())[-8000:])
            raise
        finally:
            duration = round(time.monotonic() - start, 3)
            if isinstance(self.storage, StudyctlStorage):  # stored with the trial's end
                self.storage.defer_trial_user_attr(trial._trial_id, "duration_s", duration)
            else:
                trial.set_user_attr("duration_s", duration)

    def _forget_attrs(self, trial_id: int, user_keys: list[str], system_keys: list[str]) -> None:
        self.storage.control.forget_trial_attrs(
            trial_id=trial_id, user_keys=user_keys, system_keys=system_keys
        )


class _QuietFatal(logging.Filter):
    """Drops Optuna's "Trial N failed ..." warnings (with their traceback) for a trial that
    stopped on a StudyctlError: the run reports it as one error line."""

    def __init__(self, runner: _TrialRunner) -> None:
        super().__init__()
        self.runner = runner

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            isinstance(self.runner.last_error, StudyctlError)
            and record.levelno == logging.WARNING
            and " failed with " in record.getMessage()
        )


def _failure_reason(exc: BaseException) -> str:
    # TensorFlow's ResourceExhaustedError, or JAX's XlaRuntimeError "RESOURCE_EXHAUSTED: Out
    # of memory ...", recognised without importing either framework.
    if type(exc).__name__ == "ResourceExhaustedError" or str(exc).startswith("RESOURCE_EXHAUSTED"):
        return f"out of memory: {one_line(exc)}"
    return one_line(exc)


def _check_result(result: Any, spec: StudySpec) -> float | list[float]:
    values = list(result) if isinstance(result, list | tuple) else [result]
    if len(values) != len(spec.directions):
        raise TrialFailed(
            f"objective returned {len(values)} value(s); the study has "
            f"{len(spec.directions)} direction(s)"
        )
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise TrialFailed(f"objective returned {v!r}; expected a number") from None
        if f != f or f in (float("inf"), float("-inf")):
            raise TrialFailed(f"objective returned {f}")
        out.append(f)
    return out[0] if len(out) == 1 else out


# A full disk, a quota or a read-only file system fails every next trial the same way.
_FATAL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def is_fatal(exc: BaseException | None) -> bool:
    """Errors no retry can fix: the objective or its data cannot be loaded, the storage
    refuses writes, the disk a trial writes to is full or read-only."""
    return isinstance(exc, StudyctlError) or (
        isinstance(exc, OSError) and exc.errno in _FATAL_ERRNOS
    )


def failures_in_a_row(outcome: TrialOutcome, before: int) -> int:
    """The count of failed trials in a row after `outcome` (any other outcome resets it)."""
    return before + 1 if outcome.state == TrialState.FAIL else 0


def stop_after(
    outcome: TrialOutcome, error: BaseException | None, in_a_row: int, limit: int
) -> tuple[str, str] | None:
    """Why the loop stops after this trial, as (reason, message), or None to go on: a
    fatal error stops at once; other failures stop once `limit` happened in a row."""
    if outcome.state != TrialState.FAIL:
        return None
    if is_fatal(error):
        return "fatal", outcome.reason or "fatal error"
    if in_a_row >= limit:
        return "failures", f"{in_a_row} trials failed in a row; last: {outcome.reason}"
    return None


def _optimize_one(study: optuna.Study, runner: _TrialRunner) -> None:
    """One trial through `study.optimize`, so Optuna's heartbeat covers it."""
    # Another process may have failed this trial as stale while it ran (its retry is
    # queued): the value cannot be stored, and the loop goes on with the next trial.
    with contextlib.suppress(ValueError, optuna.exceptions.UpdateFinishedTrialError):
        # gc_after_trial off: Keras's clear_session at the next trial collects already.
        study.optimize(runner, n_trials=1, catch=(Exception,), gc_after_trial=False)


def _trial_outcome(t: FrozenTrial) -> TrialOutcome:
    duration = (
        (t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start
        else 0.0
    )
    reason = t.user_attrs.get("fail_reason")
    if t.state == TrialState.PRUNED:
        reason = f"pruned at epoch {t.user_attrs.get('pruned_at_epoch', t.last_step)}"
    return TrialOutcome(
        number=t.number, state=t.state, values=t.values, duration_s=duration, reason=reason
    )


def _budget_met(storage: WorkerStorage, study: optuna.Study, n_trials: int | None) -> bool:
    if n_trials is None:
        return False
    return storage.control.count_finished(study._study_id) >= n_trials


def current_budget(storage: WorkerStorage, study_name: str) -> int | None:
    record = storage.control.study_spec(study_name)
    return None if record is None else record["n_trials"]


def sweep_lost_trials(storage: WorkerStorage, spec: StudySpec) -> None:
    """Fail and retry the trials of dead workers by studyctl's worker heartbeat (every
    storage, the proxy included). Optuna's own trial-heartbeat sweep runs inside
    `study.optimize` at each trial start; callers outside it run that one too."""
    storage.control.fail_lost_trials(
        study_name=spec.name,
        grace_s=float(spec.worker.grace_period),
        max_retries=spec.worker.max_retries,
    )


def run_trial_loop(
    storage: WorkerStorage,
    study: optuna.Study,
    spec: StudySpec,
    objective: Objective,
    registration: WorkerRegistration,
    *,
    max_trials: int | None = None,
    on_trial: Callable[[TrialOutcome], None] | None = None,
    on_last_trial: Callable[[], None] | None = None,
) -> LoopResult:
    """Run trials until the study's budget is met (or timeout, max_trials, a signal, or
    `max_consecutive_failures` failures in a row). `on_last_trial` is called as the
    `max_trials`-th trial starts (the worker then warms this process's successor)."""
    configure_optuna_logging()  # Optuna's per-trial lines only with --verbose
    mask_secrets_in_logs(logging.getLogger("optuna"))
    runner = _TrialRunner(spec, objective, storage, registration)
    use_indexed_waiting_pop(study)  # the next queued trial without reading every trial
    result = LoopResult(reason="budget-met")
    started = time.monotonic()
    consecutive_failures = 0
    stale_after = float(spec.worker.grace_period)
    # Both heartbeat sweeps (studyctl's lost trials, Optuna's stale ones) run at most once
    # per heartbeat interval: a trial is lost only after `grace_period` without a beat, so
    # sweeping at every trial start finds nothing sooner and costs two commits a trial.
    sweep_every = float(spec.worker.heartbeat_interval)
    next_sweep = 0.0
    warmed = False
    reset_stop()
    quiet = _QuietFatal(runner)
    optuna_logger = logging.getLogger(OPTUNA_OPTIMIZE_LOGGER)
    optuna_logger.addFilter(quiet)
    with (
        on_stop_signals(stop_at_safe_point),
        _removing_filter(optuna_logger, quiet),
        _stale_sweeps_every(storage, sweep_every),
    ):
        try:
            while True:
                signum = stop_requested()
                if signum is not None:
                    raise WorkerInterrupted(signum)
                if max_trials is not None and result.trials_run >= max_trials:
                    result.reason = "max-trials"
                    break
                if spec.timeout is not None and time.monotonic() - started >= spec.timeout:
                    result.reason = "timeout"
                    break
                if time.monotonic() >= next_sweep:
                    sweep_lost_trials(storage, spec)
                    next_sweep = time.monotonic() + sweep_every
                # The budget as `studyctl run` last set it: on the database read in the
                # claim's transaction; behind a proxy (maybe an older one) read first.
                direct = isinstance(storage, StudyctlStorage)
                claim = storage.control.try_claim(
                    study_name=spec.name,
                    study_id=study._study_id,
                    worker_id=registration.worker_id,
                    n_trials=None if direct else current_budget(storage, spec.name),
                    stale_after=stale_after,
                    stored_budget=direct,
                )
                if claim is None:
                    if _budget_met(storage, study, current_budget(storage, spec.name)):
                        break
                    # Other workers hold the rest of the budget; a trial of theirs may still
                    # fail (and free its slot) or go stale (and be retried here).
                    optuna.storages.fail_stale_trials(study)
                    time.sleep(IDLE_POLL_S)
                    continue
                runner.claim_id = claim
                trial_id: int | None = None
                frozen: FrozenTrial | None = None
                try:
                    if not warmed:
                        warmed = True
                        warm_up(objective, spec)
                        if isinstance(storage, StudyctlStorage):  # seconds since the claim:
                            storage.control.queue_changed(study._study_id)  # ask again
                        signum = stop_requested()
                        if signum is not None:
                            raise WorkerInterrupted(signum)
                    if on_last_trial is not None and result.trials_run + 1 == max_trials:
                        on_last_trial()
                    _optimize_one(study, runner)
                finally:
                    # A trial was attached: it counts as done (the worker's row, same commit).
                    trial_id = storage.control.release_claim(
                        claim,
                        worker_id=registration.worker_id,
                        trials_done=registration.trials_done + result.trials_run + 1,
                    )
                    runner.claim_id = None
                    frozen = None if trial_id is None else storage.get_trial(trial_id)
                    if frozen is not None and frozen.state == TrialState.RUNNING:
                        frozen = fail_unfinished(storage, study, frozen)
                    if frozen is not None:
                        retry_if_interrupted(storage, study, frozen)
                        discard_checkpoint(spec, frozen)
                        forget_removed_checkpoint(storage, study, frozen)
                if frozen is None:
                    continue
                outcome = _trial_outcome(frozen)
                result.trials_run += 1
                if on_trial is not None:
                    on_trial(outcome)
                consecutive_failures = failures_in_a_row(outcome, consecutive_failures)
                stop = stop_after(
                    outcome,
                    runner.last_error,
                    consecutive_failures,
                    spec.worker.max_consecutive_failures,
                )
                if stop is not None:
                    result.reason, result.message = stop
                    break
        except WorkerInterrupted as exc:
            result.reason = "interrupted"
            result.signum = exc.signum
        except KeyboardInterrupt:
            result.reason = "interrupted"
            result.signum = signal.SIGINT  # no handler installed: not the main thread
    return result


@contextlib.contextmanager
def _stale_sweeps_every(storage: WorkerStorage, seconds: float) -> Iterator[None]:
    """Optuna's stale-trial sweep at most once per `seconds` while the loop runs (other
    callers of `fail_stale_trials` in the process sweep at every call again after it)."""
    if not isinstance(storage, StudyctlStorage):
        yield
        return
    before = storage.stale_sweep_every_s
    storage.stale_sweep_every_s = seconds
    try:
        yield
    finally:
        storage.stale_sweep_every_s = before


@contextlib.contextmanager
def _removing_filter(logger: logging.Logger, quiet: logging.Filter) -> Iterator[None]:
    try:
        yield
    finally:
        logger.removeFilter(quiet)
