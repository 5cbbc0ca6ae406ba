"""What a new user meets in the first hour: the exit-code contract of every command, quiet
output by default, help text, inspection commands that never create a database, a trials
table that fits the terminal, the report's summary, and shell completion.

The exit-code contract:
* 0: the command did what it was asked (for `run`/`worker`/`resume`: the budget is met,
  or the spec's timeout passed).
* 2: a user error: bad input or a state the user named that does not allow the request (a
  bad spec or flag, an unknown study or objective, a missing or unreachable database, `best`
  or `report` on a study with no completed trial, a declined `delete`). stderr carries
  exactly one line, starting `error:`, and no traceback.
* 1: a runtime failure of the work itself: trials failed `max_consecutive_failures` times in a
  row, or a worker of `run --workers` stopped for that reason. No `error:` line: the
  per-trial lines and the `stopped:` line say what happened.
* 130/143: interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import typer
from typer.testing import CliRunner

from studyctl.cli import app
from studyctl.storage import close_storage

from .conftest import STUDYCTL, write_objectives, write_spec

runner = CliRunner()

WIDE_OBJECTIVE = """
from studyctl import function_objective


@function_objective("wide")
def wide(trial, ctx):
    total = 0.0
    for i in range(6):
        total += trial.suggest_float(f"a_rather_long_parameter_name_{i}", -10.0, 10.0) ** 2
    return total
"""


def _spec(path: Path, name: str, objective: str, n_trials: int, extra: str = "") -> Path:
    return write_spec(
        path,
        f"""
        name = "{name}"
        objective = "{objective}"
        metric = "value"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        seed = 1
        [worker]
        max_consecutive_failures = 2
        {extra}
        """,
    )


class Lab:
    """One database with three studies: `quad` (3 complete trials), `empty` (created, no
    trial) and `fails` (its objective always raises), plus their specs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objectives = write_objectives(root / "objectives")
        write_objectives(root / "objectives", WIDE_OBJECTIVE, "wide.py")
        self.url = f"sqlite:///{root / 'lab.db'}"
        self.quad = _spec(root / "quad.toml", "quad", "quadratic", 3)
        self.empty = _spec(root / "empty.toml", "empty", "quadratic", 2)
        self.fails = _spec(root / "fails.toml", "fails", "always_fails", 4)
        self.wide = _spec(root / "wide.toml", "wide", "wide", 3)
        common = ["-s", self.url, "--objectives-dir", str(self.objectives), "-q"]
        for args in (
            ["run", str(self.quad), *common],
            ["run", str(self.wide), *common],
            ["create", str(self.empty), "-s", self.url, "--objectives-dir", str(self.objectives)],
        ):
            result = runner.invoke(app, args)
            assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    old = Path.cwd()
    root = tmp_path_factory.mktemp("lab")
    os.chdir(root)
    try:
        made = Lab(root)
    finally:
        os.chdir(old)
    yield made
    close_storage(made.url)


def _all_commands() -> set[str]:
    """Every command path of the app ("run", "db upgrade", ...)."""
    found: set[str] = set()

    def walk(cmd: Any, prefix: str) -> None:
        subcommands = getattr(cmd, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, f"{prefix} {name}".strip())
        else:
            found.add(prefix)

    walk(typer.main.get_command(app), "")
    return found


# command path -> arguments of a user error ({db}, {tmp}, {objectives} filled in), stdin
USER_ERRORS: dict[str, tuple[list[str], str | None]] = {
    "run": (["run", "{tmp}/no-such-spec.toml"], None),
    "create": (["create", "{tmp}/bad.toml", "-s", "{db}"], None),
    "resume": (["resume", "NO_SUCH_STUDY", "-s", "{db}"], None),
    "worker": (["worker", "NO_SUCH_STUDY", "-s", "{db}"], None),
    "studies": (["studies", "-s", "sqlite:///{tmp}/absent.db"], None),
    "status": (["status", "NO_SUCH_STUDY", "-s", "{db}"], None),
    "trials": (["trials", "quad", "-s", "{db}", "--state", "finished-ish"], None),
    "best": (["best", "empty", "-s", "{db}"], None),
    "objectives": (["objectives", "--objectives-dir", "{tmp}/bad.toml"], None),
    "delete": (["delete", "quad", "-s", "{db}"], "n\n"),
    "dashboard": (["dashboard", "-s", "sqlite:///{tmp}/absent.db"], None),
    "proxy": (["proxy", "-s", "mysql://user@127.0.0.1/db"], None),
    "report": (["report", "NO_SUCH_STUDY", "-o", "{tmp}/x.html", "-s", "{db}"], None),
    "copy": (["copy", "NO_SUCH_STUDY", "--from", "{db}", "--to", "sqlite:///{tmp}/to.db"], None),
    "db upgrade": (["db", "upgrade", "-s", "mysql://user@127.0.0.1/db"], None),
    "db current": (["db", "current", "-s", "sqlite:///{tmp}/absent.db"], None),
    "watch": (["watch", "NO_SUCH_STUDY", "-s", "{db}"], None),
    "init": (["init", "not a name!"], None),
}


