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
from studyctl.spec.model import StudySpec


def spec_from_snapshot(data: dict[str, Any]) -> StudySpec:
    """The spec of a stored snapshot, or a `StudyctlError` naming what this studyctl lacks."""
    _refuse_unknown_settings(data)
    return StudySpec.from_dict(data)


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


def _refuse_unknown_settings(data: dict[str, Any]) -> None:
    """Raise if a stored snapshot names a setting no field of this studyctl's spec holds, or
    gives a setting of fixed choices (sampler, pruner and their options, backend, a search
    space's type...) a value this studyctl does not have."""
    unknown = sorted(set(data) - _names(StudySpec))
    for section, kind in _SECTIONS.items():
        value = data.get(section)
        if isinstance(value, dict):
            unknown += sorted(f"{section}.{k}" for k in set(value) - _names(kind))
    for param, value in (data.get("space") or {}).items():
        if isinstance(value, dict):
            unknown += sorted(f"space.{param}.{k}" for k in set(value) - _names(model.SpaceParam))
    unknown += _unknown_values(data)
    if unknown:
        raise StudyctlError(
            f"study {data.get('name', '?')!r}: its stored spec has "
            f"{', '.join(sorted(unknown))}, which this studyctl ({__version__}) does not know: "
            "the study was last run by a newer studyctl",
            hint="upgrade studyctl here to the version that last ran it; every machine that "
            "runs a study needs the same version",
        )


def _unknown_values(data: dict[str, Any]) -> list[str]:
    """`key = value` for each setting of fixed choices whose stored value this studyctl's
    choices lack."""

    def section(name: str) -> dict[str, Any]:
        value = data.get(name)
        return value if isinstance(value, dict) else {}

    out: list[str] = []
    for name, table in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        kind = section(name).get("type")
        if kind not in table:
            out.append(f"{name}.type = {kind!r}")
            continue
        options = section(name).get("options") or {}
        out += [f"{name}.{k}" for k in sorted(set(options) - set(table[kind].options))]
    fixed = (
        ("training.backend", section("training").get("backend", "tensorflow"), model.BACKENDS),
        (
            "training.objective_value",
            section("training").get("objective_value", "best"),
            model.OBJECTIVE_VALUES,
        ),
    )
    out += [f"{key} = {value!r}" for key, value, allowed in fixed if value not in allowed]
    out += [f"direction = {d!r}" for d in data.get("directions", ()) if d not in model.DIRECTIONS]
    for param, value in (data.get("space") or {}).items():
        kind = value.get("type") if isinstance(value, dict) else None
        if kind not in model.SPACE_TYPES:
            out.append(f"space.{param}.type = {kind!r}")
    return out
