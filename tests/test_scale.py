"""Inspection and progress at scale read studies without loading every trial: the SQL
paths give the same answers as the full loads they replace (CSV rows, retries in
`status`, counts and best of the progress tally), on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import itertools
import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from studyctl.inspect import csv_lines, report, report_png, summary
from studyctl.spec import load_spec
from studyctl.storage import open_storage, tables, trial_grid, trial_rows
from studyctl.storage.studies import open_study

from .conftest import run_cli, typed_values, write_spec


def _mixed_study(storage_url: str, tmp_path: Path) -> optuna.Study:
    """A studyctl study with every trial state, retries, infinite and multi-typed values."""
    spec = write_spec(
        tmp_path / "mixed.toml",
        """
        name = "mixed"
        objective = "quadratic"
        n_trials = 100
        """,
    )
    storage = open_storage(storage_url)
    study = open_study(storage, load_spec(spec), create=True).study
    dists = {
        "x": FloatDistribution(-10, 10),
        "lr": FloatDistribution(1e-4, 1e-1, log=True),
        "units": IntDistribution(8, 128),
        "act": CategoricalDistribution(["relu", "tanh", None]),
    }
    retry = RetryHeartbeatStaleTrialCallback(max_retry=2)
    for i in range(23):
        trial = study.ask(dists)
        trial.set_user_attr("worker", {"host": "h", "pid": i})
        if i % 3 == 0:
            trial.set_user_attr("note", f"n{i}")
        if i % 7 == 3:
            trial.report(1.0, 0)
            study.tell(trial, state=TrialState.PRUNED)
        elif i % 5 == 4:
            study.tell(trial, state=TrialState.FAIL)
            retry(study, study.trials[-1])  # queues a WAITING retry with failed_trial
        elif i == 10:
            study.tell(trial, math.inf)
        elif i < 22:
            study.tell(trial, float(i % 6) - 2.5)
        # the last one stays RUNNING
    return study


def test_streamed_csv_matches_the_loaded_rows(storage_url: str, tmp_path: Path) -> None:
    _mixed_study(storage_url, tmp_path)
    storage = open_storage(storage_url)
    for states in (None, ["complete", "waiting"], ["fail"]):
        expected = summary.trials_csv(summary.list_trials(storage, "mixed", states))
        out = io.StringIO()
        n = summary.write_trials_csv(storage, "mixed", out, states, batch_size=4)
        assert out.getvalue() == expected, states
        assert n == len(expected.splitlines()) - 1
    # and through the CLI
    proc = run_cli(["trials", "mixed", "--storage", storage_url, "--format", "csv"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = summary.trials_csv(summary.list_trials(storage, "mixed"))
    assert proc.stdout == expected.replace("\r\n", "\n")  # text mode reads \r\n as \n


_AWKWARD_TEXT = ["a,b", 'say "hi"', "two\nlines", "cr\r", " lead", "trail ", "", "tab\t", "é", "x"]


def test_csv_lines_are_csv_writers_for_every_kind_of_cell(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export's lines (`csv_lines`, one statement a batch) are byte for byte what
    `csv.writer` writes for `list_trials`, for text that needs quoting, JSON numbers of every
    form, non-finite values, several objectives and a search space that changes; and so are
    those of the child-row path a study with too many columns takes."""
    spec = write_spec(
        tmp_path / "cells.toml",
        """
        name = "cells"
        objective = "quadratic"
        directions = ["minimize", "maximize"]
        metrics = ["loss", "accuracy"]
        n_trials = 100
        """,
    )
    storage = open_storage(storage_url)
    study = open_study(storage, load_spec(spec), create=True).study
    numbers = ["1.5", "-0.0", "3", "-7", "12345678901234567890", "1e-07", "1E+300", "2.5e3"]
    for i, text in enumerate(_AWKWARD_TEXT):
        choices = [*_AWKWARD_TEXT, None, True, 2, 0.5]
        dists: dict[str, Any] = {
            "choice": CategoricalDistribution(choices),
            "n": IntDistribution(-5, 5 + i),  # the space changes from trial to trial
            "f": FloatDistribution(0, 1),
        }
        if i % 2:
            dists["only_odd"] = CategoricalDistribution(["p", "q,r"])
        study.enqueue_trial({"choice": choices[i if i % 3 else -(i % 4) - 1]})
        trial = study.ask(dists)
        trial.set_user_attr("text", text)
        trial.set_user_attr("nested", {"k": [text, i], "v": None})
        trial.set_user_attr("number", json.loads(numbers[i % len(numbers)]))
        trial.set_user_attr("flag", bool(i % 2))
        trial.set_user_attr("special", [math.nan, math.inf, -math.inf][i % 3])
        values = [[math.inf, -1.0], [0.25, -math.inf], [1e-300, 7.0]][i % 3]
        if i == len(_AWKWARD_TEXT) - 1:
            continue  # stays RUNNING: no values, no end
        study.tell(trial, values if i % 4 else None, state=None if i % 4 else TrialState.FAIL)
    # Attribute texts stored as other tools write JSON numbers.
    with storage.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE trial_user_attributes SET value_json = :v "
                "WHERE key = 'number' AND trial_id = :t"
            ),
            [
                {"v": n, "t": t._trial_id}
                for n, t in zip(numbers, study.get_trials(deepcopy=False), strict=False)
            ],
        )
    expected = summary.trials_csv(summary.list_trials(storage, "cells"))
    assert '"a,b"' in expected and '"say ""hi"""' in expected and "e-07" in expected
    # The grid on either backend (PostgreSQL's own limit is below these 11 columns), then
    # the child rows.
    for joins in ({"sqlite": 48, "postgresql": 48}, {}):
        monkeypatch.setattr(trial_grid, "MAX_JOINS", joins)
        for batch_size in (1, 3, 2000):
            out = io.StringIO()
            n = summary.write_trials_csv(storage, "cells", out, batch_size=batch_size)
            assert out.getvalue() == expected, (joins, batch_size)
            assert n == len(_AWKWARD_TEXT)
        out = io.StringIO()
        summary.write_trials_csv(storage, "cells", out, ["complete"], batch_size=2)
        assert out.getvalue() == summary.trials_csv(
            summary.list_trials(storage, "cells", ["complete"])
        )


