"""A `metric` the model does not log is a spec error: the first epoch that misses it stops
the run with one `error:` line naming the logs that exist, exit code 2, and no failed trial
left behind (the study this run created is deleted again)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from .conftest import DIGITS_DATA, run_cli, write_objectives, write_spec

pytestmark = pytest.mark.slow

TINY = (
    DIGITS_DATA
    + """


@keras_objective("tiny_acc", load_data=load_data)
def build(trial, ctx):
    import keras

    units = trial.suggest_int("units", 4, 16)
    model = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(units),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model
"""
)


@pytest.mark.parametrize("workers", [0, 2])
def test_misspelled_metric_stops_at_the_first_epoch(
    tmp_path: Path, sqlite_url: str, workers: int
) -> None:
    objectives = write_objectives(tmp_path / "objectives", TINY, "tiny_acc.py")
    spec = write_spec(
        tmp_path / "typo.toml",
        """
        name = "typo"
        objective = "tiny_acc"
        metric = "val_los"
        n_trials = 5
        [training]
        epochs = 3
        """,
    )
    args = ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives)]
    if workers:
        args += ["--workers", str(workers), "--threads-per-worker", "1"]
    result = run_cli(args, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "metric 'val_los' is not logged; logged: " in errors[0]
    logged = errors[0].split("logged: ", 1)[1]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= {
        name.strip(" .") for name in logged.split(",")
    }
    assert "Traceback" not in output and "failed with parameters" not in output
    # The run created the study and only found a spec error: nothing is left behind.
    assert "typo" not in optuna.get_all_study_names(sqlite_url)
    assert not (tmp_path / "artifacts" / "typo").exists() or not any(
        (tmp_path / "artifacts" / "typo").iterdir()
    )
