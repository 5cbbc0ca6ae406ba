"""The `studyctl` command line. Each command parses, calls one library function and formats
the result; errors a user can cause print as one line with exit code 2.

Nothing here imports TensorFlow: `studyctl --help` stays fast, and worker processes are
started before TensorFlow exists in any parent.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from studyctl.errors import StudyctlError

app = typer.Typer(
    name="studyctl",
    help="Optuna-backed hyperparameter studies of Keras models, kept in a database.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _commands_of(target: typer.Typer) -> Callable[[F], F]:
    """Register commands on `target`; a StudyctlError becomes one line on stderr and exit
    code 2."""

    def register(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except StudyctlError as exc:
                _fail(str(exc), exc.exit_code)

        target.command()(wrapper)
        return func

    return register


db_app = typer.Typer(
    help="Schema versions of a storage (Optuna's and studyctl's).", no_args_is_help=True
)
app.add_typer(db_app, name="db")
command = _commands_of(app)
db_command = _commands_of(db_app)


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


class TrialsFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        "-s",
        help="Database URL (a worker also takes grpc://HOST:PORT, a `studyctl proxy`). "
        "Default: $STUDYCTL_STORAGE, then the spec's storage, then sqlite:///studyctl.db.",
        show_default=False,
    ),
]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        "-w",
        min=0,
        help="Worker processes on the study's storage; 0 runs trials in this process.",
    ),
]
GpusOpt = Annotated[
    str | None, typer.Option("--gpus", help="GPUs to share out: 0,1,2,3 or 0-7 or all.")
]
GpusPerWorkerOpt = Annotated[
    int, typer.Option("--gpus-per-worker", min=1, help="GPUs in each worker's set (with --gpus).")
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads-per-worker", min=1, help="Bound TensorFlow's threads in each worker."),
]
TrialsPerProcessOpt = Annotated[
    int | None,
    typer.Option(
        "--trials-per-process",
        min=1,
        help="Trials before a worker replaces its "
        "TensorFlow process [default: the spec's worker.trials_per_process]",
        show_default=False,
    ),
]
ObjectivesDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--objectives-dir",
        help="Folder of objective files [default: ./objectives]",
        show_default=False,
    ),
]


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _table(columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*("-" if c is None else str(c) for c in row))
    Console(width=max(120, len(columns) * 14)).print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return "-" if v is None else str(v)


def _storage(url: str | None) -> Any:
    from studyctl.storage import open_storage, resolve_storage_url

    return open_storage(resolve_storage_url(url))


# --- run ---------------------------------------------------------------------------------


@command
def run(
    spec_path: Annotated[Path, typer.Argument(help="Study spec (TOML).", metavar="SPEC")],
    storage: StorageOpt = None,
    objectives_dir: ObjectivesDirOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-trial lines.")] = False,
    fmt: FormatOpt = OutputFormat.table,
    workers: WorkersOpt = 0,
    gpus: GpusOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 1,
    threads_per_worker: ThreadsOpt = None,
    trials_per_process: TrialsPerProcessOpt = None,
) -> None:
    """Run a study to its budget: create it or continue it.

    n_trials is the study's total: running the same spec again continues to the total.
    With --workers N, N worker processes share the budget, each with its own GPU set.
    """
    from studyctl.spec import load_spec
    from studyctl.storage import resolve_storage_url

    spec = load_spec(spec_path)
    _run_study(
        spec,
        resolve_storage_url(storage, spec.storage),
        objectives_dir,
        quiet,
        fmt,
        workers,
        _gpu_sets(workers, gpus, gpus_per_worker),
        threads_per_worker,
        trials_per_process,
    )


@command
def create(
    spec_path: Annotated[Path, typer.Argument(help="Study spec (TOML).", metavar="SPEC")],
    storage: StorageOpt = None,
    objectives_dir: ObjectivesDirOpt = None,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Create the study (or record a changed spec and budget) without running a trial.

    For clusters: create it once, then start `studyctl worker STUDY` on the nodes.
    """
    from studyctl.sequential import prepare_study
    from studyctl.spec import load_spec
    from studyctl.storage import mask_url, resolve_storage_url

    spec = load_spec(spec_path)
    url = resolve_storage_url(storage, spec.storage)
    prepared = prepare_study(spec, url, objectives_dir)
    out = {
        "study": spec.name,
        "storage": mask_url(url),
        "created": prepared.created,
        "n_trials": spec.n_trials,
    }
    if fmt == OutputFormat.json:
        _echo_json(out)
    else:
        what = "created" if prepared.created else "already exists; spec and budget recorded"
        typer.echo(f"study {spec.name!r} {what} in {out['storage']} (n_trials {spec.n_trials})")


