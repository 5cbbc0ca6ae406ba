"""Before a study runs (sequentially, with workers, or only created): check the objective
and the artifact location, open the storage, create or load the study, sweep lost trials."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna

from studyctl.artifacts import check_artifact_path
from studyctl.execution.trial_loop import sweep_lost_trials
from studyctl.objectives import resolve_objective
from studyctl.spec import StudySpec
from studyctl.storage.connect import enable_heartbeat, set_outage_tolerance
from studyctl.storage.rdb import StudyctlStorage, open_storage
from studyctl.storage.studies import open_study
from studyctl.training.devices import use_backend


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
    use_backend(spec.training.backend)  # before the objective file can import Keras
    resolve_objective(spec.objective, objectives_dir)
    check_artifact_path(spec)
    storage = open_storage(storage_url)
    set_outage_tolerance(storage, spec.worker.storage_outage_tolerance)
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
