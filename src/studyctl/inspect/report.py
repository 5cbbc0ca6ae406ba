"""`studyctl report`: one self-contained HTML page (plotly plots drawn by `figures`, and a
trials table); its PNGs are `report_png`'s.

The page is read through a `StudyReader` (the driver's own connection where the schemas are
current): the trials it shows with their values and parameters (`shown_trials`), and a few
queries of its own (the whole history, constraints, learning curves). Optuna is loaded for
its types and its importances only, which it computes on a study of the shown trials held
in memory.
"""

from __future__ import annotations

import functools
import html
import itertools
import json
import sys
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import InMemoryStorage

from studyctl.errors import StudyctlError
from studyctl.inspect import figures
from studyctl.inspect.summary import Source, study_status
from studyctl.storage import plain, trial_rows
from studyctl.storage.reader import StudyReader, as_reader
from studyctl.storage.shown_trials import read_shown_trials
from studyctl.verbosity import configure_optuna_logging

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial, TrialState


# The trials a report shows by default: the dashboard's window (`trial_window`'s; a test
# checks that they agree).
DEFAULT_MAX_TRIALS = 10_000


def import_importance_without_sklearn() -> None:
    """Import `optuna.importance` without scikit-learn, for a process that only writes a
    report (the `report` command; never a library caller, whose later fANOVA would fail).

    The report's importances are PED-ANOVA's (Optuna's default evaluator, which needs
    numpy and scipy only), but importing the package imports its fANOVA and MDI evaluators,
    which import scikit-learn: about 1 s of a report's 3 s on this machine. Those modules
    import it inside Optuna's `try_import`, which takes an ImportError as "not installed"
    and raises it only when such an evaluator is built; so scikit-learn is made
    unimportable for the package's import, then importable again."""
    if "optuna.importance" in sys.modules or "sklearn" in sys.modules:
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # `import sklearn` raises
    try:
        import optuna.importance  # noqa: F401
    finally:
        del sys.modules["sklearn"]


# Plots that draw one line per trial (Optuna's parallel coordinates and learning curves)
# draw at most this many, the most recent: 10,000 lines took 5 s of plotly objects and
# cannot be read apart anyway.
LINE_PLOT_TRIALS = 1_000


_WHOLE_HISTORY_SQL = (
    "SELECT t.number, v.value FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
    "WHERE t.study_id = :sid AND t.state = 'COMPLETE' AND v.objective = :objective "
    "AND v.value_type = 'FINITE' ORDER BY t.trial_id"  # number order, without a sort
)


def _history_points(source: Source, study_id: int, index: int) -> tuple[list[int], list[float]]:
    """(trial numbers, values of objective `index`) of every completed trial with a finite
    value, in one query of the two columns, through the driver's own cursor (SQLAlchemy's
    rows cost 0.2 s of 90,000 on PostgreSQL)."""
    found = as_reader(source).read(
        lambda conn: plain.driver_rows(
            conn, _WHOLE_HISTORY_SQL, {"sid": study_id, "objective": index}
        )
    )
    if not found:
        raise ValueError("no completed trial with a finite value")
    numbers, values = zip(*found, strict=True)  # the drivers' int and float
    return list(numbers), list(values)


def history_plot(
    source: Source,
    study_id: int,
    index: int,
    maximize: bool,
    label: str,
    infeasible: Container[int],
    matplotlib: bool,
) -> Any:
    """The optimization history of objective `index` over every completed trial: a
    `figures` dict, or Optuna's matplotlib axes."""
    numbers, values = _history_points(source, study_id, index)
    if not matplotlib:
        return figures.history(numbers, values, maximize, label, infeasible)
    import matplotlib.pyplot as plt

    best = list(itertools.accumulate(values, max if maximize else min))
    _, ax = plt.subplots()
    ax.set_title("Optimization History Plot")
    ax.scatter(numbers, values, s=4, label=label)
    ax.plot(numbers, best, color="tab:red", label="Best Value")
    ax.set_xlabel("Trial")
    ax.set_ylabel(label)
    ax.legend()
    return ax


# Learning curves of the trials from a trial_id on (Optuna draws those of complete, pruned
# and running trials), bounded on both tables as `trial_rows._batch_children` explains.
_CURVES_SQL = (
    "SELECT t.number, i.step, i.intermediate_value FROM trial_intermediate_values i "
    "JOIN trials t ON t.trial_id = i.trial_id WHERE t.study_id = :sid "
    "AND t.trial_id BETWEEN :lo AND :hi AND i.trial_id BETWEEN :lo AND :hi "
    "AND t.state IN ('COMPLETE', 'PRUNED', 'RUNNING') "
    "AND i.intermediate_value_type = 'FINITE' ORDER BY t.trial_id, i.step"
)


def _curve_points(
    source: Source, study_id: int, trials: list[FrozenTrial]
) -> list[tuple[int, int, float]]:
    """(trial number, step, value) of the intermediate values of `trials` (a run of the
    study's trials in trial_id order), in one query."""
    bounds = {"sid": study_id, "lo": trials[0]._trial_id, "hi": trials[-1]._trial_id}
    found = as_reader(source).read(lambda conn: plain.rows(conn, _CURVES_SQL, bounds))
    return [(int(n), int(step), float(v)) for n, step, v in found]


