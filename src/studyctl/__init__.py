"""studyctl: Optuna-backed hyperparameter studies of Keras models in a persistent database."""

from __future__ import annotations

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

__all__ = [
    "FunctionObjective",
    "KerasObjective",
    "ObjectiveError",
    "SpecError",
    "StorageError",
    "StudyctlError",
    "TrainingData",
    "TrialContext",
    "__version__",
    "function_objective",
    "keras_objective",
    "register_objective",
]
