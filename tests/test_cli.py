"""The CLI through Typer's runner (in process) and through the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from typer.testing import CliRunner

from studyctl.cli import app

from .conftest import REPO, run_cli, write_spec

runner = CliRunner()


def quad_spec(
    tmp_path: Path, n_trials: int = 4, objective: str = "quadratic", extra: str = ""
) -> Path:
    return write_spec(
        tmp_path / "quad.toml",
        f"""
        name = "quad"
        objective = "{objective}"
        metric = "value"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        seed = 1
        {extra}
    """,
    )


def invoke(*args: str) -> object:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_run_reaches_budget_and_rerun_adds_nothing(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    spec = quad_spec(tmp_path)
    common = ["--storage", sqlite_url, "--objectives-dir", str(objectives_dir)]
    first = runner.invoke(app, ["run", str(spec), *common])
    assert first.exit_code == 0, first.output
    assert "4/4 finished" in first.output and "best trial #" in first.output
    second = runner.invoke(app, ["run", str(spec), *common])
    assert second.exit_code == 0
    assert "budget met (4/4 finished); nothing to run" in second.output
    study = optuna.load_study(study_name="quad", storage=sqlite_url)
    assert len(study.trials) == 4


def test_create_records_the_study_and_runs_nothing(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    common = ["--storage", sqlite_url, "--objectives-dir", str(objectives_dir)]
    first = runner.invoke(app, ["create", str(quad_spec(tmp_path, 3)), *common, "-f", "json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output) == {
        "study": "quad",
        "storage": sqlite_url,
        "created": True,
        "n_trials": 3,
    }
    assert optuna.load_study(study_name="quad", storage=sqlite_url).trials == []
    again = runner.invoke(app, ["create", str(quad_spec(tmp_path, 5)), *common])
    assert again.exit_code == 0 and "already exists" in again.output
    status = json.loads(
        runner.invoke(app, ["status", "quad", "-s", sqlite_url, "-f", "json"]).output
    )
    assert status["n_trials"] == 5 and status["finished"] == 0
    # A worker needs nothing but the name: the spec was recorded by create.
    ran = run_cli(
        ["worker", "quad", "-s", sqlite_url, "--objectives-dir", str(objectives_dir), "-q"],
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    assert len(optuna.load_study(study_name="quad", storage=sqlite_url).trials) == 5
    bad = runner.invoke(app, ["create", str(quad_spec(tmp_path, 3, objective="nope")), *common])
    assert bad.exit_code == 2 and "nope" in bad.output


def _unknown_keys(spec: dict[str, Any]) -> None:
    spec["artifacts"]["upload_every_s"] = 60
    spec["notify"] = {"slack": "#tuning"}


def _unknown_values(spec: dict[str, Any]) -> None:
    spec["sampler"]["type"] = "fancy"
    spec["training"]["backend"] = "torch"


@pytest.mark.parametrize(
    ("newer", "named"),
    [
        (_unknown_keys, "artifacts.upload_every_s, notify"),
        (_unknown_values, "sampler.type = 'fancy', training.backend = 'torch'"),
    ],
)
def test_a_spec_of_a_newer_studyctl_is_refused_in_one_line_and_still_read(
    tmp_path: Path,
    sqlite_url: str,
    objectives_dir: Path,
    newer: Callable[[dict[str, Any]], None],
    named: str,
) -> None:
    """A study last run by a newer studyctl keeps settings (or values of settings) this one
    does not know in its stored spec: a worker or `resume` here refuses it in one line
    naming them (it would drop them, or fail mid-run), runs nothing; `status` still reads
    it."""
    import sqlite3

    common = ["--storage", sqlite_url, "--objectives-dir", str(objectives_dir)]
    assert runner.invoke(app, ["create", str(quad_spec(tmp_path, 3)), *common]).exit_code == 0
    db = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        (stored,) = conn.execute("SELECT spec_json FROM studyctl_studies").fetchone()
        spec = json.loads(stored)
        newer(spec)
        conn.execute("UPDATE studyctl_studies SET spec_json = ?", (json.dumps(spec),))
    for cmd in (["worker", "quad", *common], ["resume", "quad", *common]):
        refused = run_cli([*cmd, "-q"], cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert f"stored spec has {named}, which this studyctl" in lines[0], lines[0]
        assert "newer studyctl" in lines[0] and "upgrade studyctl here" in lines[0]
    assert optuna.load_study(study_name="quad", storage=sqlite_url).trials == []
    shown = run_cli(["status", "quad", "-s", sqlite_url, "-f", "json"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["n_trials"] == 3


def test_raising_budget_continues_to_new_total(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    common = ["--storage", sqlite_url, "--objectives-dir", str(objectives_dir), "-q"]
    assert runner.invoke(app, ["run", str(quad_spec(tmp_path, 2)), *common]).exit_code == 0
    result = runner.invoke(app, ["run", str(quad_spec(tmp_path, 5)), *common, "--format", "json"])
    data = json.loads(result.output)
    assert data["trials_run"] == 3 and data["study"]["finished"] == 5


def test_inspection_commands_json(tmp_path: Path, sqlite_url: str, objectives_dir: Path) -> None:
    spec = quad_spec(tmp_path, 3)
    runner.invoke(
        app,
        ["run", str(spec), "--storage", sqlite_url, "--objectives-dir", str(objectives_dir), "-q"],
    )
    studies = json.loads(runner.invoke(app, ["studies", "-s", sqlite_url, "-f", "json"]).output)
    assert studies[0]["name"] == "quad" and studies[0]["finished"] == 3
    status = json.loads(
        runner.invoke(app, ["status", "quad", "-s", sqlite_url, "-f", "json"]).output
    )
    assert status["complete"] is True and status["states"]["COMPLETE"] == 3
    assert len(status["workers"]) == 1 and status["workers"][0]["state"] == "stopped"
    assert status["workers"][0]["trials_done"] == 3
    trials = json.loads(
        runner.invoke(
            app, ["trials", "quad", "-s", sqlite_url, "-f", "json", "--state", "complete"]
        ).output
    )
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert all("x" in t["params"] and t["user_attrs"]["worker"]["pid"] for t in trials)
    best = json.loads(runner.invoke(app, ["best", "quad", "-s", sqlite_url, "-f", "json"]).output)
    assert best[0]["values"][0] == min(t["values"][0] for t in trials)
    csv_text = runner.invoke(app, ["trials", "quad", "-s", sqlite_url, "-f", "csv"]).output
    import csv
    import io

    csv_rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert [int(r["number"]) for r in csv_rows] == [0, 1, 2]
    assert float(csv_rows[0]["params_x"]) == trials[0]["params"]["x"]
    assert float(csv_rows[0]["value"]) == trials[0]["values"][0]
    assert json.loads(csv_rows[0]["user_attrs_worker"])["pid"] > 0
    no_model = runner.invoke(
        app, ["best", "quad", "-s", sqlite_url, "--export-model", str(tmp_path / "m.keras")]
    )
    assert no_model.exit_code == 2 and "has no saved model" in no_model.output
    assert not (tmp_path / "m.keras").exists()
    table = runner.invoke(app, ["trials", "quad", "-s", sqlite_url])
    assert table.exit_code == 0 and "COMPLETE" in table.output


def test_failures_are_recorded_and_stop_the_worker(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    spec = quad_spec(
        tmp_path, 10, objective="always_fails", extra="[worker]\nmax_consecutive_failures = 3"
    )
    result = runner.invoke(
        app, ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives_dir)]
    )
    assert result.exit_code == 1
    assert "3 trials failed in a row" in result.output
    study = optuna.load_study(study_name="quad", storage=sqlite_url)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3
    assert study.trials[0].user_attrs["fail_reason"] == "RuntimeError: objective is broken"
    assert "Traceback" in study.trials[0].user_attrs["traceback"]


def test_nan_value_fails_the_trial(tmp_path: Path, sqlite_url: str, objectives_dir: Path) -> None:
    spec = quad_spec(
        tmp_path, 1, objective="returns_nan", extra="[worker]\nmax_consecutive_failures = 1"
    )
    runner.invoke(
        app, ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives_dir), "-q"]
    )
    trial = optuna.load_study(study_name="quad", storage=sqlite_url).trials[0]
    assert trial.state.name == "FAIL"
    assert "objective returned nan" in trial.user_attrs["fail_reason"]


def test_unknown_objective_is_one_line_and_creates_nothing(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    spec = quad_spec(tmp_path, objective="no_such_model")
    result = runner.invoke(
        app, ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives_dir)]
    )
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith("error: unknown objective 'no_such_model'")
    assert "quadratic" in line and "\n" not in line
    assert optuna.get_all_study_names(storage=sqlite_url) == []


def test_bad_spec_exit_code_2(tmp_path: Path) -> None:
    bad = write_spec(tmp_path / "bad.toml", 'name = "x"\nobjective = "q"\nn_trials = 0\n')
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    assert f"error: {bad}: n_trials: expected a number > 0, got 0" in result.output


def test_unknown_study_lists_studies(sqlite_url: str) -> None:
    optuna.create_study(study_name="other", storage=sqlite_url)
    result = runner.invoke(app, ["status", "missing", "-s", sqlite_url])
    assert result.exit_code == 2
    assert "no study 'missing'" in result.output and "other" in result.output


def test_delete_asks_and_yes_skips(tmp_path: Path, sqlite_url: str, objectives_dir: Path) -> None:
    spec = quad_spec(tmp_path, 1)
    runner.invoke(
        app, ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives_dir), "-q"]
    )
    refused = runner.invoke(app, ["delete", "quad", "-s", sqlite_url], input="n\n")
    assert refused.exit_code == 2  # a declined delete is a user error (one error: line)
    assert optuna.get_all_study_names(storage=sqlite_url) == ["quad"]
    done = runner.invoke(app, ["delete", "quad", "-s", sqlite_url, "--yes"])
    assert done.exit_code == 0
    assert optuna.get_all_study_names(storage=sqlite_url) == []


def test_password_never_printed(tmp_path: Path) -> None:
    spec = quad_spec(tmp_path)
    result = runner.invoke(
        app, ["run", str(spec), "-s", "postgresql+psycopg://me:hunter2@127.0.0.1:1/db"]
    )
    assert result.exit_code == 2
    assert "hunter2" not in result.output and "me:***@" in result.output


def _all_commands() -> list[tuple[str, ...]]:
    """Every command as its argv prefix: top-level ones and those of each sub-app (db)."""
    out: list[tuple[str, ...]] = []
    for command in app.registered_commands:
        assert command.callback is not None
        out.append((command.name or command.callback.__name__,))
    for group in app.registered_groups:
        assert group.typer_instance is not None and group.name is not None
        for command in group.typer_instance.registered_commands:
            assert command.callback is not None
            out.append((group.name, command.name or command.callback.__name__))
    return out


@pytest.mark.parametrize("argv", _all_commands(), ids=" ".join)
def test_command_has_help_and_is_in_readme(argv: tuple[str, ...]) -> None:
    readme = (REPO / "README.md").read_text()
    result = runner.invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    summary = result.output.split("Usage:", 1)[1]
    # The help shows the command's own docstring, not an empty description.
    assert len([line for line in summary.splitlines() if line.strip()]) > 2, result.output
    assert f"studyctl {' '.join(argv)}" in readme, argv


def test_every_command_is_checked() -> None:
    names = {" ".join(a) for a in _all_commands()}
    assert {"run", "status", "db upgrade", "db current", "proxy"} <= names


def test_entry_point_subprocess(tmp_path: Path, sqlite_url: str, objectives_dir: Path) -> None:
    spec = quad_spec(tmp_path, 2)
    result = run_cli(
        [
            "run",
            str(spec),
            "--storage",
            sqlite_url,
            "--objectives-dir",
            str(objectives_dir),
            "--format",
            "json",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["study"]["finished"] == 2


_NO_TF = """
import sys
from typer.testing import CliRunner
from studyctl.cli import app

