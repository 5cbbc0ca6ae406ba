"""What the trial loop does once a trial's claim is released: a trial left RUNNING is
failed, an interrupted one is queued again (within `max_retries`), and a removed
checkpoint folder is no longer named by any trial."""

from __future__ import annotations

import contextlib
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from studyctl.artifacts import best_effort
from studyctl.signals import stop_reason, stop_requested
from studyctl.storage.connect import WorkerStorage


def fail_unfinished(storage: WorkerStorage, study: optuna.Study, trial: FrozenTrial) -> FrozenTrial:
    """A trial `study.optimize` left RUNNING (an exception escaped Optuna's own bookkeeping,
    which `signals.interruptible` exists to prevent): FAIL it with the reason, so no trial
    outlives its loop RUNNING; `retry_if_interrupted` then queues it."""
    reason = (
        stop_reason()
        if stop_requested() is not None
        else "lost: its trial loop stopped on an error"
    )
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            callback = storage.heartbeat_stale_trial_callback
            if callback is not None:
                callback(study, storage.get_trial(trial._trial_id))
    return storage.get_trial(trial._trial_id)


def forget_removed_checkpoint(
    storage: WorkerStorage, study: optuna.Study, trial: FrozenTrial
) -> None:
    """Once a trial's checkpoint folder is gone (`discard_checkpoint`), no trial names it:
    the `checkpoint_dir` of this trial and of the originals a retry resumed from is
    deleted (a finished trial's attribute, hence `forget_trial_attrs`)."""
    folder = trial.user_attrs.get("checkpoint_dir")
    if not folder or Path(folder).exists():
        return
    target = Path(folder).absolute()
    for t in study.get_trials(deepcopy=False):
        named = t.user_attrs.get("checkpoint_dir")
        if named and Path(named).absolute() == target:
            best_effort(
                f"removal of trial {t.number}'s checkpoint_dir",
                lambda trial_id=t._trial_id: storage.control.forget_trial_attrs(
                    trial_id=trial_id, user_keys=["checkpoint_dir"], system_keys=[]
                ),
            )


def retry_if_interrupted(storage: WorkerStorage, study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial stopped by a signal (or because its worker or launcher went away) is queued
    again (same params, its learning curve and checkpoint), like a trial whose worker died;
    within `max_retries`."""
    callback = storage.heartbeat_stale_trial_callback
    if (
        trial.state == TrialState.FAIL
        and str(trial.user_attrs.get("fail_reason", "")).startswith("interrupted")
        and callback is not None
        # A lost-trial sweep may have failed (and queued) it first, just before our FAIL.
        and not any(
            t.system_attrs.get("retry_history", [])[-1:] == [trial.number]
            for t in study.get_trials(deepcopy=False)
        )
    ):
        callback(study, trial)