_JSON_TEXTS = [
    # JSON numbers of every form
    *["0", "-0", "1", "-7", "12345678901234567890", "1.5", "-0.0", "1e5", "1E+300"],
    *["2.5e-3", "1e400", "3.0", " 1", "1 ", "NaN", "Infinity", "-Infinity"],
    # not JSON, though float() or int() would read some
    *["01", "+1", "1_000", "1.", "-", "5e", "\u0661", ""],
    # other JSON
    *['"5"', '"a,b"', "[1, 2]", '{"k": "v"}', "true", "null"],
]


def test_json_cells_read_as_json_loads_reads_them() -> None:
    """A stored attribute's CSV cell is `json.loads`'s value (or its error) for any text,
    JSON numbers through the fast path included."""

    def loaded(text: str) -> Any:
        try:
            return csv_lines.cell(json.loads(text))
        except ValueError as exc:
            return type(exc)

    def fast(text: str) -> Any:
        try:
            return csv_lines.json_cell(text)
        except ValueError as exc:
            return type(exc)

    for text in _JSON_TEXTS:
        want, got = loaded(text), fast(text)
        assert (type(got), str(got)) == (type(want), str(want)), text


def test_status_retries_and_best_without_loading_trials(storage_url: str, tmp_path: Path) -> None:
    study = _mixed_study(storage_url, tmp_path)
    storage = open_storage(storage_url)
    status = summary.study_status(storage, "mixed")
    trials = study.get_trials(deepcopy=False)
    expected = [
        {"trial": t.number, "retry_of": t.system_attrs["failed_trial"], "state": t.state.name}
        for t in trials
        if "failed_trial" in t.system_attrs
    ]
    assert len(expected) >= 3
    assert status["n_retried"] == len(expected)
    assert status["retried"] == expected[-trial_rows.RECENT_RETRIES :]
    # However many a study holds, status reads their count and the last few.
    with tables.transaction(storage.engine) as conn:
        assert trial_rows.retried_trials(conn, study._study_id, limit=2) == (
            len(expected),
            expected[-2:],
        )
        assert trial_rows.retried_trials(conn, study._study_id, limit=None)[1] == expected
    assert status["states"] == {s: sum(t.state.name == s for t in trials) for s in tables.STATES}
    assert [b["number"] for b in status["best"]] == [study.best_trial.number]


