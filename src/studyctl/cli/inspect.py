"""Commands that read studies: `studies`, `status`, `watch`, `trials`, `best`,
`objectives`, `report`. None of them imports TensorFlow, and none creates a database: they
open an existing one only."""

from __future__ import annotations

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
    max_trials_option,
)
from studyctl.cli._output import echo_json, fail, table
from studyctl.cli._reading import (
    REPORT_MAX_TRIALS,
    open_reader_of,
    show_best,
    show_status,
    show_studies,
    show_trials,
    write_report,
)


@command
def studies(storage: StorageOpt = None, output: FormatOpt = OutputFormat.table) -> None:
    """List the studies in a storage with their trial counts and best value."""
    show_studies(storage, output.value)


@command
def status(
    study: StudyArg,
    storage: StorageOpt = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Budget, trial states, workers (live and dead), retries and the best trial."""
    show_status(study, storage, output.value)


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
    last: Annotated[
        int | None,
        typer.Option(
            "--last",
            min=1,
            metavar="N",
            help="Only the N most recent trials (of those --state selects).",
        ),
    ] = None,
) -> None:
    """List a study's trials with params, values, state, duration and attributes
    (--format csv or json exports them all; --last N only the most recent)."""
    show_trials(study, storage, state, output.value, last)


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
    show_best(study, storage, output.value, None if export_model is None else str(export_model))


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
    max_trials: Annotated[
        int,
        max_trials_option(
            "Draw a bigger study's most recent N trials (the optimization history, the best "
            "trial and the budget stay the whole study's)"
        ),
    ] = REPORT_MAX_TRIALS,
) -> None:
    """Write a report: optimization history, parameter importances, parallel coordinates,
    learning curves and a trials table."""
    write_report(study, output, storage, max_trials)


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
