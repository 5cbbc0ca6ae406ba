"""The Keras side: devices, the distribution strategy, and training one trial.

This is the only module that imports TensorFlow, and only when a trial trains. Devices are
configured once per process, before the first strategy: GPU memory growth on, threads
bounded by $STUDYCTL_THREADS, and $STUDYCTL_CPU_REPLICAS logical CPU devices on a machine
without GPUs (used to test multi-replica MirroredStrategy on CPU).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from studyctl.errors import StudyctlError
from studyctl.signals import WorkerInterrupted, safe_points, stop_requested

if TYPE_CHECKING:
    from studyctl.objectstore import ObjectStore
    from studyctl.registry import KerasObjective, TrainingData, TrialContext
    from studyctl.spec import StudySpec

THREADS_ENV = "STUDYCTL_THREADS"
CPU_REPLICAS_ENV = "STUDYCTL_CPU_REPLICAS"

_STRATEGY: Any = None


class TrialFailed(Exception):
    """A trial that cannot give a value (NaN loss, missing metric); recorded as FAIL."""


def configure_devices() -> list[str]:
    """Set threads, GPU memory growth and logical CPUs; return the devices to mirror over."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    threads = int(os.environ.get(THREADS_ENV, "0") or 0)
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        return [d.name for d in tf.config.list_logical_devices("GPU")]
    replicas = int(os.environ.get(CPU_REPLICAS_ENV, "1") or 1)
    cpus = tf.config.list_physical_devices("CPU")
    if replicas > 1:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def get_strategy() -> Any:
    """One strategy per process: `tf.distribute.MirroredStrategy` over the devices it sees
    when there are several; TensorFlow's default strategy on a single device, where
    MirroredStrategy only adds cost (measured: about 3x the time per epoch of a small model
    on one CPU; docs/ARCHITECTURE.md)."""
    global _STRATEGY
    if _STRATEGY is None:
        import tensorflow as tf

        devices = configure_devices()
        if len(devices) > 1:
            _STRATEGY = tf.distribute.MirroredStrategy(devices=devices)
        else:
            _STRATEGY = tf.distribute.get_strategy()
    return _STRATEGY


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _make_epoch_callback(trial: optuna.Trial, metrics: tuple[str, ...], prune: bool) -> Any:
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


def object_store(spec: StudySpec) -> ObjectStore | None:
    if spec.artifacts.store is None:
        return None
    from studyctl.objectstore import ObjectStore

    return ObjectStore.parse(spec.artifacts.store)