def test_tally_follows_the_study_incrementally(storage_url: str, tmp_path: Path) -> None:
    study = _mixed_study(storage_url, tmp_path)
    storage = open_storage(storage_url)
    tally = trial_rows.StudyTally(study._study_id, maximize=False)

    def check() -> None:
        with tables.transaction(storage.engine) as conn:
            tally.refresh(conn)
            assert tally.counts == tables.state_counts(conn, study._study_id)
        best = study.best_trial
        assert tally.best == (best.value, best.number)

    check()
    running = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    study.tell(running[0].number, -100.0)  # an unfinished trial completes: the new best
    check()
    waiting = study.ask()  # a waiting retry becomes RUNNING, then fails
    study.tell(waiting, state=TrialState.FAIL)
    for value in (5.0, -200.0):  # new trials
        study.tell(study.ask({"x": FloatDistribution(-10, 10)}), value)
    check()
    assert tally.best is not None and tally.best[0] == -200.0


def test_schema_check_reads_the_head_without_alembic() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from studyctl.storage import schema

    cfg = Config()
    cfg.set_main_option("script_location", str(schema.files("studyctl.migrations")))
    script = ScriptDirectory.from_config(cfg)
    assert schema.head_revision() == script.get_current_head()
    assert schema.known_revisions() == {s.revision for s in script.walk_revisions()}


def test_inspection_imports_no_alembic_when_the_schema_is_current(
    sqlite_url: str, tmp_path: Path
) -> None:
    _mixed_study(sqlite_url, tmp_path)
    code = (
        "import sys\n"
        "from studyctl.inspect.summary import study_status\n"
        "from studyctl.storage import open_storage\n"
        f"study_status(open_storage({sqlite_url!r}), 'mixed')\n"
        "print(sorted(m for m in sys.modules if m.startswith('studyctl.migrations.')))\n"
    )
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    # Optuna's own version check still loads Alembic; studyctl's check runs no revision file.
    assert out[0] == "[]"


def test_status_lists_live_workers_and_the_last_stopped(storage_url: str, tmp_path: Path) -> None:
    """A study run through many preemptions collects many worker rows: `status` shows every
    worker that is not stopped and the last 5 stopped; `--format json` lists them all."""
    _mixed_study(storage_url, tmp_path)
    control = open_storage(storage_url).control
    for i in range(9):
        control.insert_worker(worker_id=f"w{i}", study_name="mixed", host=f"h{i}", pid=i, gpus="")
        if i != 4:  # w4 still running
            control.update_worker(f"w{i}", state=tables.WORKER_STOPPED)
        time.sleep(0.01)  # distinct start times: the table is in start order
    text = run_cli(["status", "mixed", "-s", storage_url], tmp_path)
    assert text.returncode == 0, text.stderr
    assert "workers (3 earlier stopped not shown):" in text.stdout
    listed = [w for w in (f"w{i}" for i in range(9)) if f"\n{w} " in text.stdout]
    assert listed == ["w3", "w4", "w5", "w6", "w7", "w8"], text.stdout
    data = json.loads(
        run_cli(["status", "mixed", "-s", storage_url, "-f", "json"], tmp_path).stdout
    )
    assert [w["worker_id"] for w in data["workers"]] == [f"w{i}" for i in range(9)]


