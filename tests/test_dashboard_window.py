"""`studyctl dashboard --max-trials N`: a real dashboard serves a bigger study as its most
recent N trials over HTTP (the best trial stays the study's own), says so on the command
line and on the page, keeps the page's `after` polling valid as trials are added, and
serves smaller studies, or every study with 0, whole."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from studyctl.storage import open_storage

from .conftest import STUDYCTL
from .test_dashboard import free_port, get_json


def _trials(values: list[float]) -> list[optuna.trial.FrozenTrial]:
    dist: dict[str, optuna.distributions.BaseDistribution] = {"x": FloatDistribution(0, 100)}
    return [create_trial(params={"x": v}, distributions=dist, value=v) for v in values]


@contextmanager
def _dashboard(url: str, cwd: Path, *args: str) -> Iterator[tuple[str, list[str]]]:
    port = free_port()
    proc = subprocess.Popen(
        [*STUDYCTL, "dashboard", "-s", url, "--port", str(port), "--no-token", *args],
        cwd=cwd,
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(f"{base}/api/studies")
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(proc.stdout.read() if proc.stdout else "") from None
                time.sleep(0.2)
        yield base, lines
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        lines.extend(out.splitlines())


def _ids(base: str) -> dict[str, int]:
    studies = get_json(f"{base}/api/studies")["study_summaries"]
    return {s["study_name"]: s["study_id"] for s in studies}


def test_a_big_study_is_served_as_its_most_recent_trials(storage_url: str, tmp_path: Path) -> None:
    storage = open_storage(storage_url)
    big = optuna.create_study(study_name="big", storage=storage)
    # the best trial (value 0) is among the oldest, outside the window
    big.add_trials(_trials([0.0] + [float(v) for v in range(1, 60)]))
    small = optuna.create_study(study_name="small", storage=storage)
    small.add_trials(_trials([5.0, 6.0]))

    with _dashboard(storage_url, tmp_path, "--max-trials", "25") as (base, lines):
        ids = _ids(base)
        detail = get_json(f"{base}/api/studies/{ids['big']}?after=0")
        assert [t["number"] for t in detail["trials"]] == list(range(35, 60))
        assert [t["number"] for t in detail["best_trials"]] == [0]
        assert len(get_json(f"{base}/api/studies/{ids['small']}?after=0")["trials"]) == 2
        # the page says so
        with urllib.request.urlopen(f"{base}/dashboard/studies/{ids['big']}") as page:
            html = page.read().decode()
        assert "studyctl-trial-window" in html
        assert "most recent 25 trials of big (60 trials)" in html
        # new trials reach an open page through its `after` polling; the window stays put
        big.add_trials(_trials([70.0, 71.0, 72.0]))
        time.sleep(2.5)  # optuna-dashboard re-reads a study of < 100 trials after 2 s
        polled = get_json(f"{base}/api/studies/{ids['big']}?after=25")
        assert [t["number"] for t in polled["trials"]] == [60, 61, 62]
        again = get_json(f"{base}/api/studies/{ids['big']}?after=0")
        assert [t["number"] for t in again["trials"]] == list(range(35, 63))
    assert any("most recent 25 trials of big (60 trials)" in line for line in lines), lines

    with _dashboard(storage_url, tmp_path, "--max-trials", "0") as (base, lines):
        ids = _ids(base)
        assert len(get_json(f"{base}/api/studies/{ids['big']}?after=0")["trials"]) == 63
        with urllib.request.urlopen(f"{base}/dashboard") as page:
            assert "studyctl-trial-window" not in page.read().decode()
    assert not any("most recent" in line for line in lines), lines


@pytest.mark.slow
def test_the_page_renders_a_cut_study_and_says_so(tmp_path: Path, sqlite_url: str) -> None:
    """Headless Chromium renders a study served as its most recent trials, with the line
    saying so at the top."""
    from .test_browser import chromium, page_text

    storage = open_storage(sqlite_url)
    big = optuna.create_study(study_name="big", storage=storage)
    big.add_trials(_trials([float(v) for v in range(60)]))
    with _dashboard(sqlite_url, tmp_path, "--max-trials", "25") as (base, _):
        study_id = _ids(base)["big"]
        text, _ = page_text(
            [*chromium(), f"{base}/dashboard/studies/{study_id}/trials"], tmp_path / "profile"
        )
    assert "studyctl: the dashboard shows the most recent 25 trials of big (60 trials)" in text
    assert "25 Trials" in text
