"""Reading one TOML table of a spec: each value checked for its type (and simple ranges),
every error a `SpecError` naming the file and the key path."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from studyctl.errors import SpecError
from studyctl.spec.model import GridValue

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


class Table:
    """Reads one TOML table, remembering the key path for error messages."""

    def __init__(self, path: str, data: dict[str, Any], prefix: str = "") -> None:
        self.path = path
        self.data = dict(data)
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def error(self, name: str | None, message: str) -> SpecError:
        return SpecError(
            self.path, self.key(name) if name else self.prefix.rstrip(".") or None, message
        )

    def take(self, name: str, kind: type, default: Any = None, *, required: bool = False) -> Any:
        if name not in self.data:
            if required:
                raise self.error(name, f"missing; expected {_TYPE_NAMES.get(kind, kind.__name__)}")
            return default
        value = self.data.pop(name)
        return check_type(self, name, value, kind)

    def table(self, name: str) -> Table:
        value = self.data.pop(name, {})
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table ([{self.key(name)}]), got {show(value)}")
        return Table(self.path, value, f"{self.key(name)}.")

    def finish(self, allowed: Iterable[str]) -> None:
        if self.data:
            unknown = sorted(self.data)[0]
            expected = ", ".join(sorted(allowed)) or "no keys"
            raise self.error(unknown, f"unknown key; expected one of: {expected}")


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_type(table: Table, name: str, value: Any, kind: type) -> Any:
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise table.error(name, f"expected a number, got {show(value)}")
        if not math.isfinite(value):
            raise table.error(name, f"expected a finite number, got {show(value)}")
        return float(value)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise table.error(name, f"expected an integer, got {show(value)}")
    if kind is bool and not isinstance(value, bool):
        raise table.error(name, f"expected true or false, got {show(value)}")
    if kind is str and not isinstance(value, str):
        raise table.error(name, f"expected a string, got {show(value)}")
    if kind is list and not isinstance(value, list):
        raise table.error(name, f"expected an array, got {show(value)}")
    return value


def positive(table: Table, name: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise table.error(name, f"expected a number {bound}, got {show(value)}")


# The largest value of an INTEGER column (32-bit signed on PostgreSQL).
MAX_DB_INT = 2**31 - 1


def at_most(table: Table, name: str, value: float | None, limit: int) -> None:
    if value is not None and value > limit:
        raise table.error(name, f"expected at most {limit}, got {show(value)}")


def scalar_list(table: Table, name: str, value: Any) -> list[GridValue]:
    """A non-empty array of scalars of one kind (numbers, strings or booleans)."""
    if not isinstance(value, list) or not value:
        raise table.error(name, f"expected a non-empty array of values, got {show(value)}")
    kinds = set()
    for item in value:
        if isinstance(item, bool):
            kinds.add("bool")
        elif isinstance(item, int | float):
            kinds.add("number")
        elif isinstance(item, str):
            kinds.add("string")
        else:
            raise table.error(name, f"expected numbers, strings or booleans, got {show(item)}")
    if len(kinds) > 1:
        raise table.error(
            name, f"expected values of one type, got a mix of {' and '.join(sorted(kinds))}"
        )
    if len(set(map(repr, value))) != len(value):
        raise table.error(name, f"expected distinct values, got {show(value)}")
    return list(value)
