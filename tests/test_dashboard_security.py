"""`studyctl dashboard` is safe to open: Host allow-list (DNS rebinding), same-origin
writes, artifacts as sandboxed attachments, a per-start token, --read-only; over HTTP
against the real server, and in headless Chromium."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from .conftest import STUDYCTL, run_cli, write_objectives
from .test_dashboard import free_port

EVIL_HTML = "<html><body><script>document.body.innerHTML = 'PWNED-' + 'BY-SCRIPT';</script>"
EVIL_HTML += "<p>inert</p></body></html>"


@dataclass
class Dashboard:
    port: int
    token: str | None
    proc: subprocess.Popen[str]
    first_line: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: Any = None,
        auth: bool = True,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request, redirects not followed; the token goes as a header when `auth`."""
        sent = {"Host": f"127.0.0.1:{self.port}"}
        if auth and self.token:
            sent["Authorization"] = f"Token {self.token}"
        sent.update(headers or {})
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()


@contextmanager
def serve(url: str, cwd: Path, *args: str) -> Iterator[Dashboard]:
    """`studyctl dashboard` in a subprocess; yields once it answers, with the token from the
    URL it printed (None when it printed none)."""
    port = free_port()
    proc = subprocess.Popen(
        [*STUDYCTL, "dashboard", "-s", url, "--port", str(port), *args],
        cwd=cwd,
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"[?&]token=([A-Za-z0-9_\-]+)", line)
        board = Dashboard(port, match.group(1) if match else None, proc, line)
        deadline = time.monotonic() + 60
        while True:
            try:
                board.request("GET", "/api/meta")
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(line + proc.stdout.read()) from None
                time.sleep(0.2)
        yield board
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _make_study(folder: Path) -> str:
    url = f"sqlite:///{folder / 'studies.db'}"
    objectives = write_objectives(folder / "objectives")
    spec = folder / "d.toml"
    spec.write_text(
        'name = "guarded"\nobjective = "quadratic"\nn_trials = 2\n[sampler]\ntype = "random"\n'
    )
    ran = run_cli(
        ["run", str(spec), "-s", url, "--objectives-dir", str(objectives), "-q"], cwd=folder
    )
    assert ran.returncode == 0, ran.stderr
    return url


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Dashboard]]:
    """One study and one dashboard with the default settings, for the tests that only
    read or that make changes the others do not look at."""
    folder = tmp_path_factory.mktemp("dashboard")
    url = _make_study(folder)
    with serve(url, folder) as board:
        yield url, board


@pytest.fixture
def study_url(tmp_path: Path) -> str:
    return _make_study(tmp_path)


def _study_id(url: str) -> int:
    return optuna.load_study(study_name="guarded", storage=url)._study_id


def _exists(url: str) -> bool:
    return "guarded" in optuna.get_all_study_names(storage=url)


def test_rebound_host_name_is_refused(shared: tuple[str, Dashboard]) -> None:
    study_url, board = shared
    sid = _study_id(study_url)
    evil = {"Host": f"evil.example:{board.port}"}
    status, _, body = board.request("GET", "/api/studies", headers=evil)
    assert status == 403 and b"not allowed" in body
    status, _, _ = board.request("DELETE", f"/api/studies/{sid}", headers=evil)
    assert status == 403
    assert _exists(study_url)
    for allowed in (f"localhost:{board.port}", f"127.0.0.1:{board.port}"):
        assert board.request("GET", "/api/studies", headers={"Host": allowed})[0] == 200


