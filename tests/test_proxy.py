"""`studyctl proxy`: workers through Optuna's gRPC storage proxy plus studyctl's operations.

The proxy carries no trial heartbeat; a killed worker's trial is found by studyctl's worker
heartbeat (`SqlControl.fail_lost_trials`) and retried by the others. The database sees only
the proxy's bounded pool, however many workers there are.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from studyctl.errors import StorageError
from studyctl.storage import open_storage
from studyctl.storage.engine import POSTGRES_MAX_OVERFLOW
from studyctl.storage.grpc import PROXY_POOL_SIZE, connect_proxy

from .conftest import PG_DSN, STUDYCTL, prepare_sleepy_study, run_cli

N_TRIALS = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


@contextmanager
def running_proxy(storage_url: str, cwd: Path) -> Iterator[str]:
    """`studyctl proxy` in a subprocess; yields its grpc:// URL once it listens."""
    port = free_port()
    proc = subprocess.Popen(
        [*STUDYCTL, "proxy", "-s", storage_url, "--port", str(port)],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"listening on grpc://127.0.0.1:{port}" in line, line + proc.stdout.read()
        yield f"grpc://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


@contextmanager
def peak_connections(database: str) -> Iterator[list[int]]:
    """Samples pg_stat_activity for `database` while the block runs; yields [peak]."""
    import psycopg

    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            while not stop.wait(0.1):
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
                ).fetchone()
                peak[0] = max(peak[0], row[0] if row else 0)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def _workers(
    n: int, name: str, url: str, objectives: Path, cwd: Path
) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [*STUDYCTL, "worker", name, "-s", url, "--objectives-dir", str(objectives), "-q"],
            cwd=cwd,
            env=_env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for _ in range(n)
    ]


def _prepare(tmp_path: Path, name: str, db_url: str) -> Path:
    return prepare_sleepy_study(tmp_path, name, db_url, N_TRIALS, tmp_path / "artifacts")


@pytest.mark.slow
def test_four_workers_through_the_proxy_one_killed(tmp_path: Path, postgres_url: str) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    objectives = _prepare(tmp_path, "proxied", postgres_url)
    study = optuna.load_study(study_name="proxied", storage=postgres_url)
    with running_proxy(postgres_url, tmp_path) as grpc_url, peak_connections(database) as peak:
        workers = _workers(4, "proxied", grpc_url, objectives, tmp_path)
        try:
            victim = None
            deadline = time.monotonic() + 120
            while victim is None and time.monotonic() < deadline:
                for t in study.get_trials(states=(TrialState.RUNNING,)):
                    if len(t.intermediate_values) >= 1 and "worker" in t.user_attrs:
                        victim = t
                        break
                time.sleep(0.05)
            assert victim is not None, "no trial ran through the proxy"
            trial_pid = victim.user_attrs["worker"]["pid"]
            owner_pid = int(victim.user_attrs["worker"]["worker_id"].rsplit("-", 2)[1])
            owner = next(w for w in workers if w.pid == owner_pid)
            os.kill(trial_pid, signal.SIGKILL)  # the trial process
            os.killpg(owner.pid, signal.SIGKILL)  # and its worker: nobody fails the trial
            outputs = {w.pid: w.communicate(timeout=180)[0] for w in workers if w is not owner}
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
    for w in workers:
        if w is not owner:
            assert w.returncode == 0, outputs[w.pid]
    trials = optuna.load_study(study_name="proxied", storage=postgres_url).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == N_TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert trials[victim.number].state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    # The retry kept the original's learning curve (it resumes from its checkpoint).
    assert set(victim.intermediate_values) <= set(retry.intermediate_values)
    # Only the proxy talks to the database: its pool bounds the connections.
    assert 0 < peak[0] <= PROXY_POOL_SIZE + POSTGRES_MAX_OVERFLOW
    print(f"4 workers through the proxy: peak PostgreSQL connections {peak[0]}")


@pytest.mark.slow
def test_connections_with_and_without_the_proxy(tmp_path: Path, postgres_url: str) -> None:
    """The same 4 workers, first through the proxy, then straight on PostgreSQL (each
    process with its own pool): the proxy bounds the connections, and holds fewer."""
    database = postgres_url.rsplit("/", 1)[1]
    peaks: dict[str, int] = {}
    for name in ("proxied", "direct"):
        objectives = _prepare(tmp_path / name, name, postgres_url)
        with contextlib.ExitStack() as stack:
            url = postgres_url
            if name == "proxied":
                url = stack.enter_context(running_proxy(postgres_url, tmp_path))
            peak = stack.enter_context(peak_connections(database))
            workers = _workers(4, name, url, objectives, tmp_path)
            outs = [w.communicate(timeout=180)[0] for w in workers]
        assert [w.returncode for w in workers] == [0] * 4, outs
        peaks[name] = peak[0]
        trials = optuna.load_study(study_name=name, storage=postgres_url).trials
        assert sum(t.state == TrialState.COMPLETE for t in trials) == N_TRIALS
    print(f"4 workers: peak PostgreSQL connections {peaks}")
    assert 0 < peaks["proxied"] <= PROXY_POOL_SIZE + POSTGRES_MAX_OVERFLOW
    # worker + trial process per worker, each with a pool of at most 3 + 1
    assert 4 < peaks["direct"] <= 4 * 2 * 4
    assert peaks["proxied"] < peaks["direct"]


def test_proxy_errors_are_one_line(tmp_path: Path, sqlite_url: str) -> None:
    closed = free_port()
    out = run_cli(["worker", "s", "-s", f"grpc://127.0.0.1:{closed}"], cwd=tmp_path)
    assert out.returncode == 2
    assert f"cannot reach the storage proxy at grpc://127.0.0.1:{closed}" in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2, out.stderr  # the error and its hint
    out = run_cli(["worker", "s", "-s", "grpc://127.0.0.1"], cwd=tmp_path)
    assert out.returncode == 2 and "expected grpc://HOST:PORT" in out.stderr
    out = run_cli(["status", "s", "-s", f"grpc://127.0.0.1:{closed}"], cwd=tmp_path)
    assert out.returncode == 2 and "serves workers only" in out.stderr


def test_a_plain_optuna_proxy_is_refused(sqlite_url: str) -> None:
    from optuna.storages._grpc.server import make_server

    port = free_port()
    server = make_server(open_storage(sqlite_url), "127.0.0.1", port)
    server.start()
    try:
        with pytest.raises(StorageError, match="is not a studyctl storage proxy"):
            connect_proxy(f"grpc://127.0.0.1:{port}")
    finally:
        server.stop(grace=None)


def test_worker_through_proxy_on_sqlite(tmp_path: Path, sqlite_url: str) -> None:
    """The proxy serves SQLite too: one worker finishes the study through it and `status`
    (on the database URL) lists it."""
    objectives = _prepare(tmp_path, "lite", sqlite_url)
    with running_proxy(sqlite_url, tmp_path) as grpc_url:
        out = run_cli(
            ["worker", "lite", "-s", grpc_url, "--objectives-dir", str(objectives)],
            cwd=tmp_path,
            timeout=300,
        )
    assert out.returncode == 0, out.stderr
    assert f"{N_TRIALS}/{N_TRIALS} finished" in out.stdout
    status = run_cli(["status", "lite", "-s", sqlite_url, "-f", "json"], cwd=tmp_path)
    assert '"state": "stopped"' in status.stdout
    trials = optuna.load_study(study_name="lite", storage=sqlite_url).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == N_TRIALS
