"""`studyctl report`: one self-contained HTML page (plotly plots drawn by `figures`, and a
trials table), or PNGs of the main plots (Optuna's matplotlib plots)."""

from __future__ import annotations

import copy
import functools
import html
import itertools
import json
import sys
from collections.abc import Callable, Container
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from studyctl.errors import StudyctlError
from studyctl.inspect import figures
from studyctl.inspect.summary import study_status
from studyctl.inspect.trial_window import DEFAULT_MAX_TRIALS, WindowedStorage
from studyctl.storage import StudyctlStorage, study_exists
from studyctl.storage.frozen_trial import ALL_KINDS, PARAM, VALUE
from studyctl.storage.studies import unknown_study
from studyctl.verbosity import configure_optuna_logging

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


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


PlotFactory = Callable[[optuna.Study], Any]
HistoryFactory = Callable[[int, "str | None"], PlotFactory]


# Plots that draw one line per trial (Optuna's parallel coordinates and learning curves)
# draw at most this many, the most recent: 10,000 lines took 5 s of plotly objects and
# cannot be read apart anyway.
LINE_PLOT_TRIALS = 1_000


def _plots(
    study: optuna.Study,
    module: Any,
    history: HistoryFactory | None = None,
    lines: optuna.Study | None = None,
) -> dict[str, PlotFactory]:
    """The main plots, by title, from optuna.visualization or its matplotlib twin; the
    optimization histories from `history` when given (a study cut to a window); the plots
    of one line per trial from `lines` when given (the study cut to `LINE_PLOT_TRIALS`)."""
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    history = history or functools.partial(_history_of, module)
    if len(study.directions) == 1:
        cut = "" if lines is None else f"; the most recent {LINE_PLOT_TRIALS:,} trials"
        drawn = lines or study
        return {
            "Optimization history": history(0, None),
            "Parameter importances": module.plot_param_importances,
            f"Parallel coordinates{f' ({cut[2:]})' if cut else ''}": lambda _: (
                module.plot_parallel_coordinate(drawn)
            ),
            f"Intermediate values (learning curves{cut})": lambda _: (
                module.plot_intermediate_values(drawn)
            ),
        }
    plots: dict[str, PlotFactory] = {"Pareto front": module.plot_pareto_front}
    for i, name in enumerate(names):
        plots[f"Optimization history: {name}"] = history(i, name)
    return plots


def _history_of(module: Any, index: int, name: str | None) -> PlotFactory:
    if name is None:  # one objective, no metric name: Optuna's own labels
        return module.plot_optimization_history

    def plot(study: optuna.Study) -> Any:
        return module.plot_optimization_history(
            study, target=lambda t: t.values[index], target_name=name
        )

    return plot


_WHOLE_HISTORY_SQL = (
    "SELECT t.number, v.value FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
    "WHERE t.study_id = :sid AND t.state = 'COMPLETE' AND v.objective = :objective "
    "AND v.value_type = 'FINITE' ORDER BY t.trial_id"  # number order, without a sort
)


def _history_points(
    storage: StudyctlStorage, study_id: int, index: int
) -> tuple[list[int], list[float]]:
    """(trial numbers, values of objective `index`) of every completed trial with a finite
    value, in one query of the two columns."""
    from studyctl.storage.plain import PlainConnection

    with storage.engine.connect() as conn:
        # The driver's own cursor: SQLAlchemy's rows cost 0.2 s of 90,000 (PostgreSQL).
        raw = PlainConnection(conn.connection.driver_connection, conn.dialect.name)
        found = raw.rows(_WHOLE_HISTORY_SQL, {"sid": study_id, "objective": index})
    if not found:
        raise ValueError("no completed trial with a finite value")
    return [int(n) for n, _ in found], [float(v) for _, v in found]


def _whole_history(
    storage: StudyctlStorage, matplotlib: bool, infeasible: Container[int] = ()
) -> HistoryFactory:
    """Optimization histories over every completed trial of a study whose other plots show
    a window: one query of (number, value), not the trials. Optuna's own history indexes
    its values by trial number and fails on a window that does not start at trial 0."""

    def factory(index: int, name: str | None) -> PlotFactory:
        def plot(study: optuna.Study) -> Any:
            numbers, values = _history_points(storage, study._study_id, index)
            maximize = study.directions[index].name == "MAXIMIZE"
            label = name or (study.metric_names or [figures.OBJECTIVE_LABEL])[0]
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

        return plot

    return factory


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
    storage: StudyctlStorage, study_id: int, trials: list[FrozenTrial]
) -> list[tuple[int, int, float]]:
    """(trial number, step, value) of the intermediate values of `trials` (a run of the
    study's trials in trial_id order), in one query."""
    import sqlalchemy as sa

    bounds = {"sid": study_id, "lo": trials[0]._trial_id, "hi": trials[-1]._trial_id}
    with storage.engine.connect() as conn:
        found = conn.execute(sa.text(_CURVES_SQL), bounds).all()
    return [(int(n), int(step), float(v)) for n, step, v in found]


