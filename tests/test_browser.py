"""Headless Chromium (Debian's `chromium`) renders the dashboard and the HTML report."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest

from .conftest import REPO, run_cli, write_objectives, write_spec
from .test_dashboard import CURVY, dashboard

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "test-artifacts"


def chromium() -> list[str]:
    binary = shutil.which("chromium")
    if binary is None:
        if os.environ.get("CI"):
            raise AssertionError("chromium is not installed (scripts/test.sh installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=20000",
    ]


def page_text(args: list[str], profile: Path) -> tuple[str, str]:
    result = subprocess.run(
        [*args, f"--user-data-dir={profile}", "--enable-logging=stderr", "--dump-dom"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = re.sub(r"<(style|script)\b.*?</\1>", "", result.stdout, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)), result.stderr


@pytest.fixture
def study_url(tmp_path: Path, sqlite_url: str) -> str:
    folder = write_objectives(tmp_path / "objectives", CURVY, name="curvy.py")
    spec = write_spec(
        tmp_path / "c.toml",
        """
        name = "browser-study"
        objective = "curvy"
        metric = "value"
        n_trials = 6
        [sampler]
        type = "random"
        seed = 3
    """,
    )
    ran = run_cli(
        ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(folder)], cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    return sqlite_url


def test_dashboard_page_shows_study_and_trial_count(tmp_path: Path, study_url: str) -> None:
    n = len(optuna.load_study(study_name="browser-study", storage=study_url).trials)
    ARTIFACTS.mkdir(exist_ok=True)
    with dashboard(study_url, tmp_path) as (base, _):
        page = f"{base}/dashboard/studies/1/trials"
        text, _ = page_text([*chromium(), page], tmp_path / "profile")
        shot = subprocess.run(
            [
                *chromium(),
                f"--user-data-dir={tmp_path / 'profile2'}",
                "--window-size=1280,900",
                f"--screenshot={ARTIFACTS / 'dashboard.png'}",
                page,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert "browser-study" in text
    assert f"{n} Trials" in text
    assert shot.returncode == 0 and (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def test_html_report_renders_without_errors(tmp_path: Path, study_url: str) -> None:
    report = tmp_path / "report.html"
    made = run_cli(["report", "browser-study", "-s", study_url, "-o", str(report)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    text, log = page_text([*chromium(), report.as_uri()], tmp_path / "profile")
    assert "Study browser-study" in text and "Optimization history" in text
    assert "Not available" not in text
    assert "Uncaught" not in log
    dom = subprocess.run(
        [*chromium(), f"--user-data-dir={tmp_path / 'p3'}", "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert dom.count('class="main-svg"') >= 4  # plotly drew the four plots
    pngs = run_cli(
        ["report", "browser-study", "-s", study_url, "-o", str(tmp_path / "plots")], cwd=tmp_path
    )
    assert pngs.returncode == 0
    assert len(list((tmp_path / "plots").glob("*.png"))) == 4
