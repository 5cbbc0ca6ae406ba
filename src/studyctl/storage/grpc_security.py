"""What makes `studyctl proxy` safe to expose to a cluster's network.

Optuna's gRPC storage proxy has no TLS and no authentication, and lets any client delete
studies or write any system attribute, including the pickled ``cma:optimizer`` state that
CmaEsSampler loads in every worker of a CMA-ES study. Here:

* **Token.** One shared secret, read from ``$STUDYCTL_PROXY_TOKEN`` or a file
  (``$STUDYCTL_PROXY_TOKEN_FILE`` or the proxy's ``--token-file``), never from argv. Every
  call, Optuna's ``StorageService`` and studyctl's ``Control`` alike, carries it as gRPC
  metadata (``authorization: Bearer ...``); a server interceptor refuses any call without
  it (``UNAUTHENTICATED``).
* **TLS.** The proxy serves TLS with ``--tls-cert``/``--tls-key``; workers connect with
  ``grpcs://HOST:PORT`` and trust the CA file in ``$STUDYCTL_PROXY_CA`` (else the system's
  roots).
* **Least privilege.** Clients may not delete studies, nor write system attributes of
  CMA-ES (``cma:``/``cmawm:``), and studyctl's control operations get their arguments
  checked (names, types, bounds) before anything runs.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.storages._grpc.servicer import OptunaStorageProxyService, _from_proto_trial

from studyctl.errors import StorageError

TOKEN_ENV = "STUDYCTL_PROXY_TOKEN"
TOKEN_FILE_ENV = "STUDYCTL_PROXY_TOKEN_FILE"
CA_ENV = "STUDYCTL_PROXY_CA"
METADATA_KEY = "authorization"
MIN_TOKEN_LENGTH = 16
# Attribute prefixes of Optuna's CmaEsSampler, whose values it unpickles.
PROTECTED_ATTR_PREFIXES = ("cma:", "cmawm:")
REFUSED_PROTECTED_ATTR = "system attribute {key!r} is refused by studyctl's proxy"
GRPC_OPTIONS = [("grpc.max_receive_message_length", -1)]


def read_token(token_file: Path | None = None, *, where: str = "--token-file") -> str | None:
    """The proxy token: from `token_file`, else ``$STUDYCTL_PROXY_TOKEN_FILE``, else
    ``$STUDYCTL_PROXY_TOKEN``; None when none is set."""
    path, source = token_file, where
    if path is None and os.environ.get(TOKEN_FILE_ENV):
        path, source = Path(os.environ[TOKEN_FILE_ENV]), f"${TOKEN_FILE_ENV}"
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise StorageError(f"{source}: cannot read token file {path}: {exc.strerror}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        source = f"${TOKEN_ENV}"
        if not token:
            return None
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise StorageError(
            f"{source}: the proxy token must be at least {MIN_TOKEN_LENGTH} characters "
            "without spaces",
            hint='make one with `python -c "import secrets; print(secrets.token_urlsafe(32))"`',
        )
    return token


def _bearer(token: str) -> str:
    return f"Bearer {token}"


# --- server side ------------------------------------------------------------------------


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call whose metadata lacks the proxy's token, whatever its service."""

    def __init__(self, token: str) -> None:
        self._expected = _bearer(token).encode()

        def deny(request: bytes, context: grpc.ServicerContext) -> None:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "studyctl proxy: missing or wrong token",
            )

        self._deny: grpc.RpcMethodHandler = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        sent = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == METADATA_KEY and isinstance(value, str):
                sent = value
        if hmac.compare_digest(sent.encode(), self._expected):
            return continuation(handler_call_details)
        return self._deny


def _protected(key: str) -> bool:
    return key.startswith(PROTECTED_ATTR_PREFIXES)


