"""The Typer app with every command registered, in the order `studyctl --help` lists them.

Commands live in `run` (trials), `inspect` (reading studies) and `admin` (changing or
serving a storage); a new command is one function in one of them, registered with
`@command`, and a name in `_HELP_ORDER` (and in `_help.HELP`, which a test compares with
this app's own help).
"""

from __future__ import annotations

import sys
import traceback
from types import TracebackType

from studyctl.cli import admin, inspect, run
from studyctl.cli._common import app
from studyctl.storage.urls import mask_secrets

__all__ = ["admin", "app", "inspect", "run", "run_app"]

# `studyctl --help` lists the commands in the order a user meets them.
_HELP_ORDER = (
    *("init", "run", "create", "resume", "worker"),
    *("studies", "status", "watch", "trials", "best", "objectives"),
    *("delete", "dashboard", "proxy", "report", "copy"),
)


def _help_rank(name: str | None) -> int:
    return _HELP_ORDER.index(name) if name in _HELP_ORDER else len(_HELP_ORDER)


app.registered_commands.sort(
    key=lambda c: _help_rank(c.name or getattr(c.callback, "__name__", None))
)


def _print_masked_traceback(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """An unexpected error's traceback, with every URL password and secret masked."""
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    sys.stderr.write(mask_secrets(text))


def run_app() -> None:
    """Run the command line with Typer."""
    sys.excepthook = _print_masked_traceback
    app()
