"""Real Keras trainings of tiny models on scikit-learn's digits (1-2 epochs)."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from studyctl.cli import app

from .conftest import REPO, run_cli, write_objectives, write_spec

pytestmark = pytest.mark.slow
runner = CliRunner()

TINY = """
from __future__ import annotations

from studyctl import TrainingData, keras_objective


def load_data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype("float32")
    return TrainingData(x=x[:1400], y=d.target[:1400], x_val=x[1400:], y_val=d.target[1400:])


@keras_objective("tiny_digits", load_data=load_data)
def build(trial, ctx):
    import keras

    lr = trial.suggest_float("lr", 1e-6, 0.1, log=True)
    poison = trial.suggest_categorical("poison", [False, True])
    model = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])

    def nan_loss(y_true, y_pred):
        return keras.ops.mean(y_pred) * float("nan")

    loss = nan_loss if poison else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
    return model
"""


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return write_objectives(tmp_path / "objectives", TINY, name="tiny_digits.py")


def test_complete_pruned_and_nan_trials(tmp_path: Path, sqlite_url: str, tiny_dir: Path) -> None:
    spec = write_spec(
        tmp_path / "tiny.toml",
        """
        name = "tiny"
        objective = "tiny_digits"
        metric = "val_loss"
        n_trials = 2
        [pruner]
        type = "median"
        n_startup_trials = 1
        n_warmup_steps = 0
        [training]
        epochs = 2
        batch_size = 32
        [worker]
        max_consecutive_failures = 5
        [[enqueue]]
        lr = 0.01
        poison = true
        [[enqueue]]
        lr = 0.01
        poison = false
        [[enqueue]]
        lr = 0.000001
        poison = false
    """,
    )
    result = runner.invoke(
        app, ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(tiny_dir)]
    )
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="tiny", storage=sqlite_url).trials
    states = {t.number: t.state.name for t in trials}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "PRUNED"}
    nan, done, pruned = trials
    assert done.user_attrs["epochs_run"] == 2
    assert done.user_attrs["n_params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert set(done.intermediate_values) == {0, 1}
    assert len(done.user_attrs["history"]["val_loss"]) == 2
    assert done.value == min(done.user_attrs["history"]["val_loss"])
    assert done.user_attrs["worker"]["host"]
    assert pruned.user_attrs["pruned_at_epoch"] == 0
    assert "loss became nan at epoch 0" in nan.user_attrs["fail_reason"]
    # The best (only) complete trial's model is kept and gives its recorded final metric.
    import keras

    exported = tmp_path / "best.keras"
    export = runner.invoke(app, ["best", "tiny", "-s", sqlite_url, "--export-model", str(exported)])
    assert export.exit_code == 0, export.output
    model = keras.models.load_model(exported)
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    val_loss = model.evaluate(x[1400:], data.target[1400:], verbose=0)[0]
    assert val_loss == pytest.approx(done.user_attrs["final_metrics"]["val_loss"], rel=1e-4)
    # ...and it is an artifact of its trial (downloadable from optuna-dashboard), and the
    # trial has a dashboard note with the model summary.
    assert any(k.startswith("artifacts:") for k in done.system_attrs)
    study = optuna.load_study(study_name="tiny", storage=sqlite_url)
    notes = study._storage.get_study_system_attrs(study._study_id)
    assert any("Total params" in str(v) for k, v in notes.items() if "note" in k)
    # A failed trial does not count: the budget of 2 is met by the complete and pruned ones.
    assert "2/2 finished" in result.output


def test_out_of_memory_is_a_recorded_trial_failure(tmp_path: Path, sqlite_url: str) -> None:
    folder = write_objectives(
        tmp_path / "objectives",
        """
        from studyctl import TrainingData, keras_objective

        def load_data():
            import numpy as np
            return TrainingData(x=np.zeros((8, 2)), y=np.zeros(8))

        @keras_objective("oom_model", load_data=load_data)
        def build(trial, ctx):
            import tensorflow as tf
            trial.suggest_int("units", 1, 2)
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    """,
        name="oom_model.py",
    )
    spec = write_spec(
        tmp_path / "oom.toml",
        """
        name = "oom"
        objective = "oom_model"
        n_trials = 3
        [worker]
        max_consecutive_failures = 2
    """,
    )
    result = runner.invoke(
        app, ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(folder)]
    )
    assert result.exit_code == 1
    trials = optuna.load_study(study_name="oom", storage=sqlite_url).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert trials[0].user_attrs["fail_reason"].startswith("out of memory: ")
    assert "OOM when allocating tensor" in trials[0].user_attrs["fail_reason"]


def test_tensorboard_logs_and_hparams(tmp_path: Path, sqlite_url: str, tiny_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = write_spec(
        tmp_path / "tb.toml",
        f"""
        name = "tb"
        objective = "tiny_digits"
        n_trials = 1
        [training]
        epochs = 2
        [logging]
        tensorboard = "{tmp_path / "runs"}"
        [[enqueue]]
        lr = 0.01
        poison = false
    """,
    )
    result = runner.invoke(
        app, ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(tiny_dir), "-q"]
    )
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tb" / "trial-0"
    summary = EventAccumulator(str(run_dir))
    summary.Reload()
    assert "_hparams_/session_start_info" in summary.Tags()["tensors"]
    assert "objective/val_loss" in summary.Tags()["tensors"]
    epochs = EventAccumulator(str(run_dir / "validation"))
    epochs.Reload()
    assert len(epochs.Tensors("epoch_loss")) == 2  # Keras's own per-epoch logs


def test_two_replica_mirrored_strategy_on_cpu(
    tmp_path: Path, sqlite_url: str, tiny_dir: Path
) -> None:
    spec = write_spec(
        tmp_path / "mirror.toml",
        """
        name = "mirror"
        objective = "tiny_digits"
        n_trials = 1
        [training]
        epochs = 1
        batch_size = 64
        [[enqueue]]
        lr = 0.01
        poison = false
    """,
    )
    result = run_cli(
        ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(tiny_dir)],
        cwd=tmp_path,
        env={"STUDYCTL_CPU_REPLICAS": "2"},
    )
    assert result.returncode == 0, result.stderr
    trial = optuna.load_study(study_name="mirror", storage=sqlite_url).trials[0]
    assert trial.state.name == "COMPLETE"
    assert trial.user_attrs["replicas"] == 2


def test_seed_grid_evaluates_every_point_once(tmp_path: Path, sqlite_url: str) -> None:
    text = (REPO / "studies" / "seed_grid.toml").read_text().replace("epochs = 5", "epochs = 1")
    spec = write_spec(tmp_path / "grid.toml", text)
    result = runner.invoke(
        app,
        ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(REPO / "objectives"), "-q"],
    )
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="seed-grid", storage=sqlite_url).trials
    points = sorted((t.params["learning_rate"], t.params["batch_size"]) for t in trials)
    assert points == sorted(itertools.product([0.01, 0.001, 0.0001], [32, 64, 128]))
    assert all(t.state.name == "COMPLETE" for t in trials)


def test_demo_spec_runs_with_shipped_objective(tmp_path: Path, sqlite_url: str) -> None:
    text = (REPO / "studies" / "digits_mlp.toml").read_text()
    text = text.replace("n_trials = 20", "n_trials = 3").replace("epochs = 8", "epochs = 2")
    spec = write_spec(tmp_path / "demo.toml", text)
    common = ["-s", sqlite_url, "--objectives-dir", str(REPO / "objectives")]
    first = runner.invoke(app, ["run", str(spec), *common])
    assert first.exit_code == 0, first.output
    assert "3/3 finished" in first.output and "best trial #" in first.output
    again = runner.invoke(app, ["run", str(spec), *common])
    assert "budget met (3/3 finished); nothing to run" in again.output
    best = optuna.load_study(study_name="digits-mlp", storage=sqlite_url).best_trial
    kept = sorted(p.name for p in (tmp_path / "artifacts" / "digits-mlp" / "models").iterdir())
    assert kept == [f"trial-{best.number}.keras"]
    assert not (tmp_path / "artifacts" / "digits-mlp" / f"trial-{best.number}").exists()
