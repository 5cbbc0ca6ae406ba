"""One trial as Optuna's `FrozenTrial` in two queries: its row, then its values, parameters,
attributes and intermediate values in one UNION ALL. Optuna's `RDBStorage.get_trial` loads
the five through the ORM, one query each (six round trips), and a trial loop reads a trial
three times per trial (the new `Trial`, `tell`, the finished trial). The columns read have
not changed since Optuna's schema v3.2.0.a; the conversions are Optuna's own.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from optuna import distributions
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial

VALUE, PARAM, USER_ATTR, SYSTEM_ATTR, INTERMEDIATE = range(5)


def _children(trial_id: int) -> sa.CompoundSelect:
    """(kind, id, ord, name, x, kind_of_x, json) of each child row, by kind and id."""
    v = models.TrialValueModel.__table__
    p = models.TrialParamModel.__table__
    u = models.TrialUserAttributeModel.__table__
    s = models.TrialSystemAttributeModel.__table__
    i = models.TrialIntermediateValueModel.__table__

    def none(type_: Any) -> Any:
        return sa.cast(sa.null(), type_)

    def select(kind: int, table: sa.Table, pk: Any, *columns: Any) -> sa.Select[Any]:
        return sa.select(sa.literal(kind).label("kind"), pk.label("id"), *columns).where(
            table.c.trial_id == trial_id
        )

    return sa.union_all(
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
    ).order_by(sa.literal_column("kind"), sa.literal_column("id"))


def read_frozen_trial(conn: sa.Connection, trial_id: int) -> FrozenTrial:
    """The trial as `RDBStorage.get_trial` returns it; KeyError (Optuna's) if there is none."""
    t = models.TrialModel.__table__
    row = conn.execute(
        sa.select(t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete).where(
            t.c.trial_id == trial_id
        )
    ).one_or_none()
    if row is None:
        raise KeyError(models.NOT_FOUND_MSG)
    values: dict[int, float] = {}
    params: dict[str, Any] = {}
    dists: dict[str, distributions.BaseDistribution] = {}
    attrs: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    intermediate: dict[int, float] = {}
    for kind, _, ord_, name, x, x_type, js in conn.execute(_children(trial_id)):
        if kind == VALUE:
            value_type = models.TrialValueModel.TrialValueType[x_type]
            values[ord_] = models.TrialValueModel.stored_repr_to_value(x, value_type)
        elif kind == PARAM:
            dists[name] = distributions.json_to_distribution(js)
            params[name] = dists[name].to_external_repr(x)
        elif kind in (USER_ATTR, SYSTEM_ATTR):
            attrs[kind - USER_ATTR][name] = json.loads(js)
        else:
            step_type = models.TrialIntermediateValueModel.TrialIntermediateValueType[x_type]
            intermediate[ord_] = (
                models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(x, step_type)
            )
    return FrozenTrial(
        number=row.number,
        state=row.state,
        value=None,
        values=[values[k] for k in range(len(values))] if values else None,
        datetime_start=row.datetime_start,
        datetime_complete=row.datetime_complete,
        params=params,
        distributions=dists,
        user_attrs=attrs[0],
        system_attrs=attrs[1],
        intermediate_values=intermediate,
        trial_id=trial_id,
    )
