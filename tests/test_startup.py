"""The inspection commands read studies with plain SQL (`storage.reader`), without Optuna or
Alembic: their answers equal Optuna's own (trials, best trial, Pareto front, parameters of
every distribution kind), on SQLite and PostgreSQL, and a database whose schemas are not
current is opened, set up or refused exactly as the full storage does."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from studyctl.cli import _reading
from studyctl.errors import StorageError
from studyctl.inspect import report, summary
from studyctl.inspect.trial_window import DEFAULT_MAX_TRIALS
from studyctl.storage import open_storage, schema, trial_rows
from studyctl.storage.reader import open_reader

from .test_scale import _mixed_study


def _reader(url: str):  # type: ignore[no-untyped-def]
    reader = open_reader(url)
    assert reader._storage is None, "the schemas are current: no Optuna storage"
    return reader


def test_reader_views_equal_optunas(storage_url: str, tmp_path: Path) -> None:
    study = _mixed_study(storage_url, tmp_path)
    study.set_metric_names(["loss"])
    storage = open_storage(storage_url)
    up = optuna.create_study(study_name="up", storage=storage, direction="maximize")
    for value in (1.0, math.inf, 3.0, -math.inf):
        up.add_trial(optuna.trial.create_trial(value=value))
    multi = optuna.create_study(
        study_name="multi", storage=storage, directions=["minimize", "maximize"]
    )
    multi.optimize(lambda t: (t.suggest_float("a", 0, 1), t.suggest_float("b", 0, 1)), 10)
    optuna.create_study(study_name="empty", storage=storage)
    reader = _reader(storage_url)
    try:
        trials = study.get_trials(deepcopy=False)
        assert summary.list_trials(reader, "mixed") == [summary.trial_dict(t) for t in trials]
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        assert summary.list_trials(reader, "mixed", ["complete"]) == [
            summary.trial_dict(t) for t in complete
        ]
        assert summary.best_summary(reader, "mixed") == [summary.trial_dict(study.best_trial)]
        assert summary.best_summary(reader, "up") == [summary.trial_dict(up.best_trial)]
        assert summary.best_summary(reader, "up")[0]["values"] == ["inf"]
        assert summary.best_summary(reader, "multi") == [
            summary.trial_dict(t) for t in multi.best_trials
        ]
        assert summary.best_summary(reader, "empty") == []
        status = summary.study_status(reader, "mixed")
        assert status["best"] == [summary.trial_dict(study.best_trial, attrs=False)]
        assert status["metrics"] == ["loss"] and status["directions"] == ["minimize"]
        assert status["n_trials"] == 100
        rows = {r["name"]: r for r in summary.list_studies(reader)}
        assert list(rows) == [s.study_name for s in storage.get_all_studies()]
        assert rows["up"]["best_value"] == "inf" and rows["empty"]["best_value"] is None
        assert rows["multi"]["directions"] == ["minimize", "maximize"]
        assert rows["mixed"]["best_value"] == study.best_value
        with pytest.raises(Exception, match=r"no study 'nope' .*studies there: empty, mixed"):
            summary.study_status(reader, "nope")
    finally:
        reader.close()


with warnings.catch_warnings():  # the legacy distributions, still read from old studies
    warnings.simplefilter("ignore", FutureWarning)
    DISTRIBUTIONS = [
        FloatDistribution(-1, 1),
        FloatDistribution(1e-5, 1, log=True),
        FloatDistribution(0, 1, step=0.25),
        IntDistribution(1, 9),
        IntDistribution(1, 64, log=True),
        CategoricalDistribution(["a", None, 3, 2.5, True]),
        optuna.distributions.UniformDistribution(0, 2),
        optuna.distributions.LogUniformDistribution(1e-3, 1),
        optuna.distributions.DiscreteUniformDistribution(0, 1, 0.5),
        optuna.distributions.IntUniformDistribution(0, 10),
        optuna.distributions.IntLogUniformDistribution(1, 100),
    ]


@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda d: type(d).__name__)
def test_stored_param_reads_back_as_optuna_does(dist: object) -> None:
    assert isinstance(dist, optuna.distributions.BaseDistribution)
    text = distribution_to_json(dist)
    for internal in (0.0, 1.0, 2.0):
        if isinstance(dist, CategoricalDistribution) or dist._contains(internal):
            expected = dist.to_external_repr(internal)
            got = trial_rows.stored_param(internal, text)
            assert got == expected and type(got) is type(expected)
    abbreviated = json.dumps({"type": "categorical", "choices": ["x", "y"]})
    assert trial_rows.stored_param(1.0, abbreviated) == "y"


def test_optuna_head_is_read_without_optuna(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    assert schema.optuna_head_revision() == storage.get_head_version()
    code = (
        "import sys\nfrom studyctl.storage.schema import optuna_head_revision\n"
        "print(optuna_head_revision(), 'optuna' in sys.modules, 'alembic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [storage.get_head_version(), "False", "False"]


def test_a_plain_optuna_database_is_set_up_as_before(tmp_path: Path) -> None:
    """No studyctl tables yet: the reader opens the storage, which adds them (one check)."""
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    optuna.create_study(study_name="p", storage=url).optimize(
        lambda t: t.suggest_float("x", 0, 1), 3
    )
    reader = open_reader(url)
    assert reader._storage is not None
    assert summary.study_status(reader, "p")["finished"] == 3
    assert open_reader(url)._storage is None  # set up now: plain SQL from here on


def test_an_outdated_studyctl_schema_is_refused_as_before(sqlite_url: str, tmp_path: Path) -> None:
    _mixed_study(sqlite_url, tmp_path)
    storage = open_storage(sqlite_url)
    with storage.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {schema.VERSION_TABLE} SET version_num = '0001'")
    from studyctl.storage import close_storage

    close_storage(sqlite_url)
    with pytest.raises(StorageError, match="studyctl schema is at revision 0001") as refused:
        open_reader(sqlite_url)
    assert "studyctl db upgrade" in str(refused.value.hint)


_TYPER_HELP = (
    "import sys\nsys.argv = ['python -m studyctl.cli', *sys.argv[1:]]\n"
    "from studyctl.cli.commands import run_app\nrun_app()\n"
)
_IMPORTED = (
    "import sys\nsys.argv = ['studyctl', *sys.argv[1:]]\nfrom studyctl.cli import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    "print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'click', 'optuna', "
    "'sqlalchemy', 'rich'}))\n"
)


@pytest.mark.parametrize("columns", ["80", "200", "60"])
@pytest.mark.parametrize("args", [["--help"], []], ids=["--help", "no-args"])
def test_top_level_help_is_typers_own_without_typer(columns: str, args: list[str]) -> None:
    """`studyctl --help` and `studyctl` alone print exactly what Typer prints (same streams,
    same exit code) at any terminal width, and on a terminal of 80 columns or more they
    import no Typer (a narrower one is Typer's to format)."""
    env = {**os.environ, "COLUMNS": columns}
    typer_run = subprocess.run(
        [sys.executable, "-c", _TYPER_HELP, *args], capture_output=True, text=True, env=env
    )
    ours = subprocess.run(
        [sys.executable, "-m", "studyctl.cli", *args], capture_output=True, text=True, env=env
    )
    assert typer_run.returncode == (0 if args else 2)
    assert (ours.returncode, ours.stdout, ours.stderr) == (
        typer_run.returncode,
        typer_run.stdout,
        typer_run.stderr,
    )
    imported = subprocess.run(
        [sys.executable, "-c", _IMPORTED, *args], capture_output=True, text=True, env=env
    )
    expected = "[]" if int(columns) >= 80 else "['typer']"
    assert imported.stdout.strip().splitlines()[-1] == expected


def test_reads_fail_as_one_storage_error_and_a_runs_reads_keep_its_tolerance(
    sqlite_url: str, tmp_path: Path
) -> None:
    _mixed_study(sqlite_url, tmp_path)
    storage = open_storage(sqlite_url)
    assert summary.as_reader(storage)._guard is storage.outage  # a run's outage tolerance
    reader = _reader(sqlite_url)
    try:
        with reader.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE trial_params")
        with pytest.raises(StorageError, match="no such table: trial_params"):
            summary.list_trials(reader, "mixed")
        with pytest.raises(StorageError, match="no such table: trial_params"):
            summary.write_trials_csv(reader, "mixed", io.StringIO())
    finally:
        reader.close()


_DIRECT = (
    "import os, sys\nsys.argv = ['studyctl', *sys.argv[1:]]\nfrom studyctl.cli import main\n"
    "try:\n    main()\nfinally:\n"
    "    with open(os.environ['MODULES_OUT'], 'w') as out:\n"
    "        out.write(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
)
_VIA_TYPER = (
    "import sys\nsys.argv = ['studyctl', *sys.argv[1:]]\n"
    "from studyctl.cli.commands import run_app\nrun_app()\n"
)


def test_reading_commands_print_what_typer_prints_without_typer(
    storage_url: str, tmp_path: Path
) -> None:
    """`studies`, `status`, `best` and `trials` in their plain forms run without Typer,
    Click, pydantic or SQLAlchemy (through the driver: `storage.plain`) and print the same
    bytes, streams and exit code as the Typer app; other forms (an abbreviated option) go
    to Typer."""
    _mixed_study(storage_url, tmp_path)
    s = storage_url
    cases = [
        (["studies", "-s", s, "-f", "json"], True),
        (["status", "mixed", "--storage", s], True),
        (["best", f"--storage={s}", "mixed", "--format=json"], True),
        (
            ["trials", "mixed", "-s", s, "--state", "complete", "--state", "waiting", "-f", "csv"],
            True,
        ),
        (["status", "nope", "-s", s], True),
        (["trials", "mixed", "-s", s, "--last", "3", "--state", "complete"], True),
        (["trials", "mixed", "-s", s, "--last=2", "-f", "json"], True),
        (["trials", "mixed", "-s", s, "--last", "0"], False),  # Typer's usage error
        (["trials", "mixed", "-s", s, "--last", "x"], False),
        (["trials", "mixed", "-s", s, "--last", "\u00b2"], False),  # a digit int() refuses
    ]
    if s.startswith("sqlite"):
        cases.append((["status", "mixed", "--stor", s], False))
    modules_out = tmp_path / "modules.txt"
    env = {**os.environ, "MODULES_OUT": str(modules_out)}
    env.pop("COLUMNS", None)
    for args, direct in cases:
        ours = subprocess.run([sys.executable, "-c", _DIRECT, *args], capture_output=True, env=env)
        typer_run = subprocess.run(
            [sys.executable, "-c", _VIA_TYPER, *args], capture_output=True, env=env
        )
        assert (ours.returncode, ours.stdout, ours.stderr) == (
            typer_run.returncode,
            typer_run.stdout,
            typer_run.stderr,
        ), args
        imported = set(modules_out.read_text().split())
        without = {"typer", "click", "pydantic", "sqlalchemy", "optuna", "alembic"}
        assert (not imported & without) == direct, (args, imported & without)


def test_report_runs_as_typer_runs_it_without_typer(sqlite_url: str, tmp_path: Path) -> None:
    """`report STUDY -o PATH [-s URL] [--max-trials N]` runs without Typer, Click or
    pydantic, printing what the Typer app prints and writing the same files; other forms
    go to Typer."""
    _mixed_study(sqlite_url, tmp_path)
    s = sqlite_url
    cases = [
        (["report", "mixed", "-s", s, "-o", "{out}.html"], True),
        (["report", f"--storage={s}", "mixed", "--output={out}.html", "--max-trials", "5"], True),
        (["report", "mixed", "-s", s, "-o", "{out}", "--max-trials=0"], True),  # PNGs
        (["report", "nope", "-s", s, "-o", "{out}.html"], True),
        (["report", "mixed", "-s", s, "-o", "{out}.txt"], True),
        (["report", "mixed", "-s", s], False),  # Typer's "Missing option"
        (["report", "mixed", "-s", s, "-o", "{out}.html", "--max-trials", "-1"], False),
        (["report", "mixed", "-s", s, "-o", "{out}.html", "--max-trials", "x"], False),
        (["report", "mixed", "-s", s, "-o", "{out}.html", "-f", "json"], False),
    ]
    modules_out = tmp_path / "modules.txt"
    env = {**os.environ, "MODULES_OUT": str(modules_out)}
    imported: set[str] = set()
    for i, (args, direct) in enumerate(cases):
        runs = []
        for way, code in (("direct", _DIRECT), ("typer", _VIA_TYPER)):
            out = tmp_path / f"{way}{i}"
            argv = [a.replace("{out}", str(out)) for a in args]
            done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, env=env)
            written = sorted(
                str(p.relative_to(tmp_path)).replace(way, "") for p in tmp_path.rglob(f"{way}{i}*")
            ) + sorted(p.name for p in out.glob("*.png"))  # a folder's PNGs
            shown = done.stdout.replace(str(out).encode(), b"OUT")
            runs.append(
                (done.returncode, shown, done.stderr.replace(str(out).encode(), b"OUT"), written)
            )
            if way == "direct":
                imported = set(modules_out.read_text().split())
        assert runs[0] == runs[1], args
        assert (not imported & {"typer", "click", "pydantic"}) == direct, args
    assert _reading.REPORT_MAX_TRIALS == DEFAULT_MAX_TRIALS == report.DEFAULT_MAX_TRIALS


