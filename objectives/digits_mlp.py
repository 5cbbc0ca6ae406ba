"""A multilayer perceptron on scikit-learn's digits: width, depth, dropout, learning rate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import optuna

from studyctl import TrainingData, TrialContext, keras_objective

sys.path.insert(0, str(Path(__file__).parent))
from _digits_data import load_digits_split


def load_data(options: dict[str, Any]) -> TrainingData:
    return load_digits_split(options)


@keras_objective("digits_mlp", load_data=load_data)
def build_model(trial: optuna.Trial, ctx: TrialContext) -> Any:
    import keras

    n_layers = ctx.suggest_int("n_layers", 1, 3)
    units = ctx.suggest_int("units", 16, 256, log=True)
    dropout = ctx.suggest_float("dropout", 0.0, 0.5)
    learning_rate = ctx.suggest_float("learning_rate", 1e-4, 3e-2, log=True)

    model = keras.Sequential([keras.Input(shape=(64,))])
    for _ in range(n_layers):
        model.add(keras.layers.Dense(units, activation="relu"))
        if dropout > 0:
            model.add(keras.layers.Dropout(dropout))
    model.add(keras.layers.Dense(10, activation="softmax"))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
