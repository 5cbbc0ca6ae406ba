"""Keeping the best trial's trained model: saved when it beats every completed trial,
mirrored to the object store and offered as a dashboard artifact."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studyctl.artifacts import best_effort, object_store, warn

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from studyctl.objectives import TrialContext
    from studyctl.spec import StudySpec


def models_dir(spec: StudySpec) -> Path:
    """The study's kept models, absolute: a trial's `model_path` must resolve from any
    folder (`studyctl best --export-model` runs anywhere)."""
    return (Path(spec.artifacts.path) / spec.name / "models").absolute()


def artifact_store(spec: StudySpec) -> Any:
    """The Optuna artifact store that optuna-dashboard serves the kept models from:
    `[artifacts] path` itself (files named by artifact id, a UUID), or the object store."""
    from optuna.artifacts import FileSystemArtifactStore

    store = object_store(spec)
    if store is not None:
        return store.optuna_store()
    return FileSystemArtifactStore(str(Path(spec.artifacts.path).absolute()))


def keep_if_best(ctx: TrialContext, model: Any, value: float) -> None:
    """Save the trained model (`models/trial-<n>.keras`, mirrored to the object store if
    the spec has one) when it beats every completed trial, and remove what the completed
    trials it beats kept: they can never be best again (`forget_model`)."""
    from optuna.artifacts import upload_artifact
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
    name = model_name(trial.number)
    model.save(folder / name)
    store = object_store(spec)
    artifacts = artifact_store(spec)
    # Also an Optuna artifact of the trial, downloadable from optuna-dashboard.
    best_effort(
        f"dashboard artifact of trial {trial.number}",
        lambda: upload_artifact(
            artifact_store=artifacts,
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
        forget_model(ctx, old, artifacts)


# The trial system attributes where optuna.artifacts.upload_artifact records an artifact.
ARTIFACTS_ATTR_PREFIX = "artifacts:"


def model_name(number: int) -> str:
    return f"trial-{number}.keras"


def forget_model(ctx: TrialContext, old: FrozenTrial, artifacts: Any) -> None:
    """Delete a superseded trial's kept model (file or object), its dashboard artifact,
    and the attributes naming them (`model_path`, Optuna's ``artifacts:<id>``), so that no
    trial names a file that is gone."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    spec = ctx.spec
    path = old.user_attrs.get("model_path")
    artifact_keys = [
        key
        for key, meta in old.system_attrs.items()
        if key.startswith(ARTIFACTS_ATTR_PREFIX) and _is_model_artifact(meta, old.number)
    ]
    if not path and not artifact_keys:
        return
    store = object_store(spec)
    if path and str(path).startswith("s3://") and store is not None:
        best_effort(f"removal of {path}", store.delete, spec.name, "models", Path(path).name)
    elif path:
        Path(path).unlink(missing_ok=True)

    def remove_artifact(artifact_id: str) -> None:
        with contextlib.suppress(ArtifactNotFound):  # removed before, by another process
            artifacts.remove(artifact_id)

    for key in artifact_keys:
        best_effort(
            f"removal of trial {old.number}'s dashboard artifact",
            remove_artifact,
            key[len(ARTIFACTS_ATTR_PREFIX) :],
        )
    if ctx.forget_attrs is not None:
        best_effort(
            f"removal of trial {old.number}'s model attributes",
            ctx.forget_attrs,
            old._trial_id,
            ["model_path"] if path else [],
            artifact_keys,
        )


def _is_model_artifact(meta: Any, number: int) -> bool:
    """Whether an ``artifacts:<id>`` attribute is the model studyctl kept for trial
    `number` (an objective may upload artifacts of its own; those stay)."""
    try:
        return bool(json.loads(meta).get("filename") == model_name(number))
    except (TypeError, ValueError, AttributeError):
        return False
