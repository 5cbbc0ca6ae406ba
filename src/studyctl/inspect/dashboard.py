"""`studyctl dashboard`: optuna-dashboard on a study storage and its artifact store.

The dashboard has no authentication: it binds to 127.0.0.1 unless told otherwise. It runs
on a threaded WSGI server over this process's one storage object (SQLite in WAL mode with
a busy timeout, so reading never makes a running worker fail).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from studyctl.errors import StudyctlError
from studyctl.storage import mask_url
from studyctl.storage.rdb import open_existing_storage


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_dashboard(
    storage_url: str,
    *,
    host: str,
    port: int,
    artifact_dir: str,
    echo: Callable[[str], None],
) -> None:
    """Serve optuna-dashboard until interrupted."""
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    storage = open_existing_storage(storage_url)
    artifact_store: Any
    if artifact_dir.startswith("s3://"):
        from studyctl.artifacts.objectstore import ObjectStore

        artifact_store = ObjectStore.parse(artifact_dir, where="--artifact-dir").optuna_store()
    else:
        Path(artifact_dir).mkdir(parents=True, exist_ok=True)
        artifact_store = FileSystemArtifactStore(base_path=artifact_dir)
    app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)
    try:
        server = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StudyctlError(f"port {port} on {host} is in use", hint="choose --port") from None
        raise StudyctlError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    echo(
        f"optuna-dashboard for {mask_url(storage_url)} at http://{host}:{port}/dashboard/ "
        "(no authentication: keep it on 127.0.0.1 or behind an authenticating proxy; "
        "Ctrl-C stops it)"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
