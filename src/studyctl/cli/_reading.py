"""What `studies`, `status`, `trials`, `best` and `report` do, from parsed arguments, without
Typer.

`cli/inspect.py` runs them as Typer commands; `cli/_direct.py` runs them straight from
`sys.argv` when the arguments are ones it reads exactly as Typer would. A format is a
plain string here: "table", "json" or "csv".
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studyctl.cli._output import (
    echo,
    echo_json,
    echo_json_items,
    fail,
    fmt,
    fmt_params,
    print_best,
    table,
    table_rows,
)

if TYPE_CHECKING:
    from studyctl.storage.reader import StudyReader


def open_reader_of(url: str | None) -> StudyReader:
    """The existing database `--storage` (or the environment, or the default) names, for a
    command that only reads: plain SQL when both schemas are current (no Optuna, no
    Alembic), the storage otherwise; a missing SQLite file is an error, never created."""
    from studyctl.storage.reader import open_reader
    from studyctl.storage.urls import resolve_storage_url

    return open_reader(resolve_storage_url(url))


def show_studies(storage: str | None, output: str) -> None:
    from studyctl.inspect.summary import list_studies

    rows = list_studies(open_reader_of(storage))
    if output == "json":
        echo_json(rows)
        return
    table(
        ["study", "direction", "finished", "budget", "running", "failed", "best"],
        [
            [
                r["name"],
                ",".join(r["directions"]),
                r["finished"],
                r["n_trials"],
                r["states"]["RUNNING"],
                r["states"]["FAIL"],
                fmt(r["best_value"]),
            ]
            for r in rows
        ],
    )


def show_status(study: str, storage: str | None, output: str) -> None:
    from studyctl.inspect.summary import study_status

    data = study_status(open_reader_of(storage), study)
    if output == "json":
        echo_json(data)
        return
    states = ", ".join(f"{k.lower()} {v}" for k, v in data["states"].items() if v)
    echo(
        f"study {data['name']} ({', '.join(data['directions'])} "
        f"{', '.join(m or '?' for m in (data['metrics'] or ['?']))})"
    )
    echo(
        f"budget: {data['finished']}/{fmt(data['n_trials'])} finished"
        + (" (complete)" if data["complete"] else "")
        + f"; {states or 'no trials'}"
    )
    print_best(data)
    if data["retried"]:
        shown = ", ".join(
            f"#{r['trial']} retries #{r['retry_of']} ({r['state'].lower()})"
            for r in data["retried"]
        )
        more = data["n_retried"] - len(data["retried"])
        head = f"{data['n_retried']} trials, the last: " if more else ""
        echo(f"retried: {head}{shown}")
    if data["workers"]:
        shown_workers, hidden = _workers_to_show(data["workers"])
        echo("workers:" if not hidden else f"workers ({hidden} earlier stopped not shown):")
        table(
            ["worker", "host", "pid", "gpus", "state", "trials", "current", "heartbeat"],
            [
                [
                    w["worker_id"],
                    w["host"],
                    w["pid"],
                    w["gpus"] or "-",
                    w["state"],
                    w["trials_done"],
                    w["current_trial"],
                    w["heartbeat_at"][:19],
                ]
                for w in shown_workers
            ],
        )


STOPPED_WORKERS_SHOWN = 5


def _workers_to_show(workers: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Every worker that is not stopped (running or dead), and the last few stopped ones, in
    start order; and how many stopped ones are left out. A study run for weeks through
    preemptions and array jobs collects hundreds of worker rows; `--format json` has all."""
    from studyctl.storage.plain import WORKER_STOPPED

    stopped = [i for i, w in enumerate(workers) if w["state"] == WORKER_STOPPED]
    hidden = set(stopped[:-STOPPED_WORKERS_SHOWN])
    return [w for i, w in enumerate(workers) if i not in hidden], len(hidden)


def show_trials(
    study: str,
    storage: str | None,
    states: list[str] | None,
    output: str,
    last: int | None = None,
) -> None:
    from studyctl.inspect.summary import iter_trials, write_trials_csv
    from studyctl.storage.plain import STATES

    for s in states or []:
        if s.upper() not in STATES:
            fail(f"--state {s!r}: expected one of {', '.join(x.lower() for x in STATES)}")
    if output == "csv":
        write_trials_csv(open_reader_of(storage), study, sys.stdout, states, last=last)
        return
    # Streamed, one batch of trials in memory at a time: a study may have 100,000.
    rows = iter_trials(open_reader_of(storage), study, states, last)
    if output == "json":
        echo_json_items(rows)
        return
    table_rows(
        ["#", "state", "value", "duration", "params", "note"],
        (
            [
                r["number"],
                r["state"],
                fmt(r["values"]),
                None if r["duration_s"] is None else f"{r['duration_s']:.1f}s",
                fmt_params(r["params"]),
                r["user_attrs"].get("fail_reason")
                or (
                    f"pruned at epoch {r['user_attrs']['pruned_at_epoch']}"
                    if "pruned_at_epoch" in r["user_attrs"]
                    else None
                ),
            ]
            for r in rows
        ),
    )


def show_best(study: str, storage: str | None, output: str, export_model: str | None) -> None:
    from studyctl.inspect.summary import best_summary, export_best_model

    st = open_reader_of(storage)
    if export_model is not None:
        number = export_best_model(st, study, export_model)
        echo(f"wrote the model of trial #{number} to {export_model}", err=True)
    rows = best_summary(st, study)
    if output == "json":
        echo_json(rows)  # `[]` without a completed trial: still valid JSON for a script
    if not rows:
        fail(f"study {study!r} has no completed trial yet")
    if output == "json":
        return
    for r in rows:
        echo(f"trial #{r['number']}: {fmt(r['values'])}")
        for k, v in r["params"].items():
            echo(f"  {k} = {fmt(v)}")


REPORT_MAX_TRIALS = 10_000  # `report --max-trials`'s default (`trial_window`'s)


def write_report(study: str, output: Path, storage: str | None, max_trials: int) -> None:
    """`report`: the HTML page or the PNGs, then the note of a study drawn as its most
    recent trials and each file written."""
    from studyctl.inspect.report import import_importance_without_sklearn, write_html

    if output.suffix and output.suffix not in (".html", ".png"):
        fail(f"--output {output}: expected a .html or .png file, or a folder")
    import_importance_without_sklearn()
    if output.suffix == ".html":  # through the reader: no SQLAlchemy where schemas are current
        reader = open_reader_of(storage)
        try:
            path, note = write_html(reader, study, output, max_trials)
        finally:
            reader.close()
        written = [path]
    else:
        from studyctl.inspect.report_png import write_pngs
        from studyctl.storage.rdb import open_existing_storage
        from studyctl.storage.urls import resolve_storage_url

        st = open_existing_storage(resolve_storage_url(storage))
        written, note = write_pngs(st, study, output, max_trials)
    if note:
        echo(note)
    for path in written:
        echo(f"wrote {path}")
