"""The HTML report's plots as plotly figure dicts, drawn from what the report reads in a few
queries and written without plotly's validation.

Optuna's plotly plots (`optuna.visualization`) build every figure through plotly's graph
objects, which check each property as it is set, and draw parallel coordinates and
learning curves as one trace per trial; importing them imports their matplotlib twins.
For a 100,000-trial study that was 1.7 s of a 3.1 s report on this machine (BENCHMARKS.md,
"report at 100,000 trials"). These figures show the same things: one `parcoords` trace
for the parallel coordinates, one line trace (trials separated by gaps) for the learning
curves, and plotly's default template, as Optuna's plots have it.
"""

from __future__ import annotations

import array
import base64
import functools
import itertools
import json
import math
import sys
from collections.abc import Callable, Container, Iterable, Sequence
from importlib.resources import files
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

Figure = dict[str, Any]

OBJECTIVE_LABEL = "Objective Value"  # Optuna's name for an unnamed objective


@functools.cache
def _template() -> dict[str, Any]:
    """plotly's default template (Optuna's plots have it), read from plotly's own file:
    `plotly.io.templates` builds it as graph objects, importing and validating them."""
    try:
        text = (files("plotly") / "package_data" / "templates" / "plotly.json").read_text()
        found: dict[str, Any] = json.loads(text)
        return found
    except (OSError, ValueError):  # another plotly's layout
        import plotly.io as pio

        return dict(pio.templates["plotly"].to_plotly_json())


def _figure(data: list[dict[str, Any]], title: str, **layout: Any) -> Figure:
    template = _template()
    return {"data": data, "layout": {"title": {"text": title}, "template": template, **layout}}


def typed_array(values: Iterable[float], dtype: str) -> dict[str, str]:
    """`values` in plotly.js's typed-array form (base64 of little-endian `i4` or `f8`, as
    plotly writes a numpy array): a 100,000-trial history as JSON numbers was 4.5 MB of the
    page and a tenth of a second to encode."""
    found = array.array({"i4": "i", "f8": "d"}[dtype], values)
    if sys.byteorder == "big":
        found.byteswap()
    return {"dtype": dtype, "bdata": base64.b64encode(found.tobytes()).decode("ascii")}


INFEASIBLE_COLOR = "#cccccc"  # Optuna draws trials that break their constraints in grey


def history(
    numbers: Sequence[int],
    values: Sequence[float],
    maximize: bool,
    label: str,
    infeasible: Container[int] = (),
) -> Figure:
    """Each completed trial's value (markers) and the best so far (a line), by trial
    number; the `infeasible` trials (a constrained study's, by number) in grey and left
    out of the best, as Optuna draws them."""
    ok_x, ok_y = numbers, values
    bad_x: Sequence[int] = []
    bad_y: Sequence[float] = []
    if infeasible:
        ok = [i for i, n in enumerate(numbers) if n not in infeasible]
        bad = [i for i, n in enumerate(numbers) if n in infeasible]
        ok_x, ok_y = [numbers[i] for i in ok], [values[i] for i in ok]
        bad_x, bad_y = [numbers[i] for i in bad], [values[i] for i in bad]
    x = typed_array(ok_x, "i4")
    best = itertools.accumulate(ok_y, max if maximize else min)
    data = [
        {
            "type": "scattergl",
            "x": x,
            "y": typed_array(ok_y, "f8"),
            "mode": "markers",
            "name": label,
        },
        {
            "type": "scattergl",
            "x": x,
            "y": typed_array(best, "f8"),
            "mode": "lines",
            "name": "Best Value",
        },
    ]
    if bad_x:
        data.append(
            {
                "type": "scattergl",
                "x": typed_array(bad_x, "i4"),
                "y": typed_array(bad_y, "f8"),
                "mode": "markers",
                "name": "Infeasible Trial",
                "marker": {"color": INFEASIBLE_COLOR},
            }
        )
    return _figure(
        data,
        "Optimization History Plot",
        xaxis={"title": {"text": "Trial"}},
        yaxis={"title": {"text": label}},
    )


