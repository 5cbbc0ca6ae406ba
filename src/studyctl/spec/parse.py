"""Study specs: one TOML file per study, parsed with tomllib into a validated `StudySpec`.

Every problem is raised as a `SpecError` naming the file, the key and what was expected,
before anything touches a database.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from studyctl.errors import SpecError
from studyctl.spec.choices import PRUNERS, SAMPLERS, Choice
from studyctl.spec.model import (
    BACKENDS,
    DIRECTIONS,
    OBJECTIVE_VALUES,
    SPACE_TYPES,
    STUDY_NAME_RE,
    TRAINING_AXES,
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
from studyctl.spec.table import MAX_DB_INT, Table, at_most, positive, scalar_list, show


def _choice(table: Table, kinds: dict[str, Choice], what: str, default: str) -> str:
    kind = table.take("type", str, default)
    if kind not in kinds:
        raise table.error("type", f"unknown {what} {kind!r}; expected one of: " + ", ".join(kinds))
    return str(kind)


def _choice_options(table: Table, choice: Choice) -> dict[str, Any]:
    """The options `choice` accepts, each checked for its type and range."""
    options: dict[str, Any] = {}
    for name, option in choice.options.items():
        value = table.take(name, option.kind)
        if value is None:
            continue
        problem = option.problem(value)
        if problem is not None:
            raise table.error(name, problem)
        options[name] = value
    return options


def _parse_sampler(table: Table) -> SamplerSpec:
    kind = _choice(table, SAMPLERS, "sampler", "tpe")
    choice = SAMPLERS[kind]
    seed = table.take("seed", int)
    grid: dict[str, list[GridValue]] = {}
    if kind == "grid":
        grid_table = table.table("grid")
        if not grid_table.data:
            raise table.error("grid", "expected a table of parameter = [values] for sampler 'grid'")
        for name, values in grid_table.data.items():
            grid[name] = scalar_list(grid_table, name, values)
        grid_table.data.clear()
    options = _choice_options(table, choice)
    table.finish(["type", "seed", *choice.options, *choice.extra_keys])
    return SamplerSpec(type=kind, seed=seed, options=options, grid=grid)


def _parse_pruner(table: Table) -> PrunerSpec:
    kind = _choice(table, PRUNERS, "pruner", "none")
    options = _choice_options(table, PRUNERS[kind])
    if (
        "min_resource" in options
        and "max_resource" in options
        and (options["min_resource"] > options["max_resource"])
    ):
        raise table.error(
            "min_resource",
            f"expected <= max_resource ({options['max_resource']}), got {options['min_resource']}",
        )
    table.finish(["type", *PRUNERS[kind].options])
    return PrunerSpec(type=kind, options=options)


def _parse_training(table: Table) -> TrainingSpec:
    d = TrainingSpec()
    spec = TrainingSpec(
        epochs=table.take("epochs", int, d.epochs),
        batch_size=table.take("batch_size", int, d.batch_size),
        validation_split=table.take("validation_split", float, d.validation_split),
        shuffle=table.take("shuffle", bool, d.shuffle),
        verbose=table.take("verbose", int, d.verbose),
        objective_value=table.take("objective_value", str, d.objective_value),
        backend=table.take("backend", str, d.backend),
    )
    positive(table, "epochs", spec.epochs)
    positive(table, "batch_size", spec.batch_size)
    if not 0.0 <= spec.validation_split < 1.0:
        raise table.error(
            "validation_split", f"expected a number in [0, 1), got {spec.validation_split}"
        )
    if spec.verbose not in (0, 1, 2):
        raise table.error("verbose", f"expected 0, 1 or 2, got {spec.verbose}")
    if spec.objective_value not in OBJECTIVE_VALUES:
        raise table.error(
            "objective_value", f"expected 'best' or 'last', got {spec.objective_value!r}"
        )
    if spec.backend not in BACKENDS:
        raise table.error("backend", f"expected one of {', '.join(BACKENDS)}, got {spec.backend!r}")
    table.finish(TrainingSpec.__dataclass_fields__)
    return spec


def _parse_worker(table: Table) -> WorkerSpec:
    d = WorkerSpec()
    spec = WorkerSpec(
        heartbeat_interval=table.take("heartbeat_interval", int, d.heartbeat_interval),
        grace_period=table.take("grace_period", int, d.grace_period),
        max_retries=table.take("max_retries", int, d.max_retries),
        trials_per_process=table.take("trials_per_process", int, d.trials_per_process),
        prewarm=table.take("prewarm", bool, d.prewarm),
        max_consecutive_failures=table.take(
            "max_consecutive_failures", int, d.max_consecutive_failures
        ),
        storage_outage_tolerance=table.take(
            "storage_outage_tolerance", int, d.storage_outage_tolerance
        ),
    )
    for name in (
        "heartbeat_interval",
        "grace_period",
        "trials_per_process",
        "max_consecutive_failures",
    ):
        positive(table, name, getattr(spec, name))
    positive(table, "max_retries", spec.max_retries, allow_zero=True)
    positive(table, "storage_outage_tolerance", spec.storage_outage_tolerance, allow_zero=True)
    at_most(table, "storage_outage_tolerance", spec.storage_outage_tolerance, 7 * 24 * 3600)
    if spec.grace_period <= spec.heartbeat_interval:
        raise table.error(
            "grace_period",
            f"expected more than heartbeat_interval "
            f"({spec.heartbeat_interval}), got {spec.grace_period}",
        )
    table.finish(WorkerSpec.__dataclass_fields__)
    return spec


def _parse_space(table: Table) -> dict[str, SpaceParam]:
    space: dict[str, SpaceParam] = {}
    for name in list(table.data):
        entry = table.table(name)
        kind = entry.take("type", str, required=True)
        if kind not in SPACE_TYPES:
            raise entry.error("type", f"expected one of {', '.join(SPACE_TYPES)}, got {kind!r}")
        if kind == "categorical":
            raw = entry.data.pop("choices", None)
            if raw is None:
                raise entry.error("choices", "missing; expected a non-empty array")
            space[name] = SpaceParam(type=kind, choices=tuple(scalar_list(entry, "choices", raw)))
            entry.finish(["type", "choices"])
            continue
        num = int if kind == "int" else float
        low = entry.take("low", num, required=True)
        high = entry.take("high", num, required=True)
        log = entry.take("log", bool, False)
        step = entry.take("step", num)
        if low > high:
            raise entry.error("low", f"expected low <= high, got low={low} > high={high}")
        if log and low <= 0:
            raise entry.error("low", f"expected low > 0 with log = true, got {low}")
        if step is not None and step <= 0:
            raise entry.error("step", f"expected a step > 0, got {step}")
        if step is not None and log:
            raise entry.error("step", "cannot be combined with log = true")
        entry.finish(["type", "low", "high", "log", "step"])
        space[name] = SpaceParam(type=kind, low=low, high=high, log=log, step=step)
    return space


def _parse_params(table: Table) -> dict[str, GridValue]:
    params: dict[str, GridValue] = {}
    for name, value in table.data.items():
        if not isinstance(value, str | int | float | bool):
            raise table.error(name, f"expected a number, string or boolean, got {show(value)}")
        params[name] = value
    table.data.clear()
    return params


_TOP_KEYS = (
    "name",
    "objective",
    "direction",
    "directions",
    "metric",
    "metrics",
    "storage",
    "n_trials",
    "timeout",
    "sampler",
    "pruner",
    "training",
    "worker",
    "artifacts",
    "logging",
    "params",
    "space",
    "options",
    "enqueue",
)


def _parse_directions(top: Table) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`direction`/`directions` and `metric`/`metrics`, one metric per direction."""
    if "direction" in top.data and "directions" in top.data:
        raise top.error("directions", "give either direction or directions, not both")
    if "directions" in top.data:
        directions = tuple(top.take("directions", list))
        key_d = "directions"
    else:
        directions = (top.take("direction", str, "minimize"),)
        key_d = "direction"
    if not directions:
        raise top.error(key_d, "expected at least one of 'minimize' or 'maximize'")
    for d in directions:
        if d not in DIRECTIONS:
            raise top.error(key_d, f"expected 'minimize' or 'maximize', got {show(d)}")

    if "metric" in top.data and "metrics" in top.data:
        raise top.error("metrics", "give either metric or metrics, not both")
    if "metrics" in top.data:
        metrics = tuple(top.take("metrics", list))
        key_m = "metrics"
        for m in metrics:
            if not isinstance(m, str):
                raise top.error("metrics", f"expected an array of metric names, got {show(m)}")
    else:
        metrics = (top.take("metric", str, "val_loss"),)
        key_m = "metric"
    if len(metrics) != len(directions):
        raise top.error(
            key_m,
            f"expected {len(directions)} metric name(s), one per direction, got {len(metrics)}",
        )
    return directions, metrics


