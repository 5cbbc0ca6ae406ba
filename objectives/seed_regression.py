"""The model of the original request: Dense(10, relu) on 100 features, then Dense(1), MSE,
Adam; learning rate and batch size searched. Data: a deterministic synthetic regression set
(scikit-learn's make_regression, 100 features, fixed seed)."""

from __future__ import annotations

from typing import Any

import optuna

from studyctl import TrainingData, TrialContext, keras_objective


def load_data(options: dict[str, Any]) -> TrainingData:
    from sklearn.datasets import make_regression

    x, y = make_regression(
        n_samples=int(options.get("n_samples", 2000)),
        n_features=100,
        n_informative=20,
        noise=float(options.get("noise", 5.0)),
        random_state=0,
    )
    y = (y - y.mean()) / y.std()
    split = int(len(x) * 0.8)
    return TrainingData(
        x=x[:split].astype("float32"),
        y=y[:split].astype("float32"),
        x_val=x[split:].astype("float32"),
        y_val=y[split:].astype("float32"),
    )


@keras_objective("seed_regression", load_data=load_data)
def build_model(trial: optuna.Trial, ctx: TrialContext) -> Any:
    import keras

    learning_rate = ctx.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    # Read by studyctl as the batch size for fit().
    ctx.suggest_categorical("batch_size", [32, 64, 128])
    model = keras.Sequential(
        [
            keras.Input(shape=(100,)),
            keras.layers.Dense(10, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="mse")
    return model
