"""The Keras callback studyctl adds to every fit: epoch reports (pruning, NaN, missing
metric) with the per-epoch crash-atomic checkpoint, written off the training thread and
mirrored to an object store by its writer."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from studyctl.signals import stop_requested
from studyctl.training import checkpoints
from studyctl.training.checkpoint_writer import CheckpointWriter
from studyctl.training.reports import EpochReports


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def make_epoch_callback(
    trial: optuna.Trial,
    metrics: tuple[str, ...],
    prune: bool,
    checkpoint: Path | None = None,
    checkpoint_interval_s: float = 0.0,
    after_commit: Callable[[Path], None] | None = None,
) -> Any:
    """The callback that records each finished epoch: its metrics in `history`, the
    objective metric reported to Optuna (`EpochReports`: in order, put off while the
    database is away; pruning, NaN loss, missing metric), and then, with `checkpoint`, hands
    the epoch's crash-atomic checkpoint to its writer thread (`CheckpointWriter`: at most
    one per `checkpoint_interval_s`, then `after_commit`); it restores from the newest one
    at the start of the fit.

    The curve has no hole and no duplicate whatever stops the process: the checkpoint of
    epoch N holds the history of epochs 0..N-1, reported or not. A retry resumes from it,
    first re-reports the epochs of that history its inherited curve lacks (reports that
    were pending when the process died), then reports each epoch it trains, overwriting an
    inherited value (`report_epoch`). The caller finishes the checkpoint writes and delivers
    what is pending before the trial's state is told (`settle`). An epoch is finished when
    all its batches ran; a stop request that cut it short leaves it out (its metrics
    describe no full epoch)."""
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.history: dict[str, list[float]] = {}
            self.epochs_run = 0
            self.failure: str | None = None
            # The spec's metric is not in the logs: no trial of this spec can give a value.
            self.missing_metric: str | None = None
            self.pruned_epoch: int | None = None
            self.initial_epoch = 0
            self.reports = EpochReports(trial, prune and len(metrics) == 1)
            self.writer: CheckpointWriter | None = None
            self._batches = 0

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            if checkpoint is None:
                return
            restored = checkpoints.restore(self.model, checkpoint)
            self.writer = CheckpointWriter(checkpoint, checkpoint_interval_s, after_commit)
            self.initial_epoch = self.epochs_run = restored.epoch
            self.history = {k: v[: restored.epoch] for k, v in restored.history.items()}
            self.model._initial_epoch = restored.epoch or None  # where Keras's fit starts
            trial.set_user_attr("history_inherited_epochs", restored.epoch)
            if restored.epoch:
                trial.set_user_attr("resumed_from_epoch", restored.epoch)
            reason = restored.fallback_reason()
            if reason is not None:
                trial.set_user_attr("checkpoint_fallback", reason[:1000])
            if len(metrics) == 1 and metrics[0] in self.history:
                self.reports.reclaim(self.history[metrics[0]])

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
                self.missing_metric = (
                    f"metric {missing[0]!r} is not logged; logged: {', '.join(logs) or 'nothing'}"
                )
                self.model.stop_training = True
                return
            if len(metrics) == 1:
                value = float(logs[metrics[0]])
                if not _finite(value):
                    self.failure = f"{metrics[0]} became {value} at epoch {epoch}"
                    self.model.stop_training = True
                    return
                self.reports.add(epoch, value)
                if self.reports.should_prune():
                    self.pruned_epoch = epoch
                    self.model.stop_training = True
                    return
            if self.writer is not None:
                # The fit's last epoch and an epoch ending with a stop requested are
                # written whatever the interval.
                epochs = (self.params or {}).get("epochs")
                last = epochs is None or epoch + 1 >= int(epochs)
                force = last or stop_requested() is not None
                self.writer.submit(self.model, epoch + 1, self.history, force=force)

        def settle(self) -> None:
            """Finish the checkpoint writes (the last one is durable before the trial's
            outcome is stored) and deliver every pending report (waiting for the database,
            up to the tolerance); then, when the fit ran to its end with a pruning decision
            owed, take it: the trial is pruned at its last epoch as it would have been had
            the database stayed up. A failed write is raised last, after the reports."""
            write_error: BaseException | None = None
            if self.writer is not None:
                try:
                    self.writer.close()
                except BaseException as exc:
                    write_error = exc
            self.reports.settle()
            if self.reports.late:
                trial.set_user_attr("epochs_reported_late", len(self.reports.late))
            owed = (
                self.reports.decision_owed
                and self.epochs_run > 0
                and self.failure is None
                and self.missing_metric is None
                and self.pruned_epoch is None
                and stop_requested() is None
            )
            if owed and self.reports.should_prune(wait=True):
                self.pruned_epoch = self.epochs_run - 1
            if write_error is not None:
                raise write_error

    return EpochRecorder()
