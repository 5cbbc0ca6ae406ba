"""Shared fixtures: real SQLite files in tmp_path, objective folders written per test, and
helpers to run the real `studyctl` entry point in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def write_objectives(folder: Path, source: str = FAST_OBJECTIVES, name: str = "fast.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(source))
    return folder


def write_spec(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


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
