"""The HTML report's figures (`studyctl.inspect.figures`): what each plot draws, checked
against the trials Optuna itself returns, on both backends."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from studyctl.inspect import report
from studyctl.inspect.summary import study_status
from studyctl.spec import load_spec
from studyctl.storage import open_storage
from studyctl.storage.reader import as_reader
from studyctl.storage.studies import open_study

from .conftest import run_cli, typed_values, write_spec

DISTS = {
    "x": FloatDistribution(-10, 10),
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "units": IntDistribution(8, 128),
    "act": CategoricalDistribution(["relu", "tanh", None]),
}


def _curves_study(storage_url: str, tmp_path: Path) -> optuna.Study:
    """A studyctl study whose trials report learning curves: complete, pruned, failed (whose
    curve no plot draws), one with a NaN step, and one still running."""
    spec = write_spec(
        tmp_path / "curves.toml",
        """
        name = "curves"
        objective = "quadratic"
        n_trials = 100
        """,
    )
    study = open_study(open_storage(storage_url), load_spec(spec), create=True).study
    for i in range(14):
        trial = study.ask(DISTS)
        for step in range(1 + i % 4):
            trial.report(math.nan if (i, step) == (5, 1) else 10.0 - i - step, step)
        if i % 5 == 2:
            study.tell(trial, state=TrialState.PRUNED)
        elif i % 5 == 3:
            study.tell(trial, state=TrialState.FAIL)
        elif i < 13:
            study.tell(trial, float((i * 7) % 11) - 3.0)
    return study


def _plots(storage_url: str, name: str, max_trials: int = 0) -> dict[str, dict]:
    """The report's figures by title; a plot that is not available (the page says why)
    as {}."""
    reader = as_reader(open_storage(storage_url))
    status = study_status(reader, name)
    shown = report.shown_study(reader, status, max_trials)
    drawn = {}
    for title, draw in report._html_plots(reader, shown, status["best"]).items():
        try:
            drawn[title] = draw()
        except ValueError:
            drawn[title] = {}
    return drawn


def test_parallel_coordinates_draw_each_completed_trial_on_its_own_axes(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One `parcoords` trace: a line per completed trial of the most recent
    `LINE_PLOT_TRIALS` (Optuna's parallel coordinates draw completed trials only), the
    objective first, then the parameters by name; categorical choices as positions with
    their labels, a log scale as log10."""
    study = _curves_study(storage_url, tmp_path)
    monkeypatch.setattr(report, "LINE_PLOT_TRIALS", 9)
    plots = _plots(storage_url, "curves")
    assert set(plots) == {
        "Optimization history",
        "Parameter importances",
        "Parallel coordinates (the most recent 9 trials)",
        "Intermediate values (learning curves; the most recent 9 trials)",
    }
    recent = study.get_trials(deepcopy=False)[-9:]
    done = [t for t in recent if t.state == TrialState.COMPLETE]
    (trace,) = plots["Parallel coordinates (the most recent 9 trials)"]["data"]
    assert trace["type"] == "parcoords"
    axes = {d["label"]: d for d in trace["dimensions"]}
    assert list(axes) == ["val_loss", "act", "lr", "units", "x"]  # the spec's metric
    assert axes["val_loss"]["values"] == [t.value for t in done]
    assert trace["line"]["color"] == [t.value for t in done]
    assert trace["line"]["reversescale"] is True  # minimize: the lower, the darker
    assert axes["x"]["values"] == [t.params["x"] for t in done]
    assert axes["units"]["values"] == [t.params["units"] for t in done]
    assert axes["lr"]["values"] == pytest.approx([math.log10(t.params["lr"]) for t in done])
    choices = [t.params["act"] for t in done]
    assert axes["act"]["values"] == [["relu", "tanh", None].index(c) for c in choices]
    labels = dict(zip(axes["act"]["tickvals"], axes["act"]["ticktext"], strict=True))
    assert {labels[p] for p in axes["act"]["values"]} == {str(c) for c in choices}