# A constrained study's constraint values: Optuna keeps them in system attributes, as one
# list ("constraints") or one value per key ("constraints:NAME").
_CONSTRAINTS_SQL = (
    "SELECT t.number, a.value_json FROM trial_system_attributes a JOIN trials t "
    "ON t.trial_id = a.trial_id WHERE t.study_id = :sid AND t.state = 'COMPLETE' "
    "AND (a.key = 'constraints' OR a.key LIKE :named)"  # `:named`: "constraints:%"
)


def _constraint_states(source: Source, study_id: int) -> tuple[set[int], set[int]]:
    """(numbers of the completed trials with constraint values, those of them with a value
    above 0: infeasible), in one query; both empty for a study without constraints."""
    found = as_reader(source).read(
        lambda conn: plain.rows(conn, _CONSTRAINTS_SQL, {"sid": study_id, "named": "constraints:%"})
    )
    constrained, infeasible = set(), set()
    for number, value_json in found:
        value = json.loads(value_json)
        constrained.add(int(number))
        if any(v > 0 for v in (value if isinstance(value, list) else [value])):
            infeasible.add(int(number))
    return constrained, infeasible


def no_completed_trial(name: str) -> StudyctlError:
    return StudyctlError(f"study {name!r} has no completed trial yet")


def window_note(max_trials: int, total: int) -> str:
    return (
        f"plots and trials show the most recent {max_trials:,} of {total:,} trials (the "
        "best trial is the study's own); --max-trials N shows more, 0 all"
    )


@dataclass
class Shown:
    """What the page draws of a study: its trials from the window's first on (the most
    recent `max_trials`, or all), with their values and parameters."""

    study_id: int
    directions: list[str]  # "minimize" / "maximize", one per objective
    metric_names: list[str] | None
    trials: list[FrozenTrial]
    durations: dict[int, float]  # seconds each finished trial took, by trial_id
    note: str | None  # the line saying the study is cut, or None


def shown_study(
    reader: StudyReader,
    status: dict[str, Any],
    max_trials: int = DEFAULT_MAX_TRIALS,
) -> Shown:
    """The trials the page shows of the study of `status` (`summary.study_status`): its
    most recent `max_trials` (0: all), read in one transaction, the window's start (one
    query on the trials' index) and the trials."""
    name, states = status["name"], status["states"]
    if not states.get("COMPLETE"):
        raise no_completed_trial(name)
    study_id = reader.study_id(name)
    if study_id is None:  # removed since
        raise reader.unknown_study(name)

    def read(conn: plain.ReadConnection) -> tuple[int, list[FrozenTrial], dict[int, float]]:
        after = trial_rows.last_trials_after(conn, study_id, None, max_trials) if max_trials else -1
        return after, *read_shown_trials(conn, study_id, after)

    after, trials, durations = reader.read(read)
    return Shown(
        study_id,
        status["directions"],
        status["metrics"],
        trials,
        durations,
        None if after < 0 else window_note(max_trials, sum(states.values())),
    )


class _SnapshotStorage(InMemoryStorage):
    """An in-memory storage whose one study's trials are `trials`, for Optuna's functions
    that take a study (importances): nothing is copied."""

    def __init__(self, trials: list[FrozenTrial]) -> None:
        super().__init__()
        self._shown = trials

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return [t for t in self._shown if states is None or t.state in states]


def snapshot_study(shown: Shown) -> optuna.Study:
    """An Optuna study of the shown trials alone, with the study's directions."""
    configure_optuna_logging()  # no "A new study created in memory" line
    directions = [optuna.study.StudyDirection[d.upper()] for d in shown.directions]
    return optuna.create_study(storage=_SnapshotStorage(shown.trials), directions=directions)


def _number(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _values(values: list[Any] | None) -> str:
    return "" if not values else ", ".join(_number(v) for v in values)


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_number(v)}" for k, v in params.items())


