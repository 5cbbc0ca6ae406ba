"""Commands that start and run studies: `init`, `run`, `resume`, `create` and `worker`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from studyctl.cli._common import (
    FormatOpt,
    GpusOpt,
    GpusPerWorkerOpt,
    ObjectivesDirOpt,
    OutputFormat,
    SpecArg,
    SpecStorageOpt,
    StorageOpt,
    StudyArg,
    ThreadsOpt,
    TrialsPerProcessOpt,
    VerboseOpt,
    WorkersOpt,
    WorkerStorageOpt,
    command,
    set_verbose,
)
from studyctl.cli._output import echo_json, fail, fmt, print_best

if TYPE_CHECKING:
    from studyctl.execution.study_run import RunOutcome
    from studyctl.spec import StudySpec

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No per-trial lines.")]


@command
def run(
    spec_path: SpecArg,
    storage: SpecStorageOpt = None,
    objectives_dir: ObjectivesDirOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    output: FormatOpt = OutputFormat.table,
    workers: WorkersOpt = 0,
    gpus: GpusOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 1,
    threads_per_worker: ThreadsOpt = None,
    trials_per_process: TrialsPerProcessOpt = None,
) -> None:
    """Run a study to its budget: create it or continue it.

    n_trials is the study's total: running the same spec again continues to the total.
    With --workers N, N worker processes share the budget, each with its own GPU set.
    """
    from studyctl.spec import load_spec
    from studyctl.storage import resolve_storage_url

    set_verbose(verbose)
    spec = load_spec(spec_path)
    _run(spec, resolve_storage_url(storage, spec.storage), RunOptions.of(locals()))


@command
def resume(
    study: StudyArg,
    storage: StorageOpt = None,
    objectives_dir: ObjectivesDirOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    output: FormatOpt = OutputFormat.table,
    workers: WorkersOpt = 0,
    gpus: GpusOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 1,
    threads_per_worker: ThreadsOpt = None,
    trials_per_process: TrialsPerProcessOpt = None,
) -> None:
    """Continue an interrupted study with the spec it was run with, to its budget.

    Stale trials (their worker died) are failed and retried from their last checkpoint.
    """
    from studyctl.storage import resolve_storage_url
    from studyctl.storage.rdb import open_existing_storage
    from studyctl.storage.studies import load_stored_spec

    set_verbose(verbose)
    url = resolve_storage_url(storage)
    spec = load_stored_spec(open_existing_storage(url), study)
    _run(spec, url, RunOptions.of(locals()))


@dataclass(frozen=True)
class RunOptions:
    """The options `run` and `resume` share, in their order on the command line."""

    objectives_dir: Path | None
    quiet: bool
    output: OutputFormat
    workers: int
    gpus: str | None
    gpus_per_worker: int
    threads_per_worker: int | None
    trials_per_process: int | None

    @classmethod
    def of(cls, params: dict[str, Any]) -> RunOptions:
        """From a command's parameters (its `locals()`), named as these fields are."""
        return cls(**{f.name: params[f.name] for f in fields(cls)})


def _run(spec: StudySpec, url: str, options: RunOptions) -> None:
    from studyctl.execution.gpus import gpu_sets_for
    from studyctl.execution.study_run import run_study

    outcome = run_study(
        spec,
        url,
        objectives_dir=options.objectives_dir,
        workers=options.workers,
        gpu_sets=gpu_sets_for(options.workers, options.gpus, options.gpus_per_worker),
        threads_per_worker=options.threads_per_worker,
        trials_per_process=options.trials_per_process,
        quiet=options.quiet or options.output == OutputFormat.json,
        echo=typer.echo,
    )
    _report(outcome, options.output)