@command
def resume(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    objectives_dir: ObjectivesDirOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-trial lines.")] = False,
    fmt: FormatOpt = OutputFormat.table,
    workers: WorkersOpt = 0,
    gpus: GpusOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 1,
    threads_per_worker: ThreadsOpt = None,
    trials_per_process: TrialsPerProcessOpt = None,
) -> None:
    """Continue an interrupted study with the spec it was run with, to its budget.

    Stale trials (their worker died) are failed and retried from their last checkpoint.
    """
    from studyctl.storage import open_storage, resolve_storage_url
    from studyctl.study import load_stored_spec

    url = resolve_storage_url(storage)
    spec = load_stored_spec(open_storage(url), study)
    _run_study(
        spec,
        url,
        objectives_dir,
        quiet,
        fmt,
        workers,
        _gpu_sets(workers, gpus, gpus_per_worker),
        threads_per_worker,
        trials_per_process,
    )


def _run_study(
    spec: Any,
    url: str,
    objectives_dir: Path | None,
    quiet: bool,
    fmt: OutputFormat,
    workers: int,
    gpu_sets: list[str | None],
    threads_per_worker: int | None,
    trials_per_process: int | None,
) -> None:
    from studyctl.progress import ProgressPrinter
    from studyctl.sequential import prepare_study, run_sequential
    from studyctl.storage import mask_url
    from studyctl.summary import study_status

    prepared = prepare_study(spec, url, objectives_dir)
    status = study_status(prepared.storage, spec.name, stale_after=spec.worker.grace_period)
    say = (lambda _m: None) if quiet or fmt == OutputFormat.json else typer.echo
    if status["complete"]:
        if fmt == OutputFormat.json:
            _echo_json({"study": status, "trials_run": 0, "stopped": "budget-met"})
        else:
            typer.echo(
                f"study {spec.name}: budget met ({status['finished']}/{spec.n_trials} "
                "finished); nothing to run"
            )
            _print_best(status)
        return
    verb = "created" if prepared.created else "continuing"
    say(
        f"study {spec.name} ({verb}) on {mask_url(url)}: {status['finished']}/"
        f"{_fmt(status['n_trials'])} finished, objective {spec.objective}, "
        f"sampler {spec.sampler.type}, pruner {spec.pruner.type}"
    )
    if workers:
        from studyctl.launcher import launch_workers

        launched = launch_workers(
            prepared.storage,
            url,
            spec.name,
            spec.n_trials,
            gpu_sets,
            threads=threads_per_worker,
            objectives_dir=objectives_dir,
            trials_per_process=trials_per_process,
            echo=say,
            quiet=quiet,
        )
        status = study_status(prepared.storage, spec.name, stale_after=spec.worker.grace_period)
        _finish_launch(launched, status, fmt)
        return
    printer = ProgressPrinter(prepared.storage, prepared.study, spec.n_trials, say)
    result = run_sequential(prepared, objectives_dir, on_trial=printer)
    status = study_status(prepared.storage, spec.name, stale_after=spec.worker.grace_period)
    _finish_run(result, status, fmt)


