"""studyctl: Optuna-backed hyperparameter studies of Keras models in a persistent database."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from studyctl.errors import ObjectiveError, SpecError, StorageError, StudyctlError
from studyctl.objectives import (
    FunctionObjective,
    KerasObjective,
    TrainingData,
    TrialContext,
    function_objective,
    keras_objective,
    register_objective,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from studyctl.api import TrialsFailed, load, run

__all__ = [
    "FunctionObjective",
    "KerasObjective",
    "ObjectiveError",
    "SpecError",
    "StorageError",
    "StudyctlError",
    "TrainingData",
    "TrialContext",
    "TrialsFailed",
    "__version__",
    "function_objective",
    "keras_objective",
    "load",
    "register_objective",
    "run",
]

# The Python API (`studyctl.run`, `studyctl.load`) loads Optuna and the execution layer on
# first use: objective files import studyctl for its decorators only.
_API = ("TrialsFailed", "load", "run")

if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        if name in _API:
            return getattr(importlib.import_module("studyctl.api"), name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
