"""Read-only views of studies for the inspection commands: plain dicts, ready for a table
or for ``--format json``."""

from __future__ import annotations

import csv
import functools
import io
import json
import math
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO, TypeAlias

from studyctl.errors import StudyctlError
from studyctl.inspect import csv_lines
from studyctl.storage import plain, trial_grid, trial_rows
from studyctl.storage.read_ahead import read_ahead
from studyctl.storage.reader import StudyReader, as_reader, has_constraints
from studyctl.storage.times import utc_to_local

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from studyctl.storage.rdb import StudyctlStorage

# What the views read: a `StudyReader` (the inspection commands: plain SQL, no Optuna) or a
# `StudyctlStorage` (a run's summary, the report), read through its engine.
Source: TypeAlias = "StudyReader | StudyctlStorage"


def _json_value(value: float | None) -> float | str | None:
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)


def trial_dict(t: FrozenTrial, *, attrs: bool = True) -> dict[str, Any]:
    duration = t.duration.total_seconds() if t.duration is not None else None
    out: dict[str, Any] = {
        "number": t.number,
        "state": t.state.name,
        "values": [_json_value(v) for v in t.values] if t.values else None,
        "params": t.params,
        "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
        "duration_s": duration,
    }
    retried = t.system_attrs.get("failed_trial")
    if retried is not None:
        out["retry_of"] = retried
    if attrs:
        out["user_attrs"] = t.user_attrs
    return out


def _study_id(reader: StudyReader, name: str) -> int:
    study_id = reader.study_id(name)
    if study_id is None:
        raise reader.unknown_study(name)
    return study_id


def _best(
    reader: StudyReader, name: str, study_id: int, directions: list[str], *, attrs: bool = True
) -> list[dict[str, Any]]:
    """The best trial (one objective) or the Pareto front (several), as `trial_dict`s;
    empty before any trial completed. One objective is one query; the Pareto front and a
    constrained study's best feasible trial are Optuna's to compute."""
    if len(directions) == 1:
        row = reader.best_row(study_id, maximize=directions[0] == "maximize")
        if row is None:
            return []
        if not has_constraints(row):
            return [_row_dict(row, attrs=attrs)]
    import optuna

    from studyctl.storage.studies import best_trials

    study = optuna.load_study(study_name=name, storage=reader.storage())
    return [trial_dict(t, attrs=attrs) for t in best_trials(study)]


def list_studies(source: Source) -> list[dict[str, Any]]:
    reader = as_reader(source)
    out = []
    budgets = reader.budgets()
    for s in reader.studies():
        counts = reader.state_counts(s.study_id)
        best = _best(reader, s.name, s.study_id, s.directions, attrs=False)
        out.append(
            {
                "name": s.name,
                "directions": s.directions,
                "n_trials": budgets.get(s.name),
                "finished": plain.finished_count(counts),
                "states": counts,
                "best_value": best[0]["values"][0] if len(best) == 1 else None,
            }
        )
    return out


def _grace_period(record: dict[str, Any] | None) -> float:
    """The study's own grace period (a worker silent for longer is dead), from its stored
    spec, or the default for a study studyctl did not create. Read from the snapshot alone,
    so a spec of a newer studyctl (with settings this one does not know) still has it."""
    from studyctl.spec import WorkerSpec

    if record is not None:
        try:
            return float(json.loads(record["spec_json"])["worker"]["grace_period"])
        except (ValueError, KeyError, TypeError):
            pass
    return float(WorkerSpec().grace_period)


