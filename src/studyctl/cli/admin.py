"""Commands that change or serve a storage: `delete`, `copy`, `db upgrade`/`db current`,
`dashboard` and `proxy`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from studyctl.cli._common import (
    FormatOpt,
    OutputFormat,
    StorageOpt,
    StudyArg,
    command,
    db_command,
    max_trials_option,
    open_storage_of,
)
from studyctl.cli._output import echo_json, fail

if TYPE_CHECKING:
    from studyctl.storage.schema import SchemaVersions


@command
def delete(
    study: StudyArg,
    storage: StorageOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a study with all its trials."""
    from studyctl.storage import mask_url, resolve_storage_url
    from studyctl.storage.studies import delete_study

    st = open_storage_of(storage)
    shown = mask_url(resolve_storage_url(storage))
    if not yes and not typer.confirm(f"Delete study {study!r} and all its trials from {shown}?"):
        fail(f"study {study!r} not deleted: not confirmed (--yes skips the question)")
    delete_study(st, study)
    typer.echo(f"deleted study {study}")


def _versions_out(v: SchemaVersions, output: OutputFormat) -> None:
    data = {
        "optuna": {"current": v.optuna_current, "head": v.optuna_head},
        "studyctl": {"current": v.studyctl_current, "head": v.studyctl_head},
    }
    if output == OutputFormat.json:
        echo_json(data)
        return
    for name, d in data.items():
        state = "up to date" if d["current"] == d["head"] else "needs `studyctl db upgrade`"
        typer.echo(f"{name}: {d['current'] or 'none'} (head {d['head']}; {state})")


@db_command
def upgrade(storage: StorageOpt = None, output: FormatOpt = OutputFormat.table) -> None:
    """Bring Optuna's schema and studyctl's tables to this version's head."""
    from studyctl.storage import resolve_storage_url, upgrade_storage

    _versions_out(upgrade_storage(resolve_storage_url(storage)), output)


@db_command
def current(storage: StorageOpt = None, output: FormatOpt = OutputFormat.table) -> None:
    """Show the schema versions of Optuna and studyctl in a storage."""
    from studyctl.storage import resolve_storage_url, schema_versions

    _versions_out(schema_versions(resolve_storage_url(storage)), output)


@command
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to bind. Beyond loopback a token is always required.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535)] = 8080,
    artifact_dir: Annotated[
        str,
        typer.Option(
            "--artifact-dir",
            help="Artifact store: the studies' [artifacts] path, or their s3://BUCKET store.",
        ),
    ] = "artifacts",
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Another name the dashboard may be reached by (a reverse proxy's); "
            "requests for any name but these, the bound address and loopback get 403.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="STUDYCTL_DASHBOARD_TOKEN",
            help="Token to ask for [default: a random one per start, printed in the URL]; "
            "prefer $STUDYCTL_DASHBOARD_TOKEN or --token-file (the command line is visible "
            "to other users).",
            show_default=False,
        ),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="Read the token from this file.")
    ] = None,
    no_token: Annotated[
        bool, typer.Option("--no-token", help="Ask for no token (loopback addresses only).")
    ] = False,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Refuse every change (a read-only role suffices).")
    ] = False,
    max_trials: Annotated[
        int,
        max_trials_option(
            "Show a bigger study as its most recent N trials (optuna-dashboard does not "
            "support studies over 10,000 trials)"
        ),
    ] = 10_000,
) -> None:
    """Serve optuna-dashboard on the storage, behind a token, a Host check and same-origin
    writes (127.0.0.1 by default; see SECURITY.md)."""
    from studyctl.inspect.dashboard import serve_dashboard
    from studyctl.storage import resolve_storage_url

    serve_dashboard(
        resolve_storage_url(storage),
        host=host,
        port=port,
        artifact_dir=artifact_dir,
        echo=typer.echo,
        token=token,
        token_file=token_file,
        no_token=no_token,
        read_only=read_only,
        max_trials=max_trials,
        extra_hosts=allowed_host or (),
    )


@command
def proxy(
    storage: StorageOpt = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to bind; beyond loopback a token is required.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535)] = 13000,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="File holding the token every call must carry [default: "
            "$STUDYCTL_PROXY_TOKEN_FILE, then $STUDYCTL_PROXY_TOKEN]",
            show_default=False,
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="Serve TLS with this PEM certificate.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="The certificate's PEM private key.")
    ] = None,
) -> None:
    """Serve the storage to workers over gRPC (`worker STUDY -s grpc://HOST:PORT`, or
    grpcs:// with TLS).

    Optuna's gRPC storage proxy plus studyctl's claims and worker heartbeats: however many
    workers connect, the database sees only the proxy's pool (at most 9 connections).
    Workers send the token from $STUDYCTL_PROXY_TOKEN or $STUDYCTL_PROXY_TOKEN_FILE and
    trust the CA in $STUDYCTL_PROXY_CA (see SECURITY.md).
    """
    import os

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from studyctl.storage import resolve_storage_url
    from studyctl.storage.grpc import serve

    serve(
        resolve_storage_url(storage),
        host,
        port,
        token_file=token_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        ready=typer.echo,
    )


@command
def copy(
    study: StudyArg,
    source: Annotated[str, typer.Option("--from", help="Storage URL to copy from.")],
    target: Annotated[str, typer.Option("--to", help="Storage URL to copy to.")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a study of the same name in the target.")
    ] = False,
) -> None:
    """Copy a study with all its trials to another storage (e.g. SQLite to PostgreSQL)."""
    from studyctl.storage import mask_url, open_storage, study_exists
    from studyctl.storage.rdb import open_existing_storage
    from studyctl.storage.studies import copy_study, unknown_study

    origin = open_existing_storage(source)
    if not study_exists(origin, study):  # before the target is opened (or created)
        raise unknown_study(origin, study)
    n = copy_study(study, origin, open_storage(target), overwrite=overwrite)
    typer.echo(f"copied study {study} ({n} trials) from {mask_url(source)} to {mask_url(target)}")
