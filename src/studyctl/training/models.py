"""Keeping the best trial's trained model: saved when it beats every completed trial,
mirrored to the object store and offered as a dashboard artifact."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from studyctl.artifacts import best_effort, object_store, warn

if TYPE_CHECKING:
    from studyctl.objectives import TrialContext
    from studyctl.spec import StudySpec


def models_dir(spec: StudySpec) -> Path:
    return Path(spec.artifacts.path) / spec.name / "models"


def keep_if_best(ctx: TrialContext, model: Any, value: float) -> None:
    """Save the trained model (`models/trial-<n>.keras`, mirrored to the object store if
    the spec has one) when it beats every completed trial, and delete the saved models of
    completed trials it beats: they can never be best."""
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact
    from optuna.trial import TrialState

    trial, spec = ctx.trial, ctx.spec
    minimize = spec.directions[0] == "minimize"

    def better(a: float, b: float) -> bool:
        return a < b if minimize else a > b

    completed = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if any(not better(value, t.values[0]) for t in completed):
        return
    folder = models_dir(spec)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"trial-{trial.number}.keras"
    model.save(folder / name)
    store = object_store(spec)
    artifact_store = (
        FileSystemArtifactStore(spec.artifacts.path) if store is None else store.optuna_store()
    )
    # Also an Optuna artifact of the trial, downloadable from optuna-dashboard.
    best_effort(
        f"dashboard artifact of trial {trial.number}",
        lambda: upload_artifact(
            artifact_store=artifact_store,
            file_path=str(folder / name),
            study_or_trial=trial,
            mimetype="application/octet-stream",
        ),
    )
    model_path = str(folder / name)
    if store is not None:
        try:
            model_path = store.put_file(folder / name, spec.name, "models", name)
            (folder / name).unlink()
        except Exception as exc:  # keep the local copy and say where it is
            warn(f"upload of {name} failed ({type(exc).__name__}: {exc}); kept at {model_path}")
    trial.set_user_attr("model_path", model_path)
    for old in completed:  # beaten: their saved models can never be best again
        path = old.user_attrs.get("model_path")
        if path and str(path).startswith("s3://") and store is not None:
            best_effort(f"removal of {path}", store.delete, spec.name, "models", Path(path).name)
        elif path:
            Path(path).unlink(missing_ok=True)
