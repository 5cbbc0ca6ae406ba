"""A worker's storage: the database itself, or a `studyctl proxy` in front of it, with
Optuna's heartbeat and stale-trial retry set for either."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeAlias

from optuna.storages import RetryHeartbeatStaleTrialCallback

from studyctl.storage.outage import OUTAGE_TOLERANCE_ENV
from studyctl.storage.rdb import StudyctlStorage, open_existing_storage

if TYPE_CHECKING:
    from studyctl.storage.grpc import ProxyStorage

# The database itself, or a `studyctl proxy` in front of it.
WorkerStorage: TypeAlias = "StudyctlStorage | ProxyStorage"


def open_worker_storage(url: str) -> WorkerStorage:
    """A worker's storage: the database itself, or a `studyctl proxy` at grpc(s)://HOST:PORT
    (gRPC is imported only then)."""
    if url.startswith(("grpc://", "grpcs://")):
        # gRPC's own log lines (a failed TLS handshake, ...) would follow studyctl's one
        # clear line; its errors reach the user through that line.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        from studyctl.storage.grpc import connect_proxy

        return connect_proxy(url)
    return open_existing_storage(url)  # a worker joins a study: its database exists


def enable_heartbeat(
    storage: WorkerStorage,
    *,
    interval: int,
    grace_period: int,
    max_retries: int,
) -> None:
    """Turn on Optuna's trial heartbeat; a stale trial is failed and retried (same params)
    up to `max_retries` times. Behind the proxy, which carries no trial heartbeat, only the
    retry is set: there studyctl's worker heartbeat finds lost trials
    (`SqlControl.fail_lost_trials`)."""
    # The retry resumes from its original's checkpoint, so it keeps the original's curve.
    retry = RetryHeartbeatStaleTrialCallback(
        max_retry=max_retries, inherit_intermediate_values=True
    )
    storage.heartbeat_stale_trial_callback = retry
    if isinstance(storage, StudyctlStorage):
        storage.heartbeat_interval = interval
        storage.grace_period = grace_period
        storage.failed_trial_callback = retry


def set_outage_tolerance(storage: WorkerStorage, seconds: float) -> None:
    """Let `storage` wait up to `seconds` for a database that went away and came back (the
    spec's `[worker] storage_outage_tolerance`). Behind a `studyctl proxy` the proxy holds
    the database connections and waits itself."""
    if isinstance(storage, StudyctlStorage):
        storage.outage.tolerance_s = float(seconds)


def outage_env(storage: WorkerStorage) -> dict[str, str]:
    """The environment that gives a process started on `storage` (a worker, a trial
    process) the same tolerance from its first connection, even if it starts while the
    database is away."""
    if isinstance(storage, StudyctlStorage):
        return {OUTAGE_TOLERANCE_ENV: f"{storage.outage.tolerance_s:g}"}
    return {}