def study_status(source: Source, name: str, *, stale_after: float | None = None) -> dict[str, Any]:
    """Budget, trial states, workers (alive or dead: silent for longer than `stale_after`,
    by default the study's grace period), retries (how many, and the last
    `trial_rows.RECENT_RETRIES` of them: `trials` lists every trial) and the best trial(s)."""
    reader = as_reader(source)
    study_id = _study_id(reader, name)
    directions = reader.directions(study_id)
    counts = reader.state_counts(study_id)
    record, workers, now, (n_retried, retried) = reader.status_rows(name, study_id)
    if stale_after is None:
        stale_after = _grace_period(record)
    for w in workers:
        alive = w["state"] == plain.WORKER_RUNNING and now - w["heartbeat_at"] < timedelta(
            seconds=stale_after
        )
        w["alive"] = alive
        if w["state"] == plain.WORKER_RUNNING and not alive:
            w["state"] = "dead"
        for key in ("started_at", "heartbeat_at"):
            w[key] = w[key].isoformat()
    best = _best(reader, name, study_id, directions, attrs=False)
    n_trials = record["n_trials"] if record else None
    finished = plain.finished_count(counts)
    return {
        "name": name,
        "directions": directions,
        "metrics": reader.metric_names(study_id),
        "n_trials": n_trials,
        "finished": finished,
        "complete": n_trials is not None and finished >= n_trials,
        "states": counts,
        "best": best,
        "workers": workers,
        "n_retried": n_retried,
        "retried": retried,
    }


def list_trials(source: Source, name: str, states: list[str] | None = None) -> list[dict[str, Any]]:
    return list(iter_trials(source, name, states))


def _after(
    reader: StudyReader, study_id: int, wanted: tuple[str, ...] | None, last: int | None
) -> int:
    """Where the `last` most recent trials in `wanted` begin (-1: from the first)."""
    if last is None:
        return -1
    return reader.read(lambda conn: trial_rows.last_trials_after(conn, study_id, wanted, last))


def iter_trials(
    source: Source, name: str, states: list[str] | None = None, last: int | None = None
) -> Iterator[dict[str, Any]]:
    """`list_trials` (only the `last` most recent, when given) one batch of trials in
    memory at a time. The study is looked up at the call (an unknown study raises here,
    before any row)."""
    reader = as_reader(source)
    study_id = _study_id(reader, name)
    wanted = tuple(s.upper() for s in states) if states else None
    after = _after(reader, study_id, wanted, last)
    return (
        _row_dict(row)
        for batch in reader.trial_batches(study_id, wanted, after=after)
        for row in trial_rows.batch_rows(batch).values()
    )


def best_summary(source: Source, name: str) -> list[dict[str, Any]]:
    reader = as_reader(source)
    study_id = _study_id(reader, name)
    return _best(reader, name, study_id, reader.directions(study_id))


def _csv_cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, dict | list) else ("" if v is None else v)


def _csv_header(value_cols: list[str], params: list[str], attrs: list[str]) -> list[str]:
    return [
        "number",
        "state",
        *value_cols,
        "datetime_start",
        "datetime_complete",
        "duration_s",
        *(f"params_{p}" for p in params),
        *(f"user_attrs_{a}" for a in attrs),
    ]


def _csv_row(
    r: dict[str, Any], value_cols: list[str], params: list[str], attrs: list[str]
) -> list[Any]:
    values = list(r["values"] or []) + [None] * (len(value_cols) - len(r["values"] or []))
    return [
        r["number"],
        r["state"],
        *map(_csv_cell, values),
        _csv_cell(r["datetime_start"]),
        _csv_cell(r["datetime_complete"]),
        _csv_cell(r["duration_s"]),
        *(_csv_cell(r["params"].get(p)) for p in params),
        *(_csv_cell(r["user_attrs"].get(a)) for a in attrs),
    ]


def _value_cols(n_values: int) -> list[str]:
    return ["value"] if n_values <= 1 else [f"values_{i}" for i in range(n_values)]


def trials_csv(rows: list[dict[str, Any]]) -> str:
    """`list_trials` rows as CSV: one column per value, parameter and user attribute
    (non-scalar attributes as JSON)."""
    n_values = max((len(r["values"] or []) for r in rows), default=1)
    params = sorted({k for r in rows for k in r["params"]})
    attrs = sorted({k for r in rows for k in r["user_attrs"]})
    value_cols = _value_cols(n_values)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(_csv_header(value_cols, params, attrs))
    for r in rows:
        writer.writerow(_csv_row(r, value_cols, params, attrs))
    return out.getvalue()


def _parsed(value: datetime | str | None) -> datetime | None:
    if isinstance(value, str):  # SQLite through a plain text query
        return datetime.fromisoformat(value)
    return value


