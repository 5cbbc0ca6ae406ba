"""Where a trial's checkpoint lives, how it is written and read back, and fetching or
removing it (locally and in the object store). A retried trial uses its original's folder,
so it resumes from the original's last finished epoch.

Checkpoints are crash-atomic: a kill -9 at any instant loses at most the epoch in progress
(and, with `[artifacts] checkpoint_interval_s`, the epochs since the last write), and a
checkpoint that cannot be read never fails a retry. The folder holds numbered, complete
checkpoints: `epoch-000004.json` (the epoch count, the per-epoch metric history, the
weights file's size and SHA-256) and `epoch-000004.weights.npz` (model and optimizer
variables in their order, one array each: format 2). `snapshot` copies the variables on
the training thread; `write` (on the writer thread, `training.checkpoint_writer`) writes
each file under a temporary name, fsyncs it, then renames it into place (the JSON first,
the weights last: the weights' rename is the commit point) and fsyncs the folder. The
previous checkpoint is removed only once the new one is complete, and the newest two are
kept. (Keras's `BackupAndRestore`, used before, rewrote `latest.weights.h5` in place: a
kill during the write left a file no retry could open, `OSError: Unable to synchronously
open file`.)

Restoring tries the newest checkpoint, then older ones, then epoch 0 (the model as built)
when one cannot be read: metadata missing or malformed, size or digest different, or the
variables do not fit the model. Why is returned (`Restored.fallback_reason`) and recorded
on the trial (`checkpoint_fallback`). Format-1 checkpoints (`epoch-N.weights.h5`, Keras's
`save_weights`, written by studyctl before format 2) and a `BackupAndRestore` folder of an
older studyctl are still restored, the latter as the oldest candidate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from studyctl.artifacts import best_effort, object_store

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from studyctl.artifacts.objectstore import ObjectStore
    from studyctl.objectives import TrialContext
    from studyctl.spec import StudySpec

# Failed trials that are queued again and resume from the checkpoint: stopped by a signal
# or by the loss of their worker or launcher ("interrupted ..."), found lost ("lost: ...").
RETRIED_REASONS = ("interrupted", "lost", "trial process")


def checkpoint_name(ctx: TrialContext) -> str:
    """The trial's checkpoint folder name; a retried trial uses its original's, so it
    resumes from the original's last finished epoch."""
    trial = ctx.trial
    original = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(
        trial.study._storage.get_trial(trial._trial_id)
    )
    return f"trial-{trial.number if original is None else original}"


def checkpoint_dir(ctx: TrialContext) -> Path:
    """The trial's checkpoint folder, absolute (the trial's `checkpoint_dir` attribute
    names it, and must resolve from any folder)."""
    return (Path(ctx.spec.artifacts.path) / ctx.spec.name / checkpoint_name(ctx)).absolute()


