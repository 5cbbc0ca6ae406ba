"""Helpers of the process-fault tests: process trees from /proc, real kills, and the
"nothing lost" figures every scenario prints (and RELIABILITY.md records)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# Reasons a retry failed that point at its checkpoint (Keras/h5py read errors).
CHECKPOINT_ERRORS = ("h5", "checkpoint", "Unable to synchronously open", "weights")


def ppid_of(pid: int) -> int | None:
    """The parent of `pid`, or None once it is gone (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[1])


def alive(pid: int) -> bool:
    return ppid_of(pid) is not None


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and ppid_of(int(entry)) == pid:
            found.append(int(entry))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def trial_processes() -> list[int]:
    """Every live `studyctl.trial_process` on the machine started by this test run's
    interpreter (the tests' own tmp folders keep their studies apart)."""
    return [
        int(e)
        for e in os.listdir("/proc")
        if e.isdigit() and "studyctl.trial_process" in cmdline(int(e)) and alive(int(e))
    ]


def kill(pid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: Iterable[int], timeout: float) -> float | None:
    """Seconds until every pid is gone, or None if some still live after `timeout`."""
    start = time.monotonic()
    pending = set(pids)
    while pending and time.monotonic() - start < timeout:
        pending = {p for p in pending if alive(p)}
        if pending:
            time.sleep(0.05)
    return None if pending else time.monotonic() - start


def stop_tree(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """Test cleanup: kill -9 a process and every descendant still alive."""
    todo = [proc.pid]
    seen: list[int] = []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(children_of(pid))
    for pid in seen:
        kill(pid)
    if proc.poll() is None:
        proc.wait(timeout=10)


def open_files_under(pid: int, folder: Path) -> list[str]:
    """Paths under `folder` that process `pid` has open right now."""
    prefix = str(folder)
    found = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(prefix):
            found.append(target)
    return found


def running_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


@dataclass
class Figures:
    """The "nothing lost" figures of one scenario."""

    scenario: str
    kills: int = 0
    finished_lost: int = 0
    running_left: int = 0
    finished: int = 0
    budget: int = 0
    checkpoint_failures: int = 0
    max_epochs_rerun: int = 0
    fails: int = 0
    fails_without_reason: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    rerun_details: list[str] = field(default_factory=list)

    @property
    def budget_exact(self) -> bool:
        return self.finished == self.budget

    def line(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in self.extra.items())
        if self.rerun_details:
            extra += f", more than one epoch re-run: {self.rerun_details}"
        return (
            f"[{self.scenario}] kills {self.kills}: finished trials lost {self.finished_lost}, "
            f"RUNNING left {self.running_left}, budget {self.finished}/{self.budget} "
            f"({'exact' if self.budget_exact else 'NOT exact'}), retries that failed for a "
            f"checkpoint {self.checkpoint_failures}, epochs re-run per kill at most "
            f"{self.max_epochs_rerun}, FAIL {self.fails} (without a reason "
            f"{self.fails_without_reason}){extra}"
        )

    def check(self) -> None:
        print(self.line(), flush=True)
        assert self.finished_lost == 0, self.line()
        assert self.running_left == 0, self.line()
        assert self.budget_exact, self.line()
        assert self.checkpoint_failures == 0, self.line()
        assert self.max_epochs_rerun <= 1, self.line()
        assert self.fails_without_reason == 0, self.line()


def snapshot_finished(study: optuna.Study) -> dict[int, tuple[str, list[float] | None]]:
    return {
        t.number: (t.state.name, t.values)
        for t in study.get_trials(deepcopy=False, states=FINISHED)
    }


def figures(
    scenario: str,
    study: optuna.Study,
    budget: int,
    kills: int,
    finished_before: dict[int, tuple[str, list[float] | None]] | None = None,
) -> Figures:
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    fig = Figures(scenario=scenario, kills=kills, budget=budget)
    fig.finished = sum(t.state in FINISHED for t in trials)
    fig.running_left = sum(t.state == TrialState.RUNNING for t in trials)
    for number, before in (finished_before or {}).items():
        now = by_number.get(number)
        if now is None or (now.state.name, now.values) != before:
            fig.finished_lost += 1
    for t in trials:
        if t.state == TrialState.FAIL:
            fig.fails += 1
            reason = t.user_attrs.get("fail_reason")
            if not reason:
                fig.fails_without_reason += 1
            elif "failed_trial" in t.system_attrs and any(
                word in str(reason) for word in CHECKPOINT_ERRORS
            ):
                fig.checkpoint_failures += 1
        history = t.system_attrs.get("retry_history") or []
        if history and t.state != TrialState.WAITING:
            previous = by_number.get(history[-1])
            resumed = t.user_attrs.get("resumed_from_epoch") or 0
            if previous is not None and t.user_attrs.get("checkpoint_dir"):
                done_before = len(previous.intermediate_values)
                fig.max_epochs_rerun = max(fig.max_epochs_rerun, done_before - resumed)
                if done_before - resumed > 1:
                    fig.rerun_details.append(
                        f"#{t.number} resumed at {resumed}, #{previous.number} "
                        f"({previous.user_attrs.get('fail_reason')}) had {done_before}"
                    )
    return fig