def _fill(args: list[str], lab: Lab, tmp: Path) -> list[str]:
    return [a.format(db=lab.url, tmp=tmp, objectives=lab.objectives) for a in args]


def test_the_contract_covers_every_command() -> None:
    assert set(USER_ERRORS) == _all_commands()


@pytest.mark.parametrize("command", sorted(USER_ERRORS))
def test_user_error_is_one_error_line_and_exit_2(command: str, lab: Lab, tmp_path: Path) -> None:
    write_spec(tmp_path / "bad.toml", 'name = "bad"\nobjective = "quadratic"\nn_trials = 0\n')
    args, stdin = USER_ERRORS[command]
    result = runner.invoke(app, _fill(args, lab, tmp_path), input=stdin)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    # Nothing was created by a command that failed on a missing database.
    assert not (tmp_path / "absent.db").exists()
    assert not (tmp_path / "to.db").exists()


@pytest.mark.parametrize("command", ["run", "resume", "worker"])
def test_runtime_failure_is_exit_1_without_error_line(
    command: str, lab: Lab, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'fails.db'}"
    objectives = ["--objectives-dir", str(lab.objectives)]
    if command != "run":  # the study exists, recorded by a first failing run
        first = runner.invoke(app, ["run", str(lab.fails), "-s", url, *objectives, "-q"])
        assert first.exit_code == 1
    args = {
        "run": ["run", str(lab.fails), "-s", url, *objectives],
        "resume": ["resume", "fails", "-s", url, *objectives],
        "worker": ["worker", "fails", "-s", url, *objectives],
    }[command]
    try:
        result = runner.invoke(app, args)
    finally:
        close_storage(url)
    assert result.exit_code == 1, result.output
    assert "error:" not in result.output
    assert "Traceback" not in result.output


def test_best_and_report_on_a_study_without_a_completed_trial(lab: Lab, tmp_path: Path) -> None:
    for args in (["best", "empty"], ["report", "empty", "-o", str(tmp_path / "r.html")]):
        result = runner.invoke(app, [*args, "-s", lab.url])
        assert result.exit_code == 2
        assert result.stderr.strip() == "error: study 'empty' has no completed trial yet"
    # With --format json a script gets valid JSON (an empty list) and the same exit code.
    result = runner.invoke(app, ["best", "empty", "-s", lab.url, "-f", "json"])
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout) == []
    assert result.stderr.strip() == "error: study 'empty' has no completed trial yet"