def _parse_artifacts(art: Table) -> ArtifactsSpec:
    artifacts = ArtifactsSpec(
        path=art.take("path", str, ArtifactsSpec.path),
        checkpoints=art.take("checkpoints", bool, ArtifactsSpec.checkpoints),
        checkpoint_interval_s=art.take(
            "checkpoint_interval_s", float, ArtifactsSpec.checkpoint_interval_s
        ),
        keep_best_model=art.take("keep_best_model", bool, ArtifactsSpec.keep_best_model),
        store=art.take("store", str),
    )
    positive(art, "checkpoint_interval_s", artifacts.checkpoint_interval_s, allow_zero=True)
    if artifacts.store is not None and (
        not artifacts.store.startswith("s3://") or len(artifacts.store.rstrip("/")) <= len("s3://")
    ):
        raise art.error("store", f"expected s3://BUCKET[/PREFIX], got {artifacts.store!r}")
    art.finish(ArtifactsSpec.__dataclass_fields__)
    return artifacts


def _parse_logging(table: Table) -> LoggingSpec:
    logging_spec = LoggingSpec(tensorboard=table.take("tensorboard", str))
    table.finish(LoggingSpec.__dataclass_fields__)
    return logging_spec


def _parse_enqueue(top: Table) -> tuple[dict[str, GridValue], ...]:
    raw_enqueue = top.data.pop("enqueue", [])
    if not isinstance(raw_enqueue, list):
        raise top.error("enqueue", "expected an array of tables ([[enqueue]])")
    enqueue = []
    for i, item in enumerate(raw_enqueue):
        if not isinstance(item, dict) or not item:
            raise top.error(f"enqueue[{i}]", "expected a table of parameter = value")
        enqueue.append(_parse_params(Table(top.path, item, f"enqueue[{i}].")))
    return tuple(enqueue)


