"""One trial as Optuna's `FrozenTrial` in two queries: its row, then its values, parameters,
attributes and intermediate values in one UNION ALL. Optuna's `RDBStorage.get_trial` loads
the five through the ORM, one query each (six round trips), and a trial loop reads a trial
three times per trial (the new `Trial`, `tell`, the finished trial). The columns read have
not changed since Optuna's schema v3.2.0.a; the conversions are Optuna's own (trial times:
`times.utc_to_local`, as its model's properties do).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from optuna import distributions
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial

from studyctl.storage.shown_trials import distribution
from studyctl.storage.times import utc_to_local

VALUE, PARAM, USER_ATTR, SYSTEM_ATTR, INTERMEDIATE = range(5)
ALL_KINDS = frozenset(range(5))


def _children(
    where: Callable[[sa.Table], Any], kinds: frozenset[int] = ALL_KINDS
) -> sa.CompoundSelect:
    """(kind, trial_id, id, ord, name, x, kind_of_x, json) of each child row of the `kinds`
    whose trial `where(table)` selects, by kind and id."""
    v = models.TrialValueModel.__table__
    p = models.TrialParamModel.__table__
    u = models.TrialUserAttributeModel.__table__
    s = models.TrialSystemAttributeModel.__table__
    i = models.TrialIntermediateValueModel.__table__

    def none(type_: Any) -> Any:
        return sa.cast(sa.null(), type_)

    def select(kind: int, table: sa.Table, pk: Any, *columns: Any) -> sa.Select[Any]:
        return sa.select(
            sa.literal(kind).label("kind"), table.c.trial_id.label("tid"), pk.label("id"), *columns
        ).where(where(table))

    selects = [
        select(
            VALUE,
            v,
            v.c.trial_value_id,
            v.c.objective.label("ord"),
            none(sa.String),
            v.c.value.label("x"),
            sa.cast(v.c.value_type, sa.String),
            none(sa.Text),
        ),
        select(
            PARAM,
            p,
            p.c.param_id,
            none(sa.Integer),
            p.c.param_name,
            p.c.param_value,
            none(sa.String),
            p.c.distribution_json,
        ),
        *(
            select(
                kind,
                table,
                pk,
                none(sa.Integer),
                table.c.key,
                none(sa.Float),
                none(sa.String),
                table.c.value_json,
            )
            for kind, table, pk in (
                (USER_ATTR, u, u.c.trial_user_attribute_id),
                (SYSTEM_ATTR, s, s.c.trial_system_attribute_id),
            )
        ),
        select(
            INTERMEDIATE,
            i,
            i.c.trial_intermediate_value_id,
            i.c.step,
            none(sa.String),
            i.c.intermediate_value,
            sa.cast(i.c.intermediate_value_type, sa.String),
            none(sa.Text),
        ),
    ]
    return sa.union_all(*(selects[k] for k in sorted(kinds))).order_by(
        sa.literal_column("kind"), sa.literal_column("id")
    )


class _Parts:
    """A trial's child rows, gathered in id order as the UNION ALL returns them."""

    def __init__(self) -> None:
        self.values: dict[int, float] = {}
        self.params: dict[str, Any] = {}
        self.dists: dict[str, distributions.BaseDistribution] = {}
        self.attrs: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        self.intermediate: dict[int, float] = {}

    def add(self, kind: int, ord_: Any, name: Any, x: Any, x_type: Any, js: Any) -> None:
        if kind == VALUE:
            value_type = models.TrialValueModel.TrialValueType[x_type]
            self.values[ord_] = models.TrialValueModel.stored_repr_to_value(x, value_type)
        elif kind == PARAM:
            self.dists[name] = distribution(js)
            self.params[name] = self.dists[name].to_external_repr(x)
        elif kind in (USER_ATTR, SYSTEM_ATTR):
            self.attrs[kind - USER_ATTR][name] = json.loads(js)
        else:
            step_type = models.TrialIntermediateValueModel.TrialIntermediateValueType[x_type]
            self.intermediate[ord_] = (
                models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(x, step_type)
            )

    def frozen(self, trial_id: int, row: Any) -> FrozenTrial:
        values = self.values
        return FrozenTrial(
            number=row.number,
            state=row.state,
            value=None,
            values=[values[k] for k in range(len(values))] if values else None,
            datetime_start=utc_to_local(row.datetime_start),
            datetime_complete=utc_to_local(row.datetime_complete),
            params=self.params,
            distributions=self.dists,
            user_attrs=self.attrs[0],
            system_attrs=self.attrs[1],
            intermediate_values=self.intermediate,
            trial_id=trial_id,
        )


@functools.cache
def _one_trial_queries() -> tuple[sa.Select[Any], sa.CompoundSelect]:
    """`read_frozen_trial`'s two statements, built once (with the trial's id as the bound
    parameter `tid`): building the UNION ALL of five selects took longer than running it."""
    t = models.TrialModel.__table__
    tid = sa.bindparam("tid", type_=sa.Integer)
    row = sa.select(t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete).where(
        t.c.trial_id == tid
    )
    return row, _children(lambda table: table.c.trial_id == tid)


def read_frozen_trial(conn: sa.Connection, trial_id: int) -> FrozenTrial:
    """The trial as `RDBStorage.get_trial` returns it; KeyError (Optuna's) if there is none."""
    row_query, children_query = _one_trial_queries()
    row = conn.execute(row_query, {"tid": trial_id}).one_or_none()
    if row is None:
        raise KeyError(models.NOT_FOUND_MSG)
    parts = _Parts()
    for kind, _, _, ord_, name, x, x_type, js in conn.execute(children_query, {"tid": trial_id}):
        parts.add(kind, ord_, name, x, x_type, js)
    return parts.frozen(trial_id, row)


def read_frozen_trials(
    conn: sa.Connection, study_id: int, after: int, kinds: frozenset[int] = ALL_KINDS
) -> list[FrozenTrial]:
    """The study's trials with a trial_id above `after`, in number order, as Optuna's
    `RDBStorage._get_trials` returns them: in two queries, where Optuna's ORM loads five
    relationships (2.3 s of a 10,000-trial report, under a profiler). Only the child rows
    of `kinds` are read: the others are left empty."""
    t = models.TrialModel.__table__
    trial_rows = conn.execute(
        sa.select(t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete)
        .where(t.c.study_id == study_id, t.c.trial_id > after)
        .order_by(t.c.trial_id)
    ).all()
    if not trial_rows:
        return []
    # Bounded by the trials just read: under READ COMMITTED the second statement sees
    # trials committed after the first, whose rows are then skipped.
    last = max(int(r.trial_id) for r in trial_rows)
    ids = sa.select(t.c.trial_id).where(
        t.c.study_id == study_id, t.c.trial_id > after, t.c.trial_id <= last
    )
    parts: dict[int, _Parts] = {int(r.trial_id): _Parts() for r in trial_rows}
    for kind, tid, _, ord_, name, x, x_type, js in conn.execute(
        _children(lambda table: table.c.trial_id.in_(ids), kinds)
    ):
        if (found := parts.get(int(tid))) is not None:
            found.add(kind, ord_, name, x, x_type, js)
    return [parts[int(r.trial_id)].frozen(int(r.trial_id), r) for r in trial_rows]
