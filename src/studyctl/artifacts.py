"""The artifact location of a study (checkpoints, kept models, uploaded artifacts)."""

from __future__ import annotations

import os
from pathlib import Path

from studyctl.errors import StudyctlError
from studyctl.spec import StudySpec


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
        from studyctl.objectstore import ObjectStore

        ObjectStore.parse(spec.artifacts.store).check(spec.name)
    return path
