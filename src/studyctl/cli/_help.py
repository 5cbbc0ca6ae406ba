"""`studyctl --help` and `studyctl` alone, answered without importing Typer or a command.

Importing Typer and the command modules was most of `studyctl --help`'s time. `HELP` is
the text Typer prints for the top-level help on a terminal at least 80 columns wide (click
formats help at most 78 wide); a test compares it with Typer's own output, so it cannot
drift from the commands. Anything else (a narrower terminal, shell completion, a long
program name, any other arguments) goes to Typer.
"""

from __future__ import annotations

import os
import shutil
import sys

HELP = """\
Usage: {prog} [OPTIONS] COMMAND [ARGS]...

  Optuna-backed hyperparameter studies of Keras models, kept in a database.

Options:
  --install-completion  Install completion for the current shell.
  --show-completion     Show completion for the current shell, to copy it or
                        customize the installation.
  --help                Show this message and exit.

Commands:
  init        Write objectives/NAME.py and studies/NAME.toml: a Keras...
  run         Run a study to its budget: create it or continue it.
  create      Create the study (or record a changed spec and budget)...
  resume      Continue an interrupted study with the spec it was run...
  worker      Join an existing study as one more worker; leave when its...
  studies     List the studies in a storage with their trial counts and...
  status      Budget, trial states, workers (live and dead), retries and...
  watch       Follow a study live: budget and ETA, workers, best trial,...
  trials      List a study's trials with params, values, state, duration...
  best        The best trial (the Pareto front for several objectives);...
  objectives  List registered objectives and where each came from.
  delete      Delete a study with all its trials.
  dashboard   Serve optuna-dashboard on the storage, behind a token, a...
  proxy       Serve the storage to workers over gRPC (`worker STUDY -s...
  report      Write a report: optimization history, parameter...
  copy        Copy a study with all its trials to another storage (e.g.
  db          Schema versions of a storage (Optuna's and studyctl's).
"""

HELP_WIDTH = 78  # click: min(terminal columns, 80) - 2
_USAGE = "Usage: {prog} [OPTIONS] COMMAND [ARGS]..."


def program_name() -> str:
    """The program's name as click shows it: the script's file name, or `python -m
    PACKAGE` when run with -m."""
    main = sys.modules["__main__"]
    path = sys.argv[0]
    package = getattr(main, "__package__", None)
    if package in (None, ""):
        return os.path.basename(path)
    name = os.path.splitext(os.path.basename(path))[0]
    module = package if name == "__main__" else f"{package}.{name}"
    return f"python -m {module.lstrip('.')}"


def top_level_help(argv: list[str]) -> tuple[str, int] | None:
    """(text, exit code) for `--help` (stdout, 0) or no arguments (stderr, 2), when Typer
    would print exactly `HELP`; else None."""
    if argv not in ([], ["--help"]):
        return None
    if any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ):
        return None  # shell completion asks Typer
    if min(shutil.get_terminal_size().columns, 80) - 2 != HELP_WIDTH:
        return None
    prog = program_name()
    if len(_USAGE.format(prog=prog)) > HELP_WIDTH:
        return None
    return HELP.replace("{prog}", prog, 1), 0 if argv else 2