def _positive_ints(values: Iterable[Any]) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def _check_training_axes(spec: StudySpec) -> None:
    """batch_size and epochs as search axes take positive integers; a grid sampler samples
    only its grid, so there a [space] range of them has no sampler."""
    path = spec.path
    for name in TRAINING_AXES:
        expected = f"expected positive integers for the training setting {name}"
        if name in spec.params and not _positive_ints([spec.params[name]]):
            raise SpecError(path, f"params.{name}", f"{expected}, got {spec.params[name]!r}")
        if name in spec.sampler.grid and not _positive_ints(spec.sampler.grid[name]):
            raise SpecError(
                path, f"sampler.grid.{name}", f"{expected}, got {show(spec.sampler.grid[name])}"
            )
        p = spec.space.get(name)
        if p is None or name in spec.params:
            continue
        key = f"space.{name}"
        if p.type == "float":
            raise SpecError(path, f"{key}.type", f"{expected}: use 'int' or 'categorical'")
        if p.type == "categorical" and not _positive_ints(p.choices):
            raise SpecError(path, f"{key}.choices", f"{expected}, got {show(list(p.choices))}")
        if p.type == "int" and (p.low is None or p.low < 1):
            raise SpecError(path, f"{key}.low", f"{expected}, got {p.low!r}")
        if spec.sampler.type == "grid" and name not in spec.sampler.grid:
            raise SpecError(
                path,
                key,
                f"the grid sampler samples only [sampler.grid]; give {name} there as a list "
                "of values",
            )


