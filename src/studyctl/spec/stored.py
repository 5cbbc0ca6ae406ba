"""A study's spec as kept in the database (`StudySpec.to_dict`'s JSON), read back.

A snapshot written by a newer studyctl may hold settings this one does not know, or values
of its settings of fixed choices that it lacks (a new sampler, pruner, backend...): it is
refused in one line naming them, where running it would drop them or fail mid-run. A
snapshot of an older studyctl lacks the settings added since, which take their defaults.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from studyctl import __version__
from studyctl.errors import StudyctlError
from studyctl.spec import model
from studyctl.spec.choices import PRUNERS, SAMPLERS


def spec_from_snapshot(data: dict[str, Any]) -> model.StudySpec:
    """The spec of a stored snapshot, or a `StudyctlError` naming what this studyctl lacks."""
    unknown = _unknown(data)
    if unknown:
        raise StudyctlError(
            f"study {data.get('name', '?')!r}: its stored spec has "
            f"{', '.join(sorted(unknown))}, which this studyctl ({__version__}) does not know: "
            "the study was last run by a newer studyctl",
            hint="upgrade studyctl here to the version that last ran it; every machine that "
            "runs a study needs the same version",
        )
    return model.StudySpec.from_dict(data)


_SECTIONS: dict[str, type] = {
    "sampler": model.SamplerSpec,
    "pruner": model.PrunerSpec,
    "training": model.TrainingSpec,
    "worker": model.WorkerSpec,
    "artifacts": model.ArtifactsSpec,
    "logging": model.LoggingSpec,
}


def _names(kind: type) -> set[str]:
    return {f.name for f in fields(kind)}


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _unknown(data: dict[str, Any]) -> list[str]:
    """Each setting no field of this studyctl's spec holds (`key`), and each setting of
    fixed choices (sampler, pruner and their options, backend, a search space's type...)
    whose value this studyctl lacks (`key = value`)."""
    out = [str(k) for k in set(data) - _names(model.StudySpec)]
    for name, kind in _SECTIONS.items():
        out += [f"{name}.{k}" for k in set(_table(data.get(name))) - _names(kind)]
    for name, choices in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        section = _table(data.get(name))
        chosen = section.get("type")
        if chosen not in choices:
            out.append(f"{name}.type = {chosen!r}")
        else:
            options = set(_table(section.get("options"))) - set(choices[chosen].options)
            out += [f"{name}.{k}" for k in options]
    training = _table(data.get("training"))
    fixed = (
        ("training.backend", training.get("backend", "tensorflow"), model.BACKENDS),
        (
            "training.objective_value",
            training.get("objective_value", "best"),
            model.OBJECTIVE_VALUES,
        ),
    )
    out += [f"{key} = {value!r}" for key, value, allowed in fixed if value not in allowed]
    out += [f"direction = {d!r}" for d in data.get("directions", ()) if d not in model.DIRECTIONS]
    for param, value in _table(data.get("space")).items():
        entry = _table(value)
        out += [f"space.{param}.{k}" for k in set(entry) - _names(model.SpaceParam)]
        if entry.get("type") not in model.SPACE_TYPES:
            out.append(f"space.{param}.type = {entry.get('type')!r}")
    return out
