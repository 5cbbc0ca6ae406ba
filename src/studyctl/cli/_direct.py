"""`studies`, `status`, `best`, `trials` and `report` run straight from `sys.argv`, without
Typer.

Importing Typer (with Click and pydantic) and every command module, then building the
whole app and a pydantic adapter per parameter, took as long as reading the study. These
five commands take few arguments; `direct_command` reads the plain forms of them (`STUDY`,
`--storage URL` or `-s URL` or `--storage=URL`, `--format`/`-f` with a valid format,
`--state S`, `--last N` with N written in digits and at least 1, `report`'s `--output`/`-o
PATH` and `--max-trials N` with N written in digits, in any order) and returns None for
anything else (`--help`, a misspelt or abbreviated option, a missing
value, a value that starts with `-`, `-sURL`, `--`, an extra argument, `best
--export-model`, shell completion), which Typer then parses, help and usage errors
included. What runs is `cli/_reading`, which the Typer commands run too, and
the errors end as they do under `commands.run_app`: a `StudyctlError` as one `error:`
line, exit 2; Ctrl-C exit 130; a closed pipe exit 1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from studyctl.cli._output import echo, fail


@dataclass(frozen=True)
class _Grammar:
    study: bool  # takes the STUDY argument
    formats: tuple[str, ...]
    states: bool = False  # takes --state (repeatable) and --last
    report: bool = False  # takes --output/-o (required) and --max-trials


_GRAMMARS = {
    "studies": _Grammar(False, ("table", "json")),
    "status": _Grammar(True, ("table", "json")),
    "best": _Grammar(True, ("table", "json")),
    "trials": _Grammar(True, ("table", "json", "csv"), states=True),
    "report": _Grammar(True, (), report=True),
}
_OPTIONS = {"--storage": "storage", "-s": "storage", "--format": "format", "-f": "format"}
_STATES_OPTIONS = {"--state": "state", "--last": "last"}
_REPORT_OPTIONS = {"--output": "path", "-o": "path", "--max-trials": "max-trials"}


@dataclass
class _Parsed:
    positional: list[str] = field(default_factory=list)
    storage: str | None = None
    output: str = "table"
    states: list[str] = field(default_factory=list)
    last: int | None = None
    path: str | None = None
    max_trials: int | None = None


def _digits(value: str) -> int | None:
    """`value` as an int when written in ASCII digits only (else Typer says what is wrong)."""
    return int(value) if value.isascii() and value.isdigit() else None


def _option(grammar: _Grammar, name: str) -> str | None:
    if grammar.states and name in _STATES_OPTIONS:
        return _STATES_OPTIONS[name]
    if grammar.report and name in _REPORT_OPTIONS:
        return _REPORT_OPTIONS[name]
    return _OPTIONS.get(name) if grammar.formats or name in ("--storage", "-s") else None


def _parse(grammar: _Grammar, args: list[str]) -> _Parsed | None:
    parsed = _Parsed()
    rest = iter(args)
    for arg in rest:
        if not arg.startswith("-"):
            parsed.positional.append(arg)
            continue
        name, eq, value = arg.partition("=")
        option = _option(grammar, name)
        if option is None or (eq and not name.startswith("--")):
            return None
        if not eq:
            value = next(rest, "")
        if not value or value.startswith("-"):
            return None
        if option == "storage":
            parsed.storage = value
        elif option == "format":
            if value not in grammar.formats:
                return None
            parsed.output = value
        elif option == "last":
            if (last := _digits(value)) is None or last < 1:
                return None
            parsed.last = last
        elif option == "max-trials":
            parsed.max_trials = _digits(value)
            if parsed.max_trials is None:
                return None
        elif option == "path":
            parsed.path = value
        else:
            parsed.states.append(value)
    if len(parsed.positional) != (1 if grammar.study else 0):
        return None
    if grammar.report and parsed.path is None:
        return None  # Typer's "Missing option"
    return parsed


def direct_command(argv: list[str]) -> Callable[[], None] | None:
    """The command `argv` asks for, ready to run, when it is one of the five reading
    commands written in a form read here exactly as Typer reads it; else None."""
    if not argv or argv[0] not in _GRAMMARS:
        return None
    if any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ):
        return None  # shell completion asks Typer
    parsed = _parse(_GRAMMARS[argv[0]], argv[1:])
    if parsed is None:
        return None
    from studyctl.cli import _reading

    p = parsed
    commands: dict[str, Callable[[], None]] = {
        "studies": lambda: _reading.show_studies(p.storage, p.output),
        "status": lambda: _reading.show_status(p.positional[0], p.storage, p.output),
        "best": lambda: _reading.show_best(p.positional[0], p.storage, p.output, None),
        "trials": lambda: _reading.show_trials(
            p.positional[0], p.storage, p.states or None, p.output, p.last
        ),
        "report": lambda: _reading.write_report(
            p.positional[0],
            Path(p.path or ""),
            p.storage,
            _reading.REPORT_MAX_TRIALS if p.max_trials is None else p.max_trials,
        ),
    }
    return commands[argv[0]]


def print_masked_traceback(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """An unexpected error's traceback, with every URL password and secret masked."""
    from studyctl.storage.urls import mask_secrets

    text = "".join(traceback.format_exception(exc_type, exc, tb))
    sys.stderr.write(mask_secrets(text))


def run_direct(command: Callable[[], None]) -> None:
    """Run `command` and exit as `commands.run_app` exits after a Typer command."""
    from studyctl.errors import StudyctlError

    sys.excepthook = print_masked_traceback
    try:
        command()
    except StudyctlError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except EOFError:
        echo("", err=True)
        echo("Aborted!", err=True)
        raise SystemExit(1) from None
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        # The reader went away (`| head`): nothing more reaches it, not even a flush.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    raise SystemExit(0)
