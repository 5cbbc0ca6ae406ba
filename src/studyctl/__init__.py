"""studyctl: Optuna-backed hyperparameter studies of Keras models in a persistent database.

The names below are imported on first use (as `studyctl.storage` does): every process
imports this package, and `studyctl --help`, the inspection commands and the worker's
parent need none of the objective machinery (importlib.metadata, inspect, the registry).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from studyctl.api import TrialsFailed, load, run
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

# name -> the module that defines it. The Python API (`studyctl.run`, `studyctl.load`) loads
# Optuna and the execution layer on first use: objective files import studyctl for its
# decorators only.
_EXPORTS = {
    "ObjectiveError": "studyctl.errors",
    "SpecError": "studyctl.errors",
    "StorageError": "studyctl.errors",
    "StudyctlError": "studyctl.errors",
    "FunctionObjective": "studyctl.objectives",
    "KerasObjective": "studyctl.objectives",
    "TrainingData": "studyctl.objectives",
    "TrialContext": "studyctl.objectives",
    "function_objective": "studyctl.objectives",
    "keras_objective": "studyctl.objectives",
    "register_objective": "studyctl.objectives",
    "TrialsFailed": "studyctl.api",
    "load": "studyctl.api",
    "run": "studyctl.api",
}

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

if not TYPE_CHECKING:  # mypy checks the imports above; a name not listed there is an error

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)
