"""The Keras callbacks studyctl adds to every fit: epoch reports (pruning, NaN, missing
metric), per-epoch checkpoints, and their mirror in an object store."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from studyctl.artifacts import best_effort
from studyctl.signals import stop_requested

if TYPE_CHECKING:
    from studyctl.artifacts.objectstore import ObjectStore


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def make_epoch_callback(trial: optuna.Trial, metrics: tuple[str, ...], prune: bool) -> Any:
    import keras

    class EpochReporter(keras.callbacks.Callback):
        """Reports the objective metric every epoch, stops on NaN/inf loss or pruning."""

        def __init__(self) -> None:
            super().__init__()
            self.history: dict[str, list[float]] = {}
            self.epochs_run = 0
            self.failure: str | None = None
            self.pruned_epoch: int | None = None
            self.initial_epoch = 0

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            # BackupAndRestore (earlier in the list) sets this when it restored a checkpoint.
            self.initial_epoch = int(getattr(self.model, "_initial_epoch", None) or 0)
            if self.initial_epoch:
                trial.set_user_attr("resumed_from_epoch", self.initial_epoch)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if stop_requested() is not None:
                return  # a stop cut this epoch short: its metrics describe no full epoch
            logs = logs or {}
            self.epochs_run = epoch + 1
            for key, value in logs.items():
                self.history.setdefault(key, []).append(float(value))
            loss = logs.get("loss")
            if loss is not None and not _finite(loss):
                self.failure = f"loss became {float(loss)} at epoch {epoch}"
                self.model.stop_training = True
                return
            missing = [m for m in metrics if m not in logs]
            if missing:
                self.failure = (
                    f"metric {missing[0]!r} not in the model's logs; available: "
                    f"{', '.join(sorted(logs))}"
                )
                self.model.stop_training = True
                return
            if len(metrics) == 1:
                value = float(logs[metrics[0]])
                if not _finite(value):
                    self.failure = f"{metrics[0]} became {value} at epoch {epoch}"
                    self.model.stop_training = True
                    return
                trial.report(value, step=epoch)
                if prune and trial.should_prune():
                    self.pruned_epoch = epoch
                    self.model.stop_training = True

    return EpochReporter()


def make_backup_callback(folder: Path) -> Any:
    """Keras's BackupAndRestore, except that an epoch cut short by a stop request is not
    saved as finished: the retry resumes after the last complete epoch."""
    import keras

    class EpochBackup(keras.callbacks.BackupAndRestore):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if stop_requested() is None:
                super().on_epoch_end(epoch, logs)

    return EpochBackup(str(folder), delete_checkpoint=False)


def make_mirror_callback(store: ObjectStore, local: Path, study: str, name: str) -> Any:
    """Uploads the checkpoint BackupAndRestore has just written (it runs first) at every
    epoch end, so a retry on another machine can resume from it."""
    import keras

    class CheckpointMirror(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if stop_requested() is None:
                best_effort(f"upload of checkpoint {name}", store.push_dir, local, study, name)

    return CheckpointMirror()
