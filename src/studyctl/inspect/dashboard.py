"""`studyctl dashboard`: optuna-dashboard on a study storage and its artifact store, behind
studyctl's own WSGI layer (`studyctl.inspect.guard`): a Host allow-list, a per-start token,
same-origin writes (or none, `read_only`) and artifacts served as sandboxed attachments.

It runs on a threaded WSGI server over this process's one storage object (SQLite in WAL
mode with a busy timeout, so reading never makes a running worker fail).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from studyctl.errors import StudyctlError
from studyctl.inspect.guard import (
    WILDCARD_ADDRESSES,
    DashboardGuard,
    GuardPolicy,
    WSGIApp,
    allowed_hosts,
    new_token,
)
from studyctl.inspect.trial_window import (
    DEFAULT_MAX_TRIALS,
    TrialWindowNotice,
    WindowedStorage,
    big_studies,
    window_message,
)
from studyctl.storage import mask_url
from studyctl.storage.rdb import open_existing_storage
from studyctl.storage.urls import is_loopback

TOKEN_ENV = "STUDYCTL_DASHBOARD_TOKEN"
MIN_TOKEN_LENGTH = 16


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def dashboard_token(
    *, host: str, token: str | None, token_file: Path | None, no_token: bool
) -> str | None:
    """The token this start asks for: the one given (`--token`, $STUDYCTL_DASHBOARD_TOKEN,
    `--token-file`), else a random one; None only with `no_token` on a loopback address."""
    if no_token:
        if token or token_file:
            raise StudyctlError("--no-token contradicts --token/--token-file")
        if not is_loopback(host):
            raise StudyctlError(
                f"--no-token is refused with --host {host}: without a token anyone who "
                "reaches the port can read, change and delete studies",
                hint="drop --no-token (a token is made and printed) or bind 127.0.0.1",
            )
        return None
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise StudyctlError(f"--token-file {token_file}: {exc.strerror}") from None
    if token is None:
        return new_token()
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() or c in ';,"\\' for c in token):
        raise StudyctlError(
            f"the dashboard token must be at least {MIN_TOKEN_LENGTH} characters, without "
            "spaces, quotes, commas or semicolons",
            hint='make one with `python -c "import secrets; print(secrets.token_urlsafe(24))"`',
        )
    return token


def serve_dashboard(
    storage_url: str,
    *,
    host: str,
    port: int,
    artifact_dir: str,
    echo: Callable[[str], None],
    token: str | None = None,
    token_file: Path | None = None,
    no_token: bool = False,
    read_only: bool = False,
    extra_hosts: Sequence[str] = (),
    max_trials: int = DEFAULT_MAX_TRIALS,
) -> None:
    """Serve optuna-dashboard until interrupted; a study of more than `max_trials` trials
    (0: no limit) is served as its most recent `max_trials` (`trial_window`)."""
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    secret = dashboard_token(
        host=host, token=token or os.environ.get(TOKEN_ENV), token_file=token_file,
        no_token=no_token,
    )  # fmt: skip
    storage = open_existing_storage(storage_url)
    big = big_studies(storage, max_trials) if max_trials > 0 else {}
    if big:
        storage = WindowedStorage(storage, max_trials)
    artifact_store: Any
    if artifact_dir.startswith("s3://"):
        from studyctl.artifacts.objectstore import ObjectStore

        artifact_store = ObjectStore.parse(artifact_dir, where="--artifact-dir").optuna_store()
    else:
        if not read_only:
            Path(artifact_dir).mkdir(parents=True, exist_ok=True)
        artifact_store = FileSystemArtifactStore(base_path=artifact_dir)
    policy = GuardPolicy(
        hosts=allowed_hosts(host, extra_hosts),
        token=secret,
        read_only=read_only,
        cookie_name=f"studyctl-dashboard-{port}",
    )
    dashboard_app: WSGIApp = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)
    if big:
        dashboard_app = TrialWindowNotice(dashboard_app, window_message(big, max_trials))
    app = DashboardGuard(dashboard_app, policy)
    try:
        server = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StudyctlError(f"port {port} on {host} is in use", hint="choose --port") from None
        raise StudyctlError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    shown_host = host if host not in WILDCARD_ADDRESSES else "HOST"
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    url = f"http://{shown_host}:{port}/dashboard/"
    mode = "read-only" if read_only else "read-write"
    if secret is not None:
        url += f"?token={secret}"
    echo(
        f"optuna-dashboard ({mode}) for {mask_url(storage_url)} at {url} "
        + ("(open this URL once; " if secret else "(no token, loopback only; ")
        + "Ctrl-C stops it)"
    )
    if big:
        echo(window_message(big, max_trials))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