def _gpu_sets(workers: int, gpus: str | None, per_worker: int) -> list[str | None]:
    from studyctl.gpus import assign_gpu_sets, parse_gpus

    if gpus is None:
        return [None] * workers
    if not workers:
        raise StudyctlError("--gpus needs --workers N (each worker gets its own GPU set)")
    return list(assign_gpu_sets(parse_gpus(gpus), workers, per_worker))


def _finish_launch(launched: Any, status: dict[str, Any], fmt: OutputFormat) -> None:
    if fmt == OutputFormat.json:
        _echo_json(
            {
                "study": status,
                "workers": launched.exit_codes,
                "stopped": "interrupted" if launched.signum else "workers-exited",
            }
        )
    else:
        typer.echo(
            f"{status['finished']}/{_fmt(status['n_trials'])} finished; worker exit "
            "codes: " + ", ".join(f"{k} {v}" for k, v in launched.exit_codes.items())
        )
        _print_best(status)
    if launched.signum:
        raise typer.Exit(128 + launched.signum)
    bad = [c for c in launched.exit_codes.values() if c != 0]
    if bad:
        raise typer.Exit(2 if 2 in bad else 1)


@command
def worker(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    objectives_dir: ObjectivesDirOpt = None,
    gpus: Annotated[
        str | None,
        typer.Option("--gpus", help="This worker's GPU set (CUDA_VISIBLE_DEVICES), e.g. 0,1."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="Bound TensorFlow's intra-/inter-op threads."),
    ] = None,
    trials_per_process: TrialsPerProcessOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-trial lines.")] = False,
) -> None:
    """Join an existing study as one more worker; leave when its budget is met.

    Needs only the storage URL, the study name and the objectives being importable.
    """
    from studyctl.gpus import parse_gpus
    from studyctl.storage import resolve_storage_url
    from studyctl.worker_process import WorkerOptions, run_worker

    if gpus is not None:
        gpus = ",".join(parse_gpus(gpus))
    code = run_worker(
        WorkerOptions(
            storage_url=resolve_storage_url(storage),
            study_name=study,
            objectives_dir=objectives_dir,
            gpus=gpus,
            threads=threads,
            trials_per_process=trials_per_process,
            quiet=quiet,
        ),
        echo=lambda m: typer.echo(m, err=True),
    )
    if code:
        raise typer.Exit(code)


def _finish_run(result: Any, status: dict[str, Any], fmt: OutputFormat) -> None:
    if fmt == OutputFormat.json:
        _echo_json(
            {
                "study": status,
                "trials_run": result.trials_run,
                "stopped": result.reason,
                "message": result.message,
            }
        )
    else:
        typer.echo(
            f"stopped: {result.reason}"
            + (f" ({result.message})" if result.message else "")
            + f"; {status['finished']}/{_fmt(status['n_trials'])} finished"
        )
        _print_best(status)
    if result.reason == "interrupted":
        raise typer.Exit(128 + int(result.signum or 2))
    if result.reason == "fatal":
        _fail(result.message)
    if result.reason == "failures":
        raise typer.Exit(1)


def _print_best(status: dict[str, Any]) -> None:
    for best in status["best"]:
        typer.echo(
            f"best trial #{best['number']}: {_fmt(best['values'])}  params "
            f"{json.dumps(best['params'])}"
        )
    if not status["best"]:
        typer.echo("no completed trial yet")


# --- inspection --------------------------------------------------------------------------


@command
def studies(storage: StorageOpt = None, fmt: FormatOpt = OutputFormat.table) -> None:
    """List the studies in a storage with their trial counts and best value."""
    from studyctl.summary import list_studies

    rows = list_studies(_storage(storage))
    if fmt == OutputFormat.json:
        _echo_json(rows)
        return
    _table(
        ["study", "direction", "finished", "budget", "running", "failed", "best"],
        [
            [
                r["name"],
                ",".join(r["directions"]),
                r["finished"],
                r["n_trials"],
                r["states"]["RUNNING"],
                r["states"]["FAIL"],
                _fmt(r["best_value"]),
            ]
            for r in rows
        ],
    )


