"""`studyctl dashboard --max-trials N`: a big study served as its most recent N trials.

optuna-dashboard reads a study's trials in one place, `storage.get_all_trials(study_id)`
(re-read every 10 s while a page is open), and sends them all in the study page's one
request (`GET /api/studies/<id>`; an open page then polls with `?after=K`, K being how
many trials it holds, and the server answers with the list from index K on). At 100,000
trials the first call loads and serialises every trial (BENCHMARKS.md, "Dashboard at
100,000 trials"); optuna-dashboard does not support studies over 10,000 trials.

`WindowedStorage` answers `get_all_trials` of a study with more than `max_trials` trials
with the trials from its `max_trials`-th most recent on. The window's first trial is fixed
when the study is first read, so the list only grows at its end and the page's `after`
indices stay valid; trials that start later are shown as they come. Everything else (the
best trial, which Optuna's storage finds by one query over the whole study; notes;
changes made from the page) is the storage's own. `TrialWindowNotice` puts one line at
the top of every dashboard page saying which studies are cut and how to see them all.
"""

from __future__ import annotations

import copy
import html
import threading
from collections.abc import Container, Iterable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from studyctl.storage import tables
from studyctl.storage.frozen_trial import ALL_KINDS, read_frozen_trials
from studyctl.storage.rdb import StudyctlStorage

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial, TrialState

    from studyctl.inspect.guard import Environ, StartResponse, WSGIApp

DEFAULT_MAX_TRIALS = 10_000

# The trial just before a study's window: the (max_trials + 1)-th most recent.
_BEFORE_WINDOW_SQL = (
    "SELECT trial_id FROM trials WHERE study_id = :sid ORDER BY trial_id DESC LIMIT 1 OFFSET :n"
)
_BIG_STUDIES_SQL = (
    "SELECT s.study_name, count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
    "GROUP BY s.study_name HAVING count(*) > :n ORDER BY s.study_name"
)


class WindowedStorage(StudyctlStorage):
    """A view of an open `StudyctlStorage` (the same engine, sessions and outage guard)
    whose `get_all_trials` returns a big study's most recent `max_trials` trials."""

    def __init__(
        self,
        base: StudyctlStorage,
        max_trials: int,
        *,
        snapshot: bool = False,
        kinds: frozenset[int] = ALL_KINDS,
    ) -> None:
        # A view, not a second storage: no new engine, no second schema check.
        self.__dict__.update(base.__dict__)
        self.max_trials = max_trials  # 0: never cut
        self._window_lock = threading.Lock()
        self._window_after: dict[int, int | None] = {}  # study_id -> last trial_id before
        # With `snapshot` (a one-shot reader such as `report`, whose plots each ask for the
        # trials again: seven reads of 10,000 trials) the trials shown, cut or whole, are
        # read once and kept, with the child rows of `kinds` only (`frozen_trial`'s VALUE,
        # PARAM, ...: a report's page draws no attribute).
        self.snapshot = snapshot
        self.kinds = kinds
        self._snapshots: dict[int, list[FrozenTrial]] = {}

    def window_after(self, study_id: int) -> int | None:
        """The trial_id just before the study's window (fixed on first use), or None when
        the study is served whole."""
        if not self.max_trials:
            return None
        with self._window_lock:
            if study_id not in self._window_after:
                self._window_after[study_id] = self.outage.call(
                    lambda: self._read_window_after(study_id)
                )
            return self._window_after[study_id]

    def _read_window_after(self, study_id: int) -> int | None:
        with tables.transaction(self.engine) as conn:
            found = conn.execute(
                sa.text(_BEFORE_WINDOW_SQL), {"sid": study_id, "n": self.max_trials}
            ).scalar()
        return None if found is None else int(found)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        after = self.window_after(study_id)
        if after is None and not self.snapshot:
            return super().get_all_trials(study_id, deepcopy=deepcopy, states=states)
        after = -1 if after is None else after
        if not self.snapshot:
            trials = self.outage.call(lambda: self._read_window(study_id, after))
        elif study_id in self._snapshots:
            trials = self._snapshots[study_id]
        else:
            trials = self._snapshots[study_id] = self.outage.call(
                lambda: self._read_window(study_id, after)
            )
        trials = [t for t in trials if states is None or t.state in states]
        # A snapshot's reader only draws (no plot changes a trial): Optuna's `study.trials`
        # deep copy of 10,000 trials would cost more than reading them.
        return copy.deepcopy(trials) if deepcopy and not self.snapshot else trials

    def _read_window(self, study_id: int, after: int) -> list[FrozenTrial]:
        with self.engine.connect() as conn:
            return read_frozen_trials(conn, study_id, after, self.kinds)


def big_studies(storage: StudyctlStorage, max_trials: int) -> dict[str, int]:
    """Studies with more than `max_trials` trials, by name, with their trial counts."""
    with tables.transaction(storage.engine) as conn:
        rows = conn.execute(sa.text(_BIG_STUDIES_SQL), {"n": max_trials}).all()
    return {str(name): int(n) for name, n in rows}


def window_message(big: dict[str, int], max_trials: int) -> str:
    """One line: which studies the dashboard cuts, and how to see them whole."""
    studies = ", ".join(f"{name} ({n:,} trials)" for name, n in big.items())
    return (
        f"the dashboard shows the most recent {max_trials:,} trials of {studies} "
        "(the best trial is the study's own); --max-trials N shows more, 0 all"
    )


class TrialWindowNotice:
    """WSGI middleware: the window's message as a line at the top of every dashboard page
    (the HTML shell optuna-dashboard serves under /dashboard)."""

    def __init__(self, app: WSGIApp, message: str) -> None:
        self.app = app
        banner = (
            '<div id="studyctl-trial-window" style="font: 14px sans-serif; padding: 6px 12px; '
            f'background: #fff3cd; color: #664d03">studyctl: {html.escape(message)}</div>'
        )
        self.banner = banner.encode()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not str(environ.get("PATH_INFO", "")).startswith("/dashboard"):
            return self.app(environ, start_response)
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            captured.update(status=status, headers=headers, exc=exc)
            return lambda data: None  # the write() callable; bottle does not use it

        body = b"".join(self.app(environ, capture))
        headers = captured["headers"]
        is_html = any(k.lower() == "content-type" and v.startswith("text/html") for k, v in headers)
        if is_html and b"<body>" in body:
            body = body.replace(b"<body>", b"<body>" + self.banner, 1)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(captured["status"], headers, *captured["exc"])
        return [body]
