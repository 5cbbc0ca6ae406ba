"""`studyctl proxy`: Optuna's gRPC storage proxy plus studyctl's own operations, one port.

Hundreds of workers through one proxy hold no database connection of their own: the proxy
keeps one bounded pool. Workers reach it with ``--storage grpc://HOST:PORT``.

Beside Optuna's ``optuna.storage.StorageService`` the server carries one method,
``/studyctl.Control/Call``, whose request is ``{"op": NAME, "kwargs": {...}}`` in JSON and
whose reply is ``{"result": ...}``: the claims, worker rows and lost-trial sweep of
`studyctl.storage.control.Control`, run by `SqlControl` in the proxy. Optuna's trial heartbeat does
not pass through the proxy; workers behind it find lost trials by studyctl's worker
heartbeat instead (`SqlControl.fail_lost_trials`).

What makes it safe to expose (`studyctl.storage.grpc_security`): a shared token checked on
every call of both services, TLS (``grpcs://``), no study deletion or CMA-ES state written
by clients, and control arguments checked before they run. Without a token it serves
loopback only.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from optuna.storages import GrpcStorageProxy
from optuna.storages._grpc.auto_generated import api_pb2_grpc
from optuna.storages._grpc.client import GrpcClientCache

from studyctl.errors import StorageError
from studyctl.spec import WorkerSpec
from studyctl.storage.control import OPERATIONS, Control, SqlControl
from studyctl.storage.grpc_security import (
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    GuardedStorageService,
    TokenInterceptor,
    check_control_call,
    client_channel,
    explain_rpc_error,
    read_token,
    server_credentials,
)
from studyctl.storage.rdb import open_storage
from studyctl.storage.urls import is_loopback, mask_url

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

    def call(request: Any, context: grpc.ServicerContext) -> Any:
        if not isinstance(request, dict):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected a JSON object")
        op = request.get("op")
        if op == HELLO:
            return {"result": {"studyctl": __version__}}
        if op not in OPERATIONS:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"unknown operation {op!r}")
        try:
            kwargs = check_control_call(str(op), request.get("kwargs", {}))
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            return {"result": getattr(control, str(op))(**kwargs)}
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
    storage_url: str,
    host: str,
    port: int,
    *,
    token_file: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    ready: Callable[[str], None] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM; return the exit code (0 after a signal).

    The token comes from `token_file`, $STUDYCTL_PROXY_TOKEN_FILE or $STUDYCTL_PROXY_TOKEN;
    without one only a loopback address is served."""
    token = read_token(token_file)
    if token is None and not is_loopback(host):
        raise StorageError(
            f"refusing to serve the storage on {host} without a token: anyone who reaches "
            "the port could read, change and delete studies",
            hint=f"set ${TOKEN_ENV} or ${TOKEN_FILE_ENV} (or --token-file), with "
            "--tls-cert/--tls-key, or bind 127.0.0.1",
        )
    if (tls_cert is None) != (tls_key is None):
        raise StorageError("--tls-cert and --tls-key go together")
    credentials = None
    if tls_cert is not None and tls_key is not None:
        credentials = server_credentials(tls_cert, tls_key)
    storage = open_storage(storage_url, pool_size=PROXY_POOL_SIZE)
    # The proxy serves many studies' workers and outlives their runs: it rides out database
    # outages as long as a run does by default (each call waits, its client with it).
    storage.outage.tolerance_s = WorkerSpec().storage_outage_tolerance
    server = grpc.server(
        ThreadPoolExecutor(max_workers=PROXY_THREADS),
        interceptors=[TokenInterceptor(token)] if token is not None else [],
        options=[("grpc.max_receive_message_length", -1)],
    )
    api_pb2_grpc.add_StorageServiceServicer_to_server(GuardedStorageService(storage), server)
    server.add_generic_rpc_handlers((_handler(storage.control),))
    address = f"{host}:{port}"
    try:
        if credentials is not None:
            server.add_secure_port(address, credentials)
        else:
            server.add_insecure_port(address)
        server.start()
    except RuntimeError as exc:
        storage.engine.dispose()
        raise StorageError(
            f"storage proxy cannot listen on {host}:{port}: {exc}",
            hint="choose a free --port",
        ) from None
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if ready is not None:
            scheme = "grpc" if credentials is None else "grpcs"
            auth = "token required" if token is not None else "no token: loopback only"
            ready(
                f"storage proxy for {mask_url(storage_url)} listening on "
                f"{scheme}://{host}:{port} ({auth})"
            )
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

    def __init__(self, channel: grpc.Channel, shown: str, *, tls: bool = False) -> None:
        self.shown = shown
        self.tls = tls
        self._channel = channel
        self._call = self._channel.unary_unary(
            METHOD, request_serializer=_dumps, response_deserializer=_loads
        )

    def hello(self, timeout: float) -> None:
        """Greet the proxy, retrying while it cannot be reached for up to `timeout`
        seconds; a wrong token, certificate or scheme fails at once with its own line."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                self._call({"op": HELLO, "kwargs": {}}, timeout=max(left, 1.0))
                return
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or exc.code().name
                self._raise_explained(code, details)
                if code != grpc.StatusCode.UNAVAILABLE or left <= 0:
                    raise StorageError(
                        f"cannot reach the storage proxy at {self.shown} within "
                        f"{timeout:.0f} s ({details})",
                        hint="check that `studyctl proxy` runs there and the port is open",
                    ) from None
                time.sleep(min(0.5, max(left, 0.0)))

    def _raise_explained(self, code: grpc.StatusCode, details: str) -> None:
        explained = explain_rpc_error(self.shown, code, details, tls=self.tls)
        if explained is not None:
            raise StorageError(explained)
        if code == grpc.StatusCode.UNIMPLEMENTED:
            raise StorageError(
                f"{self.shown} is not a studyctl storage proxy ({details})",
                hint="start it with `studyctl proxy --storage URL --port PORT`",
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
            try:
                self._raise_explained(code, details)
            except StorageError as explained:
                raise explained from None
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
        stored_budget: bool = False,
    ) -> int | None:
        extra = {"stored_budget": True} if stored_budget else {}
        claim = self.rpc(
            "try_claim",
            study_name=study_name,
            study_id=study_id,
            worker_id=worker_id,
            n_trials=n_trials,
            stale_after=stale_after,
            **extra,
        )
        return None if claim is None else int(claim)

    def attach_claim(
        self,
        claim_id: int,
        trial_id: int,
        *,
        worker_id: str | None = None,
        current_trial: int | None = None,
        worker_attr: dict[str, Any] | None = None,
    ) -> None:
        extra: dict[str, object] = {}
        if worker_id is not None:
            extra = {"worker_id": worker_id, "current_trial": current_trial}
        if worker_attr is not None:
            extra["worker_attr"] = worker_attr
        self.rpc("attach_claim", claim_id=claim_id, trial_id=trial_id, **extra)

    def release_claim(
        self, claim_id: int, *, worker_id: str | None = None, trials_done: int | None = None
    ) -> int | None:
        extra: dict[str, object] = {}
        if worker_id is not None:
            extra = {"worker_id": worker_id, "trials_done": trials_done}
        trial_id = self.rpc("release_claim", claim_id=claim_id, **extra)
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
        reason: str | None = None,
    ) -> list[int]:
        numbers = self.rpc(
            "fail_lost_trials",
            study_name=study_name,
            grace_s=grace_s,
            max_retries=max_retries,
            worker_id=worker_id,
            reason=reason,
        )
        return [int(n) for n in numbers]

    def forget_trial_attrs(
        self, *, trial_id: int, user_keys: list[str], system_keys: list[str]
    ) -> None:
        self.rpc(
            "forget_trial_attrs",
            trial_id=trial_id,
            user_keys=list(user_keys),
            system_keys=list(system_keys),
        )

    def close(self) -> None:
        self._channel.close()


class ProxyStorage(GrpcStorageProxy):
    """Optuna's gRPC storage client with studyctl's operations beside it (`control`)."""

    def __init__(self, url: str, host: str, port: int, *, tls: bool, token: str | None) -> None:
        self._tls = tls
        self._token = token
        super().__init__(host=host, port=port)  # calls _setup
        self.url = url
        self.remote = RemoteControl(self._channel, url, tls=tls)
        self.control: Control = self.remote
        self.heartbeat_stale_trial_callback: Callable[..., None] | None = None

    def _setup(self) -> None:
        """Optuna's stub over studyctl's channel: TLS when asked, the token on every call."""
        self._channel = client_channel(
            f"{self._host}:{self._port}", tls=self._tls, token=self._token
        )
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)


def parse_proxy_url(url: str) -> tuple[str, int, bool]:
    """HOST, PORT and whether TLS is used, from grpc://HOST:PORT or grpcs://HOST:PORT."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (
        parts.scheme not in ("grpc", "grpcs")
        or not parts.hostname
        or port is None
        or parts.path not in ("", "/")
    ):
        raise StorageError(
            f"storage URL {mask_url(url)!r} is malformed",
            hint="expected grpc://HOST:PORT, or grpcs://HOST:PORT for a proxy with TLS",
        )
    return parts.hostname, port, parts.scheme == "grpcs"


_PROXIES: dict[str, ProxyStorage] = {}


def connect_proxy(url: str) -> ProxyStorage:
    """Connect (once per process) to the `studyctl proxy` at grpc(s)://HOST:PORT with the
    token from the environment, or raise a `StorageError` that says what is wrong: not
    reachable, not studyctl's, a refused token, an untrusted certificate."""
    if url in _PROXIES:
        return _PROXIES[url]
    host, port, tls = parse_proxy_url(url)
    storage = ProxyStorage(url, host, port, tls=tls, token=read_token(where=f"${TOKEN_FILE_ENV}"))
    try:
        storage.remote.hello(CONNECT_TIMEOUT_S)
    except StorageError:
        storage.close()
        raise
    _PROXIES[url] = storage
    return storage