def test_learning_curves_are_one_trace_with_a_gap_between_trials(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every finite intermediate value of the complete, pruned and running trials among the
    most recent ones, in trial then step order, one `None` between two trials."""
    study = _curves_study(storage_url, tmp_path)
    monkeypatch.setattr(report, "LINE_PLOT_TRIALS", 9)
    plots = _plots(storage_url, "curves")
    (trace,) = plots["Intermediate values (learning curves; the most recent 9 trials)"]["data"]
    drawn = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    expected_x: list[int | None] = []
    expected_y: list[float | None] = []
    for t in study.get_trials(deepcopy=False)[-9:]:
        curve = {s: v for s, v in sorted(t.intermediate_values.items()) if math.isfinite(v)}
        if t.state not in drawn or not curve:
            continue
        if expected_x:
            expected_x.append(None)
            expected_y.append(None)
        expected_x += list(curve)
        expected_y += list(curve.values())
    assert trace["x"] == expected_x and trace["y"] == expected_y
    assert None in trace["x"]  # several trials drawn
    names = {t for t in trace["text"] if t}
    assert names == {
        f"Trial {t.number}"
        for t in study.get_trials(deepcopy=False)[-9:]
        if t.state in drawn and any(math.isfinite(v) for v in t.intermediate_values.values())
    }


def test_history_and_importances_of_a_whole_study(storage_url: str, tmp_path: Path) -> None:
    """A study shown whole: the history is every completed trial's, the importances
    Optuna's own for the same trials."""
    study = _curves_study(storage_url, tmp_path)
    plots = _plots(storage_url, "curves")
    assert "Parallel coordinates" in plots  # no cut: no note in the titles
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    markers, best = plots["Optimization history"]["data"]
    assert typed_values(markers["x"]) == [t.number for t in done]
    assert typed_values(markers["y"]) == [t.value for t in done]
    assert typed_values(best["y"])[-1] == study.best_value
    (bars,) = plots["Parameter importances"]["data"]
    expected = optuna.importance.get_param_importances(study)
    assert dict(zip(bars["y"], bars["x"], strict=True)) == pytest.approx(expected)
    assert bars["y"][-1] == next(iter(expected))  # the most important at the top


def test_a_multi_objective_report_draws_its_pareto_front(sqlite_url: str, tmp_path: Path) -> None:
    """Several objectives: the Pareto front (the study's best trials over the others) and
    a history per objective, named by its metric."""
    study = optuna.create_study(
        study_name="multi", storage=sqlite_url, directions=["minimize", "maximize"]
    )
    study.set_metric_names(["loss", "accuracy"])
    study.optimize(lambda t: (t.suggest_float("a", 0, 1), t.suggest_float("b", 0, 1)), 12)
    plots = _plots(sqlite_url, "multi")
    assert list(plots) == [
        "Pareto front",
        "Optimization history: loss",
        "Optimization history: accuracy",
    ]
    others, front = plots["Pareto front"]["data"]
    assert front["name"] == "Best Trial"
    best = sorted((t.number, *t.values) for t in study.best_trials)
    assert (
        sorted(zip([int(s.split()[1]) for s in front["text"]], front["x"], front["y"], strict=True))
        == best
    )
    assert len(others["x"]) == len(study.trials) - len(best)
    accuracy = plots["Optimization history: accuracy"]
    assert accuracy["layout"]["yaxis"]["title"]["text"] == "accuracy"
    assert typed_values(accuracy["data"][1]["y"])[-1] == max(t.values[1] for t in study.trials)
    page = tmp_path / "multi.html"
    done = run_cli(["report", "multi", "-s", sqlite_url, "-o", str(page)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Not available" not in page.read_text()


def test_the_figures_template_is_plotlys_default() -> None:
    """Read from plotly's file without its graph objects, the template is the one
    `plotly.io.templates` builds (Optuna's plots are drawn with it)."""
    import plotly.io as pio

    from studyctl.inspect import figures

    assert figures._template() == pio.templates["plotly"].to_plotly_json()


def test_a_multi_objective_study_without_metric_names(sqlite_url: str, tmp_path: Path) -> None:
    """A plain Optuna study of two objectives without metric names: its Pareto front,
    and a history per objective named by its index; a front trial with an infinite value
    is left off the plot, not a crash."""
    study = optuna.create_study(
        study_name="plain2", storage=sqlite_url, directions=["minimize", "minimize"]
    )
    for values in ((1.0, 2.0), (2.0, 1.0), (-math.inf, 5.0), (3.0, 3.0)):
        study.add_trial(optuna.trial.create_trial(values=list(values)))
    plots = _plots(sqlite_url, "plain2")
    histories = [f"Optimization history: objective {i}" for i in range(2)]
    assert list(plots) == ["Pareto front", *histories]
    others, front = plots["Pareto front"]["data"]
    shown = sorted(zip(front["x"], front["y"], strict=True))
    finite = sorted(tuple(t.values) for t in study.best_trials if math.isfinite(t.values[0]))
    assert shown == finite and len(others["x"]) == 1  # (3, 3)
    page = tmp_path / "plain2.html"
    done = run_cli(["report", "plain2", "-s", sqlite_url, "-o", str(page)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Not available" not in page.read_text()


def test_parallel_coordinates_of_a_conditional_search_space(sqlite_url: str) -> None:
    """Trials that lack a parameter (a layer count deciding which units exist, an
    optimizer deciding its own settings) are drawn with "None" on that axis, as in
    Optuna's plot, not left out."""
    study = optuna.create_study(study_name="cond", storage=sqlite_url)

    def objective(trial: optuna.Trial) -> float:
        layers = trial.suggest_int("layers", 1, 3)
        units = [trial.suggest_int(f"units_{i}", 8, 64, log=True) for i in range(layers)]
        if trial.suggest_categorical("opt", ["adam", "sgd"]) == "sgd":
            trial.suggest_float("momentum", 0.0, 0.9)
        return float(sum(units))

    study.optimize(objective, n_trials=30)
    (trace,) = _plots(sqlite_url, "cond")["Parallel coordinates"]["data"]
    axes = {d["label"]: d for d in trace["dimensions"]}
    assert len(axes["Objective Value"]["values"]) == 30
    for name in ("units_1", "units_2", "momentum"):
        axis = axes[name]
        labels = dict(zip(axis["tickvals"], axis["ticktext"], strict=True))
        missing = [t.number for t in study.trials if name not in t.params]
        assert missing  # the check could fail
        at = [labels.get(v) for v in axis["values"]]
        assert [i for i, label in enumerate(at) if label == "None"] == missing, name
        assert axis["range"][0] == min(axis["values"]) < max(axis["values"]) <= axis["range"][1]
    assert axes["units_0"]["ticktext"][0].startswith("1e")  # a log axis, nothing missing


def test_a_constrained_study_draws_its_infeasible_trials_apart(sqlite_url: str) -> None:
    """As Optuna's plots: the history's best line counts feasible trials only and draws the
    others in grey; the parallel coordinates draw the feasible trials. Constraints in both
    of Optuna's forms: one value per key (`Trial.set_constraint`) and a list."""
    study = optuna.create_study(study_name="constrained", storage=sqlite_url)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number % 2:
            trial.set_constraint("x_at_least_half", 0.5 - x)
        else:  # the list form of samplers' `constraints_func`, Optuna before 5
            trial.storage.set_trial_system_attr(trial._trial_id, "constraints", [0.5 - x, -1])
        return x

    study.optimize(objective, n_trials=20)
    trials = study.trials
    bad = [t.number for t in trials if max(t.constraints.values()) > 0]
    assert (
        bad
        and len(bad) < len(trials)
        and {t.number % 2 for t in trials if t.number in bad} == {0, 1}
    )
    plots = _plots(sqlite_url, "constrained")
    markers, best, grey = plots["Optimization history"]["data"]
    assert grey["name"] == "Infeasible Trial" and typed_values(grey["x"]) == bad
    feasible = [t for t in trials if t.number not in bad]
    assert typed_values(markers["x"]) == [t.number for t in feasible]
    assert typed_values(best["y"])[-1] == min(t.values[0] for t in feasible)
    (trace,) = plots["Parallel coordinates"]["data"]
    assert trace["dimensions"][0]["values"] == [t.value for t in feasible]
    assert "constraints" in plots["Parallel coordinates"]["layout"]["title"]["text"]


_DST_REPORT = """
import sys
from datetime import datetime
import optuna, sqlalchemy as sa
from studyctl.storage import open_storage
from studyctl.inspect.report import write_html
from pathlib import Path

url, out = sys.argv[1], Path(sys.argv[2])
storage = open_storage(url)
study = optuna.create_study(study_name="dst", storage=storage)
study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
with storage.engine.begin() as conn:  # 05:30-06:10 UTC: New York's clocks go back at 06:00
    conn.execute(sa.text("UPDATE trials SET datetime_start = :s, datetime_complete = :c"),
                 {"s": datetime(2026, 11, 1, 5, 30), "c": datetime(2026, 11, 1, 6, 10)})
write_html(storage, "dst", out)
"""


def test_the_report_table_times_a_trial_across_a_clock_change(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A trial's duration in the page's table is its stored UTC end minus start: its local
    times (a FrozenTrial's) jump back an hour in between."""
    page = tmp_path / "dst.html"
    done = subprocess.run(
        [sys.executable, "-c", _DST_REPORT, sqlite_url, str(page)],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "America/New_York"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    row = page.read_text().split("<table id='trials'>")[1].split("<tr")[2]
    assert row.split("<td>")[-1].split("<")[0] == "2400.0"
