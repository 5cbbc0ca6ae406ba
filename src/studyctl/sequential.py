"""`studyctl run SPEC` without workers: the whole study in this process, trial by trial."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from studyctl.artifacts import check_artifact_path
from studyctl.registry import resolve_objective
from studyctl.spec import StudySpec
from studyctl.storage import StudyctlStorage, enable_heartbeat, open_storage
from studyctl.study import open_study
from studyctl.worker import (
    LoopResult,
    TrialOutcome,
    WorkerRegistration,
    run_trial_loop,
    sweep_lost_trials,
)


@dataclass
class PreparedStudy:
    storage: StudyctlStorage
    study: optuna.Study
    spec: StudySpec
    created: bool


def prepare_study(
    spec: StudySpec, storage_url: str, objectives_dir: str | Path | None = None
) -> PreparedStudy:
    """Check the objective and the storage, then create or load the study.

    The objective is resolved first, so an unknown objective never creates a study.
    """
    resolve_objective(spec.objective, objectives_dir)
    check_artifact_path(spec)
    storage = open_storage(storage_url)
    enable_heartbeat(
        storage,
        interval=spec.worker.heartbeat_interval,
        grace_period=spec.worker.grace_period,
        max_retries=spec.worker.max_retries,
    )
    opened = open_study(storage, spec, create=True)
    # Trials whose worker died are failed now (and retried), not only when a trial starts.
    optuna.storages.fail_stale_trials(opened.study)
    sweep_lost_trials(storage, spec)
    return PreparedStudy(storage=storage, study=opened.study, spec=spec, created=opened.created)


def run_sequential(
    prepared: PreparedStudy,
    objectives_dir: str | Path | None = None,
    on_trial: Callable[[TrialOutcome], None] | None = None,
) -> LoopResult:
    objective = resolve_objective(prepared.spec.objective, objectives_dir)
    with WorkerRegistration(
        prepared.storage,
        prepared.spec.name,
        interval=min(10.0, prepared.spec.worker.heartbeat_interval),
    ) as registration:
        return run_trial_loop(
            prepared.storage,
            prepared.study,
            prepared.spec,
            objective,
            registration,
            on_trial=on_trial,
        )
