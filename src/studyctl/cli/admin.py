"""Commands that change or serve a storage: `delete`, `copy`, `db upgrade`/`db current`,
`dashboard` and `proxy`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from studyctl.cli._common import (
    FormatOpt,
    OutputFormat,
    StorageOpt,
    StudyArg,
    command,
    db_command,
    echo_json,
    fail,
    open_storage_of,
)

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
            help="Address to bind. The dashboard has NO authentication: anything "
            "other than 127.0.0.1 exposes every study to the network.",
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
) -> None:
    """Serve optuna-dashboard on the storage (no authentication; 127.0.0.1 by default)."""
    from studyctl.inspect.dashboard import serve_dashboard
    from studyctl.storage import resolve_storage_url

    serve_dashboard(
        resolve_storage_url(storage),
        host=host,
        port=port,
        artifact_dir=artifact_dir,
        echo=typer.echo,
    )


@command
def proxy(
    storage: StorageOpt = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to bind. The proxy has NO authentication: bind an address that "
            "only the cluster's nodes reach.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535)] = 13000,
) -> None:
    """Serve the storage to workers over gRPC (`worker STUDY -s grpc://HOST:PORT`).

    Optuna's gRPC storage proxy plus studyctl's claims and worker heartbeats: however many
    workers connect, the database sees only the proxy's pool (at most 9 connections).
    """
    from studyctl.storage import resolve_storage_url
    from studyctl.storage.grpc import serve

    serve(resolve_storage_url(storage), host, port, ready=typer.echo)


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
