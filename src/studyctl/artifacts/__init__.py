"""The artifact location of a study (checkpoints, kept models, uploaded artifacts): checked
before any trial, its object store, and housekeeping that never fails a trial."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studyctl.errors import StudyctlError
from studyctl.spec import StudySpec

if TYPE_CHECKING:
    from studyctl.artifacts.objectstore import ObjectStore


def check_artifact_path(spec: StudySpec) -> Path:
    """Fail before any trial when this machine cannot write the study's artifacts: a worker
    that trains without its checkpoints cannot resume anyone's trial."""
    path = Path(spec.artifacts.path)
    if not (spec.artifacts.checkpoints or spec.artifacts.keep_best_model):
        return path
    probe = path / f".studyctl-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StudyctlError(
            f"study {spec.name!r}: artifacts.path {str(path)!r} is not writable here "
            f"({exc.strerror})",
            hint="workers on several machines need a shared file system path there",
        ) from None
    if spec.artifacts.store is not None:
        from studyctl.artifacts.objectstore import ObjectStore

        ObjectStore.parse(spec.artifacts.store).check(spec.name)
    return path


def object_store(spec: StudySpec) -> ObjectStore | None:
    if spec.artifacts.store is None:
        return None
    from studyctl.artifacts.objectstore import ObjectStore

    return ObjectStore.parse(spec.artifacts.store)


def warn(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)


def best_effort(what: str, fn: Any, *args: Any) -> None:
    """Object-store housekeeping must not fail a trial that trained: warn and go on."""
    try:
        fn(*args)
    except Exception as exc:
        warn(f"{what} failed: {type(exc).__name__}: {exc}")