def importances(found: dict[str, float]) -> Figure:
    """Horizontal bars, the most important parameter at the top, as Optuna draws them."""
    if not found:
        raise ValueError("no parameter to rank")
    names = sorted(found, key=lambda n: found[n])
    shares = [found[n] for n in names]
    return _figure(
        [
            {
                "type": "bar",
                "orientation": "h",
                "x": shares,
                "y": names,
                "text": [f"{s:.2f}" if s >= 0.01 else "<0.01" for s in shares],
                "textposition": "outside",
                "hovertemplate": "%{y}: %{x:.3f}<extra></extra>",
            }
        ],
        "Hyperparameter Importances",
        xaxis={"title": {"text": "Hyperparameter Importance"}},
        yaxis={"title": {"text": "Hyperparameter"}},
        showlegend=False,
    )


MISSING_LABEL = "None"  # Optuna's tick for a trial without the parameter


def _missing_at(low: float, high: float) -> float:
    """Where an axis puts the trials without its parameter: below its values (Optuna's
    place for them)."""
    return low - 1.0 if low == high else low - (high - low) * 0.12 / 0.88


def _numeric_axis(name: str, found: list[float | None], log: bool) -> dict[str, Any]:
    shown = [v for v in found if v is not None]
    low, high = min(shown), max(shown)
    if log:  # log10, powers of ten as ticks
        ticks = [float(t) for t in range(math.floor(low), math.ceil(high) + 1)]
        labels = [f"1e{int(t)}" for t in ticks]
    elif None in found:  # ticks must be given to label the missing place
        ticks = [low + (high - low) * i / 4 for i in range(5)] if high > low else [low]
        labels = [f"{t:.3g}" for t in ticks]
    else:
        return {"label": name, "values": shown, "range": [low, high]}
    if None in found:
        missing = _missing_at(low, high)
        found = [missing if v is None else v for v in found]
        ticks, labels, low = [missing, *ticks], [MISSING_LABEL, *labels], missing
    return {
        "label": name,
        "values": found,
        "range": [low, high],
        "tickvals": ticks,
        "ticktext": labels,
    }


