"""Keras 3 on JAX: `[training] backend = "jax"`, end to end on the CPU, with the same
objective file as on TensorFlow (it uses only `keras.*`).

Sequential and with two workers, DataParallel over two JAX host devices
($STUDYCTL_CPU_REPLICAS=2, which becomes XLA's --xla_force_host_platform_device_count), and
a resume from the checkpoint after kill -9."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from .conftest import STUDYCTL, run_cli, write_objectives, write_spec
from .test_resume import kill_mid_trial

pytestmark = pytest.mark.slow
pytest.importorskip("jax")

# Only keras.*: the same file trains on TensorFlow or JAX. It records which frameworks its
# process loaded, so the test can tell that a JAX trial never loaded TensorFlow.
PORTABLE = """
import sys

from studyctl import TrainingData, keras_objective


def load_data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype("float32")
    x_val, y_val = x[1400:1792], d.target[1400:1792]
    return TrainingData(x=x[:1400], y=d.target[:1400], x_val=x_val, y_val=y_val)


@keras_objective("portable_digits", load_data=load_data)
def build(trial, ctx):
    import keras

    units = trial.suggest_int("units", 8, 32)
    lr = trial.suggest_float("lr", 1e-3, 3e-2, log=True)
    with ctx.strategy.scope():
        model = keras.Sequential([keras.Input(shape=(64,)),
                                  keras.layers.Dense(units, activation="relu"),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer=keras.optimizers.Adam(lr),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    trial.set_user_attr("keras_backend", keras.backend.backend())
    trial.set_user_attr("tensorflow_loaded", "tensorflow" in sys.modules)
    return model
"""


def jax_spec(tmp_path: Path, name: str, *, n_trials: int, epochs: int, batch: int = 32) -> Path:
    return write_spec(
        tmp_path / f"{name}.toml",
        f"""
        name = "{name}"
        objective = "portable_digits"
        metric = "val_loss"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        seed = 3
        [training]
        backend = "jax"
        epochs = {epochs}
        batch_size = {batch}
        [worker]
        heartbeat_interval = 1
        grace_period = 3
        [artifacts]
        path = "{tmp_path / "artifacts"}"
        """,
    )


@pytest.fixture
def objectives(tmp_path: Path) -> Path:
    return write_objectives(tmp_path / "objectives", PORTABLE, "portable_digits.py")


def jax_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "XLA_FLAGS")}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def test_sequential_jax_study(tmp_path: Path, sqlite_url: str, objectives: Path) -> None:
    spec = jax_spec(tmp_path, "jax-seq", n_trials=2, epochs=2)
    out = run_cli(
        ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives)],
        cwd=tmp_path,
        env=jax_env(),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    trials = optuna.load_study(study_name="jax-seq", storage=sqlite_url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert t.user_attrs["backend"] == t.user_attrs["keras_backend"] == "jax"
        assert t.user_attrs["replicas"] == 1 and len(t.user_attrs["devices"]) == 1
        assert len(t.intermediate_values) == 2  # both epochs reported, as on TensorFlow
    # Without workers the trials train in the CLI's own process: studyctl's set-up, warm-up
    # and strategy load no TensorFlow there (Keras's model saving for keep_best_model uses
    # TensorFlow's file I/O when TensorFlow is installed, so only the first trial tells).
    assert trials[0].user_attrs["tensorflow_loaded"] is False
    best = optuna.load_study(study_name="jax-seq", storage=sqlite_url).best_trial
    assert Path(best.user_attrs["model_path"]).is_file()  # the kept model, saved from JAX


def test_two_jax_workers_with_data_parallel(
    tmp_path: Path, sqlite_url: str, objectives: Path
) -> None:
    spec = jax_spec(tmp_path, "jax-dp", n_trials=4, epochs=1, batch=64)
    out = run_cli(
        [
            *("run", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives)),
            *("--workers", "2", "--format", "json"),
        ],
        cwd=tmp_path,
        env=jax_env(STUDYCTL_CPU_REPLICAS="2"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    trials = optuna.load_study(study_name="jax-dp", storage=sqlite_url).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    first_of_process: dict[int, optuna.trial.FrozenTrial] = {}
    for t in trials:
        # keras.distribution.DataParallel over the two host devices of each trial process.
        assert t.user_attrs["backend"] == "jax" and t.user_attrs["replicas"] == 2
        assert len(set(t.user_attrs["devices"])) == 2
        first_of_process.setdefault(t.user_attrs["worker"]["pid"], t)
    assert not any(t.user_attrs["tensorflow_loaded"] for t in first_of_process.values())


def test_jax_trial_resumes_after_kill_9(tmp_path: Path, sqlite_url: str, objectives: Path) -> None:
    spec = jax_spec(tmp_path, "jax-kill", n_trials=1, epochs=8, batch=8)
    created = run_cli(
        ["create", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives)],
        cwd=tmp_path,
        env=jax_env(),
    )
    assert created.returncode == 0, created.stderr
    worker = subprocess.Popen(
        [*STUDYCTL, "worker", "jax-kill", "-s", sqlite_url, "--objectives-dir", str(objectives)],
        cwd=tmp_path,
        env=jax_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    study = optuna.load_study(study_name="jax-kill", storage=sqlite_url)
    victim = kill_mid_trial(study, worker)
    reported = len(study.trials[victim.number].intermediate_values)
    resumed = run_cli(
        ["resume", "jax-kill", "-s", sqlite_url, "--objectives-dir", str(objectives)],
        cwd=tmp_path,
        env=jax_env(),
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = optuna.load_study(study_name="jax-kill", storage=sqlite_url).trials
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    # Keras restored the JAX model from the last finished epoch's checkpoint: at most the
    # epoch in flight is trained again.
    assert retry.user_attrs["resumed_from_epoch"] >= reported - 1 >= 2
    assert retry.user_attrs["backend"] == "jax"