argv = sys.argv[1:]
result = CliRunner().invoke(app, argv)
assert result.exit_code == 0, result.output
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
print(sorted({m.split(".")[0] for m in sys.modules} & {"optuna", "alembic"}))
"""

INSPECTION = [
    "--help",
    "run --help",
    "status --help",
    "studies",
    "status quad",
    "trials quad",
    "trials quad --format csv",
    "best quad",
    "watch quad",
    "objectives",
    "report quad -o report.html",
    "db current",
]


@pytest.fixture(scope="module")
def finished_quad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a finished 2-trial study in studyctl.db and its objectives."""
    from .conftest import write_objectives

    folder = tmp_path_factory.mktemp("inspect")
    write_objectives(folder / "objectives")
    spec = quad_spec(folder, 2)
    out = run_cli(["run", str(spec), "-q"], cwd=folder)
    assert out.returncode == 0, out.stderr
    return folder


# Read with plain SQL once the schemas are checked: no Optuna, no Alembic.
WITHOUT_OPTUNA = {"--help", "studies", "status quad", "trials quad", "trials quad --format csv"}
WITHOUT_OPTUNA |= {"best quad"}
# `watch` reads through the same one-query check (its trial rows still name Optuna's
# distributions through Optuna).
WITHOUT_ALEMBIC = WITHOUT_OPTUNA | {"watch quad"}