@command
def status(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Budget, trial states, workers (live and dead), retries and the best trial."""
    from studyctl.study import load_stored_spec
    from studyctl.summary import study_status

    st = _storage(storage)
    try:
        grace = load_stored_spec(st, study).worker.grace_period
    except StudyctlError:
        grace = 120
    data = study_status(st, study, stale_after=grace)
    if fmt == OutputFormat.json:
        _echo_json(data)
        return
    states = ", ".join(f"{k.lower()} {v}" for k, v in data["states"].items() if v)
    typer.echo(
        f"study {data['name']} ({', '.join(data['directions'])} "
        f"{', '.join(m or '?' for m in (data['metrics'] or ['?']))})"
    )
    typer.echo(
        f"budget: {data['finished']}/{_fmt(data['n_trials'])} finished"
        + (" (complete)" if data["complete"] else "")
        + f"; {states or 'no trials'}"
    )
    _print_best(data)
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
        _table(
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
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            help="Only trials in this state (repeatable): complete, pruned, fail, "
            "running, waiting.",
        ),
    ] = None,
    fmt: Annotated[
        TrialsFormat, typer.Option("--format", "-f", help="Output format.")
    ] = TrialsFormat.table,
) -> None:
    """List a study's trials with params, values, state, duration and attributes
    (--format csv or json exports them all)."""
    from studyctl.control import STATES
    from studyctl.summary import list_trials, trials_csv

    for s in state or []:
        if s.upper() not in STATES:
            _fail(f"--state {s!r}: expected one of {', '.join(x.lower() for x in STATES)}")
    rows = list_trials(_storage(storage), study, state)
    if fmt == TrialsFormat.json:
        _echo_json(rows)
        return
    if fmt == TrialsFormat.csv:
        typer.echo(trials_csv(rows), nl=False)
        return
    _table(
        ["#", "state", "value", "duration", "params", "note"],
        [
            [
                r["number"],
                r["state"],
                _fmt(r["values"]),
                None if r["duration_s"] is None else f"{r['duration_s']:.1f}s",
                json.dumps(r["params"]),
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
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    export_model: Annotated[
        Path | None,
        typer.Option("--export-model", help="Write the best trial's trained model (.keras) here."),
    ] = None,
) -> None:
    """The best trial (the Pareto front for several objectives); --export-model writes its
    trained Keras model."""
    from studyctl.summary import best_summary, export_best_model

    st = _storage(storage)
    if export_model is not None:
        number = export_best_model(st, study, str(export_model))
        typer.echo(f"wrote the model of trial #{number} to {export_model}", err=True)
    rows = best_summary(st, study)
    if fmt == OutputFormat.json:
        _echo_json(rows)
        return
    if not rows:
        _fail(f"study {study!r} has no completed trial yet", code=1)
    for r in rows:
        typer.echo(f"trial #{r['number']}: {_fmt(r['values'])}")
        for k, v in r["params"].items():
            typer.echo(f"  {k} = {_fmt(v)}")


@command
def objectives(
    objectives_dir: ObjectivesDirOpt = None,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """List registered objectives and where each came from."""
    from studyctl.registry import KerasObjective, discover_objectives

    found = discover_objectives(objectives_dir)
    rows = [
        {
            "name": name,
            "kind": "keras" if isinstance(o, KerasObjective) else "function",
            "source": o.source,
        }
        for name, o in sorted(found.objectives.items())
    ]
    if fmt == OutputFormat.json:
        _echo_json({"objectives": rows, "errors": found.errors})
        return
    _table(["objective", "kind", "source"], [[r["name"], r["kind"], r["source"]] for r in rows])
    for src, err in found.errors.items():
        typer.echo(f"failed to import {src}: {err}", err=True)


@command
def delete(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a study with all its trials."""
    from studyctl.storage import mask_url, resolve_storage_url
    from studyctl.study import delete_study

    st = _storage(storage)
    shown = mask_url(resolve_storage_url(storage))
    if not yes and not typer.confirm(f"Delete study {study!r} and all its trials from {shown}?"):
        _fail("not deleted", code=1)
    delete_study(st, study)
    typer.echo(f"deleted study {study}")


def _versions_out(v: Any, fmt: OutputFormat) -> None:
    data = {
        "optuna": {"current": v.optuna_current, "head": v.optuna_head},
        "studyctl": {"current": v.studyctl_current, "head": v.studyctl_head},
    }
    if fmt == OutputFormat.json:
        _echo_json(data)
        return
    for name, d in data.items():
        state = "up to date" if d["current"] == d["head"] else "needs `studyctl db upgrade`"
        typer.echo(f"{name}: {d['current'] or 'none'} (head {d['head']}; {state})")


@db_command
def upgrade(storage: StorageOpt = None, fmt: FormatOpt = OutputFormat.table) -> None:
    """Bring Optuna's schema and studyctl's tables to this version's head."""
    from studyctl.storage import resolve_storage_url, upgrade_storage

    _versions_out(upgrade_storage(resolve_storage_url(storage)), fmt)


@db_command
def current(storage: StorageOpt = None, fmt: FormatOpt = OutputFormat.table) -> None:
    """Show the schema versions of Optuna and studyctl in a storage."""
    from studyctl.storage import resolve_storage_url, schema_versions

    _versions_out(schema_versions(resolve_storage_url(storage)), fmt)


@command
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to bind. The dashboard has NO authentication: anything "
            "other than 127.0.0.1 exposes every study to the network.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535)] = 8080,
    artifact_dir: Annotated[
        str,
        typer.Option(
            "--artifact-dir",
            help="Artifact store: the studies' [artifacts] path, or their s3://BUCKET store.",
        ),
    ] = "artifacts",
) -> None:
    """Serve optuna-dashboard on the storage (no authentication; 127.0.0.1 by default)."""
    from studyctl.dashboard import serve_dashboard
    from studyctl.storage import resolve_storage_url

    serve_dashboard(
        resolve_storage_url(storage),
        host=host,
        port=port,
        artifact_dir=artifact_dir,
        echo=typer.echo,
    )