def _make_mirror_callback(store: ObjectStore, local: Path, study: str, name: str) -> Any:
    """Uploads the checkpoint BackupAndRestore has just written (it runs first) at every
    epoch end, so a retry on another machine can resume from it."""
    import keras

    class CheckpointMirror(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if stop_requested() is None:
                _best_effort(f"upload of checkpoint {name}", store.push_dir, local, study, name)

    return CheckpointMirror()


def _make_backup_callback(folder: Path) -> Any:
    """Keras's BackupAndRestore, except that an epoch cut short by a stop request is not
    saved as finished: the retry resumes after the last complete epoch."""
    import keras

    class EpochBackup(keras.callbacks.BackupAndRestore):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if stop_requested() is None:
                super().on_epoch_end(epoch, logs)

    return EpochBackup(str(folder), delete_checkpoint=False)


def _pull_checkpoint(store: ObjectStore, local: Path, study: str) -> None:
    """The store holds the newest checkpoint of a trial (every save is mirrored there); a
    local copy may be older (this machine ran an earlier attempt), so the store's wins."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=local.parent if local.parent.exists() else None) as tmp:
        if store.pull_dir(Path(tmp) / "ckpt", study, local.name):
            shutil.rmtree(local, ignore_errors=True)
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / "ckpt"), local)


def _warn(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)


def _best_effort(what: str, fn: Any, *args: Any) -> None:
    """Object-store housekeeping must not fail a trial that trained: warn and go on."""
    try:
        fn(*args)
    except Exception as exc:
        _warn(f"{what} failed: {type(exc).__name__}: {exc}")


def _save_trial_note(trial: optuna.Trial, spec: StudySpec, model: Any) -> None:
    """A dashboard note: the model summary and the spec settings the trial trained with."""
    import json

    from optuna_dashboard import save_note

    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    settings = {
        "training": spec.to_dict()["training"],
        "params": trial.params,
        "fixed": dict(spec.params),
        "sampler": spec.sampler.type,
        "pruner": spec.pruner.type,
    }
    save_note(
        trial,
        "## Model\n\n```\n" + "\n".join(lines) + "\n```\n\n## Settings\n\n"
        "```json\n" + json.dumps(settings, indent=2, default=str) + "\n```\n",
    )


def tensorboard_dir(spec: StudySpec, number: int) -> Path | None:
    if spec.logging.tensorboard is None:
        return None
    return Path(spec.logging.tensorboard) / spec.name / f"trial-{number}"


def _write_hparams(
    log_dir: Path, trial: optuna.Trial, spec: StudySpec, values: list[float]
) -> None:
    """The HParams summary (the trial's parameters and objective values) that TensorBoard's
    HParams dashboard compares across trials, as KerasTuner users know it."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    with tf.summary.create_file_writer(str(log_dir)).as_default():
        hp.hparams(dict(trial.params), trial_id=f"trial-{trial.number}")
        for metric, value in zip(spec.metrics, values, strict=True):
            tf.summary.scalar(f"objective/{metric}", value, step=0)


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
    _best_effort(
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
            _warn(f"upload of {name} failed ({type(exc).__name__}: {exc}); kept at {model_path}")
    trial.set_user_attr("model_path", model_path)
    for old in completed:  # beaten: their saved models can never be best again
        path = old.user_attrs.get("model_path")
        if path and str(path).startswith("s3://") and store is not None:
            _best_effort(f"removal of {path}", store.delete, spec.name, "models", Path(path).name)
        elif path:
            Path(path).unlink(missing_ok=True)


def _remove_checkpoint(
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
        _best_effort(f"removal of checkpoint {folder.name}", store.delete_dir, study, folder.name)


def _fit_inputs(data: TrainingData, validation_split: float) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"x": data.x, "y": data.y}
    if data.has_validation:
        kwargs["validation_data"] = (data.x_val, data.y_val)
    elif validation_split > 0:
        kwargs["validation_split"] = validation_split
    return kwargs


def run_keras_trial(ctx: TrialContext, objective: KerasObjective) -> float | list[float]:
    """Build the model in the strategy's scope, fit it, report epochs, return the value(s)."""
    import keras

    from studyctl.registry import TrainingData

    trial, spec = ctx.trial, ctx.spec
    training = spec.training
    # Once per trial, before it: clear_session runs a full gc.collect (about 0.3 s on the
    # 2-core CI machine), and the next trial's call frees this trial's graph.
    keras.backend.clear_session()
    data = ctx.data
    if not isinstance(data, TrainingData):
        raise StudyctlError(
            f"objective {objective.name!r}: load_data returned {type(data).__name__}; "
            "expected studyctl.TrainingData"
        )
    strategy = get_strategy()
    with strategy.scope():
        model = objective.build_model(trial, ctx)
    if not isinstance(model, keras.Model) or model.optimizer is None:
        raise TrialFailed(f"build_model of {objective.name!r} must return a compiled keras.Model")
    trial.set_user_attr("n_params", int(model.count_params()))
    _save_trial_note(trial, spec, model)
    trial.set_user_attr("replicas", int(strategy.num_replicas_in_sync))
    reporter = _make_epoch_callback(
        trial, spec.metrics, prune=not spec.is_multi_objective and spec.pruner.type != "none"
    )
    batch_size = int(trial.params.get("batch_size", training.batch_size))
    callbacks = [reporter]
    backup_dir = checkpoint_dir(ctx) if spec.artifacts.checkpoints else None
    store = object_store(spec)
    if backup_dir is not None:
        trial.set_user_attr("checkpoint_dir", str(backup_dir))
        # Kept when the trial is interrupted (its retry resumes from it); removed below
        # once the trial has an outcome.
        callbacks.insert(0, _make_backup_callback(backup_dir))
        if store is not None:
            _pull_checkpoint(store, backup_dir, spec.name)
            callbacks.insert(
                1, _make_mirror_callback(store, backup_dir, spec.name, backup_dir.name)
            )
    log_dir = tensorboard_dir(spec, trial.number)
    if log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir)))
    try:
        with safe_points(lambda: setattr(model, "stop_training", True)):
            model.fit(
                **_fit_inputs(data, training.validation_split),
                batch_size=batch_size,
                epochs=training.epochs,
                shuffle=training.shuffle,
                verbose=training.verbose,
                callbacks=callbacks,
            )
    except Exception:
        _remove_checkpoint(trial, backup_dir, store, spec.name)
        raise
    finally:
        trial.set_user_attr("epochs_run", reporter.epochs_run)
        trial.set_user_attr("history", reporter.history)
    signum = stop_requested()
    if signum is not None:
        raise WorkerInterrupted(signum)  # the checkpoint stays for the retry
    _remove_checkpoint(trial, backup_dir, store, spec.name)
    if reporter.failure is not None:
        raise TrialFailed(reporter.failure)
    if reporter.pruned_epoch is not None:
        trial.set_user_attr("pruned_at_epoch", reporter.pruned_epoch)
        raise optuna.TrialPruned(f"pruned at epoch {reporter.pruned_epoch}")
    values = []
    for metric, direction in zip(spec.metrics, spec.directions, strict=True):
        series = reporter.history[metric]
        if training.objective_value == "last":
            values.append(series[-1])
        else:
            values.append(min(series) if direction == "minimize" else max(series))
    trial.set_user_attr("final_metrics", {k: v[-1] for k, v in reporter.history.items() if v})
    if log_dir is not None:
        _write_hparams(log_dir, trial, spec, values)
    if spec.artifacts.keep_best_model and len(values) == 1:
        keep_if_best(ctx, model, values[0])
    return values[0] if len(values) == 1 else values
