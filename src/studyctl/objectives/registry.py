"""Objectives registered per model name, and how studyctl finds them.

Discovery, in order: objectives registered by already-imported code, ``objectives/<name>.py``
and then the other files of the objectives folder, the ``studyctl.objectives`` entry-point
group, and a ``module:attr`` reference. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from studyctl.errors import ObjectiveError, one_line
from studyctl.objectives.api import (
    BuildModel,
    FunctionObjective,
    KerasObjective,
    LoadData,
    Objective,
    ObjectiveFunc,
)

ENTRY_POINT_GROUP = "studyctl.objectives"
DEFAULT_OBJECTIVES_DIR = "objectives"

_REGISTRY: dict[str, Objective] = {}


def _source_of(func: Callable[..., Any]) -> str:
    try:
        return inspect.getsourcefile(func) or func.__module__
    except TypeError:
        return getattr(func, "__module__", "?")


def register_objective(objective: Objective) -> Objective:
    """Register `objective` under its name (a later registration of the same name wins)."""
    if not objective.source:
        fn = objective.build_model if isinstance(objective, KerasObjective) else objective.func
        objective.source = _source_of(fn)
    _REGISTRY[objective.name] = objective
    return objective


def keras_objective(name: str, *, load_data: LoadData) -> Callable[[BuildModel], BuildModel]:
    """Decorator: register a ``build_model(trial, ctx) -> compiled keras.Model`` under `name`.

    `load_data(options)` (or `load_data()`) returns a `TrainingData`; it is called once per
    process and cached.
    """

    def decorate(build_model: BuildModel) -> BuildModel:
        register_objective(KerasObjective(name=name, build_model=build_model, load_data=load_data))
        return build_model

    return decorate


def function_objective(
    name: str, *, load_data: LoadData | None = None
) -> Callable[[ObjectiveFunc], ObjectiveFunc]:
    """Decorator: register a plain ``func(trial, ctx) -> value`` objective under `name`."""

    def decorate(func: ObjectiveFunc) -> ObjectiveFunc:
        register_objective(FunctionObjective(name=name, func=func, load_data=load_data))
        return func

    return decorate


@dataclass
class Discovery:
    """What a search of the objectives folder and entry points found."""

    objectives: dict[str, Objective]
    errors: dict[str, str]  # source -> one-line import error


def _import_file(path: Path) -> None:
    module_name = f"studyctl_objectives.{path.stem}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise


def _import_objectives_file(path: Path, errors: dict[str, str]) -> None:
    try:
        _import_file(path)
    except Exception as exc:
        errors[str(path)] = one_line(exc)


def _as_objective(name: str, obj: Any, source: str) -> Objective:
    if isinstance(obj, KerasObjective | FunctionObjective):
        obj.source = obj.source or source
        return obj
    if callable(obj):
        return FunctionObjective(name=name, func=obj, source=source)
    raise ObjectiveError(
        f"objective {name!r} from {source} is a {type(obj).__name__}; expected a "
        "KerasObjective, a FunctionObjective or a function (trial, ctx) -> value"
    )


def _load_module_attr(ref: str) -> Objective:
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ObjectiveError(
            f"objective {ref!r}: cannot import {module_name}: {one_line(exc)}"
        ) from exc
    if attr not in vars(module):
        raise ObjectiveError(f"objective {ref!r}: module {module_name} has no attribute {attr!r}")
    return _as_objective(ref, getattr(module, attr), ref)


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def discover_objectives(objectives_dir: str | Path | None = None) -> Discovery:
    """Import every objective file in the folder and every entry point; list what registered."""
    errors: dict[str, str] = {}
    folder = Path(objectives_dir or DEFAULT_OBJECTIVES_DIR)
    if folder.is_dir():
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                _import_objectives_file(path, errors)
    found = dict(_REGISTRY)
    for name, ep in _entry_points().items():
        if name in found:
            continue
        try:
            found[name] = _as_objective(name, ep.load(), f"entry point {ep.value}")
        except Exception as exc:
            errors[f"entry point {name} = {ep.value}"] = one_line(exc)
    return Discovery(objectives=found, errors=errors)


def resolve_objective(ref: str, objectives_dir: str | Path | None = None) -> Objective:
    """Find the objective `ref` names; raise `ObjectiveError` listing what is registered."""
    if ":" in ref:
        return _load_module_attr(ref)
    if ref in _REGISTRY:
        return _REGISTRY[ref]
    folder = Path(objectives_dir or DEFAULT_OBJECTIVES_DIR)
    own_file = folder / f"{ref}.py"
    if own_file.is_file():
        try:
            _import_file(own_file)
        except Exception as exc:
            raise ObjectiveError(
                f"objective {ref!r}: {own_file} failed to import: {one_line(exc)}"
            ) from exc
        if ref in _REGISTRY:
            return _REGISTRY[ref]
    eps = _entry_points()
    if ref in eps:
        ep = eps[ref]
        try:
            loaded = ep.load()
        except Exception as exc:
            raise ObjectiveError(
                f"objective {ref!r}: entry point {ep.value} failed to import: {one_line(exc)}"
            ) from exc
        obj = _as_objective(ref, loaded, f"entry point {ep.value}")
        obj.source = obj.source or f"entry point {ep.value}"
        return obj
    found = discover_objectives(folder)
    if ref in found.objectives:
        return found.objectives[ref]
    known = ", ".join(sorted(found.objectives)) or "none"
    broken = "; ".join(f"{src}: {err}" for src, err in found.errors.items())
    raise ObjectiveError(
        f"unknown objective {ref!r}; registered: {known}"
        + (f"; failed to import: {broken}" if broken else ""),
        hint=f"add {folder}/{ref}.py, install a package with a '{ENTRY_POINT_GROUP}' entry "
        "point, or use module:attr",
    )