def test_inspection_commands_never_create_a_database(tmp_path: Path) -> None:
    """`studyctl studies` in an empty folder said nothing and left a studyctl.db behind."""
    for args in (
        ["studies"],
        ["status", "x"],
        ["trials", "x"],
        ["best", "x"],
        ["report", "x", "-o", "r.html"],
        ["watch", "x"],
        ["db", "current"],
        ["delete", "x", "--yes"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("error: no database at "), result.stderr
        assert "studyctl.db" in result.stderr
        assert list(tmp_path.iterdir()) == [], args


def test_trials_table_fits_the_terminal(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    result = runner.invoke(app, ["trials", "wide", "-s", lab.url])
    assert result.exit_code == 0
    widths = [len(line) for line in result.stdout.splitlines()]
    assert max(widths) <= 100, result.stdout
    # Params read as key=value, all six of the first trial's shown somewhere.
    text = re.sub(r"\s+", "", result.stdout)
    for i in range(6):
        assert f"a_rather_long_parameter_name_{i}=" in text


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def _normalized_help(*args: str) -> str:
    return re.sub(r"\s+", " ", _help(*args))


def test_help_text_reads_as_written() -> None:
    for path in sorted(_all_commands()):
        text = _normalized_help(*path.split())
        # A flag shows no value placeholder; arguments are named in capitals.
        assert "<bool>" not in text and "BOOLEAN" not in text, path
        usage = next(line for line in _help(*path.split()).splitlines() if "Usage:" in line)
        for placeholder in re.findall(r"[{\[]([A-Za-z_]+)[}\]]", usage):
            if placeholder != "OPTIONS":
                assert placeholder in ("SPEC", "STUDY", "NAME"), (path, usage)
    run = _normalized_help("run")
    assert "[default: ./objectives]" in run
    assert "[default: the spec's worker.trials_per_process]" in run
    assert "-q, --quiet No per-trial lines." in run
    # Inspection commands take the database URL only; the worker also takes the proxy's.
    for path in ("studies", "status", "trials", "best", "report", "watch", "dashboard"):
        assert "grpc" not in _normalized_help(*path.split()), path
    assert "grpc://HOST:PORT" in _normalized_help("worker")


def _entry_point() -> str:
    return str(Path(sys.executable).with_name("studyctl"))


def test_shell_completion() -> None:
    assert "--install-completion" in _normalized_help()
    env = {**os.environ, "_STUDYCTL_COMPLETE": "complete_bash", "COMP_WORDS": "studyctl st"}
    env["COMP_CWORD"] = "1"
    out = subprocess.run(
        [_entry_point()], env=env, capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert "status" in out and "studies" in out, out
    # Typer detects the shell from the process's ancestors (shellingham): run it from bash,
    # as a user does, whatever started the tests.
    script = subprocess.run(
        ["bash", "-c", f"'{_entry_point()}' --show-completion"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "_STUDYCTL_COMPLETE" in script.stdout, script.stdout + script.stderr


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("STUDYCTL_STORAGE",)}
    return subprocess.run(
        [*STUDYCTL, *args],
        cwd=cwd,
        env={**full, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_failed_trials_and_copy_are_quiet_unless_verbose(lab: Lab, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    objectives = ["--objectives-dir", str(lab.objectives)]
    quiet = _cli(["run", str(lab.fails), "-s", url, *objectives], tmp_path)
    assert quiet.returncode == 1
    assert "FAIL (RuntimeError: objective is broken)" in quiet.stdout
    assert "[W " not in quiet.stderr and "Traceback" not in quiet.stderr, quiet.stderr
    # The traceback stays on the trial.
    listed = runner.invoke(app, ["trials", "fails", "-s", url, "-f", "json"])
    close_storage(url)
    trials = json.loads(listed.stdout)
    assert "Traceback" in trials[0]["user_attrs"]["traceback"]
    loud = _cli(["resume", "fails", "-s", url, *objectives, "--verbose"], tmp_path)
    assert loud.returncode == 1
    assert "Traceback" in loud.stderr and "objective is broken" in loud.stderr
    copied = _cli(
        ["copy", "fails", "--from", url, "--to", f"sqlite:///{tmp_path / 'c.db'}"], tmp_path
    )
    assert copied.returncode == 0, copied.stderr
    assert copied.stderr == ""
    assert copied.stdout.startswith("copied study fails (4 trials)")


def test_report_has_a_summary_numbers_and_the_best_trial_marked(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", "quad", "-o", str(out), "-s", lab.url])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    study = optuna.load_study(study_name="quad", storage=lab.url)
    best = study.best_trial
    summary = page[: page.index("<h2>")]
    assert "id='summary'" in summary
    for text in ("quad", "minimize value", "3/3 finished", f"#{best.number}", "x="):
        assert text in summary, text
    rows = re.findall(r"<tr([^>]*)>(.*?)</tr>", page.split("id='trials'")[1], flags=re.S)
    cells = {
        int(re.findall(r"<td>(.*?)</td>", body)[0]): (attrs, re.findall(r"<td>(.*?)</td>", body))
        for attrs, body in rows
        if "<td>" in body
    }
    assert set(cells) == {t.number for t in study.trials}
    for t in study.trials:
        attrs, row = cells[t.number]
        assert float(row[2]) == pytest.approx(t.values[0], rel=1e-5)  # a number, not [0.1...]
        assert row[3] == f"x={t.params['x']:.6g}"
        assert ("best" in attrs) == (t.number == best.number)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--wrokers", "2", "x.toml"], "error: No such option: --wrokers"),
        (["stauts"], "error: No such command 'stauts'. Did you mean 'status'"),
        (["status"], "error: Missing argument 'STUDY'."),
        (["run", "--workers", "two", "x.toml"], "error: Invalid value for '--workers'"),
    ],
)
def test_usage_errors_are_one_error_line(tmp_path: Path, args: list[str], expected: str) -> None:
    """A misspelt option or command, a missing argument or a bad value: one `error:` line
    that names the help to read, exit 2 (Click's own form was three lines: usage, hint,
    error)."""
    result = _cli(args, tmp_path)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert "--help`)" in lines[0] and result.stdout == ""
