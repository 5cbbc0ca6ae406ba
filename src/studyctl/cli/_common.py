"""What every command shares: the Typer apps, the option types, and the output helpers.

A command registered with `command`/`db_command` turns a `StudyctlError` into one
``error:`` line on stderr and its exit code (2).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from studyctl.errors import StudyctlError

if TYPE_CHECKING:
    from studyctl.storage.rdb import StudyctlStorage

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
                fail(str(exc), exc.exit_code)

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


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def table(columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*("-" if c is None else str(c) for c in row))
    Console(width=max(120, len(columns) * 14)).print(table)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return ", ".join(fmt(x) for x in v)
    return "-" if v is None else str(v)


def open_storage_of(url: str | None) -> StudyctlStorage:
    """The storage `--storage` (or the environment, or the default) names."""
    from studyctl.storage import open_storage, resolve_storage_url

    return open_storage(resolve_storage_url(url))


def print_best(status: dict[str, Any]) -> None:
    """The best trial (or the Pareto front) of a `study_status`, one line each."""
    for best in status["best"]:
        typer.echo(
            f"best trial #{best['number']}: {fmt(best['values'])}  params "
            f"{json.dumps(best['params'])}"
        )
    if not status["best"]:
        typer.echo("no completed trial yet")