@pytest.mark.parametrize("cmd", INSPECTION)
def test_inspection_does_not_import_tensorflow(finished_quad: Path, cmd: str) -> None:
    """Every inspection command, run on a real study, leaves TensorFlow and Keras
    unimported, and those that only read leave Optuna and Alembic unimported too (each
    in a fresh interpreter)."""
    out = subprocess.run(
        [sys.executable, "-c", _NO_TF, *cmd.split()],
        capture_output=True,
        text=True,
        cwd=finished_quad,
        env={**os.environ, "STUDYCTL_STORAGE": "sqlite:///studyctl.db"},
    )
    assert out.returncode == 0, out.stderr
    tf_modules, optuna_modules = out.stdout.strip().splitlines()[-2:]
    assert tf_modules == "[]"
    if cmd in WITHOUT_OPTUNA:
        assert optuna_modules == "[]"
    if cmd in WITHOUT_ALEMBIC:
        assert "alembic" not in optuna_modules


@pytest.mark.parametrize("cmd", ["studies", "status quad", "trials quad", "best quad"])
def test_unreachable_storage_exit_2(cmd: str) -> None:
    result = runner.invoke(app, [*cmd.split(), "-s", "postgresql+psycopg://u:pw@127.0.0.1:1/x"])
    assert result.exit_code == 2
    assert result.output.startswith("error: cannot connect to storage")
