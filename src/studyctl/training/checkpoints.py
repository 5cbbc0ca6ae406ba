"""Where a trial's checkpoint lives, and fetching or removing it (locally and in the
object store). A retried trial uses its original's folder, so it resumes from the original's
last finished epoch."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from studyctl.artifacts import best_effort

if TYPE_CHECKING:
    from studyctl.artifacts.objectstore import ObjectStore
    from studyctl.objectives import TrialContext


def checkpoint_name(ctx: TrialContext) -> str:
    """The trial's checkpoint folder name; a retried trial uses its original's, so it
    resumes from the original's last finished epoch."""
    trial = ctx.trial
    original = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(
        trial.study._storage.get_trial(trial._trial_id)
    )
    return f"trial-{trial.number if original is None else original}"


def checkpoint_dir(ctx: TrialContext) -> Path:
    return Path(ctx.spec.artifacts.path) / ctx.spec.name / checkpoint_name(ctx)


def pull_checkpoint(store: ObjectStore, local: Path, study: str) -> None:
    """The store holds the newest checkpoint of a trial (every save is mirrored there); a
    local copy may be older (this machine ran an earlier attempt), so the store's wins."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=local.parent if local.parent.exists() else None) as tmp:
        if store.pull_dir(Path(tmp) / "ckpt", study, local.name):
            shutil.rmtree(local, ignore_errors=True)
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / "ckpt"), local)


def remove_checkpoint(
    trial: optuna.Trial, folder: Path | None, store: ObjectStore | None, study: str
) -> None:
    """Remove the trial's checkpoint once it has an outcome, unless another process already
    failed it as lost: its retry resumes from this very checkpoint."""
    from optuna.trial import TrialState

    if folder is None:
        return
    if trial.study._storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
        return
    shutil.rmtree(folder, ignore_errors=True)
    if store is not None:
        best_effort(f"removal of checkpoint {folder.name}", store.delete_dir, study, folder.name)