@command
def proxy(
    storage: StorageOpt = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to bind. The proxy has NO authentication: bind an address that "
            "only the cluster's nodes reach.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535)] = 13000,
) -> None:
    """Serve the storage to workers over gRPC (`worker STUDY -s grpc://HOST:PORT`).

    Optuna's gRPC storage proxy plus studyctl's claims and worker heartbeats: however many
    workers connect, the database sees only the proxy's pool (at most 9 connections).
    """
    from studyctl.proxy import serve
    from studyctl.storage import resolve_storage_url

    serve(resolve_storage_url(storage), host, port, ready=typer.echo)


@command
def report(
    study: Annotated[str, typer.Argument(help="Study name.")],
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
    from studyctl.report import write_html, write_pngs

    st = _storage(storage)
    if output.suffix == ".html":
        typer.echo(f"wrote {write_html(st, study, output)}")
        return
    if output.suffix and output.suffix != ".png":
        _fail(f"--output {output}: expected a .html or .png file, or a folder")
    for path in write_pngs(st, study, output):
        typer.echo(f"wrote {path}")


@command
def copy(
    study: Annotated[str, typer.Argument(help="Study name.")],
    source: Annotated[str, typer.Option("--from", help="Storage URL to copy from.")],
    target: Annotated[str, typer.Option("--to", help="Storage URL to copy to.")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a study of the same name in the target.")
    ] = False,
) -> None:
    """Copy a study with all its trials to another storage (e.g. SQLite to PostgreSQL)."""
    from studyctl.storage import mask_url, open_storage
    from studyctl.study import copy_study

    n = copy_study(study, open_storage(source), open_storage(target), overwrite=overwrite)
    typer.echo(f"copied study {study} ({n} trials) from {mask_url(source)} to {mask_url(target)}")


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
