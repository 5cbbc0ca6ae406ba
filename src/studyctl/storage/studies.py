"""Studies in a storage: created or loaded from a spec (sampler, pruner, budget record,
enqueued trials), the stored spec, deletion and copies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from studyctl.errors import StudyctlError
from studyctl.spec import StudySpec
from studyctl.spec.choices import build_pruner, build_sampler
from studyctl.spec.stored import spec_from_snapshot
from studyctl.storage import tables
from studyctl.storage.rdb import StudyctlStorage, study_exists
from studyctl.storage.urls import mask_url, scrub_secrets_in, scrub_spec_json
from studyctl.verbosity import configure_optuna_logging

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from studyctl.storage.connect import WorkerStorage


def spec_json(spec: StudySpec) -> str:
    """The spec snapshot kept with the study, without any credentials (a password in the
    spec's `storage` URL is never stored)."""
    return json.dumps(scrub_secrets_in(spec.to_dict()), sort_keys=True)


def load_stored_spec(storage: WorkerStorage, study_name: str) -> StudySpec:
    """The spec a study was last run with, as kept in studyctl's table.

    A record whose Optuna study is gone (deleted by a tool that knows nothing of studyctl,
    e.g. Optuna's own CLI) belongs to a deleted study: it is removed, and the study is
    reported unknown rather than silently created and run again."""
    record = storage.control.study_spec(study_name)
    exists = study_exists(storage, study_name)
    if record is None:
        if exists:
            raise StudyctlError(
                f"study {study_name!r} in {mask_url(storage.url)} was not created by studyctl",
                hint="run it once with `studyctl run SPEC` so its spec is recorded",
            )
        raise unknown_study(storage, study_name)
    if not exists:
        if isinstance(storage, StudyctlStorage):
            storage.control.in_transaction(
                lambda conn: tables.delete_study_records(conn, study_name)
            )
        raise unknown_study(storage, study_name)
    return spec_from_snapshot(json.loads(record["spec_json"]))


def unknown_study(storage: WorkerStorage, study_name: str) -> StudyctlError:
    names = sorted(s.study_name for s in storage.get_all_studies())
    return StudyctlError(
        f"no study {study_name!r} in {mask_url(storage.url)}; studies there: "
        + (", ".join(names) if names else "none")
    )


def _check_directions(study: optuna.Study, spec: StudySpec) -> None:
    stored = tuple(d.name.lower() for d in study.directions)
    if stored != spec.directions:
        raise StudyctlError(
            f"{spec.path}: direction: study {spec.name!r} already exists with direction(s) "
            f"{', '.join(stored)}; the spec says {', '.join(spec.directions)}",
            hint="use a new study name or `studyctl delete` the old study",
        )


@dataclass
class OpenedStudy:
    study: optuna.Study
    spec: StudySpec
    created: bool


def _database(storage: WorkerStorage) -> StudyctlStorage:
    if not isinstance(storage, StudyctlStorage):
        raise StudyctlError(
            f"{mask_url(storage.url)}: creating or changing a study needs the database URL, "
            "not a storage proxy"
        )
    return storage


def open_study(storage: WorkerStorage, spec: StudySpec, *, create: bool) -> OpenedStudy:
    """Load the spec's study, or create it (with its budget record and enqueued trials).

    A new study is deleted again if anything after its creation fails, so a failed `run`
    leaves no half-written study behind.
    """
    configure_optuna_logging()
    if spec.sampler.type == "cmaes" and not isinstance(storage, StudyctlStorage):
        raise StudyctlError(
            f"{spec.path}: sampler.type: cmaes keeps its state as pickles in trial system "
            "attributes, which studyctl's proxy refuses to write (every worker unpickles them)",
            hint="connect the workers of a CMA-ES study to the database URL, not the proxy",
        )
    sampler, pruner = build_sampler(spec), build_pruner(spec)
    if study_exists(storage, spec.name):
        study = optuna.load_study(
            study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner
        )
        _check_directions(study, spec)
        if create:
            _database(storage).control.in_transaction(
                lambda conn: tables.upsert_study_record(
                    conn, spec.name, spec.n_trials, spec_json(spec)
                )
            )
        return OpenedStudy(study=study, spec=spec, created=False)
    if not create:
        raise unknown_study(storage, spec.name)
    database = _database(storage)
    # Several commands may create the same study at once (the same `run` started on many
    # machines): one creates it under the lock, the others then find and load it.
    with database.setup_lock():
        if study_exists(database, spec.name):
            return open_study(database, spec, create=True)
        return _create_study(database, spec, sampler, pruner)


def _create_study(
    storage: StudyctlStorage,
    spec: StudySpec,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> OpenedStudy:
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        directions=[StudyDirection[d.upper()] for d in spec.directions],
        load_if_exists=True,
    )
    try:
        study.set_metric_names(list(spec.metrics))
        study.set_user_attr("studyctl_objective", spec.objective)
        for params in spec.enqueue:
            study.enqueue_trial(dict(params), skip_if_exists=True)

        def record(conn: Connection) -> None:
            # Rows left by a study of this name deleted outside studyctl go first.
            tables.delete_study_records(conn, spec.name)
            tables.upsert_study_record(conn, spec.name, spec.n_trials, spec_json(spec))

        storage.control.in_transaction(record)
    except BaseException:
        optuna.delete_study(study_name=spec.name, storage=storage)
        raise
    return OpenedStudy(study=study, spec=spec, created=True)


def delete_study(storage: StudyctlStorage, study_name: str) -> None:
    """Delete the study with its trials and studyctl's rows, in one transaction."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        raise unknown_study(storage, study_name) from None
    storage.delete_study(study_id)


def copy_study(
    study_name: str, source: StudyctlStorage, target: StudyctlStorage, *, overwrite: bool
) -> int:
    """Copy a study with all its trials (params, values, intermediate values, attributes,
    states, times) and its studyctl record; return the number of trials copied.

    An existing study of the same name in `target` is replaced only with `overwrite`; a copy
    that fails half-way is deleted again.
    """
    if not study_exists(source, study_name):
        raise unknown_study(source, study_name)
    configure_optuna_logging()  # no "[I ...] A new study created" from Optuna's copy
    if study_exists(target, study_name):
        if not overwrite:
            raise StudyctlError(
                f"study {study_name!r} already exists in {mask_url(target.url)}",
                hint="pass --overwrite to replace it",
            )
        delete_study(target, study_name)
    with tables.transaction(source.engine) as conn:
        record = tables.get_study_record(conn, study_name)
    try:
        optuna.copy_study(from_study_name=study_name, from_storage=source, to_storage=target)
        if record is not None:
            with tables.transaction(target.engine) as conn:
                tables.upsert_study_record(
                    conn, study_name, record["n_trials"], scrub_spec_json(record["spec_json"])
                )
    except BaseException:
        if study_exists(target, study_name):
            delete_study(target, study_name)
        raise
    return len(optuna.load_study(study_name=study_name, storage=target).trials)


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (one objective) or the Pareto front (several); empty before any
    trial completed."""
    try:
        if len(study.directions) > 1:
            return list(study.best_trials)
        return [study.best_trial]
    except ValueError:
        return []
