"""Progress lines for long work: trials done of the budget, states, best so far, ETA."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from studyctl.storage import trial_rows
from studyctl.storage.rdb import StudyctlStorage
from studyctl.storage.studies import best_trials
from studyctl.storage.tables import FINISHED_STATES, finished_count

if TYPE_CHECKING:
    import optuna

    from studyctl.execution.trial_loop import TrialOutcome
    from studyctl.storage.connect import WorkerStorage


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def best_text(study: optuna.Study) -> str:
    """``best 0.123 (#7)``, the size of the Pareto front, or ``best -``."""
    best = best_trials(study)
    if len(best) == 1:
        return f"best {_fmt(best[0].values[0])} (#{best[0].number})"
    return f"{len(best)} on the Pareto front" if best else "best -"


class StudyTotals:
    """A study's trial counts per state and its best-so-far text, for progress lines.

    On a database (single objective) a `trial_rows.StudyTally` reads only new and unfinished
    trials at each call, so a line costs the same in a study of 100 trials or 100,000;
    otherwise (several objectives, a storage proxy) the counts and the best are queried.
    """

    def __init__(self, storage: WorkerStorage, study: optuna.Study) -> None:
        self.storage = storage
        self.study = study
        self._tally: trial_rows.StudyTally | None = None
        if isinstance(storage, StudyctlStorage) and len(study.directions) == 1:
            self._tally = trial_rows.StudyTally(
                study._study_id, maximize=study.directions[0].name == "MAXIMIZE"
            )

    def read(self) -> tuple[dict[str, int], str]:
        """(counts per state, ``best ...`` text)."""
        if self._tally is None or not isinstance(self.storage, StudyctlStorage):
            return self.storage.control.state_counts(self.study._study_id), best_text(self.study)
        # Through the storage's outage guard, as every other read of a long-running process:
        # a refresh that failed changed nothing it keeps, so it is run again whole.
        self.storage.control.in_transaction(self._tally.refresh)
        best = self._tally.best
        text = "best -" if best is None else f"best {_fmt(best[0])} (#{best[1]})"
        return dict(self._tally.counts), text


def eta_text(elapsed: float, done_here: int, remaining: int | None) -> str:
    """`` · ETA h:mm:ss`` from the pace of the trials finished here, or nothing yet."""
    if remaining is None or done_here <= 0:
        return ""
    return f" · ETA {format_duration(elapsed / done_here * max(0, remaining))}"


class ProgressPrinter:
    """Prints one line per finished trial with the study's totals."""

    def __init__(
        self,
        storage: WorkerStorage,
        study: optuna.Study,
        n_trials: int | None,
        echo: Callable[[str], None],
    ) -> None:
        self.storage = storage
        self.study = study
        self.n_trials = n_trials
        self.echo = echo
        self.started = time.monotonic()
        self.finished_here = 0
        self.totals = StudyTotals(storage, study)

    def __call__(self, outcome: TrialOutcome) -> None:
        counts, best = self.totals.read()
        finished = finished_count(counts)
        if outcome.state.name in FINISHED_STATES:
            self.finished_here += 1
        elapsed = time.monotonic() - self.started
        budget = "?" if self.n_trials is None else str(self.n_trials)
        what = outcome.state.name
        if outcome.state == TrialState.COMPLETE and outcome.values:
            what += " " + ", ".join(_fmt(v) for v in outcome.values)
        elif outcome.reason:
            what += f" ({outcome.reason})"
        remaining = None if self.n_trials is None else self.n_trials - finished
        eta = eta_text(elapsed, self.finished_here, remaining)
        self.echo(
            f"trial {outcome.number:>4} {what} [{outcome.duration_s:.1f}s] | "
            f"{finished}/{budget} finished ({counts['PRUNED']} pruned, {counts['FAIL']} failed)"
            f" | {best} | elapsed {format_duration(elapsed)}{eta}"
        )
