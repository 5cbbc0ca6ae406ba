"""`studyctl init NAME` writes a study that runs as written; `studyctl.run` / `studyctl.load`
give a notebook the CLI's budget, resume and worker semantics."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

import studyctl
from studyctl.cli import app
from studyctl.errors import StudyctlError
from studyctl.spec import load_spec
from studyctl.storage import close_storage

from .conftest import STUDYCTL, write_spec

runner = CliRunner()


def test_init_writes_an_objective_and_a_spec_and_never_overwrites(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "my_model"])
    assert result.exit_code == 0, result.output
    objective = tmp_path / "objectives" / "my_model.py"
    spec = tmp_path / "studies" / "my_model.toml"
    assert f"wrote {Path('objectives') / 'my_model.py'}" in result.output
    assert '@keras_objective("my_model", load_data=load_data)' in objective.read_text()
    loaded = load_spec(spec)
    assert loaded.name == "my_model" and loaded.objective == "my_model"
    listed = runner.invoke(app, ["objectives", "-f", "json"])
    assert '"name": "my_model"' in listed.output
    before = (objective.read_text(), spec.read_text())
    again = runner.invoke(app, ["init", "my_model"])
    assert again.exit_code == 2
    assert again.stderr.startswith(f"error: init 'my_model': {Path('objectives') / 'my_model.py'}")
    assert "already exists" in again.stderr
    assert (objective.read_text(), spec.read_text()) == before
    # A spec alone in the way: nothing written, not even the objective.
    (tmp_path / "studies" / "other.toml").write_text("# mine\n")
    refused = runner.invoke(app, ["init", "other"])
    assert refused.exit_code == 2 and "other.toml already exists" in refused.stderr
    assert not (tmp_path / "objectives" / "other.py").exists()
    assert (tmp_path / "studies" / "other.toml").read_text() == "# mine\n"


# TensorFlow's start-up lines (absl, oneDNN, CUDA probing) that must not reach a user.
TF_NOISE = re.compile(r"absl|oneDNN|cuInit|cuda|cpu_feature_guard|^[IWE]\d{4} ", re.M | re.I)


@pytest.mark.slow
def test_the_generated_study_runs_quietly(tmp_path: Path) -> None:
    """The template trains as written (2 trials of 1 epoch, through a worker and its trial
    process), and TensorFlow's start-up noise stays hidden without TF_CPP_MIN_LOG_LEVEL."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "STUDYCTL_STORAGE")
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*STUDYCTL, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )

    assert cli("init", "first_model").returncode == 0
    spec = tmp_path / "studies" / "first_model.toml"
    text = spec.read_text()
    spec.write_text(
        text.replace("n_trials = 20", "n_trials = 2").replace("epochs = 8", "epochs = 1")
    )
    ran = cli("run", str(spec), "--workers", "1")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "2/2 finished" in ran.stdout
    assert not TF_NOISE.search(ran.stdout + ran.stderr), ran.stdout + ran.stderr
    study = optuna.load_study(study_name="first_model", storage="sqlite:///studyctl.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all(t.user_attrs["epochs_run"] == 1 for t in study.trials)


def _quad(tmp_path: Path, n_trials: int) -> Path:
    return write_spec(
        tmp_path / "quad.toml",
        f"""
        name = "quad"
        objective = "quadratic"
        metric = "value"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        seed = 2
        """,
    )


def test_python_api_runs_resumes_and_loads(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    study = studyctl.run(_quad(tmp_path, 3), storage=sqlite_url, objectives_dir=objectives_dir)
    assert isinstance(study, optuna.Study)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    # The budget is the study's total: a second run adds nothing, a larger one continues.
    again = studyctl.run(str(_quad(tmp_path, 3)), storage=sqlite_url, objectives_dir=objectives_dir)
    assert len(again.trials) == 3
    more = studyctl.run(
        load_spec(_quad(tmp_path, 5)), storage=sqlite_url, objectives_dir=objectives_dir, workers=1
    )
    assert sum(t.state.name == "COMPLETE" for t in more.trials) == 5
    workers = {t.user_attrs["worker"]["pid"] for t in more.trials[3:]}
    assert os.getpid() not in workers  # trials 3 and 4 ran in the worker's trial process
    loaded = studyctl.load("quad", storage=sqlite_url)
    assert loaded.best_trial.number == more.best_trial.number
    with pytest.raises(StudyctlError, match="no study 'nope'"):
        studyctl.load("nope", storage=sqlite_url)


def test_python_api_raises_on_a_failing_objective(tmp_path: Path, objectives_dir: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fails.db'}"
    spec = write_spec(
        tmp_path / "fails.toml",
        'name = "fails"\nobjective = "always_fails"\nn_trials = 3\n'
        "[worker]\nmax_consecutive_failures = 2\n",
    )
    try:
        with pytest.raises(studyctl.TrialsFailed, match="2 trials failed in a row") as raised:
            studyctl.run(spec, storage=url, objectives_dir=objectives_dir)
        assert [t.state.name for t in raised.value.study.trials] == ["FAIL", "FAIL"]
        with pytest.raises(StudyctlError, match="unknown objective"):
            studyctl.run(
                write_spec(tmp_path / "x.toml", 'name = "x"\nobjective = "nope"\nn_trials = 1\n'),
                storage=url,
                objectives_dir=objectives_dir,
            )
    finally:
        close_storage(url)
