"""Shared fixtures: real SQLite files in tmp_path, objective folders written per test, and
helpers to run the real `studyctl` entry point in a subprocess."""

from __future__ import annotations

import array
import base64
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from studyctl.storage import close_storage

REPO = Path(__file__).resolve().parent.parent
STUDYCTL = [sys.executable, "-m", "studyctl.cli"]

FAST_OBJECTIVES = """
from __future__ import annotations

import math
import time

from studyctl import function_objective


@function_objective("quadratic")
def quadratic(trial, ctx):
    x = ctx.suggest_float("x", -10.0, 10.0)
    delay = float(ctx.options.get("sleep", 0.0))
    if delay:
        time.sleep(delay)
    for step in range(int(ctx.options.get("steps", 0))):
        trial.report((x - 2) ** 2 + 1.0 / (step + 1), step)
    return (x - 2) ** 2


@function_objective("always_fails")
def always_fails(trial, ctx):
    trial.suggest_float("x", 0, 1)
    raise RuntimeError("objective is broken")


@function_objective("returns_nan")
def returns_nan(trial, ctx):
    trial.suggest_float("x", 0, 1)
    return math.nan
"""


SLEEPY_OBJECTIVE = """
import time

from studyctl import function_objective


@function_objective("sleepy")
def sleepy(trial, ctx):
    x = trial.suggest_float("x", -1, 1)
    for step in range(4):
        time.sleep(0.5)
        trial.report(x * x + 1 / (step + 1), step)
    return x * x
"""


# The digits data of the Keras tests (scikit-learn ships it: nothing is downloaded): 1,400
# training and 397 validation rows. Objective sources start with it.
DIGITS_DATA = """
from studyctl import TrainingData, keras_objective


def load_data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype("float32")
    return TrainingData(x=x[:1400], y=d.target[:1400], x_val=x[1400:], y_val=d.target[1400:])
"""


def digits_mlp(name: str) -> str:
    """The source of a Keras objective `name` on digits: one hidden layer of 8-32 units
    (suggested), Adam at 0.01."""
    return (
        DIGITS_DATA
        + f"""

@keras_objective("{name}", load_data=load_data)
def build(trial, ctx):
    import keras

    units = trial.suggest_int("units", 8, 32)
    model = keras.Sequential([keras.Input(shape=(64,)),
                              keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss="sparse_categorical_crossentropy")
    return model
"""
    )


def prepare_sleepy_study(
    tmp_path: Path, name: str, url: str, n_trials: int, artifacts: Path
) -> Path:
    """A study of 4 half-second steps per trial whose lost trials go stale after 3 s;
    returns its objectives folder."""
    from studyctl.execution.prepare import prepare_study
    from studyctl.spec import load_spec

    objectives = write_objectives(tmp_path / "shared" / "objectives", SLEEPY_OBJECTIVE, "sleepy.py")
    spec = write_spec(
        tmp_path / f"{name}.toml",
        f"""
        name = "{name}"
        objective = "sleepy"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        [worker]
        heartbeat_interval = 1
        grace_period = 3
        [artifacts]
        path = "{artifacts}"
        """,
    )
    prepare_study(load_spec(spec), url, objectives)
    return objectives


def write_objectives(folder: Path, source: str = FAST_OBJECTIVES, name: str = "fast.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(source))
    return folder


def write_spec(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


PG_DSN = "host=127.0.0.1 port=5432 user=root dbname=postgres"
PG_URL = "postgresql+psycopg://root@127.0.0.1:5432/{name}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    yield url
    close_storage(url)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new database on the local PostgreSQL server, dropped afterwards."""
    import psycopg

    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    name = f"studyctl_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_URL.format(name=name)
    try:
        yield url
    finally:
        close_storage(url)
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every storage-level test runs on both backends."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def objectives_dir(tmp_path: Path) -> Path:
    return write_objectives(tmp_path / "objectives")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)  # artifacts/ and studyctl.db defaults land in tmp_path
    monkeypatch.delenv("STUDYCTL_STORAGE", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    yield


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real `studyctl` entry point in a subprocess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    full_env.pop("STUDYCTL_STORAGE", None) if env is None or "STUDYCTL_STORAGE" not in env else None
    return subprocess.run(
        [*STUDYCTL, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def typed_values(typed: dict[str, str]) -> list[Any]:
    """A typed array of a report's figure (`figures.typed_array`) as its values."""
    found = array.array({"i4": "i", "f8": "d"}[typed["dtype"]])
    found.frombytes(base64.b64decode(typed["bdata"]))
    return found.tolist()