def test_watch_snapshot_reads_the_best_params_without_optuna(
    sqlite_url: str, tmp_path: Path
) -> None:
    """`watch` shows the best trial's parameters as Optuna gives them (float, int and
    categorical), decoded without importing Optuna."""
    study = _mixed_study(sqlite_url, tmp_path)
    code = (
        "import json, sys\nfrom studyctl.storage.reader import open_reader\n"
        "from studyctl.storage.snapshot import take_snapshot\n"
        "snapshot = take_snapshot(open_reader(sys.argv[1]).engine, 'mixed')\n"
        "print(json.dumps(snapshot.best_params))\nprint('optuna' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, sqlite_url], capture_output=True, text=True, check=True
    )
    params, optuna_imported = out.stdout.splitlines()
    assert json.loads(params) == study.best_params
    assert optuna_imported == "False"


def test_report_imports_neither_scikit_learn_nor_a_plotting_library_it_does_not_draw_with(
    sqlite_url: str, tmp_path: Path
) -> None:
    """`studyctl report` draws PED-ANOVA importances, which need no scikit-learn; Optuna's
    importance package imports it anyway (for fANOVA), about 1 s of a report's 3 s. Its
    figures are plotly dicts written without validation: neither Optuna's plot modules
    (which import their matplotlib twins) nor plotly's graph objects (which check every
    property as it is set) are imported; nor, the database's schemas being current, is
    Alembic (`rdb_init`) or SQLAlchemy: the page is read on the driver's own connection
    (`shown_trials`)."""
    _mixed_study(sqlite_url, tmp_path)
    code = (
        "import sys\nsys.argv = ['studyctl', *sys.argv[1:]]\n"
        "from studyctl.cli.commands import run_app\n"
        "try:\n    run_app()\nfinally:\n"
        "    heavy = ('sklearn', 'optuna.visualization', 'plotly.graph_objects', 'matplotlib', "
        "'alembic', 'sqlalchemy')\n"
        "    print('imported:', [m for m in heavy if m in sys.modules], file=sys.stderr)\n"
    )
    page = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-c", code, "report", "mixed", "-s", sqlite_url, "-o", str(page)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "imported: []"
    assert page.read_text().count("Plotly.newPlot") == 4
    importances = page.read_text().split("<h2>Parameter importances</h2>")[1].split("<h2>")[0]
    assert "Not available" not in importances and "plotly-graph-div" in importances