# A constrained study's constraint values: Optuna keeps them in system attributes, as one
# list ("constraints") or one value per key ("constraints:NAME").
_CONSTRAINTS_SQL = (
    "SELECT t.number, a.value_json FROM trial_system_attributes a JOIN trials t "
    "ON t.trial_id = a.trial_id WHERE t.study_id = :sid AND t.state = 'COMPLETE' "
    "AND (a.key = 'constraints' OR a.key LIKE 'constraints:%')"
)


def _constraint_states(storage: StudyctlStorage, study_id: int) -> tuple[set[int], set[int]]:
    """(numbers of the completed trials with constraint values, those of them with a value
    above 0: infeasible), in one query; both empty for a study without constraints."""
    import sqlalchemy as sa

    with storage.engine.connect() as conn:
        found = conn.execute(sa.text(_CONSTRAINTS_SQL), {"sid": study_id}).all()
    constrained, infeasible = set(), set()
    for number, value_json in found:
        value = json.loads(value_json)
        constrained.add(int(number))
        if any(v > 0 for v in (value if isinstance(value, list) else [value])):
            infeasible.add(int(number))
    return constrained, infeasible


_TIMES = ("datetime_start", "datetime_complete")


def _durations(storage: StudyctlStorage, study_id: int, first: int) -> dict[int, float]:
    """Seconds each finished trial from trial_id `first` on took, from the stored UTC
    times (a FrozenTrial's local times are off by an hour across a DST change)."""
    import sqlalchemy as sa

    query = sa.text(
        "SELECT trial_id, datetime_start, datetime_complete FROM trials "
        "WHERE study_id = :sid AND trial_id >= :first AND datetime_complete IS NOT NULL"
    ).columns(sa.column("trial_id"), *(sa.column(c, sa.DateTime) for c in _TIMES))
    with storage.engine.connect() as conn:
        found = conn.execute(query, {"sid": study_id, "first": first}).all()
    return {int(t): (c - s).total_seconds() for t, s, c in found if s is not None}


def _line_study(storage: StudyctlStorage, study: optuna.Study, total: int) -> optuna.Study | None:
    """The study as its most recent `LINE_PLOT_TRIALS` trials, for the plots of one line
    per trial; None when it has no more (`total`: the trials the other plots show)."""
    if total <= LINE_PLOT_TRIALS:
        return None
    lines = copy.copy(study)
    lines._storage = WindowedStorage(storage, LINE_PLOT_TRIALS, snapshot=True)
    return lines


def _finished_study(
    storage: StudyctlStorage,
    name: str,
    max_trials: int = DEFAULT_MAX_TRIALS,
    kinds: frozenset[int] = ALL_KINDS,
) -> tuple[optuna.Study, str | None, int]:
    """The study to plot, a note when it is cut to its most recent `max_trials` trials (0:
    never), and the number of trials it shows. A 100,000-trial report read every trial and
    drew them all: 103 s, 1.5 GB and a 53 MB page (BENCHMARKS.md, "report at 100,000
    trials"). Its trials are read once, with the child rows of `kinds` only."""
    configure_optuna_logging()  # no "[W ...] You need to set up the pruning feature"
    if not study_exists(storage, name):
        raise unknown_study(storage, name)
    study = optuna.load_study(study_name=name, storage=storage)
    states = storage.control.state_counts(study._study_id)  # one GROUP BY, not the trials
    if not states.get("COMPLETE"):
        raise StudyctlError(f"study {name!r} has no completed trial yet")
    total = sum(states.values())
    # Optuna wraps any RDBStorage given to a Study in its cache, which reads every trial of
    # the study through its ORM (five queries a batch); the plots read the trials shown
    # through the view itself, in two queries, once.
    view = WindowedStorage(storage, max_trials, snapshot=True, kinds=kinds)
    study._storage = view
    if view.window_after(study._study_id) is None:
        return study, None, total
    return (
        study,
        (
            f"plots and trials show the most recent {max_trials:,} of {total:,} trials (the "
            "best trial is the study's own); --max-trials N shows more, 0 all"
        ),
        max_trials,
    )


