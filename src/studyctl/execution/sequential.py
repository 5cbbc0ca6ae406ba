"""`studyctl run SPEC` without workers: the whole study in this process, trial by trial."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from studyctl.execution.prepare import PreparedStudy
from studyctl.execution.registration import WorkerRegistration
from studyctl.execution.trial_loop import LoopResult, TrialOutcome, run_trial_loop
from studyctl.objectives import resolve_objective


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
