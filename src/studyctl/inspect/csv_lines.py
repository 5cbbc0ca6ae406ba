"""Rows of `trial_grid` (one trial per row, its values, parameters and attributes in
columns) as the lines of a trials CSV, converted a column at a time.

`csv.writer` spends about 3 microseconds on each row of a trials export, a third of a
100,000-trial export. A trials CSV has a fixed shape: numbers, state names and timestamps,
which never need quoting, and text cells (categorical choices, JSON attributes), which may.
So every cell of a batch is made ready first, column by column, each text cell quoted by
`csv` itself when it holds anything but word characters, ``.``, ``:``, ``+`` and ``-``
(cached per distinct short text), and each line is then one ``%`` format of its cells. The text
is byte for byte what `csv.writer` writes for the same cells (the tests compare the two).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from studyctl.storage import trial_rows
from studyctl.storage.times import utc_to_local

T = TypeVar("T")

_PLAIN_TEXT = re.compile(r"[\w.:+-]*")
_DIGITS = frozenset("0123456789")
# JSON's number grammar (RFC 8259), ASCII digits only.
_JSON_NUMBER = re.compile(
    r"-?(?:0|[1-9][0-9]*)(?P<fraction>\.[0-9]+)?(?P<exponent>[eE][+-]?[0-9]+)?"
)
_CSV_LINE_END = "\r\n"  # csv.writer's default (the "excel" dialect)


def cached_if_short(function: Callable[[str], T]) -> Callable[[str], T]:
    """`function` with its results kept for the last 8,192 distinct texts of up to 512
    characters (attributes repeat across trials: a worker, a folder); a longer text is not
    kept, so a study of large distinct attributes does not fill memory."""
    cached = functools.lru_cache(maxsize=8192)(function)

    def call(text: str) -> T:
        return cached(text) if len(text) <= 512 else function(text)

    return call


@cached_if_short
def _quoted(text: str) -> str:
    """`text` as `csv.writer` writes it in a row of several cells."""
    if _PLAIN_TEXT.fullmatch(text) and text:
        return text
    buffer = io.StringIO()
    csv.writer(buffer).writerow([text, ""])
    return buffer.getvalue()[: -len("," + _CSV_LINE_END)]


def cell(value: Any) -> Any:
    """A value as its CSV cell: "" for None, a dict or list as JSON, text quoted as `csv`
    would; numbers stay numbers (``%s`` writes them as `csv` does, with `str`)."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        value = json.dumps(value)
    return _quoted(value) if isinstance(value, str) else value


@cached_if_short
def _json_text_cell(value_json: str) -> Any:
    return cell(json.loads(value_json))


def json_cell(value_json: str) -> Any:
    """A stored attribute's cell. A JSON number is read with `int` or `float`, which is
    what `json.loads` calls for it (a per-trial number, such as a duration, is seldom
    repeated); anything else is parsed once per distinct text (attributes repeat across
    trials: a worker, a folder), and text that is not JSON fails as `json.loads` fails."""
    if value_json[-1:] in _DIGITS and (number := _JSON_NUMBER.fullmatch(value_json)):
        return float(value_json) if number["fraction"] or number["exponent"] else int(value_json)
    return _json_text_cell(value_json)


def _value_cell(value: float | None, value_type: Any) -> Any:
    if value_type is None:
        return ""
    if value_type == "FINITE":
        return value
    shown = trial_rows.stored_value(value, value_type)
    return shown if math.isfinite(shown) else str(shown)


def _param_column(values: Sequence[Any], distributions: Sequence[Any]) -> list[Any]:
    convert = {d: trial_rows.external_of(d) for d in set(distributions) if d is not None}
    if all(f is trial_rows.as_stored for f in convert.values()):  # floats, as stored
        return ["" if d is None else v for v, d in zip(values, distributions, strict=True)]
    return [
        "" if d is None else cell(convert[d](v)) for v, d in zip(values, distributions, strict=True)
    ]


def _utc(values: Sequence[Any]) -> Sequence[datetime | None]:
    """A timestamp column as stored (naive UTC), parsed where SQLite's driver gives text."""
    if not any(type(v) is str for v in values):
        return values
    return [datetime.fromisoformat(v) if type(v) is str else v for v in values]


def _local_text(values: Sequence[datetime | None]) -> list[str]:
    return ["" if v is None else utc_to_local(v).isoformat() for v in values]


def grid_text(grid: list[tuple[Any, ...]], n_values: int, n_params: int) -> str:
    """The CSV lines of `grid` (rows of `trial_grid.grid_sql` for `n_values` objectives and
    `n_params` parameters), in the columns of `summary`'s trials CSV."""
    if not grid:
        return ""
    columns = list(zip(*grid, strict=True))
    first_param = 5 + 2 * n_values
    first_attr = first_param + 2 * n_params
    start, complete = _utc(columns[3]), _utc(columns[4])
    cells: list[Sequence[Any]] = [
        columns[1],
        [trial_rows.enum_name(s) for s in columns[2]],
        *(
            [_value_cell(v, t) for v, t in zip(columns[i], columns[i + 1], strict=True)]
            for i in range(5, first_param, 2)
        ),
        _local_text(start),
        _local_text(complete),
        [
            "" if s is None or c is None else (c - s).total_seconds()
            for s, c in zip(start, complete, strict=True)
        ],
        *(_param_column(columns[i], columns[i + 1]) for i in range(first_param, first_attr, 2)),
        *(
            ["" if a is None else json_cell(a) for a in columns[i]]
            for i in range(first_attr, len(grid[0]))
        ),
    ]
    line = ",".join(["%s"] * len(cells)) + _CSV_LINE_END
    return "".join([line % row for row in zip(*cells, strict=True)])
