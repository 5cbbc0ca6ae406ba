"""How commands print, without Typer: lines, JSON, tables, numbers and the `error:` line.

`echo` writes as Typer's (click's) `echo` does: a newline added, ANSI codes removed when
the stream is not a terminal, flushed. The reading commands run through Typer or without
it (`cli/_direct.py`) and print the same bytes either way. Rich is imported only when a
table is printed.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from typing import Any, NoReturn, TextIO

# click's `_compat._ansi_re`: what its `echo` strips from text bound for a non-terminal.
_ANSI = re.compile(r"\033\[[0-?]*[ -/]*[@-~]")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except Exception:
        return False


def echo(message: str, *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    text = message + "\n"
    if not _is_terminal(stream) and not type(stream).__module__.startswith("ipykernel."):
        text = _ANSI.sub("", text)
    stream.write(text)
    stream.flush()


def fail(message: str, code: int = 2) -> NoReturn:
    """One `error:` line on stderr and exit `code`."""
    echo(f"error: {message}", err=True)
    raise SystemExit(code)


def echo_json(data: Any) -> None:
    echo(json.dumps(data, indent=2, default=str))


def echo_json_items(items: Iterable[Any]) -> None:
    """`echo_json(list(items))`, the same bytes, written one item at a time: memory stays
    flat however many items there are."""
    out = sys.stdout
    first = True
    for item in items:
        text = json.dumps(item, indent=2, default=str).replace("\n", "\n  ")
        out.write(("[\n  " if first else ",\n  ") + text)
        first = False
    out.write("[]\n" if first else "\n]\n")
    out.flush()


# A table of more rows than this is streamed (`table_rows`): rich lays out a whole table
# in memory first, which took 79 s and 565 MB for 100,000 trials.
RICH_TABLE_MAX_ROWS = 2000


def table_rows(columns: list[str], rows: Iterable[list[Any]]) -> None:
    """`table`, except that past `RICH_TABLE_MAX_ROWS` rows it is streamed as plain text:
    each column padded to the widest cell among the first rows (the last one not padded),
    cells on one line, in constant memory."""
    head: list[list[Any]] = []
    it = iter(rows)
    for row in it:
        head.append(row)
        if len(head) > RICH_TABLE_MAX_ROWS:
            break
    else:
        table(columns, head)
        return
    cells = [[_cell(c) for c in row] for row in head]
    widths = [max(len(r[i]) for r in [columns, *cells]) for i in range(len(columns))]

    def line(row: list[str]) -> str:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)]
        return "  ".join([*padded, row[-1]]).rstrip()

    out = sys.stdout
    out.write(line(columns) + "\n")
    out.writelines(line(r) + "\n" for r in cells)
    out.writelines(line([_cell(c) for c in row]) + "\n" for row in it)
    out.flush()


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def table(columns: list[str], rows: list[list[Any]]) -> None:
    """A table as wide as the terminal (or $COLUMNS); long cells wrap. Into a pipe, with no
    $COLUMNS, rows stay on one line each up to 120 columns (or more for many columns)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=None, pad_edge=False, header_style="bold")
    for column in table.columns:
        column.overflow = "fold"
    for row in rows:
        table.add_row(*(_cell(c) for c in row))
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        console = Console()
    else:
        console = Console(width=max(120, len(columns) * 14))
    console.print(table)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return ", ".join(fmt(x) for x in v)
    return "-" if v is None else str(v)


def fmt_params(params: dict[str, Any]) -> str:
    """Parameters as `name=value` pairs, numbers to 6 significant digits."""
    return " ".join(f"{k}={fmt(v)}" for k, v in params.items())


def print_best(status: dict[str, Any]) -> None:
    """The best trial (or the Pareto front) of a `study_status`, one line each."""
    for best in status["best"]:
        echo(f"best trial #{best['number']}: {fmt(best['values'])}  {fmt_params(best['params'])}")
    if not status["best"]:
        echo("no completed trial yet")