def test_cross_origin_writes_are_refused(shared: tuple[str, Dashboard]) -> None:
    study_url, board = shared
    sid = _study_id(study_url)
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": f"http://127.0.0.1:{board.port + 1}"},
        {"Referer": "http://evil.example/page"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        status, _, body = board.request("DELETE", f"/api/studies/{sid}", headers=headers)
        assert status == 403, (headers, body)
    assert _exists(study_url)
    own = {"Origin": board.base, "Sec-Fetch-Site": "same-origin"}
    new = {"study_name": "made-by-the-page", "directions": ["minimize"]}
    status, _, _ = board.request("POST", "/api/studies", headers=own, body=new)
    assert status == 201
    assert "made-by-the-page" in optuna.get_all_study_names(storage=study_url)


@pytest.mark.parametrize(
    ("filename", "mime"), [("x.html", "text/html"), ("x.svg", "image/svg+xml")]
)
def test_uploaded_artifacts_are_sandboxed_attachments(
    shared: tuple[str, Dashboard], filename: str, mime: str
) -> None:
    study_url, board = shared
    sid = _study_id(study_url)
    data = base64.b64encode(EVIL_HTML.encode()).decode()
    status, _, body = board.request(
        "POST",
        f"/api/artifacts/{sid}",
        headers={"Origin": board.base},
        body={"file": f"data:{mime};base64,{data}", "filename": filename},
    )
    assert status == 201, body
    artifact_id = json.loads(body)["artifact_id"]
    status, headers, content = board.request("GET", f"/artifacts/{sid}/{artifact_id}")
    assert status == 200 and content == EVIL_HTML.encode()
    assert headers["content-disposition"].startswith("attachment")
    assert headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in headers["content-security-policy"]
    assert "access-control-allow-origin" not in headers


def test_token_is_required_and_traded_for_a_cookie(shared: tuple[str, Dashboard]) -> None:
    _, board = shared
    assert board.token, board.first_line
    assert board.first_line.count(board.token) == 1
    status, _, body = board.request("GET", "/api/studies", auth=False)
    assert status == 403 and b"token" in body
    wrong = {"Authorization": "Token not-the-token"}
    assert board.request("GET", "/api/studies", headers=wrong, auth=False)[0] == 403
    status, headers, _ = board.request(
        "GET", f"/dashboard/studies/1?token={board.token}", auth=False
    )
    assert status == 302 and headers["location"] == "/dashboard/studies/1"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"Cookie": cookie.split(";", 1)[0]}
    status, _, body = board.request("GET", "/api/studies", headers=jar, auth=False)
    assert status == 200 and b"guarded" in body


def test_read_only_refuses_every_write_and_token_file(tmp_path: Path, study_url: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("a-token-from-a-file-0123456789\n")
    with serve(study_url, tmp_path, "--read-only", "--token-file", str(token_file)) as board:
        assert board.token == "a-token-from-a-file-0123456789"
        sid = _study_id(study_url)
        own = {"Origin": board.base}
        assert board.request("GET", f"/api/studies/{sid}")[0] == 200
        for method, path, body in (
            ("DELETE", f"/api/studies/{sid}", None),
            ("POST", "/api/studies", {"study_name": "new", "directions": ["minimize"]}),
            ("PUT", f"/api/studies/{sid}/note", {"version": 1, "body": "x"}),
        ):
            status, _, text = board.request(method, path, headers=own, body=body)
            assert status == 403 and b"read-only" in text
    assert optuna.get_all_study_names(storage=study_url) == ["guarded"]


def test_no_token_only_on_loopback(tmp_path: Path) -> None:
    refused = run_cli(
        ["dashboard", "--host", "0.0.0.0", "--no-token", "--port", "1"], cwd=tmp_path, timeout=60
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ") and "--no-token" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def _dom_within(args: list[str], seconds: float) -> str:
    """Chromium's --dump-dom output, or what it wrote before `seconds` (then it is killed
    with its child processes)."""
    proc = subprocess.Popen(
        [*args, "--dump-dom"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out


@pytest.mark.slow
def test_browser_renders_with_the_token_and_artifacts_never_run(
    tmp_path: Path, shared: tuple[str, Dashboard]
) -> None:
    from .test_browser import chromium, page_text

    study_url, board = shared
    sid = _study_id(study_url)
    data = base64.b64encode(EVIL_HTML.encode()).decode()
    status, _, body = board.request(
        "POST",
        f"/api/artifacts/{sid}",
        headers={"Origin": board.base},
        body={"file": f"data:text/html;base64,{data}", "filename": "x.html"},
    )
    assert status == 201, body
    artifact_id = json.loads(body)["artifact_id"]
    page = f"{board.base}/dashboard/studies/{sid}?token={board.token}"
    rendered, _ = page_text([*chromium(), page], tmp_path / "p1")
    refused, _ = page_text([*chromium(), f"{board.base}/dashboard/"], tmp_path / "p2")
    # DNS rebinding: a name the attacker controls now resolves to 127.0.0.1.
    rebound, _ = page_text(
        [
            *chromium(),
            "--host-resolver-rules=MAP evil.example 127.0.0.1",
            f"http://evil.example:{board.port}/dashboard/studies/{sid}?token={board.token}",
        ],
        tmp_path / "p4",
    )
    artifact = f"{board.base}/artifacts/{sid}/{artifact_id}?token={board.token}"
    # Served as a download, the artifact never becomes a page: headless Chromium either
    # aborts the load or waits on the download, so its DOM is read within a time limit.
    browser = [a for a in chromium() if not a.startswith("--virtual-time-budget")]
    opened = _dom_within([*browser, f"--user-data-dir={tmp_path / 'p3'}", artifact], 20)
    assert "guarded" in rendered and "2 Trials" not in refused
    assert "needs its token" in refused
    assert "is not allowed here" in rebound and "guarded" not in rebound
    assert "PWNED-BY-SCRIPT" not in opened