def _number(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _values(values: list[Any] | None) -> str:
    return "" if not values else ", ".join(_number(v) for v in values)


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_number(v)}" for k, v in params.items())


def _summary(storage: StudyctlStorage, name: str) -> tuple[str, list[dict[str, Any]]]:
    """The lines at the top of the page (study, objective, budget, best trial) and the
    best trials (`trial_dict`s: the study's, highlighted in the table)."""
    status = study_status(storage, name)
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
    return f"<table id='summary'>{body}</table>", best


def _html_plots(
    storage: StudyctlStorage,
    study: optuna.Study,
    trials: list[FrozenTrial],
    best: list[dict[str, Any]],
) -> dict[str, Callable[[], figures.Figure]]:
    """The page's plots, by title, each drawn when called: of one objective its history
    (every completed trial), importances, parallel coordinates and learning curves (the
    most recent `LINE_PLOT_TRIALS` of `trials`, the trials shown); of several the Pareto
    front and a history per objective."""
    sid = study._study_id
    n = len(study.directions)
    if study.metric_names:
        names = study.metric_names
    else:  # Optuna's label for one objective; the old report's for several
        names = [figures.OBJECTIVE_LABEL] if n == 1 else [f"objective {i}" for i in range(n)]
    constrained, infeasible = _constraint_states(storage, sid)
    history = _whole_history(storage, matplotlib=False, infeasible=infeasible)
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
            plots[f"Optimization history: {name}"] = functools.partial(history(i, name), study)
        return plots
    lines = trials[-LINE_PLOT_TRIALS:]
    cut = f"the most recent {LINE_PLOT_TRIALS:,} trials" if len(trials) > len(lines) else ""
    maximize = study.directions[0].name == "MAXIMIZE"
    # As Optuna's parallel coordinates: in a constrained study a trial without constraint
    # values is not feasible.
    feasible = (
        (lambda t: t.number in constrained and t.number not in infeasible) if constrained else None
    )

    def importances() -> figures.Figure:
        from optuna.importance import get_param_importances

        return figures.importances(get_param_importances(study))

    return {
        "Optimization history": functools.partial(history(0, None), study),
        "Parameter importances": importances,
        f"Parallel coordinates{f' ({cut})' if cut else ''}": lambda: figures.parallel_coordinates(
            lines, maximize, names[0], feasible
        ),
        f"Intermediate values (learning curves{f'; {cut}' if cut else ''})": lambda: (
            figures.learning_curves(_curve_points(storage, sid, lines))
        ),
    }


def write_html(
    storage: StudyctlStorage, name: str, output: Path, max_trials: int = DEFAULT_MAX_TRIALS
) -> tuple[Path, str | None]:
    import plotly.io as pio

    # Values and parameters only: the page draws no attribute, and reads the learning
    # curves it draws (the most recent trials') by themselves.
    study, note, _ = _finished_study(storage, name, max_trials, frozenset({VALUE, PARAM}))
    summary, best = _summary(storage, name)
    parts = [f"<h1>Study {html.escape(name)}</h1>", summary]
    if note:
        parts.append(f"<p id='window'>{html.escape(note)}</p>")
    trials = study.get_trials(deepcopy=False)
    first = True
    for title, draw in _html_plots(storage, study, trials, best).items():
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
    took = _durations(storage, study._study_id, trials[0]._trial_id) if trials else {}
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
    return output, note


def write_pngs(
    storage: StudyctlStorage, name: str, output: Path, max_trials: int = DEFAULT_MAX_TRIALS
) -> tuple[list[Path], str | None]:
    """`output` ending in .png: the optimization history (or Pareto front); otherwise a
    folder with one PNG per main plot. With the note of `_finished_study`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis_mpl

    study, note, shown = _finished_study(storage, name, max_trials)
    history = _whole_history(storage, matplotlib=True) if note else None
    plots = _plots(study, vis_mpl, history, _line_study(storage, study, shown))
    if output.suffix == ".png":
        plots = dict(list(plots.items())[:1])
        targets = {next(iter(plots)): output}
    else:
        output.mkdir(parents=True, exist_ok=True)
        targets = {
            t: output
            / (
                t.split(":")[0].split(" (")[0].lower().replace(" ", "_")
                + (f"_{i}" if ":" in t else "")
                + ".png"
            )
            for i, t in enumerate(plots)
        }
    written = []
    for title, plot in plots.items():
        try:
            axes = plot(study)
        except (ValueError, RuntimeError):
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        figure.savefig(targets[title], dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(targets[title])
    return written, note