def pull_checkpoint(store: ObjectStore, local: Path, study: str) -> None:
    """The store holds the newest checkpoint of a trial (every save is mirrored there); a
    local copy may be older (this machine ran an earlier attempt), so the store's wins."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=local.parent if local.parent.exists() else None) as tmp:
        if store.pull_dir(Path(tmp) / "ckpt", study, local.name):
            shutil.rmtree(local, ignore_errors=True)
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / "ckpt"), local)


def mirror_checkpoint(store: ObjectStore, study: str, local: Path) -> None:
    """Upload a trial's checkpoint folder once a checkpoint is committed in it (on the
    writer thread), so a retry on another machine can resume from it. The weights file is
    uploaded after its metadata (sorted names), and a checkpoint counts only with both and
    a matching digest, so a partial upload is never restored."""
    best_effort(f"upload of checkpoint {local.name}", store.push_dir, local, study, local.name)


def discard_checkpoint(spec: StudySpec, trial: FrozenTrial) -> None:
    """Remove a trial's checkpoint once its outcome is stored, unless a retry resumes from
    it (the trial was interrupted or lost). Only after the outcome is stored: a trial killed
    after its last epoch but before its result reached the database is retried, and that
    retry must still find every epoch (it then trains none)."""
    from optuna.trial import TrialState

    folder = trial.user_attrs.get("checkpoint_dir")
    if not folder or not trial.state.is_finished():
        return
    reason = str(trial.user_attrs.get("fail_reason") or "")
    if trial.state == TrialState.FAIL and reason.startswith(RETRIED_REASONS):
        return
    shutil.rmtree(folder, ignore_errors=True)
    store = object_store(spec)
    if store is not None:
        name = Path(folder).name
        best_effort(f"removal of checkpoint {name}", store.delete_dir, spec.name, name)


FORMAT = 2  # 1: epoch-N.weights.h5 (Keras's save_weights); 2: epoch-N.weights.npz
KEEP = 2  # complete checkpoints kept: the newest and the one before it
_NAME = re.compile(r"^epoch-(\d{6})\.weights\.(npz|h5)$")
_TMP_PREFIX = ".tmp-"
LEGACY_WEIGHTS = "latest.weights.h5"
LEGACY_METADATA = "training_metadata.json"


@dataclass
class Restored:
    """What a trial resumes from: `epoch` finished epochs (0: from scratch), their metric
    history, and why newer checkpoints were passed over."""

    epoch: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def fallback_reason(self) -> str | None:
        if not self.problems:
            return None
        where = f"resumed from epoch {self.epoch}" if self.epoch else "started from epoch 0"
        return f"{'; '.join(self.problems)}; {where}"


@dataclass(frozen=True)
class Snapshot:
    """A model's state after `epoch` finished epochs, copied off its variables: what the
    writer thread writes while training goes on."""

    epoch: int
    arrays: list[np.ndarray]
    history: dict[str, list[float]]


def weights_path(folder: Path, epoch: int) -> Path:
    return folder / f"epoch-{epoch:06d}.weights.npz"


def h5_weights_path(folder: Path, epoch: int) -> Path:
    """A format-1 checkpoint's weights (studyctl before format 2)."""
    return folder / f"epoch-{epoch:06d}.weights.h5"


def metadata_path(folder: Path, epoch: int) -> Path:
    return folder / f"epoch-{epoch:06d}.json"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsynced
        _fsync_file(folder)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _committed(folder: Path) -> list[tuple[int, Path]]:
    """The committed checkpoints in `folder` and their weights files, newest first (of an
    epoch in both formats, format 2)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found: dict[int, Path] = {}
    for name in sorted(names, key=lambda n: n.endswith(".npz")):  # .npz last: it wins
        if m := _NAME.match(name):
            found[int(m.group(1))] = folder / name
    return sorted(found.items(), reverse=True)


def complete_epochs(folder: Path) -> list[int]:
    """Epoch counts of the checkpoints in `folder` whose weights were committed, newest
    first."""
    return [epoch for epoch, _ in _committed(folder)]


def _variables(model: Any) -> list[Any]:
    """The model's variables and then its optimizer's, in a fixed order. The optimizer is
    built first (the fit builds it at its first step), so a checkpoint taken before any
    step holds the variables a restore finds."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    variables = list(model.weights)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    return variables


def snapshot(model: Any, epoch: int, history: dict[str, list[float]]) -> Snapshot:
    """Copy the model's state after `epoch` finished epochs (on the training thread: a copy
    per variable, no file written)."""
    arrays = []
    for variable in _variables(model):
        value = np.asarray(variable.numpy())
        arrays.append(value if value.flags.owndata else value.copy())
    return Snapshot(epoch, arrays, {k: [float(v) for v in vs[:epoch]] for k, vs in history.items()})


def write(snap: Snapshot, folder: Path) -> None:
    """Write `snap` beside the older checkpoints, switch to it atomically, then drop all but
    the newest `KEEP`."""
    folder.mkdir(parents=True, exist_ok=True)
    epoch = snap.epoch
    tag = f"{_TMP_PREFIX}{os.getpid()}-{epoch:06d}"
    tmp_weights = folder / f"{tag}.weights.npz"
    tmp_meta = folder / f"{tag}.json"
    with tmp_weights.open("wb") as f:
        arrays: dict[str, Any] = {f"{i:06d}": a for i, a in enumerate(snap.arrays)}
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    meta = {
        "format": FORMAT,
        "epoch": epoch,
        "history": snap.history,
        "variables": len(snap.arrays),
        "weights_size": tmp_weights.stat().st_size,
        "weights_sha256": _digest(tmp_weights),
    }
    with tmp_meta.open("w") as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_meta, metadata_path(folder, epoch))
    os.replace(tmp_weights, weights_path(folder, epoch))  # the commit point
    _fsync_dir(folder)
    for old in complete_epochs(folder)[KEEP:]:
        for path in (weights_path(folder, old), h5_weights_path(folder, old)):
            path.unlink(missing_ok=True)
        metadata_path(folder, old).unlink(missing_ok=True)
    for legacy in (LEGACY_WEIGHTS, LEGACY_METADATA):
        (folder / legacy).unlink(missing_ok=True)