def _report(outcome: RunOutcome, output: OutputFormat) -> None:
    """Print how the run ended, then exit with its code (a fatal error as an error line)."""
    status = outcome.status
    if output == OutputFormat.json:
        data: dict[str, object] = {"study": status}
        if outcome.workers is not None:
            data["workers"] = outcome.workers
        else:
            data["trials_run"] = outcome.trials_run
        data["stopped"] = outcome.stopped
        if outcome.workers is None and not outcome.nothing_to_run:
            data["message"] = outcome.message
        echo_json(data)
    elif outcome.nothing_to_run:
        typer.echo(
            f"study {outcome.spec.name}: budget met ({status['finished']}/"
            f"{outcome.spec.n_trials} finished); nothing to run"
        )
        print_best(status)
    elif outcome.workers is not None:
        typer.echo(
            f"{status['finished']}/{fmt(status['n_trials'])} finished; worker exit "
            "codes: " + ", ".join(f"{k} {v}" for k, v in outcome.workers.items())
        )
        print_best(status)
    else:
        typer.echo(
            f"stopped: {outcome.stopped}"
            + (f" ({outcome.message})" if outcome.message else "")
            + f"; {status['finished']}/{fmt(status['n_trials'])} finished"
        )
        print_best(status)
    if outcome.fatal:
        fail(outcome.message, outcome.exit_code)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


@command
def create(
    spec_path: SpecArg,
    storage: SpecStorageOpt = None,
    objectives_dir: ObjectivesDirOpt = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Create the study (or record a changed spec and budget) without running a trial.

    For clusters: create it once, then start `studyctl worker STUDY` on the nodes.
    """
    from studyctl.execution.prepare import prepare_study
    from studyctl.spec import load_spec
    from studyctl.storage import mask_url, resolve_storage_url

    spec = load_spec(spec_path)
    url = resolve_storage_url(storage, spec.storage)
    prepared = prepare_study(spec, url, objectives_dir)
    out = {
        "study": spec.name,
        "storage": mask_url(url),
        "created": prepared.created,
        "n_trials": spec.n_trials,
    }
    if output == OutputFormat.json:
        echo_json(out)
    else:
        what = "created" if prepared.created else "already exists; spec and budget recorded"
        typer.echo(f"study {spec.name!r} {what} in {out['storage']} (n_trials {spec.n_trials})")


@command
def worker(
    study: StudyArg,
    storage: WorkerStorageOpt = None,
    objectives_dir: ObjectivesDirOpt = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            "--gpus", metavar="GPUS", help="This worker's GPU set (CUDA_VISIBLE_DEVICES), e.g. 0,1."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads", min=1, metavar="N", help="Bound TensorFlow's intra-/inter-op threads."
        ),
    ] = None,
    trials_per_process: TrialsPerProcessOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Join an existing study as one more worker; leave when its budget is met.

    Needs only the storage URL, the study name and the objectives being importable.
    """
    from studyctl.execution.gpus import parse_gpus
    from studyctl.execution.worker import WorkerOptions, run_worker
    from studyctl.storage import resolve_storage_url

    set_verbose(verbose)
    if gpus is not None:
        gpus = ",".join(parse_gpus(gpus))
    code = run_worker(
        WorkerOptions(
            storage_url=resolve_storage_url(storage),
            study_name=study,
            objectives_dir=objectives_dir,
            gpus=gpus,
            threads=threads,
            trials_per_process=trials_per_process,
            quiet=quiet,
        ),
        echo=lambda m: typer.echo(m, err=True),
    )
    if code:
        raise typer.Exit(code)


@command
def init(
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME", help="The objective's and the study's name (a Python identifier)."
        ),
    ],
    objectives_dir: ObjectivesDirOpt = None,
) -> None:
    """Write objectives/NAME.py and studies/NAME.toml: a Keras study that runs as written.

    The objective is the README's example (an MLP on scikit-learn's digits); edit its
    load_data and build_model for your data and model. Never overwrites a file.
    """
    from studyctl.objectives.scaffold import init_study

    written = init_study(name, Path("."), objectives_dir)
    typer.echo(f"wrote {written.objective}")
    typer.echo(f"wrote {written.spec}")
    typer.echo(f"run it with: studyctl run {written.spec}")
