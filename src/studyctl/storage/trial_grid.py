"""A study's trials as a table: one row per trial, one column per objective, parameter and
user attribute, read a batch of trials at a time in one statement per batch.

`trial_rows.iter_trial_batches` reads a batch's values, parameters and attributes as child
rows (three more queries, one row per value, parameter or attribute) for the caller to
place. When the caller already knows the columns (a CSV export's header), one statement
can place them: the batch's trials, each LEFT JOINed to its value of each objective, its
value of each parameter and its value of each attribute, on Optuna's unique (trial_id,
objective / param_name / key) constraints. At 100,000 trials that reads 100,000 rows
instead of 500,000 and leaves nothing to place.

On SQLite each join is an index lookup per trial. PostgreSQL merge-joins instead, each
join a scan of the batch's rows of that child table (the index is on trial_id first), so
its cost grows with the columns times the batch's child rows: a 48-column study exported
2.2 times slower than as child rows. It takes this path only for a few columns
(`MAX_JOINS`), where one statement a batch is still faster.

The export is bounded by the study's last trial_id when it starts (one query on the
study's index), and each batch by the trial_id `batch_size` trials on (one query on the
trials' index), so that each join is also bounded on the child table's trial_id: without it
PostgreSQL's merge joins start at the child table's first row for every batch. Unbounded
above, PostgreSQL's last batch read the trials and child rows of every later trial of the
database's other studies (0.12 s after a 100,000-trial study followed by another as big).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from studyctl.storage.plain import rows, scalar
from studyctl.storage.trial_rows import LAST_TRIAL_SQL, state_filter

if TYPE_CHECKING:
    from studyctl.storage.plain import ReadConnection

# Columns of values, parameters and attributes read in one statement, by database; a study
# with more is read as child rows (`trial_rows.iter_trial_batches`). SQLite joins at most
# 64 tables in one statement. On PostgreSQL (20,000 trials among 40,000) the statement took
# 0.9-0.96x the child rows' time at 8 columns, 1.0x at 13 and 2.2x at 48.
MAX_JOINS = {"sqlite": 48, "postgresql": 8}
Row = tuple[Any, ...]
# The text a grown batch holds at most (characters): 10,000 trials of a few hundred each;
# a study of 10 KB attributes stays at 2,000 trials a batch (20,000 such trials exported
# in batches of 10,000 peaked at 656 MB, against 140 MB in batches of 2,000).
GROWN_BATCH_TEXT = 4_000_000


def fits(dialect: str, n_objectives: int, params: list[str], attrs: list[str]) -> bool:
    """Whether a table of these columns is read by `iter_grid_batches` on `dialect`."""
    return n_objectives + len(params) + len(attrs) <= MAX_JOINS.get(dialect, 0)


def grid_sql(n_objectives: int, params: list[str], attrs: list[str], where: str) -> str:
    """The statement of one batch. Its rows: trial_id, number, state, datetime_start,
    datetime_complete; then (value, value_type) of each objective, (param_value,
    distribution_json) of each parameter, value_json of each attribute, None where the
    trial has none. The names are bound (``:o0``, ``:p0``, ``:a0``), never spliced in. The
    state and value type (enums on PostgreSQL) are cast to text, for the binary format."""
    columns = ["t.trial_id", "t.number", "CAST(t.state AS TEXT)"]
    columns += ["t.datetime_start", "t.datetime_complete"]
    joins = []

    def join(alias: str, table: str, match: str) -> None:
        joins.append(
            f" LEFT JOIN {table} {alias} ON {alias}.trial_id = t.trial_id AND {match} "
            f"AND {alias}.trial_id BETWEEN :lo AND :hi"
        )

    for i in range(n_objectives):
        columns += [f"v{i}.value", f"CAST(v{i}.value_type AS TEXT)"]
        join(f"v{i}", "trial_values", f"v{i}.objective = :o{i}")
    for i in range(len(params)):
        columns += [f"p{i}.param_value", f"p{i}.distribution_json"]
        join(f"p{i}", "trial_params", f"p{i}.param_name = :p{i}")
    for i in range(len(attrs)):
        columns.append(f"a{i}.value_json")
        join(f"a{i}", "trial_user_attributes", f"a{i}.key = :a{i}")
    return (
        f"SELECT {', '.join(columns)} FROM trials t{''.join(joins)} WHERE t.study_id = :sid "
        f"AND t.trial_id BETWEEN :lo AND :hi{where} ORDER BY t.trial_id"
    )


def iter_grid_batches(
    read: Callable[[Callable[[ReadConnection], Any]], Any],
    study_id: int,
    states: tuple[str, ...] | None,
    n_objectives: int,
    params: list[str],
    attrs: list[str],
    batch_size: int = 2000,
    *,
    after: int = -1,
    grow_to: int | None = None,
) -> Iterator[list[Row]]:
    """The study's trials (in `states`, or all; with a trial_id above `after`, up to its
    last when the export starts) in number order as rows of `grid_sql`, `batch_size` trials
    a batch, each batch read in its own short transaction (`read` runs a function in one).
    With `grow_to`, later batches grow up to that many trials while a batch holds at most
    about `GROWN_BATCH_TEXT` characters of text (a study of large attributes, such as
    studyctl's per-epoch history, keeps `batch_size`)."""
    where, bound = state_filter(states)
    names: dict[str, int | str] = {f"o{i}": i for i in range(n_objectives)}
    names.update({f"p{i}": name for i, name in enumerate(params)})
    names.update({f"a{i}": key for i, key in enumerate(attrs)})
    sql = grid_sql(n_objectives, params, attrs, where)
    batch_end_sql = (
        "SELECT t.trial_id FROM trials t WHERE t.study_id = :sid AND t.trial_id > :after "
        f"AND t.trial_id <= :top{where} ORDER BY t.trial_id LIMIT 1 OFFSET :skip"
    )
    top = read(lambda conn: scalar(conn, LAST_TRIAL_SQL, {"sid": study_id}))
    if top is None:
        return

    size = batch_size

    def batch(conn: ReadConnection) -> tuple[list[Row], int | None]:
        """The batch's rows, and its last trial_id (None: it is the export's last)."""
        at = {**bound, "sid": study_id, "after": after, "top": top}
        hi = scalar(conn, batch_end_sql, {**at, "skip": size - 1})
        bounds = {"lo": after + 1, "hi": top if hi is None else hi}
        # The binary format: its timestamps and floats are faster to read (PostgreSQL).
        return rows(conn, sql, {**bound, **names, "sid": study_id, **bounds}, binary=True), hi

    while after < top:
        found, hi = read(batch)
        if found:
            if grow_to is not None:
                text = sum(len(c) for row in found for c in row if type(c) is str)
                per_trial = max(1, text // len(found))
                size = max(batch_size, min(grow_to, GROWN_BATCH_TEXT // per_trial))
            yield found
        if hi is None:
            return
        after = int(hi)
