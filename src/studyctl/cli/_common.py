"""What every command shares: the Typer apps, the option types, and the output helpers
(from `_output`, which needs no Typer).

A command registered with `command`/`db_command` turns a `StudyctlError` into one
``error:`` line on stderr and its exit code (2).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from studyctl.cli._output import fail
from studyctl.errors import StudyctlError

if TYPE_CHECKING:
    from studyctl.storage.rdb import StudyctlStorage

app = typer.Typer(
    name="studyctl",
    help="Optuna-backed hyperparameter studies of Keras models, kept in a database.",
    no_args_is_help=True,
    # `studyctl --install-completion`: tab completion of commands and options.
    add_completion=True,
    pretty_exceptions_enable=False,
    # Plain click help: rich markup mode showed flags with value tags (`--quiet <bool>`)
    # and read "[default: ./objectives]" in help texts as markup, dropping it.
    rich_markup_mode=None,
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
    help="Schema versions of a storage (Optuna's and studyctl's).",
    no_args_is_help=True,
    rich_markup_mode=None,
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


SpecArg = Annotated[Path, typer.Argument(help="Study spec (TOML).", metavar="SPEC")]
StudyArg = Annotated[str, typer.Argument(help="Study name.", metavar="STUDY")]
# `run` and `create`: the spec may name the storage.
SpecStorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        "-s",
        metavar="URL",
        help="Database URL. Default: $STUDYCTL_STORAGE, then the spec's storage, then "
        "sqlite:///studyctl.db.",
        show_default=False,
    ),
]
# Every other command but `worker`: a database, not a `studyctl proxy`.
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        "-s",
        metavar="URL",
        help="Database URL. Default: $STUDYCTL_STORAGE, then sqlite:///studyctl.db.",
        show_default=False,
    ),
]
WorkerStorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        "-s",
        metavar="URL",
        help="Database URL, or grpc://HOST:PORT (grpcs:// with TLS) of a `studyctl proxy`. "
        "Default: $STUDYCTL_STORAGE, then sqlite:///studyctl.db.",
        show_default=False,
    ),
]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Also show TensorFlow's start-up lines and Optuna's log lines (a failed "
        "trial's traceback).",
    ),
]


def max_trials_option(what: str) -> Any:
    """`--max-trials N` of the commands that show a big study as its most recent trials."""
    return typer.Option(
        "--max-trials",
        min=0,
        metavar="N",
        help=f"{what}; 0 shows every trial.",
    )


FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        "-w",
        min=0,
        metavar="N",
        help="Worker processes on the study's storage; 0 runs trials in this process.",
    ),
]
GpusOpt = Annotated[
    str | None,
    typer.Option("--gpus", metavar="GPUS", help="GPUs to share out: 0,1,2,3 or 0-7 or all."),
]
GpusPerWorkerOpt = Annotated[
    int,
    typer.Option(
        "--gpus-per-worker", min=1, metavar="K", help="GPUs in each worker's set (with --gpus)."
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads-per-worker",
        min=1,
        metavar="N",
        help="Bound TensorFlow's threads in each worker.",
    ),
]
TrialsPerProcessOpt = Annotated[
    int | None,
    typer.Option(
        "--trials-per-process",
        min=1,
        metavar="N",
        help="Trials before a worker replaces its "
        "TensorFlow process [default: the spec's worker.trials_per_process]",
        show_default=False,
    ),
]
ObjectivesDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--objectives-dir",
        metavar="DIR",
        help="Folder of objective files [default: ./objectives]",
        show_default=False,
    ),
]


def open_storage_of(url: str | None) -> StudyctlStorage:
    """The existing database `--storage` (or the environment, or the default) names; a
    missing SQLite file is an error, never created."""
    from studyctl.storage import resolve_storage_url
    from studyctl.storage.rdb import open_existing_storage

    return open_existing_storage(resolve_storage_url(url))


def set_verbose(verbose: bool) -> None:
    """Quiet by default, for this process and the workers and trial processes it starts;
    without --verbose a worker keeps what its launcher chose ($STUDYCTL_VERBOSE)."""
    from studyctl.verbosity import set_verbose as choose

    choose(True if verbose else None)
