"""Study specs: TOML files parsed into a validated `StudySpec` (`parse`), the spec's form
(`model`) and the one table of samplers and pruners it may name (`choices`)."""

from __future__ import annotations

from studyctl.spec.model import (
    ArtifactsSpec,
    GridValue,
    LoggingSpec,
    PrunerSpec,
    SamplerSpec,
    SpaceParam,
    StudySpec,
    TrainingSpec,
    WorkerSpec,
)
from studyctl.spec.parse import load_spec, parse_spec

__all__ = [
    "ArtifactsSpec",
    "GridValue",
    "LoggingSpec",
    "PrunerSpec",
    "SamplerSpec",
    "SpaceParam",
    "StudySpec",
    "TrainingSpec",
    "WorkerSpec",
    "load_spec",
    "parse_spec",
]
