"""The objective API: what a user's objective file registers and receives.

Two forms:

* `KerasObjective`: the user says how to load data (once per process, cached) and how to
  build and compile a model from an `optuna.Trial`; studyctl trains it (`studyctl.training`).
* `FunctionObjective`: a plain function ``(trial, ctx) -> value`` for custom loops.

Each receives a `TrialContext`. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from studyctl.artifacts import warn
from studyctl.errors import ObjectiveError, SpecError, one_line

if TYPE_CHECKING:
    import optuna

    from studyctl.spec import StudySpec

_DATA_CACHE: dict[tuple[str, str], Any] = {}
# Spec entries already warned about in this process (one warning per entry, not per trial).
_WARNED_UNSUGGESTED: set[str] = set()


@dataclass
class TrainingData:
    """Arrays (or datasets) for `Model.fit`. Without validation arrays the spec's
    `training.validation_split` is used."""

    x: Any
    y: Any
    x_val: Any = None
    y_val: Any = None

    @property
    def has_validation(self) -> bool:
        return self.x_val is not None


BuildModel = Callable[["optuna.Trial", "TrialContext"], Any]
LoadData = Callable[..., Any]
ObjectiveFunc = Callable[["optuna.Trial", "TrialContext"], "float | Sequence[float]"]


@dataclass
class KerasObjective:
    name: str
    build_model: BuildModel
    load_data: LoadData
    source: str = ""


@dataclass
class FunctionObjective:
    name: str
    func: ObjectiveFunc
    load_data: LoadData | None = None
    source: str = ""


Objective = KerasObjective | FunctionObjective


@dataclass
class TrialContext:
    """What an objective gets besides the trial: the spec's settings, the cached data,
    the distribution strategy and search-space overrides from the spec's ``[space]``."""

    trial: optuna.Trial
    spec: StudySpec
    objective: Objective
    worker: dict[str, Any] = field(default_factory=dict)
    # Set by the trial loop: returns the process's one distribution strategy (TensorFlow is
    # imported on the first call).
    strategy_provider: Callable[[], Any] | None = None
    # Set by the trial loop: deletes attributes of any trial of the study (finished ones
    # included) that name an artifact studyctl removed: `(trial_id, user_keys, system_keys)`.
    forget_attrs: Callable[[int, list[str], list[str]], None] | None = None
    # Whether the objective read `ctx.params` (then a [params] entry it never suggests may
    # still be in use).
    params_read: bool = False

    @property
    def training(self) -> Any:
        return self.spec.training

    @property
    def options(self) -> dict[str, Any]:
        return self.spec.options

    @property
    def params(self) -> dict[str, Any]:
        """The spec's fixed ``[params]``."""
        self.params_read = True
        return dict(self.spec.params)

    @property
    def data(self) -> Any:
        return load_objective_data(self.objective, self.spec.options)

    @property
    def strategy(self) -> Any:
        """The process's distribution strategy (MirroredStrategy over several devices)."""
        if self.strategy_provider is None:
            raise ObjectiveError("ctx.strategy is available only inside a studyctl trial")
        return self.strategy_provider()

    def _set_by_studyctl(self, name: str) -> tuple[bool, Any]:
        """A training setting the spec makes a search axis (batch_size, epochs) is
        suggested by studyctl before a Keras objective runs; asked again, it is that value,
        whatever range the objective gives."""
        if name in self.spec.training_axes:
            params = self.trial.params
            if name in params:
                return True, params[name]
        return False, None

    def check_grid_axes(self) -> None:
        """Raise a `SpecError` naming the first [sampler.grid] axis nothing suggested in
        this trial: the grid would run each such point as if the axis did not exist."""
        params = self.trial.params
        for name in self.spec.sampler.grid:
            if name not in params:
                suggested = ", ".join(sorted(params)) or "nothing"
                raise SpecError(
                    self.spec.path,
                    f"sampler.grid.{name}",
                    f"objective {self.spec.objective!r} never suggests {name!r} (it suggests "
                    f"{suggested}); suggest it in the objective (ctx.suggest_*) or remove it "
                    "from the grid",
                )

    def unsuggested_entries(self) -> dict[str, str]:
        """The ``[space]`` and ``[params]`` entries the objective did not suggest in this
        trial, as key (``space.lr``) -> the warning's text; such an entry changes nothing (a
        misspelt name is searched nowhere). Training axes are suggested by studyctl itself;
        a ``[params]`` entry may also be read through `ctx.params`."""
        suggested = self.trial.params
        found: dict[str, str] = {}
        tables: list[tuple[str, Mapping[str, Any]]] = [("space", self.spec.space)]
        if not self.params_read:
            tables.append(("params", self.spec.params))
        for table, entries in tables:
            for name in entries:
                key = f"{table}.{name}"
                if name in suggested or name in self.spec.training_axes:
                    continue
                close = difflib.get_close_matches(name, list(suggested), n=1)
                fix = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else "a conditional parameter is fine; otherwise suggest it (ctx.suggest_*) "
                    "or remove it"
                )
                found[key] = (
                    f"{self.spec.path}: {key}: objective {self.spec.objective!r} did not "
                    f"suggest {name!r} in trial #{self.trial.number} (it suggests "
                    f"{', '.join(sorted(suggested)) or 'nothing'}); {fix}"
                )
        return found

    def warn_unsuggested(self) -> None:
        """Print `unsuggested_entries` as warnings, each entry once per process."""
        for key, line in self.unsuggested_entries().items():
            if key not in _WARNED_UNSUGGESTED:
                _WARNED_UNSUGGESTED.add(key)
                warn(line)

    def suggest_float(
        self, name: str, low: float, high: float, *, log: bool = False, step: float | None = None
    ) -> float:
        done, value = self._set_by_studyctl(name)
        if done:
            return float(value)
        p = self.spec.space.get(name)
        if p is not None and p.type == "float":
            assert p.low is not None and p.high is not None
            low, high, log, step = p.low, p.high, p.log, p.step
        return self.trial.suggest_float(name, low, high, log=log, step=step)

    def suggest_int(
        self, name: str, low: int, high: int, *, log: bool = False, step: int = 1
    ) -> int:
        done, value = self._set_by_studyctl(name)
        if done:
            return int(value)
        p = self.spec.space.get(name)
        if p is not None and p.type == "int":
            assert p.low is not None and p.high is not None
            low, high, log = int(p.low), int(p.high), p.log
            step = int(p.step) if p.step is not None else 1
        return self.trial.suggest_int(name, low, high, log=log, step=step)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        done, value = self._set_by_studyctl(name)
        if done:
            return value
        p = self.spec.space.get(name)
        if p is not None and p.type == "categorical":
            choices = list(p.choices)
        return self.trial.suggest_categorical(name, list(choices))


def load_objective_data(objective: Objective, options: Mapping[str, Any]) -> Any:
    """Call the objective's `load_data` once per process and options; cache the result."""
    if objective.load_data is None:
        return None
    key = (objective.name, json.dumps(options, sort_keys=True, default=str))
    if key not in _DATA_CACHE:
        fn = objective.load_data
        takes_arg = bool(inspect.signature(fn).parameters)
        try:
            _DATA_CACHE[key] = fn(dict(options)) if takes_arg else fn()
        except Exception as exc:
            raise ObjectiveError(
                f"objective {objective.name!r}: load_data failed: {one_line(exc)}"
            ) from exc
    return _DATA_CACHE[key]
