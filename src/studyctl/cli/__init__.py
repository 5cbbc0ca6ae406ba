"""The `studyctl` command line. Each command parses, calls one library function and formats
the result; errors a user can cause print as one line with exit code 2.

Nothing here imports TensorFlow: `studyctl --help` stays fast, and worker processes are
started before TensorFlow exists in any parent. `studyctl --help` (and `studyctl` alone)
is answered from `_help` without importing Typer or any command, and `studies`, `status`,
`best`, `trials` and `report` in their plain forms by `_direct` (`commands` assembles the
Typer app, imported on first use: `from studyctl.cli import app`).
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from studyctl.cli import admin, inspect, run
    from studyctl.cli.commands import app

__all__ = ["admin", "app", "inspect", "main", "run"]


def main() -> None:
    """Console entry point."""
    from studyctl.cli._help import top_level_help

    answer = top_level_help(sys.argv[1:])
    if answer is not None:
        text, code = answer
        (sys.stdout if code == 0 else sys.stderr).write(text)
        raise SystemExit(code)
    from studyctl.cli._direct import direct_command, run_direct

    command = direct_command(sys.argv[1:])
    if command is not None:
        run_direct(command)
    from studyctl.cli.commands import run_app

    run_app()


if not TYPE_CHECKING:  # mypy checks the imports above

    def __getattr__(name: str) -> Any:
        if name == "app":
            return importlib.import_module("studyctl.cli.commands").app
        if name in ("admin", "inspect", "run"):
            return importlib.import_module(f"studyctl.cli.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
