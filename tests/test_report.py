"""The HTML report's figures (`studyctl.inspect.figures`): what each plot draws, checked
against the trials Optuna itself returns, on both backends."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from studyctl.inspect import report
from studyctl.spec import load_spec
from studyctl.storage import open_storage
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
    storage = open_storage(storage_url)
    study, _, _ = report._finished_study(storage, name, max_trials)
    _, best = report._summary(storage, name)
    trials = study.get_trials(deepcopy=False)
    return {
        title: draw() for title, draw in report._html_plots(storage, study, trials, best).items()
    }


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