def save(model: Any, folder: Path, epoch: int, history: dict[str, list[float]]) -> None:
    """Snapshot and write at once, on the calling thread."""
    write(snapshot(model, epoch, history), folder)


def remove_leftovers(folder: Path) -> None:
    """Temporary files of writes a kill interrupted, and metadata without weights."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    committed = set(complete_epochs(folder))
    for name in names:
        orphan_meta = re.match(r"^epoch-(\d{6})\.json$", name)
        if name.startswith(_TMP_PREFIX) or (
            orphan_meta and int(orphan_meta.group(1)) not in committed
        ):
            (folder / name).unlink(missing_ok=True)


def _read_metadata(folder: Path, epoch: int, weights: Path) -> dict[str, Any]:
    path = metadata_path(folder, epoch)
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path.name} is missing") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path.name} is unreadable ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("epoch") != epoch:
        raise ValueError(f"{path.name} does not describe epoch {epoch}")
    if weights.stat().st_size != meta.get("weights_size"):
        raise ValueError(
            f"{weights.name} has {weights.stat().st_size} bytes, not {meta.get('weights_size')}"
        )
    if _digest(weights) != meta.get("weights_sha256"):
        raise ValueError(f"{weights.name} does not match its SHA-256")
    return meta


def _load_npz(model: Any, path: Path) -> None:
    """Assign a format-2 checkpoint's arrays to the model's variables, once all are read
    and each fits its variable."""
    variables = _variables(model)
    with np.load(path, allow_pickle=False) as data:
        arrays = [data[name] for name in sorted(data.files)]
    if len(arrays) != len(variables):
        raise ValueError(f"{path.name} holds {len(arrays)} variables, the model {len(variables)}")
    for variable, value in zip(variables, arrays, strict=True):
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{path.name}: {variable.path} has shape {tuple(variable.shape)}, "
                f"the checkpoint {tuple(value.shape)}"
            )
    for variable, value in zip(variables, arrays, strict=True):
        variable.assign(value)


def _put_back(saved: list[tuple[Any, Any]]) -> None:
    for variable, value in saved:
        variable.assign(value)


def restore(model: Any, folder: Path) -> Restored:
    """Load the newest readable checkpoint into `model` (built and compiled); return what
    it resumed from. Never raises for a bad checkpoint: it falls back to an older one,
    then to the model as built."""
    result = Restored()
    remove_leftovers(folder)
    candidates = _committed(folder)
    legacy = folder / LEGACY_WEIGHTS
    if legacy.exists():
        candidates.append((-1, legacy))
    if not candidates:
        return result
    initial = [(v, v.numpy()) for v in _variables(model)]
    for epoch, path in candidates:
        history: dict[str, list[float]] = {}
        try:
            if epoch < 0:
                meta = json.loads((folder / LEGACY_METADATA).read_text())
                epoch_count = int(meta["epoch"])
            else:
                meta = _read_metadata(folder, epoch, path)
                epoch_count, history = epoch, meta.get("history") or {}
            if path.suffix == ".npz":
                _load_npz(model, path)
            else:
                model.load_weights(str(path))
        except Exception as exc:
            text = str(exc).strip().splitlines()
            detail = text[-1] if text else type(exc).__name__
            result.problems.append(f"checkpoint {path.name} unreadable ({detail})")
            _put_back(initial)  # a failed load may have assigned some variables
            continue
        result.epoch = epoch_count
        result.history = {k: [float(v) for v in vs] for k, vs in history.items()}
        return result
    return result