def _duration(start: datetime | None, complete: datetime | None) -> float | None:
    return (complete - start).total_seconds() if start and complete else None


def _slots(row: trial_rows.TrialRow) -> list[float | str | None] | None:
    """The trial's values by objective, as `trial_dict` shows them (None before any)."""
    if not row.values:
        return None
    slots: list[float | str | None] = [None] * (max(o for o, _, _ in row.values) + 1)
    for objective, value, value_type in row.values:
        slots[objective] = _json_value(trial_rows.stored_value(value, value_type))
    return slots


def _row_dict(row: trial_rows.TrialRow, *, attrs: bool = True) -> dict[str, Any]:
    """A stored trial row as `trial_dict` makes it from a FrozenTrial."""
    params = {
        name: trial_rows.stored_param(internal, dist_json)
        for name, internal, dist_json in row.params
    }
    start_utc, complete_utc = _parsed(row.datetime_start), _parsed(row.datetime_complete)
    start, complete = utc_to_local(start_utc), utc_to_local(complete_utc)
    out: dict[str, Any] = {
        "number": row.number,
        "state": row.state,
        "values": _slots(row),
        "params": params,
        "datetime_start": start.isoformat() if start else None,
        "datetime_complete": complete.isoformat() if complete else None,
        "duration_s": _duration(start_utc, complete_utc),
    }
    retried = row.system_attrs.get("failed_trial")
    if retried is not None:
        out["retry_of"] = json.loads(retried)
    if attrs:
        out["user_attrs"] = {k: json.loads(v) for k, v in row.user_attrs.items()}
    return out


@csv_lines.cached_if_short
def _json_cell(value_json: str) -> Any:
    """A stored attribute's CSV cell: attributes repeat across trials (a worker, a
    checkpoint folder's parent), so each distinct one is parsed and dumped once."""
    return _csv_cell(json.loads(value_json))


def _csv_rows(
    batch: trial_rows.TrialBatch, n_value_cols: int, params: list[str], attrs: list[str]
) -> list[list[Any]]:
    """The batch's trials as `_csv_row(_row_dict(row), ...)` makes them, filled in column by
    column from the stored rows (no `TrialRow` or dict per trial): a 100,000-trial export
    spends its time here."""
    first_param = 5 + n_value_cols
    param_col = {name: first_param + i for i, name in enumerate(params)}
    attr_col = {key: first_param + len(params) + i for i, key in enumerate(attrs)}
    values_blank = [""] * n_value_cols
    rest_blank = [""] * (len(params) + len(attrs))
    at: dict[Any, list[Any]] = {}
    out = []
    for tid, number, state, start, complete in batch.trials:
        start_utc, complete_utc = _parsed(start), _parsed(complete)
        start_local, complete_local = utc_to_local(start_utc), utc_to_local(complete_utc)
        row = [
            number,
            trial_rows.enum_name(state),
            *values_blank,
            start_local.isoformat() if start_local else "",
            complete_local.isoformat() if complete_local else "",
            "" if start_utc is None or complete_utc is None else _duration(start_utc, complete_utc),
            *rest_blank,
        ]
        at[tid] = row
        out.append(row)
    for tid, objective, value, value_type in batch.values:
        if (cells := at.get(tid)) is not None and objective < n_value_cols:
            cells[2 + objective] = (
                value  # a finite value, as stored
                if value_type == "FINITE"
                else _csv_cell(_json_value(trial_rows.stored_value(value, value_type)))
            )
    for tid, name, internal, dist in batch.params:
        if (cells := at.get(tid)) is not None and (col := param_col.get(name)) is not None:
            cells[col] = _csv_cell(trial_rows.stored_param(internal, dist))
    for tid, key, value_json in batch.user_attrs:
        if (cells := at.get(tid)) is not None and (col := attr_col.get(key)) is not None:
            cells[col] = _json_cell(value_json)
    return out


