"""studyctl's Keras callbacks in isolation: each epoch-end decision (report, prune, NaN
loss, missing metric, an epoch cut short by a stop request) on a real Keras model and a real
Optuna trial in a SQLite file, without a fit."""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from studyctl import signals
from studyctl.training.callbacks import make_epoch_callback

pytestmark = pytest.mark.slow  # imports TensorFlow


@pytest.fixture
def study(tmp_path: Path) -> Iterator[optuna.Study]:
    storage = f"sqlite:///{tmp_path / 'cb.db'}"
    yield optuna.create_study(
        storage=storage,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    )
    signals.reset_stop()


def reporter(trial: optuna.Trial, *, prune: bool = True) -> Any:
    import keras

    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(1)])
    callback = make_epoch_callback(trial, ("val_loss",), prune)
    model.stop_training = False  # as Model.fit sets it before the first epoch
    callback.set_model(model)
    callback.on_train_begin()
    return callback


def stored(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    return trial.study._storage.get_trial(trial._trial_id)


def test_each_epoch_is_reported_and_recorded(study: optuna.Study) -> None:
    trial = study.ask()
    cb = reporter(trial)
    cb.on_epoch_end(0, {"loss": 0.9, "val_loss": 0.8})
    cb.on_epoch_end(1, {"loss": 0.7, "val_loss": 0.6})
    assert stored(trial).intermediate_values == {0: 0.8, 1: 0.6}
    assert cb.history == {"loss": [0.9, 0.7], "val_loss": [0.8, 0.6]}
    assert cb.epochs_run == 2 and cb.failure is None and not cb.model.stop_training


def test_a_nan_loss_stops_the_fit_and_says_when(study: optuna.Study) -> None:
    cb = reporter(study.ask())
    cb.on_epoch_end(2, {"loss": math.nan, "val_loss": 0.5})
    assert cb.failure == "loss became nan at epoch 2"
    assert cb.model.stop_training


def test_a_missing_metric_names_the_logged_ones(study: optuna.Study) -> None:
    cb = reporter(study.ask())
    cb.on_epoch_end(0, {"loss": 0.5, "accuracy": 0.9})
    assert cb.missing_metric == "metric 'val_loss' is not logged; logged: loss, accuracy"
    assert cb.failure is None
    assert cb.model.stop_training


def test_a_worse_trial_is_pruned_at_that_epoch(study: optuna.Study) -> None:
    good = study.ask()
    good.report(0.1, 0)
    study.tell(good, 0.1)
    cb = reporter(study.ask())
    cb.on_epoch_end(0, {"loss": 1.0, "val_loss": 0.9})
    assert cb.pruned_epoch == 0 and cb.model.stop_training
    unpruned = reporter(study.ask(), prune=False)
    unpruned.on_epoch_end(0, {"loss": 1.0, "val_loss": 0.9})
    assert unpruned.pruned_epoch is None and not unpruned.model.stop_training


def test_an_epoch_cut_short_by_a_stop_is_not_recorded(study: optuna.Study) -> None:
    trial = study.ask()
    cb = reporter(trial)
    cb.on_epoch_end(0, {"loss": 0.9, "val_loss": 0.8})
    with signals.safe_points(lambda: None):
        signals.stop_at_safe_point(signal.SIGTERM, None)  # the request, as the handler makes it
        cb.on_epoch_end(1, {"loss": 0.1, "val_loss": 0.1})
    assert stored(trial).intermediate_values == {0: 0.8}
    assert cb.epochs_run == 1 and cb.history["val_loss"] == [0.8]
