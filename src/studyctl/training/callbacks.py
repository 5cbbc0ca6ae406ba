"""The Keras callbacks studyctl adds to every fit: epoch reports (pruning, NaN, missing
metric) with the per-epoch crash-atomic checkpoint, and its mirror in an object store."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from studyctl.artifacts import best_effort
from studyctl.signals import stop_requested
from studyctl.training import checkpoints

if TYPE_CHECKING:
    from studyctl.artifacts.objectstore import ObjectStore


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def report_epoch(trial: optuna.Trial, step: int, value: float) -> None:
    """`trial.report`, except that a step the trial inherited from the attempt it retries
    is overwritten: the retry trained that epoch again (its checkpoint was older than the
    curve, or unreadable), and its own value is the one its result is computed from.
    Optuna's `Trial.report` would keep the inherited value and drop this one ("step=N is
    already reported"), leaving a curve that disagrees with the trial's value."""
    cached = trial._cached_frozen_trial.intermediate_values
    if step not in cached:
        trial.report(value, step=step)
        return
    trial.storage.set_trial_intermediate_value(trial._trial_id, step, value)
    cached[step] = value


def make_epoch_callback(
    trial: optuna.Trial,
    metrics: tuple[str, ...],
    prune: bool,
    checkpoint: Path | None = None,
) -> Any:
    """The callback that records each finished epoch: its metrics in `history`, the
    objective metric reported to Optuna (pruning, NaN loss, missing metric), and then, with
    `checkpoint`, the crash-atomic checkpoint (`checkpoints.save`) it restores from at the
    start of the fit.

    One callback does both, in this order, so that a stop or a kill can never fall between
    a saved checkpoint and its epoch's report: a retry resumes at most one epoch before the
    end of its original's curve and reports that epoch again (`report_epoch`), so the curve
    has no hole. An epoch is finished when all its batches ran; a stop request that cut it
    short leaves it out (its metrics describe no full epoch)."""
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.history: dict[str, list[float]] = {}
            self.epochs_run = 0
            self.failure: str | None = None
            self.pruned_epoch: int | None = None
            self.initial_epoch = 0
            self._batches = 0

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            if checkpoint is None:
                return
            restored = checkpoints.restore(self.model, checkpoint)
            self.initial_epoch = self.epochs_run = restored.epoch
            self.history = {k: v[: restored.epoch] for k, v in restored.history.items()}
            self.model._initial_epoch = restored.epoch or None  # where Keras's fit starts
            trial.set_user_attr("history_inherited_epochs", restored.epoch)
            if restored.epoch:
                trial.set_user_attr("resumed_from_epoch", restored.epoch)
            reason = restored.fallback_reason()
            if reason is not None:
                trial.set_user_attr("checkpoint_fallback", reason[:1000])

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self._batches = 0

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self._batches += 1

        def _finished(self) -> bool:
            if stop_requested() is None:
                return True
            steps = (self.params or {}).get("steps")
            return steps is not None and self._batches >= int(steps)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if not self._finished():
                return  # a stop cut this epoch short: its metrics describe no full epoch
            logs = logs or {}
            self.epochs_run = epoch + 1
            for key, value in logs.items():
                series = self.history.setdefault(key, [])
                del series[epoch:]  # an epoch trained again replaces its inherited value
                series.append(float(value))
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
                report_epoch(trial, epoch, value)
                if prune and trial.should_prune():
                    self.pruned_epoch = epoch
                    self.model.stop_training = True
                    return
            if checkpoint is not None:
                checkpoints.save(self.model, checkpoint, epoch + 1, self.history)

    return EpochRecorder()


def make_mirror_callback(store: ObjectStore, local: Path, study: str, name: str) -> Any:
    """Uploads the checkpoint the epoch recorder has just written (it runs first) at every
    epoch end, so a retry on another machine can resume from it. The weights file is
    uploaded after its metadata (sorted names), and a checkpoint counts only with both and
    a matching digest, so a partial upload is never restored."""
    import keras

    class CheckpointMirror(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if checkpoints.complete_epochs(local)[:1] == [epoch + 1]:
                best_effort(f"upload of checkpoint {name}", store.push_dir, local, study, name)

    return CheckpointMirror()