class GuardedStorageService(OptunaStorageProxyService):
    """Optuna's storage service without the calls a worker never needs and an attacker
    would: deleting a study, writing CMA-ES's pickled state."""

    def DeleteStudy(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            "deleting a study through studyctl's proxy is refused; use `studyctl delete` "
            "with the database URL",
        )

    def SetStudySystemAttribute(self, request: Any, context: grpc.ServicerContext) -> Any:
        if _protected(request.key):
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, REFUSED_PROTECTED_ATTR.format(key=request.key)
            )
        return super().SetStudySystemAttribute(request, context)

    def SetTrialSystemAttribute(self, request: Any, context: grpc.ServicerContext) -> Any:
        if _protected(request.key):
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, REFUSED_PROTECTED_ATTR.format(key=request.key)
            )
        return super().SetTrialSystemAttribute(request, context)

    def CreateNewTrial(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not request.template_trial_is_none:
            template = _from_proto_trial(request.template_trial)
            for key in template.system_attrs:
                if _protected(key):
                    context.abort(
                        grpc.StatusCode.PERMISSION_DENIED, REFUSED_PROTECTED_ATTR.format(key=key)
                    )
        return super().CreateNewTrial(request, context)


assert hasattr(api_pb2, "DeleteStudyRequest")  # the service names overridden above exist


def server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    try:
        pair = (key.read_bytes(), cert.read_bytes())
    except OSError as exc:
        raise StorageError(
            f"cannot read TLS file {exc.filename}: {exc.strerror}",
            hint="--tls-cert and --tls-key take PEM files",
        ) from None
    return grpc.ssl_server_credentials([pair])


# --- checks of the control operations' arguments ----------------------------------------

MAX_GRACE_S = 30 * 24 * 3600.0
MIN_GRACE_S = 1.0


@dataclass(frozen=True)
class Arg:
    kind: type | tuple[type, ...]
    required: bool = True
    nullable: bool = False
    low: float | None = None
    high: float | None = None


_NAME = Arg(str)
_INT = Arg(int, low=0)
_ARGS: dict[str, dict[str, Arg]] = {
    "study_spec": {"study_name": _NAME},
    "insert_worker": {
        "worker_id": _NAME,
        "study_name": _NAME,
        "host": _NAME,
        "pid": _INT,
        "gpus": Arg(str),
    },
    "update_worker": {
        "worker_id": _NAME,
        "beat": Arg(bool, required=False),
        "current_trial": Arg(int, required=False, nullable=True, low=0),
        "trials_done": Arg(int, required=False, low=0),
        "state": Arg(str, required=False),
        "message": Arg(str, required=False, nullable=True),
    },
    "worker_trials_done": {"worker_id": _NAME},
    "try_claim": {
        "study_name": _NAME,
        "study_id": _INT,
        "worker_id": _NAME,
        "n_trials": Arg(int, nullable=True, low=0),
        "stale_after": Arg((int, float), low=0, high=MAX_GRACE_S),
        "stored_budget": Arg(bool, required=False),
    },
    "attach_claim": {
        "claim_id": _INT,
        "trial_id": _INT,
        "worker_id": Arg(str, required=False, nullable=True),
        "current_trial": Arg(int, required=False, nullable=True, low=0),
        "worker_attr": Arg(dict, required=False, nullable=True),
    },
    "release_claim": {
        "claim_id": _INT,
        "worker_id": Arg(str, required=False, nullable=True),
        "trials_done": Arg(int, required=False, nullable=True, low=0),
    },
    "release_worker_claims": {"worker_id": _NAME},
    "count_finished": {"study_id": _INT},
    "state_counts": {"study_id": _INT},
    "fail_lost_trials": {
        "study_name": _NAME,
        "grace_s": Arg((int, float), low=0, high=MAX_GRACE_S),
        "max_retries": Arg(int, low=0, high=1000),
        "worker_id": Arg(str, required=False, nullable=True),
        # Why the trials are failed (e.g. "trial process killed by SIGKILL"): a worker
        # behind the proxy passes it since the trials' reasons were added.
        "reason": Arg(str, required=False, nullable=True),
    },
    "forget_trial_attrs": {"trial_id": _INT, "user_keys": Arg(list), "system_keys": Arg(list)},
}
MAX_TEXT = 4096
# What forget_trial_attrs may delete: the attributes naming artifacts studyctl removes (a
# kept model, its dashboard artifact, a checkpoint folder), nothing else a client chooses.
FORGETTABLE_USER_KEYS = ("model_path", "checkpoint_dir")
FORGETTABLE_SYSTEM_PREFIX = "artifacts:"


def check_control_call(op: str, kwargs: Any) -> dict[str, Any]:
    """The keyword arguments of control operation `op`, checked; raises ValueError with
    the first problem."""
    spec = _ARGS.get(op)
    if spec is None:
        raise ValueError(f"unknown operation {op!r}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{op}: kwargs must be an object")
    unknown = sorted(set(kwargs) - set(spec))
    if unknown:
        raise ValueError(f"{op}: unknown argument(s) {unknown}")
    for name, arg in spec.items():
        if name not in kwargs:
            if arg.required:
                raise ValueError(f"{op}: missing argument {name!r}")
            continue
        value = kwargs[name]
        if value is None:
            if not arg.nullable:
                raise ValueError(f"{op}: {name} must not be null")
            continue
        kinds = arg.kind if isinstance(arg.kind, tuple) else (arg.kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ValueError(f"{op}: {name} must be {_kind_name(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise ValueError(
                f"{op}: {name} must be {_kind_name(kinds)}, got {type(value).__name__}"
            )
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise ValueError(f"{op}: {name} is longer than {MAX_TEXT} characters")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if value != value or (arg.low is not None and value < arg.low):
                raise ValueError(f"{op}: {name} must be at least {arg.low}, got {value}")
            if arg.high is not None and value > arg.high:
                raise ValueError(f"{op}: {name} must be at most {arg.high}, got {value}")
    attr = kwargs.get("worker_attr") if op == "attach_claim" else None
    if attr is not None and len(json.dumps(attr)) > MAX_TEXT:
        raise ValueError(f"attach_claim: worker_attr is longer than {MAX_TEXT} characters")
    if op == "forget_trial_attrs":
        _check_forgettable(kwargs["user_keys"], kwargs["system_keys"])
    if op == "fail_lost_trials" and kwargs.get("worker_id") is None:
        grace = float(kwargs["grace_s"])
        if grace < MIN_GRACE_S:
            raise ValueError(
                f"fail_lost_trials: grace_s must be at least {MIN_GRACE_S} without a "
                f"worker_id, got {grace}"
            )
    return dict(kwargs)


def _check_forgettable(user_keys: list[Any], system_keys: list[Any]) -> None:
    for key in user_keys:
        if key not in FORGETTABLE_USER_KEYS:
            raise ValueError(
                f"forget_trial_attrs: user key {key!r} is not one of "
                f"{', '.join(FORGETTABLE_USER_KEYS)}"
            )
    for key in system_keys:
        if not (
            isinstance(key, str) and key.startswith(FORGETTABLE_SYSTEM_PREFIX) and len(key) <= 200
        ):
            raise ValueError(
                f"forget_trial_attrs: system key {key!r} is not an artifact attribute "
                f"({FORGETTABLE_SYSTEM_PREFIX}<id>)"
            )


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


# --- client side ------------------------------------------------------------------------


class _ClientCallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        super().__init__()
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = tuple(metadata)
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = getattr(base, "compression", None)


class TokenClientInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Adds the token to every call's metadata."""

    def __init__(self, token: str) -> None:
        self._pair = (METADATA_KEY, _bearer(token))

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        metadata = [m for m in (client_call_details.metadata or ()) if m[0] != METADATA_KEY]
        metadata.append(self._pair)
        return continuation(_ClientCallDetails(client_call_details, metadata), request)


def read_ca() -> bytes | None:
    path = os.environ.get(CA_ENV)
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StorageError(f"${CA_ENV}: cannot read CA file {path}: {exc.strerror}") from None


def client_channel(target: str, *, tls: bool, token: str | None) -> grpc.Channel:
    """A channel to a `studyctl proxy`: TLS (trusting $STUDYCTL_PROXY_CA, else the system's
    roots) when `tls`, and the token on every call when there is one."""
    if tls:
        credentials = grpc.ssl_channel_credentials(root_certificates=read_ca())
        channel = grpc.secure_channel(target, credentials, options=GRPC_OPTIONS)
    else:
        channel = grpc.insecure_channel(target, options=GRPC_OPTIONS)
    if token is not None:
        channel = grpc.intercept_channel(channel, TokenClientInterceptor(token))
    return channel


def explain_rpc_error(shown: str, code: grpc.StatusCode, details: str, *, tls: bool) -> str | None:
    """One line for the errors a user fixes by configuration (token, certificate, scheme);
    None for any other."""
    lowered = details.lower()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (
            f"storage proxy {shown} refused this worker's token "
            f"(set ${TOKEN_ENV} or ${TOKEN_FILE_ENV} to the proxy's token)"
        )
    if (
        code == grpc.StatusCode.UNAVAILABLE
        and tls
        and ("ssl" in lowered or "handshake" in lowered or "certificate" in lowered)
    ):
        return (
            f"TLS handshake with storage proxy {shown} failed: its certificate is not "
            f"trusted or it does not serve TLS (set ${CA_ENV} to the CA file that signed "
            "the proxy's certificate; use grpc:// for a proxy without TLS)"
        )
    if (
        code == grpc.StatusCode.UNAVAILABLE
        and not tls
        and ("socket closed" in lowered or "connection reset" in lowered or "eof" in lowered)
    ):
        return (
            f"storage proxy {shown} closed the connection: it may serve TLS "
            "(use grpcs://HOST:PORT and set $STUDYCTL_PROXY_CA)"
        )
    return None
