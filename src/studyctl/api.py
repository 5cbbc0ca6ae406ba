"""studyctl from Python (a notebook, a script): `run` is `studyctl run`, `load` opens a
stored study. Both return Optuna studies.

`run` calls the library function behind the CLI's `run` (`execution.study_run.run_study`),
so the budget (the study's total, across runs and workers), resume (stale trials failed
and retried) and workers (`workers=N` worker processes on the study's storage) behave
exactly as on the command line; only the outcome is turned into a study or an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from studyctl.errors import StudyctlError

if TYPE_CHECKING:
    import optuna

    from studyctl.spec import StudySpec


class TrialsFailed(RuntimeError):
    """Trials failed `max_consecutive_failures` times in a row (the CLI's exit code 1);
    `study` holds them, each with its reason and traceback."""

    def __init__(self, message: str, study: optuna.Study) -> None:
        super().__init__(message)
        self.study = study


def run(
    spec_or_path: StudySpec | str | Path,
    *,
    workers: int = 0,
    storage: str | None = None,
    objectives_dir: str | Path | None = None,
    gpus: str | None = None,
    gpus_per_worker: int = 1,
    threads_per_worker: int | None = None,
    trials_per_process: int | None = None,
    quiet: bool = False,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
) -> optuna.Study:
    """Create or continue the study of a spec (a TOML path or a `StudySpec`) and run it to
    its budget, here (`workers=0`) or in `workers` worker processes; return the study.

    `storage` defaults like `--storage`: $STUDYCTL_STORAGE, the spec's, then
    sqlite:///studyctl.db. `echo` gets a line per trial (none when `quiet`).

    Raises `StudyctlError` for a user error (a bad spec, an unknown objective, an
    unreachable database), `TrialsFailed` when trials failed too many times in a row, and
    `KeyboardInterrupt` when Ctrl-C (SIGINT) stopped it: its trial is queued again, and
    the next `run` continues.
    """
    from studyctl.execution.gpus import gpu_sets_for
    from studyctl.execution.study_run import run_study
    from studyctl.spec import StudySpec, load_spec
    from studyctl.storage import resolve_storage_url
    from studyctl.verbosity import set_verbose

    spec = spec_or_path if isinstance(spec_or_path, StudySpec) else load_spec(Path(spec_or_path))
    url = resolve_storage_url(storage, spec.storage)
    set_verbose(verbose)
    outcome = run_study(
        spec,
        url,
        objectives_dir=None if objectives_dir is None else Path(objectives_dir),
        workers=workers,
        gpu_sets=gpu_sets_for(workers, gpus, gpus_per_worker),
        threads_per_worker=threads_per_worker,
        trials_per_process=trials_per_process,
        quiet=quiet,
        echo=echo,
    )
    if outcome.fatal:
        raise StudyctlError(outcome.message)
    if outcome.stopped == "interrupted":
        raise KeyboardInterrupt(f"study {spec.name} interrupted; run it again to continue")
    study = load(spec.name, storage=url)
    if outcome.exit_code:
        message = outcome.message
        if outcome.workers is not None:
            message = "workers stopped: " + ", ".join(
                f"{label} exit code {code}" for label, code in outcome.workers.items() if code
            )
            if 2 in outcome.workers.values():  # a worker's user error, printed by it
                raise StudyctlError(message)
        raise TrialsFailed(message, study)
    return study


def load(study: str, *, storage: str | None = None) -> optuna.Study:
    """The stored study named `study` (storage: `storage`, $STUDYCTL_STORAGE, then
    sqlite:///studyctl.db), for analysis: `trials_dataframe()`, `best_trial`, plots."""
    import optuna

    from studyctl.storage import resolve_storage_url, study_exists
    from studyctl.storage.rdb import open_existing_storage
    from studyctl.storage.studies import unknown_study

    opened = open_existing_storage(resolve_storage_url(storage))
    if not study_exists(opened, study):
        raise unknown_study(opened, study)
    return optuna.load_study(study_name=study, storage=opened)
