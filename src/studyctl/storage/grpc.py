"""`studyctl proxy`: Optuna's gRPC storage proxy plus studyctl's own operations, one port.

Hundreds of workers through one proxy hold no database connection of their own: the proxy
keeps one bounded pool. Workers reach it with ``--storage grpc://HOST:PORT``.

Beside Optuna's ``optuna.storage.StorageService`` the server carries one method,
``/studyctl.Control/Call``, whose request is ``{"op": NAME, "kwargs": {...}}`` in JSON and
whose reply is ``{"result": ...}``: the claims, worker rows and lost-trial sweep of
`studyctl.storage.control.Control`, run by `SqlControl` in the proxy. Optuna's trial heartbeat does
not pass through the proxy; workers behind it find lost trials by studyctl's worker
heartbeat instead (`SqlControl.fail_lost_trials`).

Like optuna-dashboard, the proxy has no authentication: bind it to an address that only
the cluster's nodes reach.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import grpc
from optuna.storages import GrpcStorageProxy
from optuna.storages._grpc.server import make_server

from studyctl.errors import StorageError
from studyctl.spec import WorkerSpec
from studyctl.storage.control import OPERATIONS, Control, SqlControl
from studyctl.storage.rdb import open_storage
from studyctl.storage.urls import mask_url

METHOD = "/studyctl.Control/Call"
HELLO = "hello"
# Database connections the proxy holds at most (pool plus overflow), whatever the number
# of workers; gRPC threads beyond that wait for a free connection.
PROXY_POOL_SIZE = 8
PROXY_THREADS = 32
CALL_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 15.0


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _loads(data: bytes) -> Any:
    return json.loads(data.decode())


def _handler(control: SqlControl) -> grpc.GenericRpcHandler:
    from studyctl import __version__

    def call(request: dict[str, Any], context: grpc.ServicerContext) -> Any:
        op = request.get("op")
        if op == HELLO:
            return {"result": {"studyctl": __version__}}
        if op not in OPERATIONS:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"unknown operation {op!r}")
        try:
            return {"result": getattr(control, str(op))(**request.get("kwargs", {}))}
        except Exception as exc:  # the worker gets the reason as one line
            context.abort(grpc.StatusCode.INTERNAL, f"{op}: {type(exc).__name__}: {exc}")

    return grpc.method_handlers_generic_handler(
        "studyctl.Control",
        {
            "Call": grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=_loads, response_serializer=_dumps
            )
        },
    )


def serve(
    storage_url: str, host: str, port: int, *, ready: Callable[[str], None] | None = None
) -> int:
    """Serve until SIGINT/SIGTERM; return the exit code (0 after a signal)."""
    storage = open_storage(storage_url, pool_size=PROXY_POOL_SIZE)
    # The proxy serves many studies' workers and outlives their runs: it rides out database
    # outages as long as a run does by default (each call waits, its client with it).
    storage.outage.tolerance_s = WorkerSpec().storage_outage_tolerance
    server = make_server(storage, host, port, ThreadPoolExecutor(max_workers=PROXY_THREADS))
    server.add_generic_rpc_handlers((_handler(storage.control),))
    try:
        server.start()
    except RuntimeError as exc:
        raise StorageError(
            f"storage proxy cannot listen on {host}:{port}: {exc}",
            hint="choose a free --port",
        ) from None
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if ready is not None:
            ready(f"storage proxy for {mask_url(storage_url)} listening on grpc://{host}:{port}")
        stop.wait()
    finally:
        server.stop(grace=5).wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
        storage.engine.dispose()
    return 0


class RemoteControl(Control):
    """`Control`'s operations, run by a `studyctl proxy`: each is sent as keyword
    arguments (the same names as `SqlControl`'s) and its JSON result returned."""

    def __init__(self, target: str, shown: str) -> None:
        self.shown = shown
        self._channel = grpc.insecure_channel(target)
        self._call = self._channel.unary_unary(
            METHOD, request_serializer=_dumps, response_deserializer=_loads
        )

    def rpc(self, op: str, **kwargs: Any) -> Any:
        try:
            # wait_for_ready: a proxy that restarts within the timeout costs a pause, not
            # a failed worker.
            reply = self._call(
                {"op": op, "kwargs": kwargs}, timeout=CALL_TIMEOUT_S, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            code = exc.code()
            details = exc.details() or code.name
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise StorageError(
                    f"{self.shown} is not a studyctl storage proxy ({details})",
                    hint="start it with `studyctl proxy --storage URL --port PORT`",
                ) from None
            raise StorageError(f"storage proxy {self.shown}: {details}") from None
        return reply["result"]

    def study_spec(self, study_name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.rpc("study_spec", study_name=study_name)
        return result

    def insert_worker(
        self, *, worker_id: str, study_name: str, host: str, pid: int, gpus: str
    ) -> None:
        self.rpc(
            "insert_worker",
            worker_id=worker_id,
            study_name=study_name,
            host=host,
            pid=pid,
            gpus=gpus,
        )

    def update_worker(self, worker_id: str, *, beat: bool = False, **values: Any) -> None:
        self.rpc("update_worker", worker_id=worker_id, beat=beat, **values)

    def worker_trials_done(self, worker_id: str) -> int:
        return int(self.rpc("worker_trials_done", worker_id=worker_id))

    def try_claim(
        self,
        *,
        study_name: str,
        study_id: int,
        worker_id: str,
        n_trials: int | None,
        stale_after: float,
    ) -> int | None:
        claim = self.rpc(
            "try_claim",
            study_name=study_name,
            study_id=study_id,
            worker_id=worker_id,
            n_trials=n_trials,
            stale_after=stale_after,
        )
        return None if claim is None else int(claim)

    def attach_claim(self, claim_id: int, trial_id: int) -> None:
        self.rpc("attach_claim", claim_id=claim_id, trial_id=trial_id)

    def release_claim(self, claim_id: int) -> int | None:
        trial_id = self.rpc("release_claim", claim_id=claim_id)
        return None if trial_id is None else int(trial_id)

    def release_worker_claims(self, worker_id: str) -> None:
        self.rpc("release_worker_claims", worker_id=worker_id)

    def count_finished(self, study_id: int) -> int:
        return int(self.rpc("count_finished", study_id=study_id))

    def state_counts(self, study_id: int) -> dict[str, int]:
        counts = self.rpc("state_counts", study_id=study_id)
        return {str(k): int(v) for k, v in counts.items()}

    def fail_lost_trials(
        self,
        *,
        study_name: str,
        grace_s: float,
        max_retries: int,
        worker_id: str | None = None,
    ) -> list[int]:
        numbers = self.rpc(
            "fail_lost_trials",
            study_name=study_name,
            grace_s=grace_s,
            max_retries=max_retries,
            worker_id=worker_id,
        )
        return [int(n) for n in numbers]

    def close(self) -> None:
        self._channel.close()


class ProxyStorage(GrpcStorageProxy):
    """Optuna's gRPC storage client with studyctl's operations beside it (`control`)."""

    def __init__(self, url: str, host: str, port: int) -> None:
        super().__init__(host=host, port=port)
        self.url = url
        self.remote = RemoteControl(f"{host}:{port}", url)
        self.control: Control = self.remote
        self.heartbeat_stale_trial_callback: Callable[..., None] | None = None


def parse_proxy_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "grpc" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise StorageError(f"storage URL {url!r} is malformed", hint="expected grpc://HOST:PORT")
    return parts.hostname, port


_PROXIES: dict[str, ProxyStorage] = {}


def connect_proxy(url: str) -> ProxyStorage:
    """Connect (once per process) to the `studyctl proxy` at grpc://HOST:PORT, or raise a
    `StorageError` naming the address when it cannot be reached or is not studyctl's."""
    if url in _PROXIES:
        return _PROXIES[url]
    host, port = parse_proxy_url(url)
    storage = ProxyStorage(url, host, port)
    try:
        storage.wait_server_ready(timeout=CONNECT_TIMEOUT_S)
    except Exception:
        storage.close()
        raise StorageError(
            f"cannot reach the storage proxy at {url} within {CONNECT_TIMEOUT_S:.0f} s",
            hint="check that `studyctl proxy` runs there and the port is open",
        ) from None
    try:
        storage.remote.rpc(HELLO)
    except StorageError:
        storage.remote.close()
        storage.close()
        raise
    _PROXIES[url] = storage
    return storage
