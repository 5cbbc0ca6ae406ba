"""The Typer app with every command registered, in the order `studyctl --help` lists them.

Commands live in `run` (trials), `inspect` (reading studies) and `admin` (changing or
serving a storage); a new command is one function in one of them, registered with
`@command`, and a name in `_HELP_ORDER` (and in `_help.HELP`, which a test compares with
this app's own help).
"""

from __future__ import annotations

import sys
from typing import Any

from studyctl.cli import admin, inspect, run
from studyctl.cli._common import app
from studyctl.cli._direct import print_masked_traceback

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


def run_app() -> None:
    """Run the command line with Typer. A usage error (a misspelt option or command, a bad
    value) is one `error:` line naming the help to read, exit code 2, like every other
    error a user can cause (Click's own form is three lines: usage, hint, error)."""
    import typer

    # Click's exception classes, wherever this Typer takes Click from (its own copy since
    # Typer 0.2x, the click package before): the bases of Typer's own BadParameter.
    bases: dict[str, Any] = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
    usage_error, click_exception = bases["UsageError"], bases["ClickException"]

    sys.excepthook = print_masked_traceback
    try:
        code = app(standalone_mode=False)
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `studyctl` alone: the help
            exc.show()
            raise SystemExit(exc.exit_code) from None
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "studyctl"
        sys.stderr.write(f"error: {exc.format_message()} (see `{where} --help`)\n")
        raise SystemExit(exc.exit_code) from None
    except click_exception as exc:
        sys.stderr.write(f"error: {exc.format_message()}\n")
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        sys.stderr.write("Aborted!\n")
        raise SystemExit(1) from None
    # Without standalone mode Click returns an `Exit`'s code instead of exiting.
    raise SystemExit(code if isinstance(code, int) else 0)
