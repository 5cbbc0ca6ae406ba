"""Commands that read studies: `studies`, `status`, `watch`, `trials`, `best`,
`objectives`, `report`. None of them imports TensorFlow, and none creates a database: they
open an existing one only."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from studyctl.cli._common import (
    FormatOpt,
    ObjectivesDirOpt,
    OutputFormat,
    StorageOpt,
    StudyArg,
    TrialsFormat,
    command,
    echo_json,
    fail,
    fmt,
    fmt_params,
    open_reader_of,
    open_storage_of,
    print_best,
    table,
)


@command
def studies(storage: StorageOpt = None, output: FormatOpt = OutputFormat.table) -> None:
    """List the studies in a storage with their trial counts and best value."""
    from studyctl.inspect.summary import list_studies

    rows = list_studies(open_reader_of(storage))
    if output == OutputFormat.json:
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


@command
def status(
    study: StudyArg,
    storage: StorageOpt = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Budget, trial states, workers (live and dead), retries and the best trial."""
    from studyctl.inspect.summary import study_status

    data = study_status(open_reader_of(storage), study)
    if output == OutputFormat.json:
        echo_json(data)
        return
    states = ", ".join(f"{k.lower()} {v}" for k, v in data["states"].items() if v)
    typer.echo(
        f"study {data['name']} ({', '.join(data['directions'])} "
        f"{', '.join(m or '?' for m in (data['metrics'] or ['?']))})"
    )
    typer.echo(
        f"budget: {data['finished']}/{fmt(data['n_trials'])} finished"
        + (" (complete)" if data["complete"] else "")
        + f"; {states or 'no trials'}"
    )
    print_best(data)
    if data["retried"]:
        typer.echo(
            "retried: "
            + ", ".join(
                f"#{r['trial']} retries #{r['retry_of']} ({r['state'].lower()})"
                for r in data["retried"]
            )
        )
    if data["workers"]:
        typer.echo("workers:")
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
                for w in data["workers"]
            ],
        )


@command
def trials(
    study: StudyArg,
    storage: StorageOpt = None,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            help="Only trials in this state (repeatable): complete, pruned, fail, "
            "running, waiting.",
        ),
    ] = None,
    output: Annotated[
        TrialsFormat, typer.Option("--format", "-f", help="Output format.")
    ] = TrialsFormat.table,
) -> None:
    """List a study's trials with params, values, state, duration and attributes
    (--format csv or json exports them all)."""
    from studyctl.inspect.summary import list_trials, write_trials_csv
    from studyctl.storage.tables import STATES

    for s in state or []:
        if s.upper() not in STATES:
            fail(f"--state {s!r}: expected one of {', '.join(x.lower() for x in STATES)}")
    if output == TrialsFormat.csv:
        write_trials_csv(open_reader_of(storage), study, sys.stdout, state)
        return
    rows = list_trials(open_reader_of(storage), study, state)
    if output == TrialsFormat.json:
        echo_json(rows)
        return
    table(
        ["#", "state", "value", "duration", "params", "note"],
        [
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
        ],
    )


@command
def best(
    study: StudyArg,
    storage: StorageOpt = None,
    output: FormatOpt = OutputFormat.table,
    export_model: Annotated[
        Path | None,
        typer.Option("--export-model", help="Write the best trial's trained model (.keras) here."),
    ] = None,
) -> None:
    """The best trial (the Pareto front for several objectives); --export-model writes its
    trained Keras model."""
    from studyctl.inspect.summary import best_summary, export_best_model

    st = open_reader_of(storage)
    if export_model is not None:
        number = export_best_model(st, study, str(export_model))
        typer.echo(f"wrote the model of trial #{number} to {export_model}", err=True)
    rows = best_summary(st, study)
    if output == OutputFormat.json:
        echo_json(rows)  # `[]` without a completed trial: still valid JSON for a script
    if not rows:
        fail(f"study {study!r} has no completed trial yet")
    if output == OutputFormat.json:
        return
    for r in rows:
        typer.echo(f"trial #{r['number']}: {fmt(r['values'])}")
        for k, v in r["params"].items():
            typer.echo(f"  {k} = {fmt(v)}")


@command
def objectives(
    objectives_dir: ObjectivesDirOpt = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """List registered objectives and where each came from."""
    from studyctl.objectives import KerasObjective, discover_objectives

    if objectives_dir is not None and objectives_dir.exists() and not objectives_dir.is_dir():
        fail(f"--objectives-dir {objectives_dir}: expected a folder of objective files")
    found = discover_objectives(objectives_dir)
    rows = [
        {
            "name": name,
            "kind": "keras" if isinstance(o, KerasObjective) else "function",
            "source": o.source,
        }
        for name, o in sorted(found.objectives.items())
    ]
    if output == OutputFormat.json:
        echo_json({"objectives": rows, "errors": found.errors})
        return
    table(["objective", "kind", "source"], [[r["name"], r["kind"], r["source"]] for r in rows])
    for src, err in found.errors.items():
        typer.echo(f"failed to import {src}: {err}", err=True)


@command
def report(
    study: StudyArg,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="report.html (one self-contained page), report.png (the "
            "optimization history) or a folder (PNGs of the main plots).",
        ),
    ],
    storage: StorageOpt = None,
) -> None:
    """Write a report: optimization history, parameter importances, parallel coordinates,
    learning curves and a trials table."""
    from studyctl.inspect.report import write_html, write_pngs

    st = open_storage_of(storage)
    if output.suffix == ".html":
        typer.echo(f"wrote {write_html(st, study, output)}")
        return
    if output.suffix and output.suffix != ".png":
        fail(f"--output {output}: expected a .html or .png file, or a folder")
    for path in write_pngs(st, study, output):
        typer.echo(f"wrote {path}")


@command
def watch(
    study: StudyArg,
    storage: StorageOpt = None,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.2, metavar="SECONDS", help="Seconds between refreshes."),
    ] = 1.0,
) -> None:
    """Follow a study live: budget and ETA, workers, best trial, last trials.

    Works from any machine that reaches the database; a refresh is a few small queries.
    Exits when the budget is met, or on q or Ctrl-C. When the output is not a terminal it
    prints one line per change.
    """
    from studyctl.inspect.watch import watch_study
    from studyctl.storage.snapshot import take_snapshot

    engine = open_reader_of(storage).engine
    take_snapshot(engine, study)  # an unknown study is an error before anything is drawn
    watch_study(lambda: take_snapshot(engine, study), interval=interval)
