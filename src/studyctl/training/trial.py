"""Training one Keras trial: build the model in the strategy's scope, fit it with
studyctl's callbacks, report each epoch, and return the value(s)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import optuna

from studyctl.artifacts import object_store
from studyctl.errors import SpecError, StudyctlError, TrialFailed, WorkerInterrupted
from studyctl.signals import safe_points, stop_requested
from studyctl.training.callbacks import make_epoch_callback
from studyctl.training.checkpoints import checkpoint_dir, mirror_checkpoint, pull_checkpoint
from studyctl.training.devices import current_backend, device_names, get_strategy
from studyctl.training.logs import save_trial_note, tensorboard_logs, write_hparams
from studyctl.training.models import keep_if_best

if TYPE_CHECKING:
    from studyctl.objectives import KerasObjective, TrainingData, TrialContext
    from studyctl.spec import StudySpec


def _fit_inputs(data: TrainingData, validation_split: float) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"x": data.x, "y": data.y}
    if data.has_validation:
        kwargs["validation_data"] = (data.x_val, data.y_val)
    elif validation_split > 0:
        kwargs["validation_split"] = validation_split
    return kwargs


def suggest_training_axes(trial: optuna.Trial, spec: StudySpec) -> dict[str, int]:
    """Suggest the training settings the spec makes search axes (`spec.training_axes`), so
    they are sampled, recorded in the trial's params and applied whether or not the
    objective suggests them: a fixed [params] value (PartialFixedSampler returns it), a grid
    axis's values, or a [space] range or choices."""
    chosen: dict[str, int] = {}
    for name in spec.training_axes:
        if name in spec.params:
            value = trial.suggest_categorical(name, [spec.params[name]])
        elif name in spec.sampler.grid:
            value = trial.suggest_categorical(name, list(spec.sampler.grid[name]))
        else:
            p = spec.space[name]
            if p.type == "categorical":
                value = trial.suggest_categorical(name, list(p.choices))
            else:
                assert p.low is not None and p.high is not None
                step = int(p.step) if p.step is not None else 1
                value = trial.suggest_int(name, int(p.low), int(p.high), log=p.log, step=step)
        chosen[name] = int(value)  # type: ignore[arg-type]  # positive ints (spec parse)
    return chosen


def run_keras_trial(ctx: TrialContext, objective: KerasObjective) -> float | list[float]:
    """Build the model in the strategy's scope, fit it, report epochs, return the value(s)."""
    import keras

    from studyctl.objectives import TrainingData

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
    suggest_training_axes(trial, spec)
    strategy = get_strategy()
    with strategy.scope():
        model = objective.build_model(trial, ctx)
    if not isinstance(model, keras.Model) or model.optimizer is None:
        raise TrialFailed(f"build_model of {objective.name!r} must return a compiled keras.Model")
    ctx.check_grid_axes()  # before any epoch: a grid axis nothing suggests is a spec error
    ctx.warn_unsuggested()
    trial.set_user_attr("n_params", int(model.count_params()))
    save_trial_note(trial, spec, model)
    trial.set_user_attr("replicas", int(strategy.num_replicas_in_sync))
    trial.set_user_attr("backend", current_backend())
    trial.set_user_attr("devices", device_names())
    backup_dir = checkpoint_dir(ctx) if spec.artifacts.checkpoints else None
    store = object_store(spec)
    after_commit = None
    if backup_dir is not None:
        trial.set_user_attr("checkpoint_dir", str(backup_dir))
        # Removed by the trial loop once the trial's outcome is stored
        # (`checkpoints.discard_checkpoint`); kept when a retry resumes from it.
        if store is not None:
            pull_checkpoint(store, backup_dir, spec.name)
            after_commit = partial(mirror_checkpoint, store, spec.name)
    # Restores the checkpoint at the start of the fit and hands one to its writer thread
    # after each epoch (the upload to the store follows each local commit there).
    reporter = make_epoch_callback(
        trial,
        spec.metrics,
        prune=not spec.is_multi_objective and spec.pruner.type != "none",
        checkpoint=backup_dir,
        checkpoint_interval_s=spec.artifacts.checkpoint_interval_s,
        after_commit=after_commit,
    )
    # A trial parameter named batch_size or epochs (studyctl's own suggestion of a search
    # axis, or the objective's) overrides the spec's [training] value.
    batch_size = int(trial.params.get("batch_size", training.batch_size))
    epochs = int(trial.params.get("epochs", training.epochs))
    callbacks = [reporter]
    log_dir = tensorboard_logs(spec, trial.number)
    if log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir)))
    try:
        with safe_points(lambda: setattr(model, "stop_training", True)):
            model.fit(
                **_fit_inputs(data, training.validation_split),
                batch_size=batch_size,
                epochs=epochs,
                shuffle=training.shuffle,
                verbose=training.verbose,
                callbacks=callbacks,
            )
    finally:
        # Before anything else is stored: the last checkpoint write, then the reports held
        # back by a database outage.
        reporter.settle()
        trial.set_user_attr("epochs_run", reporter.epochs_run)
        trial.set_user_attr("history", reporter.history)
    signum = stop_requested()
    if signum is not None:
        raise WorkerInterrupted(signum)  # the checkpoint stays for the retry
    if reporter.missing_metric is not None:
        raise SpecError(spec.path, None, reporter.missing_metric)
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
        write_hparams(log_dir, trial, spec, values)
    if spec.artifacts.keep_best_model and len(values) == 1:
        keep_if_best(ctx, model, values[0])
    return values[0] if len(values) == 1 else values
