"""`studyctl report`: one self-contained HTML page (Optuna's plotly plots and a trials
table), or PNGs of the main plots (Optuna's matplotlib plots)."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from studyctl.errors import StudyctlError
from studyctl.inspect.summary import list_trials, study_status
from studyctl.storage import StudyctlStorage, study_exists
from studyctl.storage.studies import unknown_study
from studyctl.verbosity import configure_optuna_logging

PlotFactory = Callable[[optuna.Study], Any]


def _plots(study: optuna.Study, module: Any) -> dict[str, PlotFactory]:
    """The main plots, by title, from optuna.visualization or its matplotlib twin."""
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    if len(study.directions) == 1:
        return {
            "Optimization history": module.plot_optimization_history,
            "Parameter importances": module.plot_param_importances,
            "Parallel coordinates": module.plot_parallel_coordinate,
            "Intermediate values (learning curves)": module.plot_intermediate_values,
        }
    plots: dict[str, PlotFactory] = {"Pareto front": module.plot_pareto_front}
    for i, name in enumerate(names):
        plots[f"Optimization history: {name}"] = _history_of(module, i, name)
    return plots


def _history_of(module: Any, index: int, name: str) -> PlotFactory:
    def plot(study: optuna.Study) -> Any:
        return module.plot_optimization_history(
            study, target=lambda t: t.values[index], target_name=name
        )

    return plot


def _finished_study(storage: StudyctlStorage, name: str) -> optuna.Study:
    configure_optuna_logging()  # no "[W ...] You need to set up the pruning feature"
    if not study_exists(storage, name):
        raise unknown_study(storage, name)
    study = optuna.load_study(study_name=name, storage=storage)
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise StudyctlError(f"study {name!r} has no completed trial yet")
    return study


def _number(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _values(values: list[Any] | None) -> str:
    return "" if not values else ", ".join(_number(v) for v in values)


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_number(v)}" for k, v in params.items())


def _summary(storage: StudyctlStorage, name: str) -> tuple[str, set[int]]:
    """The lines at the top of the page (study, objective, budget, best trial) and the
    numbers of the best trials, highlighted in the table."""
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
    return f"<table id='summary'>{body}</table>", {b["number"] for b in best}


def write_html(storage: StudyctlStorage, name: str, output: Path) -> Path:
    import optuna.visualization as vis

    study = _finished_study(storage, name)
    summary, best = _summary(storage, name)
    parts = [f"<h1>Study {html.escape(name)}</h1>", summary]
    first = True
    for title, plot in _plots(study, vis).items():
        parts.append(f"<h2>{html.escape(title)}</h2>")
        try:
            figure = plot(study)
        except (ValueError, RuntimeError) as exc:  # e.g. importances need 2+ trials
            parts.append(f"<p>Not available: {html.escape(str(exc))}</p>")
            continue
        parts.append(figure.to_html(full_html=False, include_plotlyjs="inline" if first else False))
        first = False
    rows = list_trials(storage, name)
    head = "<tr><th>#</th><th>state</th><th>value</th><th>params</th><th>duration (s)</th></tr>"
    body = "".join(
        ("<tr class='best'>" if r["number"] in best else "<tr>")
        + f"<td>{r['number']}</td><td>{r['state']}</td><td>{html.escape(_values(r['values']))}"
        f"</td><td>{html.escape(_params(r['params']))}</td>"
        f"<td>{'' if r['duration_s'] is None else round(r['duration_s'], 2)}</td></tr>"
        for r in rows
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
    return output


def write_pngs(storage: StudyctlStorage, name: str, output: Path) -> list[Path]:
    """`output` ending in .png: the optimization history (or Pareto front); otherwise a
    folder with one PNG per main plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis_mpl

    study = _finished_study(storage, name)
    plots = _plots(study, vis_mpl)
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
    return written
