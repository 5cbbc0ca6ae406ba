"""The samplers and pruners a spec may name: one table, one entry each.

An entry says which options the spec may set (their type and valid range, checked when the
spec is parsed, before anything touches a database) and how to build the Optuna object.
Adding a sampler or pruner is one entry here. Optuna is imported only by the builders, so
parsing a spec stays cheap.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studyctl.errors import StudyctlError

if TYPE_CHECKING:
    import optuna

    from studyctl.spec.model import StudySpec


@dataclass(frozen=True)
class Option:
    """One option's type and valid range (`low`/`high` inclusive, `positive`: > 0)."""

    kind: type
    low: float | None = None
    high: float | None = None
    positive: bool = False

    def problem(self, value: Any) -> str | None:
        """Why `value` (already of `kind`) is out of range, or None."""
        if self.positive and value <= 0:
            return f"expected a number > 0, got {value!r}"
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            return f"expected a probability in [{self.low:g}, {self.high:g}], got {value}"
        if self.low is not None and value < self.low:
            if self.low == 0:
                return f"expected a number >= 0, got {value!r}"
            return f"expected an integer >= {self.low:g}"
        return None


COUNT = Option(int, low=0)  # n_startup_trials, warm-up steps: zero allowed
POSITIVE_INT = Option(int, positive=True)
POSITIVE_FLOAT = Option(float, positive=True)
PROBABILITY = Option(float, low=0.0, high=1.0)


@dataclass(frozen=True)
class Choice:
    """A sampler or pruner: its options and its builder ``(spec, seed) -> Optuna object``."""

    options: dict[str, Option]
    build: Callable[[StudySpec, int | None], Any]
    single_objective: bool = False
    # A spec naming this choice with several directions gets this hint.
    multi_objective_hint: str = ""
    extra_keys: tuple[str, ...] = ()


def _optuna() -> Any:
    import optuna

    return optuna


def _tpe(spec: StudySpec, seed: int | None) -> Any:
    return _optuna().samplers.TPESampler(seed=seed, **spec.sampler.options)


def _random(spec: StudySpec, seed: int | None) -> Any:
    return _optuna().samplers.RandomSampler(seed=seed)


def _grid(spec: StudySpec, seed: int | None) -> Any:
    return _optuna().samplers.GridSampler(search_space=spec.sampler.grid, seed=seed)


def _cmaes(spec: StudySpec, seed: int | None) -> Any:
    # Installed with studyctl; checked here so a broken environment fails before the
    # study is created, not after its startup trials.
    if importlib.util.find_spec("cmaes") is None:
        raise StudyctlError(
            f"{spec.path}: sampler.type: 'cmaes' needs the cmaes package, which is not installed",
            hint="pip install cmaes (a dependency of studyctl), or use tpe",
        )
    return _optuna().samplers.CmaEsSampler(seed=seed, **spec.sampler.options)


def _gp(spec: StudySpec, seed: int | None) -> Any:
    if importlib.util.find_spec("torch") is None:
        raise StudyctlError(
            f"{spec.path}: sampler.type: 'gp' needs PyTorch, which is not installed",
            hint="pip install torch, or use tpe",
        )
    return _optuna().samplers.GPSampler(seed=seed, **spec.sampler.options)


def _nsga2(spec: StudySpec, seed: int | None) -> Any:
    return _optuna().samplers.NSGAIISampler(seed=seed, **spec.sampler.options)


SAMPLERS: dict[str, Choice] = {
    "tpe": Choice(
        {
            "n_startup_trials": COUNT,
            "multivariate": Option(bool),
            "constant_liar": Option(bool),
            "group": Option(bool),
        },
        _tpe,
    ),
    "random": Choice({}, _random),
    "grid": Choice({}, _grid, extra_keys=("grid",)),
    "cmaes": Choice(
        {"n_startup_trials": COUNT, "sigma0": POSITIVE_FLOAT, "popsize": POSITIVE_INT},
        _cmaes,
        single_objective=True,
        multi_objective_hint=(
            "cmaes handles a single objective; use nsga2, tpe or random with several directions"
        ),
    ),
    "gp": Choice({"n_startup_trials": COUNT}, _gp),
    "nsga2": Choice(
        {
            "population_size": POSITIVE_INT,
            "mutation_prob": PROBABILITY,
            "crossover_prob": PROBABILITY,
        },
        _nsga2,
    ),
}


def _median(spec: StudySpec, seed: int | None) -> Any:
    return _optuna().pruners.MedianPruner(**spec.pruner.options)


def _hyperband(spec: StudySpec, seed: int | None) -> Any:
    options: dict[str, Any] = {"max_resource": spec.training.epochs, **spec.pruner.options}
    return _optuna().pruners.HyperbandPruner(**options)


def _successive_halving(spec: StudySpec, seed: int | None) -> Any:
    return _optuna().pruners.SuccessiveHalvingPruner(**spec.pruner.options)


def _no_pruner(spec: StudySpec, seed: int | None) -> Any:
    return _optuna().pruners.NopPruner()


REDUCTION_FACTOR = Option(int, low=2)
PRUNERS: dict[str, Choice] = {
    "none": Choice({}, _no_pruner),
    "median": Choice(
        {"n_startup_trials": COUNT, "n_warmup_steps": COUNT, "interval_steps": POSITIVE_INT},
        _median,
        single_objective=True,
    ),
    "hyperband": Choice(
        {
            "min_resource": POSITIVE_INT,
            "max_resource": POSITIVE_INT,
            "reduction_factor": REDUCTION_FACTOR,
        },
        _hyperband,
        single_objective=True,
    ),
    "successive_halving": Choice(
        {
            "min_resource": POSITIVE_INT,
            "reduction_factor": REDUCTION_FACTOR,
            "min_early_stopping_rate": COUNT,
        },
        _successive_halving,
        single_objective=True,
    ),
}


def build_sampler(spec: StudySpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with `seed` (default: the spec's seed), with the spec's
    fixed ``[params]`` applied on top."""
    sampler: optuna.samplers.BaseSampler = SAMPLERS[spec.sampler.type].build(
        spec, spec.sampler.seed if seed is None else seed
    )
    if spec.params:
        sampler = _optuna().samplers.PartialFixedSampler(
            fixed_params=dict(spec.params), base_sampler=sampler
        )
    return sampler


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    pruner: optuna.pruners.BasePruner = PRUNERS[spec.pruner.type].build(spec, None)
    return pruner
