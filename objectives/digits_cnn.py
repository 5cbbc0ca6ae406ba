"""A small convolutional network on scikit-learn's digits (8x8x1 images)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import optuna

from studyctl import TrainingData, TrialContext, keras_objective

sys.path.insert(0, str(Path(__file__).parent))
from _digits_data import load_digits_split


def load_data(options: dict[str, Any]) -> TrainingData:
    return load_digits_split(options, images=True)


@keras_objective("digits_cnn", load_data=load_data)
def build_model(trial: optuna.Trial, ctx: TrialContext) -> Any:
    import keras

    filters = ctx.suggest_categorical("filters", [8, 16, 32])
    dense_units = ctx.suggest_int("dense_units", 16, 128, log=True)
    learning_rate = ctx.suggest_float("learning_rate", 1e-4, 3e-2, log=True)

    model = keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1)),
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(filters * 2, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(dense_units, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