def test_report_of_a_big_study_draws_its_recent_trials(storage_url: str, tmp_path: Path) -> None:
    """`report --max-trials N`: the plots and the table show the most recent N trials, the
    optimization history and the best trial the whole study's; 0 draws every trial."""
    study = _mixed_study(storage_url, tmp_path)
    trials = study.get_trials(deepcopy=False)
    cut = run_cli(
        ["report", "mixed", "-s", storage_url, "-o", "cut.html", "--max-trials", "10"], tmp_path
    )
    assert cut.returncode == 0, cut.stderr
    assert f"most recent 10 of {len(trials)} trials" in cut.stdout
    page = (tmp_path / "cut.html").read_text()
    assert f"most recent 10 of {len(trials)} trials" in page
    table = page.split("<table id='trials'>")[1]
    rows = table.split("<tr")[2:]  # after the header row
    numbers = [int(row.split("<td>")[1].split("<")[0]) for row in rows]
    assert numbers == [t.number for t in trials][-10:]
    history = page.split("<h2>Optimization history</h2>")[1].split("<h2>")[0]
    assert "Not available" not in history
    # The history is every completed trial's, not only the window's.
    finite = [t for t in trials if t.state == TrialState.COMPLETE and math.isfinite(t.values[0])]
    assert finite[0].number < numbers[0]
    figure = report_png._whole_history(open_storage(storage_url), matplotlib=False)(0, None)(study)
    markers, best = figure["data"]
    assert typed_values(markers["x"]) == [t.number for t in finite]
    assert typed_values(best["x"]) == [t.number for t in finite]
    values = [t.values[0] for t in finite]
    assert typed_values(markers["y"]) == values
    assert typed_values(best["y"]) == list(itertools.accumulate(values, min))
    whole = run_cli(
        ["report", "mixed", "-s", storage_url, "-o", "all.html", "--max-trials", "0"], tmp_path
    )
    assert whole.returncode == 0 and "most recent" not in whole.stdout, whole.stderr
    table = (tmp_path / "all.html").read_text().split("<table id='trials'>")[1]
    assert table.count("<tr") == len(trials) + 1
    pngs = run_cli(
        ["report", "mixed", "-s", storage_url, "-o", "plots", "--max-trials", "10"], tmp_path
    )
    assert pngs.returncode == 0, pngs.stderr
    assert (tmp_path / "plots" / "optimization_history.png").stat().st_size > 0


