"""Clean failure where the machine or the input is at fault: the database's disk fills up
mid-run, the SQLite file is read-only, a budget no database column holds, a malformed URL.
Each gives one `error:` line and exit 2, never a traceback; after the disk has room again,
`resume` finishes the study with nothing lost."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import STUDYCTL, run_cli, write_objectives, write_spec
from .conftest import figures, finished_snapshot, wait_for

SLOW_QUADRATIC = """
import time

from studyctl import function_objective


@function_objective("slow_quadratic")
def slow_quadratic(trial, ctx):
    x = ctx.suggest_float("x", -10.0, 10.0)
    for step in range(3):
        time.sleep(0.05)
        trial.report((x - 2) ** 2 + 1.0 / (step + 1), step)
        trial.set_user_attr(f"note_{step}", "x" * 2000)
    return (x - 2) ** 2
"""


WRITER = """
from pathlib import Path

from studyctl import function_objective


@function_objective("writer")
def writer(trial, ctx):
    x = trial.suggest_float("x", -1, 1)
    out = Path(ctx.options["out"]) / f"trial-{trial.number}.bin"
    out.write_bytes(b"\\0" * 400_000)  # what a checkpoint costs, on the trial's disk
    return x * x
"""


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def test_absurd_budget_is_a_spec_error(tmp_path: Path, objectives_dir: Path) -> None:
    spec = write_spec(
        tmp_path / "huge.toml",
        """
        name = "huge"
        objective = "quadratic"
        n_trials = 99999999999999999999
        """,
    )
    url = f"sqlite:///{tmp_path / 'huge.db'}"
    result = run_cli(
        ["run", str(spec), "--storage", url, "--objectives-dir", str(objectives_dir)], tmp_path
    )
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result)
    assert "n_trials" in line and "huge.toml" in line, line
    # Nothing half-written: the spec was refused before the database was touched.
    assert (
        not (tmp_path / "huge.db").exists()
        or "huge" not in run_cli(["list", "--storage", url], tmp_path).stdout
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u@127.0.0.1:abc/x",
        "postgresql+psycopg://u:secret@127.0.0.1:99999/x",
        "postgresql+psycopg://u:secret@[::1/x",
    ],
)
def test_malformed_url_is_one_error_line(tmp_path: Path, url: str) -> None:
    result = run_cli(["status", "any", "--storage", url], tmp_path)
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result)
    assert "storage" in line and "Traceback" not in line, line
    assert "secret" not in result.stderr + result.stdout


def test_read_only_sqlite_file(tmp_path: Path, objectives_dir: Path) -> None:
    spec = write_spec(
        tmp_path / "ro.toml",
        """
        name = "ro"
        objective = "quadratic"
        n_trials = 3
        [sampler]
        type = "random"
        """,
    )
    db = tmp_path / "ro.db"
    url = f"sqlite:///{db}"
    args = ["run", str(spec), "--storage", url, "--objectives-dir", str(objectives_dir), "-q"]
    assert run_cli(args, tmp_path).returncode == 0
    # One more trial of budget, then the file (and its WAL) becomes read-only.
    spec.write_text(spec.read_text().replace("n_trials = 3", "n_trials = 5"))
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for path in tmp_path.glob("ro.db*"):
        path.chmod(stat.S_IRUSR | stat.S_IRGRP)
    try:
        if os.geteuid() == 0:
            # root ignores file modes; make the file immutable instead.
            subprocess.run(["chattr", "+i", str(db)], check=False, capture_output=True)
        result = run_cli(args, tmp_path)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(db)], check=False, capture_output=True)
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    line = _one_error_line(result)
    print(f"read-only file: {line}")
    assert "read-only" in line or "readonly" in line, line


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = Path(tempfile.mkdtemp(prefix="studyctl-full-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        mount_point.rmdir()
        if os.environ.get("CI"):
            raise RuntimeError(f"cannot mount a tmpfs: {done.stderr}")
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
        shutil.rmtree(mount_point, ignore_errors=True)


@pytest.mark.slow
def test_disk_full_mid_run_then_resume(tmp_path: Path, small_tmpfs: Path) -> None:
    objectives = write_objectives(tmp_path / "objectives", SLOW_QUADRATIC, "slow.py")
    n_trials = 400
    spec = write_spec(
        tmp_path / "full.toml",
        f"""
        name = "full"
        objective = "slow_quadratic"
        n_trials = {n_trials}
        [sampler]
        type = "random"
        [worker]
        heartbeat_interval = 1
        grace_period = 2
        """,
    )
    db = small_tmpfs / "full.db"
    url = f"sqlite:///{db}"
    args = ["run", str(spec), "--storage", url, "--objectives-dir", str(objectives), "-q"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [*STUDYCTL, *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    # Let a few trials finish, then fill what is left of the disk.
    def used() -> int:
        return sum(p.stat().st_size for p in small_tmpfs.glob("full.db*") if p.exists())

    assert wait_for(lambda: used() > 600_000, 90)
    filler = small_tmpfs / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    started = time.monotonic()
    out, err = proc.communicate(timeout=120)
    print(f"disk full: run stopped {time.monotonic() - started:.1f}s after the disk filled")
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    assert result.returncode == 2, (result.returncode, err[-3000:])
    line = _one_error_line(result)
    print(f"disk full: {line}")
    assert "full" in line, line
    # Room again: the database is intact and `resume` completes the study.
    filler.unlink()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    before = finished_snapshot(url, "full")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT state FROM studyctl_workers").fetchall()
    print(f"disk full: worker rows left 'running': {sum(r[0] == 'running' for r in rows)}")
    spec.write_text(
        spec.read_text().replace(f"n_trials = {n_trials}", f"n_trials = {len(before) + 3}")
    )
    resumed = run_cli(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    figures("disk full (sqlite)", url, "full", len(before) + 3, before).assert_nothing_lost()


def test_trial_disk_full_stops_the_run_with_the_reason(tmp_path: Path, small_tmpfs: Path) -> None:
    """The disk a trial writes to (checkpoints, models) fills up: every next trial would
    fail the same way, so the run stops at the first one, with the reason on the trial,
    the worker row closed and one error line."""
    objectives = write_objectives(tmp_path / "objectives", WRITER, "writer.py")
    spec = write_spec(
        tmp_path / "w.toml",
        f"""
        name = "w"
        objective = "writer"
        n_trials = 40
        [sampler]
        type = "random"
        [options]
        out = "{small_tmpfs}"
        """,
    )
    db = tmp_path / "w.db"
    url = f"sqlite:///{db}"
    result = run_cli(
        ["run", str(spec), "--storage", url, "--objectives-dir", str(objectives), "-q"], tmp_path
    )
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    line = _one_error_line(result)
    print(f"trial disk full: {line}")
    assert "No space left on device" in line, line
    with sqlite3.connect(db) as conn:
        workers = [r[0] for r in conn.execute("SELECT state FROM studyctl_workers")]
        reasons = [
            r[0]
            for r in conn.execute(
                "SELECT a.value_json FROM trials t JOIN trial_user_attributes a "
                "ON a.trial_id = t.trial_id WHERE t.state = 'FAIL' AND a.key = 'fail_reason'"
            )
        ]
    assert workers and "running" not in workers, workers
    assert len(reasons) == 1 and "No space left on device" in reasons[0], reasons
    result_figures = figures("trial disk full (sqlite)", url, "w", None)
    assert result_figures.running == 0 and result_figures.failed_without_reason == 0