# Trials a CSV export reads at a time. On PostgreSQL the next batch is read on a thread
# (`read_ahead`) while one is written; each time the driver hands a chunk of the server's
# answer to that thread it waits for the writing thread to yield the GIL (up to 5 ms), so
# there batches grow to `CSV_GROWTH` times `batch_size` where their text is small
# (`trial_grid.GROWN_BATCH_TEXT`): 100,000 trials took 0.90 s in batches of 10,000 and
# 1.09 s in batches of 2,000 (in one process, the command's start not counted).
CSV_BATCH = 2000
CSV_GROWTH = 5


def write_trials_csv(
    source: Source,
    name: str,
    out: TextIO,
    states: list[str] | None = None,
    *,
    batch_size: int = CSV_BATCH,
    last: int | None = None,
) -> int:
    """Write the study's trials (in `states`, or all; only the `last` most recent when
    given, with the columns those have) to `out` as `trials_csv` would, one batch of
    trials at a time (`batch_size`; on PostgreSQL up to `CSV_GROWTH` times that): memory
    stays flat however many trials the study has. Returns the number of trials written."""
    reader = as_reader(source)
    study_id = _study_id(reader, name)
    wanted = tuple(s.upper() for s in states) if states else None
    after = _after(reader, study_id, wanted, last)
    n_values, params, attrs = reader.read(
        lambda conn: trial_rows.trial_columns(conn, study_id, wanted, after)
    )
    value_cols = _value_cols(n_values)
    writer = csv.writer(out)
    writer.writerow(_csv_header(value_cols, params, attrs))
    n = 0
    if trial_grid.fits(reader.dialect, len(value_cols), params, attrs):
        server = reader.dialect == "postgresql"
        grids = reader.read_batches(
            functools.partial(
                trial_grid.iter_grid_batches,
                study_id=study_id,
                states=wanted,
                n_objectives=len(value_cols),
                params=params,
                attrs=attrs,
                batch_size=batch_size,
                after=after,
                grow_to=batch_size * CSV_GROWTH if server else None,
            )
        )
        if server:
            grids = read_ahead(grids)  # the server reads a batch while one is written
        for grid in grids:
            out.write(csv_lines.grid_text(grid, len(value_cols), len(params)))
            n += len(grid)
        return n
    for batch in reader.trial_batches(
        study_id, wanted, batch_size, system_attrs=False, after=after
    ):
        rows = _csv_rows(batch, len(value_cols), params, attrs)
        writer.writerows(rows)
        n += len(rows)
    return n


def export_best_model(source: Source, name: str, destination: str) -> int:
    """Copy the best trial's saved Keras model to `destination`; return the trial number."""
    import shutil
    from pathlib import Path

    reader = as_reader(source)
    best = best_summary(reader, name)
    if len(best) != 1:
        raise StudyctlError(
            f"study {name!r} has no single best trial to export"
            + (" (it has several objectives)" if best else " yet")
        )
    number = best[0]["number"]
    path = best[0]["user_attrs"].get("model_path")
    if path and path.startswith("s3://"):
        from studyctl.artifacts.objectstore import download

        download(path, Path(destination))
        return number
    if not path:
        raise StudyctlError(
            f"best trial #{number} of study {name!r} has no saved model",
            hint=_no_model_hint(reader.storage(), name),
        )
    if not Path(path).is_file():
        relative = "" if Path(path).is_absolute() else f", relative to {Path.cwd()}"
        raise StudyctlError(
            f"the model of best trial #{number} of study {name!r} is not at {path}{relative}",
            hint="it was removed, or it lies on the machine that trained it: export it "
            "there, or use a shared [artifacts] path or an s3:// store",
        )
    shutil.copyfile(path, destination)
    return number


def _no_model_hint(storage: StudyctlStorage, name: str) -> str:
    """Why a best trial may have no model: keep_best_model off in the stored spec, or, with
    it on, an objective studyctl does not train (a function objective) or several
    objectives."""
    from studyctl.storage.studies import load_stored_spec

    try:
        spec = load_stored_spec(storage, name)
    except StudyctlError:
        return "studyctl keeps the best model of the Keras objectives it trains"
    if not spec.artifacts.keep_best_model:
        return "keep_best_model = true in the spec's [artifacts] saves it"
    return (
        "keep_best_model is on; studyctl keeps the model of a single-objective Keras "
        "objective it trains, not of a function objective"
    )
