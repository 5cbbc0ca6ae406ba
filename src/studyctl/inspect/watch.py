"""`studyctl watch STUDY`: a live view of a study from any machine that reaches its database.

The view is a pure function of a `WatchSnapshot` (`render_snapshot` for a terminal,
`plain_line` for a pipe or a log), so what a person sees is tested without a database.
`watch_study` polls the snapshot about once a second, redraws with rich's Live on a
terminal, prints a line per change otherwise, and returns when the budget is met or on
`q` / Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from studyctl.storage.snapshot import TrialView, WatchSnapshot

STATE_STYLES = {
    "COMPLETE": "green",
    "PRUNED": "yellow",
    "FAIL": "red",
    "RUNNING": "cyan",
    "WAITING": "dim",
}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def format_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def format_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def format_values(values: tuple[float, ...] | None) -> str:
    return "-" if not values else ", ".join(format_value(v) for v in values)


def format_params(params: dict[str, Any]) -> str:
    return "  ".join(f"{k}={format_value(v)}" for k, v in params.items())


def _heading(snap: WatchSnapshot) -> str:
    goal = ", ".join(
        f"{d} {m}" for d, m in zip(snap.directions, snap.metrics or ("value",) * 9, strict=False)
    )
    return f"study {snap.study} ({goal})"


def _counts_text(snap: WatchSnapshot) -> str:
    c = snap.counts
    parts = [
        f"{c.get('PRUNED', 0)} pruned",
        f"{c.get('FAIL', 0)} failed",
        f"{c.get('RUNNING', 0)} running",
    ]
    if c.get("WAITING"):
        parts.append(f"{c['WAITING']} waiting")
    parts.append(f"{snap.retries} retried")
    return ", ".join(parts)


def _budget_text(snap: WatchSnapshot) -> str:
    if snap.n_trials is None:
        return f"{snap.finished}/? finished"
    share = 100 * snap.finished // snap.n_trials if snap.n_trials else 100
    return f"{snap.finished}/{snap.n_trials} finished ({share}%)"


def _best_text(snap: WatchSnapshot) -> str:
    if len(snap.directions) > 1:
        return "several objectives: `studyctl best` shows the Pareto front"
    if snap.best is None:
        return "no completed trial yet"
    return f"#{snap.best.number} {format_values(snap.best.values)}"


def _trial_row(t: TrialView) -> list[Text | str]:
    return [
        f"#{t.number}",
        Text(t.state.lower(), style=STATE_STYLES.get(t.state, "")),
        format_values(t.values),
        format_duration(t.duration_s),
        t.note or "",
    ]


def render_snapshot(snap: WatchSnapshot, *, footer: str | None = None) -> RenderableType:
    """The terminal view of one snapshot: budget bar, best trial, workers, last trials."""
    title = Text.assemble(
        (_heading(snap), "bold"), "  ", (snap.taken_at.strftime("%H:%M:%S"), "dim")
    )
    total = snap.n_trials or max(1, snap.finished)
    bar = ProgressBar(total=total, completed=min(snap.finished, total), width=30)
    budget = Table.grid(padding=(0, 1))
    eta = "done" if snap.complete else format_duration(snap.eta_s)
    budget.add_row(
        Text("budget", style="bold"),
        bar,
        Text(f"{_budget_text(snap)}   ETA {eta}   elapsed {format_duration(snap.elapsed_s)}"),
    )
    budget.add_row("", "", Text(_counts_text(snap)))
    best = Table.grid(padding=(0, 1))
    best.add_row(Text("best  ", style="bold"), Text(_best_text(snap), style="bold green"))
    if snap.best_params:
        best.add_row("", Text(format_params(snap.best_params), overflow="fold"))

    workers = Table(
        "host",
        "gpus",
        "state",
        "heartbeat",
        "trial",
        "epoch",
        "done",
        box=None,
        pad_edge=False,
        header_style="bold",
    )
    for w in snap.workers:
        epoch = "-"
        if w.epoch is not None:
            epoch = f"{w.epoch}" + (f"/{snap.epochs}" if snap.epochs else "")
        workers.add_row(
            w.host,
            w.gpus or "-",
            Text(w.state, style={"running": "green", "dead": "red"}.get(w.state, "dim")),
            format_age(w.heartbeat_age_s),
            "-" if w.current_trial is None else f"#{w.current_trial}",
            epoch,
            str(w.trials_done),
        )
    recent = Table(
        "trial",
        "state",
        "value",
        "duration",
        "note",
        box=None,
        pad_edge=False,
        header_style="bold",
    )
    recent.columns[4].overflow = "fold"
    for t in snap.recent:
        recent.add_row(*_trial_row(t))
    parts: list[RenderableType] = [title, budget, best, Text("")]
    parts.append(Text(f"workers ({snap.live_workers} running)", style="bold"))
    parts.append(workers if snap.workers else Text("  none registered", style="dim"))
    parts.append(Text(""))
    parts.append(Text("last trials", style="bold"))
    parts.append(recent if snap.recent else Text("  no trial yet", style="dim"))
    if footer:
        parts.extend([Text(""), Text(footer, style="dim")])
    return Group(*parts)


def plain_line(snap: WatchSnapshot) -> str:
    """One line per change, for a pipe or a log file."""
    workers = f"{snap.live_workers} worker" + ("" if snap.live_workers == 1 else "s")
    eta = "done" if snap.complete else format_duration(snap.eta_s)
    return (
        f"{snap.taken_at:%H:%M:%S} {snap.study}: {_budget_text(snap)} ({_counts_text(snap)}); "
        f"{workers}; best {_best_text(snap)}; ETA {eta}"
    )


def _change_key(snap: WatchSnapshot) -> tuple[Any, ...]:
    """What must change for the plain output to print a new line (not the clock)."""
    return (
        snap.n_trials,
        tuple(sorted(snap.counts.items())),
        snap.retries,
        snap.best.number if snap.best else None,
        snap.live_workers,
    )


@contextlib.contextmanager
def _keys(stream: TextIO) -> Iterator[Callable[[float], str | None]]:
    """Single key presses from a terminal (cbreak mode, restored on exit); elsewhere a plain
    sleep. Yields wait(timeout) -> the key pressed, or None."""
    fd: int | None = None
    old: Any = None
    try:
        if stream.isatty():
            import termios
            import tty

            fd = stream.fileno()
            old = termios.tcgetattr(fd)
            tty.setcbreak(fd)
    except (OSError, ValueError, ImportError):
        fd = None

    def wait(timeout: float) -> str | None:
        if fd is None:
            time.sleep(timeout)
            return None
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        return os.read(fd, 1).decode(errors="replace")

    try:
        yield wait
    finally:
        if fd is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, old)


def watch_study(
    take: Callable[[], WatchSnapshot],
    *,
    interval: float = 1.0,
    out: TextIO | None = None,
    keys: TextIO | None = None,
) -> WatchSnapshot | None:
    """Poll `take` every `interval` seconds until the budget is met, `q` or Ctrl-C.

    On a terminal the view is redrawn in place; otherwise a line is printed per change.
    A database that stops answering shows as a note and is asked again next time.
    Returns the last snapshot.
    """
    out = out or sys.stdout
    keys = keys or sys.stdin
    last: WatchSnapshot | None = None
    try:
        if out.isatty():
            return _watch_live(take, interval, out, keys)
        last_key: tuple[Any, ...] | None = None
        while True:
            last = _take(take, last, lambda m: print(m, file=out, flush=True))
            if last is not None and _change_key(last) != last_key:
                last_key = _change_key(last)
                print(plain_line(last), file=out, flush=True)
            if last is not None and last.complete:
                print(f"{last.study}: budget met", file=out, flush=True)
                return last
            time.sleep(interval)
    except KeyboardInterrupt:
        return last


def _take(
    take: Callable[[], WatchSnapshot], last: WatchSnapshot | None, note: Callable[[str], None]
) -> WatchSnapshot | None:
    from sqlalchemy import exc as sa_exc

    try:
        return take()
    except sa_exc.SQLAlchemyError as exc:
        note(f"{datetime.now():%H:%M:%S} database did not answer ({type(exc).__name__}); retrying")
        return last


def _watch_live(
    take: Callable[[], WatchSnapshot], interval: float, out: TextIO, keys: TextIO
) -> WatchSnapshot | None:
    from rich.live import Live

    console = Console(file=out)
    notes: list[str] = []
    last = _take(take, None, notes.append)
    footer = "q or Ctrl-C quits"
    with (
        _keys(keys) as wait,
        Live(
            render_snapshot(last, footer=footer) if last else Text("waiting for the database"),
            console=console,
            auto_refresh=False,
            transient=False,
        ) as live,
    ):
        while True:
            if last is not None:
                shown = footer if not notes else f"{notes[-1]}   {footer}"
                if last.complete:
                    shown = "budget met"
                live.update(render_snapshot(last, footer=shown), refresh=True)
                if last.complete:
                    return last
            notes.clear()
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                key = wait(left)
                if key in ("q", "Q"):
                    return last
            last = _take(take, last, notes.append)
