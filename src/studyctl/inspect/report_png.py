"""`studyctl report -o x.png` / `-o DIR`: Optuna's own matplotlib plots of a study, read
through Optuna's storage (the HTML page is `report`'s)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Container
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from studyctl.inspect import figures, report
from studyctl.inspect.report import (
    DEFAULT_MAX_TRIALS,
    history_plot,
    no_completed_trial,
    window_note,
)
from studyctl.inspect.summary import Source
from studyctl.verbosity import configure_optuna_logging

if TYPE_CHECKING:
    from studyctl.storage.rdb import StudyctlStorage

PlotFactory = Callable[[optuna.Study], Any]
HistoryFactory = Callable[[int, "str | None"], PlotFactory]


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
        cut = "" if lines is None else f"; the most recent {report.LINE_PLOT_TRIALS:,} trials"
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


def _whole_history(
    source: Source, matplotlib: bool, infeasible: Container[int] = ()
) -> HistoryFactory:
    """Optimization histories over every completed trial of a study whose other plots show
    a window: one query of (number, value), not the trials. Optuna's own history indexes
    its values by trial number and fails on a window that does not start at trial 0."""

    def factory(index: int, name: str | None) -> PlotFactory:
        def plot(study: optuna.Study) -> Any:
            maximize = study.directions[index].name == "MAXIMIZE"
            label = name or (study.metric_names or [figures.OBJECTIVE_LABEL])[0]
            return history_plot(
                source, study._study_id, index, maximize, label, infeasible, matplotlib
            )

        return plot

    return factory


def _line_study(storage: StudyctlStorage, study: optuna.Study, total: int) -> optuna.Study | None:
    """The study as its most recent `LINE_PLOT_TRIALS` trials, for the plots of one line
    per trial; None when it has no more (`total`: the trials the other plots show)."""
    from studyctl.inspect.trial_window import WindowedStorage

    if total <= report.LINE_PLOT_TRIALS:
        return None
    lines = copy.copy(study)
    lines._storage = WindowedStorage(storage, report.LINE_PLOT_TRIALS, snapshot=True)
    return lines


def _finished_study(
    storage: StudyctlStorage, name: str, max_trials: int = DEFAULT_MAX_TRIALS
) -> tuple[optuna.Study, str | None, int]:
    """The study to plot with Optuna's own plots (the PNGs), a note when it is cut to its
    most recent `max_trials` trials (0: never), and the number of trials it shows. A
    100,000-trial report read every trial and drew them all: 103 s, 1.5 GB and a 53 MB
    page (BENCHMARKS.md, "report at 100,000 trials"). Its trials are read once."""
    from studyctl.inspect.trial_window import WindowedStorage
    from studyctl.storage import study_exists
    from studyctl.storage.studies import unknown_study

    configure_optuna_logging()  # no "[W ...] You need to set up the pruning feature"
    if not study_exists(storage, name):
        raise unknown_study(storage, name)
    study = optuna.load_study(study_name=name, storage=storage)
    states = storage.control.state_counts(study._study_id)  # one GROUP BY, not the trials
    if not states.get("COMPLETE"):
        raise no_completed_trial(name)
    total = sum(states.values())
    # Optuna wraps any RDBStorage given to a Study in its cache, which reads every trial of
    # the study through its ORM (five queries a batch); the plots read the trials shown
    # through the view itself, in two queries, once.
    view = WindowedStorage(storage, max_trials, snapshot=True)
    study._storage = view
    if view.window_after(study._study_id) is None:
        return study, None, total
    return study, window_note(max_trials, total), max_trials


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