def _dimension(name: str, trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    """One parameter's axis: categorical choices as positions with their labels, a log
    scale as log10 with powers of ten as ticks, anything else as it is; the trials without
    the parameter (a conditional search space) at a place of their own, "None"."""
    from optuna.distributions import CategoricalDistribution

    dist = next(t.distributions[name] for t in trials if name in t.distributions)
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        missing = any(name not in t.params for t in trials)
        offset = 1 if missing else 0
        positions = [
            choices.index(t.params[name]) + offset if name in t.params else 0 for t in trials
        ]
        shown = sorted(set(positions))
        labels = [MISSING_LABEL if missing and i == 0 else str(choices[i - offset]) for i in shown]
        return {
            "label": name,
            "values": positions,
            "range": [min(shown), max(shown)] if len(shown) > 1 else [shown[0] - 1, shown[0] + 1],
            "tickvals": shown,
            "ticktext": labels,
        }
    log = bool(getattr(dist, "log", False))
    found: list[float | None] = [
        None
        if name not in t.params
        else (math.log10(t.params[name]) if log else float(t.params[name]))
        for t in trials
    ]
    return _numeric_axis(name, found, log)


def parallel_coordinates(
    trials: Sequence[FrozenTrial],
    maximize: bool,
    label: str = OBJECTIVE_LABEL,
    feasible: Callable[[FrozenTrial], bool] | None = None,
) -> Figure:
    """One line per completed trial with a finite value (with `feasible`, a constrained
    study's, per `feasible` only), coloured by value, darker for better; a trial without a
    parameter has "None" on that axis, as in Optuna's plot."""
    drawn = [
        t
        for t in trials
        if t.state.name == "COMPLETE"
        and t.values
        and math.isfinite(t.values[0])
        and (feasible is None or feasible(t))
    ]
    if not drawn:
        raise ValueError(
            "no completed trial with a finite value"
            + (" that meets its constraints" if feasible else "")
            + " among the trials drawn"
        )
    params = sorted({p for t in drawn for p in t.params})
    values = [t.values[0] for t in drawn]
    objective = {"label": label, "values": values, "range": [min(values), max(values)]}
    return _figure(
        [
            {
                "type": "parcoords",
                "dimensions": [objective, *(_dimension(p, drawn) for p in params)],
                "line": {
                    "color": values,
                    "colorscale": "Blues",
                    "reversescale": not maximize,
                    "showscale": True,
                    "colorbar": {"title": {"text": label}},
                },
                "labelangle": 30,
                "labelside": "bottom",
            }
        ],
        "Parallel Coordinate Plot" + (" (trials that meet their constraints)" if feasible else ""),
    )


def learning_curves(points: Iterable[tuple[int, int, float]]) -> Figure:
    """(trial number, step, value) in trial then step order, as one line trace with a gap
    between trials (Optuna draws a trace per trial)."""
    x: list[int | None] = []
    y: list[float | None] = []
    text: list[str | None] = []
    last = None
    for number, step, value in points:
        if last is not None and number != last:
            x.append(None)
            y.append(None)
            text.append(None)
        x.append(step)
        y.append(value)
        text.append(f"Trial {number}")
        last = number
    if last is None:
        raise ValueError("no trial reported an intermediate value")
    return _figure(
        [
            {
                "type": "scattergl",
                "x": x,
                "y": y,
                "text": text,
                "mode": "lines+markers",
                "marker": {"size": 4},
                "connectgaps": False,
                "hovertemplate": "%{text}<br>step %{x}: %{y}<extra></extra>",
            }
        ],
        "Intermediate Values Plot",
        xaxis={"title": {"text": "Step"}},
        yaxis={"title": {"text": "Intermediate Value"}},
        showlegend=False,
    )


def pareto_front(
    others: Sequence[tuple[int, Sequence[float]]],
    best: Sequence[tuple[int, Sequence[float]]],
    names: Sequence[str],
    infeasible: Container[int] = (),
) -> Figure:
    """The trials on the Pareto front (`best`) over the other completed trials, for two
    or three objectives, as (number, values) pairs; the `infeasible` others in grey."""
    if len(names) not in (2, 3):
        raise ValueError(f"a Pareto front is drawn for 2 or 3 objectives, not {len(names)}")
    three = len(names) == 3
    axes = "xyz"[: len(names)]

    def trace(points: Sequence[tuple[int, Sequence[float]]], name: str, color: str) -> dict:
        shown = [(n, v) for n, v in points if all(math.isfinite(x) for x in v)]
        found: dict[str, Any] = {
            "type": "scatter3d" if three else "scattergl",
            "mode": "markers",
            "name": name,
            "marker": {"color": color, "size": 4 if three else 6},
            "text": [f"Trial {n}" for n, _ in shown],
        }
        for i, axis in enumerate(axes):
            found[axis] = [v[i] for _, v in shown]
        return found

    titles = {f"{a}axis": {"title": {"text": n}} for a, n in zip(axes, names, strict=True)}
    layout: dict[str, Any] = {"scene": titles} if three else titles
    data = [
        trace([o for o in others if o[0] not in infeasible], "Trial", "#6baed6"),
        trace(best, "Best Trial", "#d62728"),
    ]
    if any(n in infeasible for n, _ in others):
        bad = [o for o in others if o[0] in infeasible]
        data.append(trace(bad, "Infeasible Trial", INFEASIBLE_COLOR))
    return _figure(data, "Pareto-front Plot", **layout)