def _summary(status: dict[str, Any]) -> str:
    """The lines at the top of the page (study, objective, budget, best trial) from the
    study's `summary.study_status`."""
    name = status["name"]
    metrics = status["metrics"] or ["value"] * len(status["directions"])
    goal = ", ".join(f"{d} {m}" for d, m in zip(status["directions"], metrics, strict=False))
    budget = "?" if status["n_trials"] is None else status["n_trials"]
    others = ", ".join(
        f"{n} {state.lower()}" for state, n in status["states"].items() if n and state != "COMPLETE"
    )
    best = status["best"]
    if len(best) == 1:
        b = best[0]
        best_text = f"#{b['number']}: {_values(b['values'])}   {_params(b['params'])}"
    else:
        best_text = f"{len(best)} trials on the Pareto front (highlighted below)"
    rows = [
        ("Study", name),
        ("Objective", goal),
        ("Budget", f"{status['finished']}/{budget} finished" + (f" ({others})" if others else "")),
        ("Best trial", best_text),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table id='summary'>{body}</table>"


def _html_plots(
    reader: StudyReader, shown: Shown, best: list[dict[str, Any]]
) -> dict[str, Callable[[], figures.Figure]]:
    """The page's plots, by title, each drawn when called: of one objective its history
    (every completed trial), importances, parallel coordinates and learning curves (the
    most recent `LINE_PLOT_TRIALS` of the trials shown); of several the Pareto front and a
    history per objective."""
    sid, trials = shown.study_id, shown.trials
    n = len(shown.directions)
    if shown.metric_names:
        names = shown.metric_names
    else:  # Optuna's label for one objective; the old report's for several
        names = [figures.OBJECTIVE_LABEL] if n == 1 else [f"objective {i}" for i in range(n)]
    constrained, infeasible = _constraint_states(reader, sid)

    def history(index: int) -> Callable[[], figures.Figure]:
        maximize = shown.directions[index] == "maximize"
        return functools.partial(
            history_plot, reader, sid, index, maximize, names[index], infeasible, False
        )

    if n > 1:
        front = {b["number"] for b in best}
        others = [
            (t.number, t.values)
            for t in trials
            if t.state.name == "COMPLETE" and t.values and t.number not in front
        ]
        # `trial_dict` values: a non-finite one is a string ("inf")
        on_front = [(b["number"], [float(v) for v in b["values"]]) for b in best]
        plots = {"Pareto front": lambda: figures.pareto_front(others, on_front, names, infeasible)}
        for i, name in enumerate(names):
            plots[f"Optimization history: {name}"] = history(i)
        return plots
    lines = trials[-LINE_PLOT_TRIALS:]
    cut = f"the most recent {LINE_PLOT_TRIALS:,} trials" if len(trials) > len(lines) else ""
    maximize = shown.directions[0] == "maximize"
    # As Optuna's parallel coordinates: in a constrained study a trial without constraint
    # values is not feasible.
    feasible = (
        (lambda t: t.number in constrained and t.number not in infeasible) if constrained else None
    )

    def importances() -> figures.Figure:
        from optuna.importance import get_param_importances

        return figures.importances(get_param_importances(snapshot_study(shown)))

    return {
        "Optimization history": history(0),
        "Parameter importances": importances,
        f"Parallel coordinates{f' ({cut})' if cut else ''}": lambda: figures.parallel_coordinates(
            lines, maximize, names[0], feasible
        ),
        f"Intermediate values (learning curves{f'; {cut}' if cut else ''})": lambda: (
            figures.learning_curves(_curve_points(reader, sid, lines))
        ),
    }


def write_html(
    source: Source, name: str, output: Path, max_trials: int = DEFAULT_MAX_TRIALS
) -> tuple[Path, str | None]:
    """The page of study `name` at `output`, and the note of a study cut to its most recent
    `max_trials` trials (0: never cut)."""
    import plotly.io as pio

    reader = as_reader(source)
    status = study_status(reader, name)
    best = status["best"]  # the study's best trials, highlighted in the table
    # Values and parameters only: the page draws no attribute, and reads the learning
    # curves it draws (the most recent trials') by themselves.
    shown = shown_study(reader, status, max_trials)
    parts = [f"<h1>Study {html.escape(name)}</h1>", _summary(status)]
    if shown.note:
        parts.append(f"<p id='window'>{html.escape(shown.note)}</p>")
    trials = shown.trials
    first = True
    for title, draw in _html_plots(reader, shown, best).items():
        parts.append(f"<h2>{html.escape(title)}</h2>")
        try:
            figure = draw()
        except (ValueError, RuntimeError) as exc:  # e.g. importances need 2+ trials
            parts.append(f"<p>Not available: {html.escape(str(exc))}</p>")
            continue
        parts.append(
            pio.to_html(
                figure,
                full_html=False,
                include_plotlyjs="inline" if first else False,
                validate=False,
            )
        )
        first = False
    highlighted = {b["number"] for b in best}
    took = shown.durations
    head = "<tr><th>#</th><th>state</th><th>value</th><th>params</th><th>duration (s)</th></tr>"
    body = "".join(
        ("<tr class='best'>" if t.number in highlighted else "<tr>")
        + f"<td>{t.number}</td><td>{t.state.name}</td>"
        f"<td>{html.escape(_values(t.values))}</td><td>{html.escape(_params(t.params))}</td>"
        f"<td>{'' if t._trial_id not in took else round(took[t._trial_id], 2)}</td></tr>"
        for t in trials
    )
    parts.append(f"<h2>Trials</h2><table id='trials'>{head}{body}</table>")
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
        "#summary{margin-bottom:1em}#summary th{text-align:left;background:#f4f4f4}"
        "tr.best td{background:#e6f4e6;font-weight:bold}"
    )
    output.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
        f"{html.escape(name)}</title><style>{style}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>",
        encoding="utf-8",
    )
    return output, shown.note