def _check_whole(spec: StudySpec) -> StudySpec:
    """Rules that join several tables; returns the spec with a grid's budget filled in."""
    path = spec.path
    multi = len(spec.directions) > 1
    if multi and PRUNERS[spec.pruner.type].single_objective:
        raise SpecError(
            path,
            "pruner.type",
            "pruning needs a single objective; use 'none' with several directions",
        )
    sampler = SAMPLERS[spec.sampler.type]
    if multi and sampler.single_objective:
        raise SpecError(path, "sampler.type", sampler.multi_objective_hint)
    _check_training_axes(spec)
    n_trials = spec.n_trials
    if spec.sampler.type == "grid":
        grid_size = math.prod(len(v) for v in spec.sampler.grid.values())
        if n_trials is None:
            n_trials = grid_size
        elif n_trials > grid_size:
            raise SpecError(
                path, "n_trials", f"expected at most the grid's {grid_size} points, got {n_trials}"
            )
    if n_trials is None and spec.timeout is None:
        raise SpecError(
            path, "n_trials", "missing; set n_trials (the study's total budget) or timeout"
        )
    return spec if n_trials == spec.n_trials else replace(spec, n_trials=n_trials)


def parse_spec(data: dict[str, Any], path: str) -> StudySpec:
    """Validate parsed TOML `data` read from `path` into a `StudySpec`."""
    top = Table(path, data)
    name = top.take("name", str, required=True)
    if not STUDY_NAME_RE.match(name):
        raise top.error(
            "name", f"expected letters, digits, '-', '_' or '.' (at most 128), got {name!r}"
        )
    objective = top.take("objective", str, required=True)
    if not objective.strip():
        raise top.error("objective", "expected a registered objective name or module:attr")
    directions, metrics = _parse_directions(top)
    storage = top.take("storage", str)
    n_trials = top.take("n_trials", int)
    positive(top, "n_trials", n_trials)
    # The budget is an INTEGER column in the database (and trial numbers are too).
    at_most(top, "n_trials", n_trials, MAX_DB_INT)
    timeout = top.take("timeout", float)
    positive(top, "timeout", timeout)
    spec = StudySpec(
        path=path,
        name=name,
        objective=objective,
        directions=directions,
        metrics=metrics,
        storage=storage,
        n_trials=n_trials,
        timeout=timeout,
        sampler=_parse_sampler(top.table("sampler")),
        pruner=_parse_pruner(top.table("pruner")),
        training=_parse_training(top.table("training")),
        worker=_parse_worker(top.table("worker")),
        artifacts=_parse_artifacts(top.table("artifacts")),
        logging=_parse_logging(top.table("logging")),
        params=_parse_params(top.table("params")),
        space=_parse_space(top.table("space")),
        options=top.table("options").data,
        enqueue=_parse_enqueue(top),
    )
    top.finish(_TOP_KEYS)
    return _check_whole(spec)


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate the study spec at `path`."""
    p = Path(path)
    shown = str(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(shown, None, "no such file") from None
    except OSError as exc:
        raise SpecError(shown, None, f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SpecError(shown, None, "not UTF-8 text; expected a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(shown, None, f"invalid TOML: {exc}") from None
    return parse_spec(data, shown)
