"""GPU sets for workers: parse `--gpus`, split into disjoint sets, without importing TF."""

from __future__ import annotations

import os
import shutil
import subprocess

from studyctl.errors import StudyctlError


def visible_gpus() -> list[str]:
    """The GPUs this machine offers: $CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]


def parse_gpus(value: str) -> list[str]:
    """`0,1,2,3`, `0-7`, `0-3,6` or `all` -> GPU ids (as CUDA_VISIBLE_DEVICES spells them)."""
    value = value.strip()
    if value == "all":
        found = visible_gpus()
        if not found:
            raise StudyctlError("--gpus all: no GPU found on this machine (nvidia-smi lists none)")
        return found
    ids: list[str] = []
    for part in value.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        if dash and lo.isdigit() and hi.isdigit() and int(lo) <= int(hi):
            ids.extend(str(i) for i in range(int(lo), int(hi) + 1))
        elif part.isdigit():
            ids.append(part)
        else:
            raise StudyctlError(
                f"--gpus {value!r}: expected ids like 0,1,2, a range like 0-7, or all; got {part!r}"
            )
    if len(set(ids)) != len(ids):
        raise StudyctlError(f"--gpus {value!r}: a GPU is listed twice")
    return ids


def assign_gpu_sets(gpus: list[str], n_workers: int, per_worker: int) -> list[str]:
    """Disjoint CUDA_VISIBLE_DEVICES values, one per worker, in order."""
    if per_worker < 1:
        raise StudyctlError(f"--gpus-per-worker: expected at least 1, got {per_worker}")
    needed = n_workers * per_worker
    if len(gpus) < needed:
        raise StudyctlError(
            f"{n_workers} workers x {per_worker} GPU(s) need {needed} GPUs; --gpus gives "
            f"{len(gpus)} ({','.join(gpus) or 'none'})",
            hint="use fewer workers, fewer GPUs per worker, or more GPUs",
        )
    return [",".join(gpus[i * per_worker : (i + 1) * per_worker]) for i in range(n_workers)]


def gpu_sets_for(workers: int, gpus: str | None, per_worker: int) -> list[str | None]:
    """Each of `workers` workers' GPU set from `--gpus` (None: the worker inherits the
    environment's GPUs)."""
    if gpus is None:
        return [None] * workers
    if not workers:
        raise StudyctlError("--gpus needs --workers N (each worker gets its own GPU set)")
    return list(assign_gpu_sets(parse_gpus(gpus), workers, per_worker))
