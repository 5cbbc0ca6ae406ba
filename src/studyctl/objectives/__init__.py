"""Objectives: the API a user's objective file uses (`api`) and how studyctl finds the
objective a spec names (`registry`)."""

from __future__ import annotations

from studyctl.objectives.api import (
    FunctionObjective,
    KerasObjective,
    Objective,
    TrainingData,
    TrialContext,
    load_objective_data,
)
from studyctl.objectives.registry import (
    DEFAULT_OBJECTIVES_DIR,
    ENTRY_POINT_GROUP,
    Discovery,
    discover_objectives,
    function_objective,
    keras_objective,
    register_objective,
    resolve_objective,
)

__all__ = [
    "DEFAULT_OBJECTIVES_DIR",
    "ENTRY_POINT_GROUP",
    "Discovery",
    "FunctionObjective",
    "KerasObjective",
    "Objective",
    "TrainingData",
    "TrialContext",
    "discover_objectives",
    "function_objective",
    "keras_objective",
    "load_objective_data",
    "register_objective",
    "resolve_objective",
]