def test_report_draws_one_line_per_trial_for_the_most_recent_only(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parallel coordinates and learning curves draw a line per trial: past
    `LINE_PLOT_TRIALS` they draw the most recent ones and say so in their titles; the
    other plots and the table keep every trial shown."""
    study = _mixed_study(storage_url, tmp_path)
    trials = study.get_trials(deepcopy=False)
    monkeypatch.setattr(report, "LINE_PLOT_TRIALS", 5)
    storage = open_storage(storage_url)
    path, note = report.write_html(storage, "mixed", tmp_path / "r.html")
    assert note is None
    page = path.read_text()
    assert "<h2>Parallel coordinates (the most recent 5 trials)</h2>" in page
    assert "<h2>Intermediate values (learning curves; the most recent 5 trials)</h2>" in page
    table = page.split("<table id='trials'>")[1]
    assert table.count("<tr") == len(trials) + 1
    lines = report_png._line_study(storage, study, len(trials))
    assert lines is not None
    drawn = lines.get_trials(deepcopy=False)
    assert [t.number for t in drawn] == [t.number for t in trials][-5:]
    assert report_png._line_study(storage, study, 5) is None


def _cells(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line.strip()]


def test_trials_table_and_json_are_streamed_as_the_loaded_rows(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """`studyctl trials` prints a study of any size one batch of trials at a time: JSON
    byte for byte as the whole list would be, a long table as plain rows with the cells
    of rich's table (which lays out every row in memory first: 79 s and 565 MB at
    100,000 trials)."""
    from studyctl.cli import _output, _reading

    _mixed_study(storage_url, tmp_path)
    rows = summary.list_trials(open_storage(storage_url), "mixed")
    assert len(rows) > 20
    _reading.show_trials("mixed", storage_url, None, "json")
    assert capsys.readouterr().out == json.dumps(rows, indent=2) + "\n"
    _reading.show_trials("mixed", storage_url, None, "table")  # short: rich's table
    laid_out = capsys.readouterr().out
    monkeypatch.setattr(_output, "RICH_TABLE_MAX_ROWS", 5)
    _reading.show_trials("mixed", storage_url, None, "table")
    streamed = capsys.readouterr().out
    assert streamed != laid_out
    assert _cells(streamed) == _cells(laid_out)
    assert len(_cells(streamed)) == len(rows) + 1

    # Rows are written as they come: a read that fails part way has printed the rows
    # before it (the old table and JSON printed nothing until every row was read).
    def failing() -> Iterator[list[Any]]:
        for i in range(8):
            yield [i, "COMPLETE"]
        raise RuntimeError("connection lost")

    with pytest.raises(RuntimeError):
        _output.table_rows(["#", "state"], failing())
    assert _cells(capsys.readouterr().out)[-1] == ["7", "COMPLETE"]
    with pytest.raises(RuntimeError):
        _output.echo_json_items(failing())
    assert capsys.readouterr().out.startswith('[\n  [\n    0,\n    "COMPLETE"\n  ]')


def test_trials_last_shows_the_most_recent_only(
    storage_url: str, tmp_path: Path, capsys: Any
) -> None:
    """`trials --last N` prints the N most recent trials (of the states asked for) in every
    format, read from the study's last trials only; a CSV has the columns those trials
    have."""
    from studyctl.cli import _reading

    _mixed_study(storage_url, tmp_path)
    storage = open_storage(storage_url)
    every = summary.list_trials(storage, "mixed")
    complete = summary.list_trials(storage, "mixed", ["complete"])
    _reading.show_trials("mixed", storage_url, None, "json", 4)
    assert json.loads(capsys.readouterr().out) == every[-4:]
    _reading.show_trials("mixed", storage_url, ["complete"], "json", 3)
    assert json.loads(capsys.readouterr().out) == complete[-3:]
    _reading.show_trials("mixed", storage_url, None, "json", 1000)
    assert json.loads(capsys.readouterr().out) == every
    _reading.show_trials("mixed", storage_url, None, "table", 2)
    assert [c[0] for c in _cells(capsys.readouterr().out)[-2:]] == [
        str(r["number"]) for r in every[-2:]
    ]

    # The window's own columns: "note" is set on every third trial only.
    last_note = max(r["number"] for r in every if "note" in r["user_attrs"])
    without = len(every) - 1 - last_note
    assert without >= 1
    out = io.StringIO()
    assert summary.write_trials_csv(storage, "mixed", out, last=without) == without
    assert out.getvalue() == summary.trials_csv(every[-without:])
    assert "user_attrs_note" not in out.getvalue().splitlines()[0]
    assert "user_attrs_note" in summary.trials_csv(every).splitlines()[0]

    # Only the window is read: 2 + 1 trials in batches of 2, each batch one statement
    # bounded to its trials.
    statements: list[tuple[str, Any]] = []

    def record(
        conn: object, clauseelement: Any, multiparams: Any, params: Any, execution_options: Any
    ) -> None:
        statements.append((str(clauseelement), multiparams[0] if multiparams else params))

    sa.event.listen(storage.engine, "before_execute", record)
    try:
        summary.write_trials_csv(storage, "mixed", io.StringIO(), batch_size=2, last=3)
    finally:
        sa.event.remove(storage.engine, "before_execute", record)
    batches = [p for s, p in statements if "LEFT JOIN trial_values" in s]
    trials = optuna.load_study(study_name="mixed", storage=storage).get_trials(deepcopy=False)
    ids = [t._trial_id for t in trials]
    assert len(batches) == 2, statements
    assert batches[0]["lo"] == ids[-4] + 1 and batches[0]["hi"] == ids[-2], batches
    assert batches[1]["lo"] == ids[-2] + 1, batches

    result = run_cli(["trials", "mixed", "-s", storage_url, "--last", "0"], tmp_path)
    assert result.returncode == 2 and "--last" in result.stderr, result.stderr


def test_grid_batches_grow_only_while_their_text_is_small(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `grow_to`, batches after the first grow while a batch's text stays under
    `GROWN_BATCH_TEXT` (a study of large attributes keeps its batch size: 20,000 trials of
    10 KB attributes peaked at 656 MB in batches of 10,000); every trial comes once, in
    order, either way."""
    study = _mixed_study(storage_url, tmp_path)
    reader = summary.as_reader(open_storage(storage_url))
    sid = reader.study_id("mixed")
    assert sid is not None
    n, params, attrs = reader.read(lambda conn: trial_rows.trial_columns(conn, sid))

    def sizes() -> list[int]:
        batches = reader.read_batches(
            lambda read: trial_grid.iter_grid_batches(
                read, sid, None, n, params, attrs, batch_size=2, grow_to=10
            )
        )
        found = list(batches)
        assert [r[1] for b in found for r in b] == [t.number for t in study.trials]
        return [len(b) for b in found]

    grown = sizes()
    assert grown[:3] == [2, 10, 10]
    monkeypatch.setattr(trial_grid, "GROWN_BATCH_TEXT", 10)  # any text is too large
    assert set(sizes()[:-1]) == {2}
