"""Workers on different hosts sharing one PostgreSQL study.

Each "host" is a network namespace (`ip netns`, a veth pair to this machine) with its own
hostname (a UTS namespace) and working directory. PostgreSQL listens on loopback only, so
the test forwards each host's gateway address (10.233.N.1:5432) to it, the way a host
reaches a database server across a network. The artifacts path is shared, as a cluster's
shared file system would be. One host's worker is killed mid-trial; the other finishes the
study and retries that trial.

Where the sandbox does not allow network namespaces, that test skips with the reason and
the same scenario runs with processes that differ only in hostname and working directory.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from .conftest import prepare_sleepy_study, run_cli

pytestmark = pytest.mark.slow

# A host's command line: (hostname, working directory, storage URL, objectives) -> argv.
Launch = Callable[[str, Path, str, Path], list[str]]


def _worker_command(host: str, cwd: Path, url: str, objectives: Path) -> str:
    return (
        f"hostname {host} && cd {cwd} && exec {sys.executable} -m studyctl.cli worker "
        f"hosts -s {url} --objectives-dir {objectives}"
    )


def _start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _two_hosts_scenario(
    tmp_path: Path, postgres_url: str, urls: dict[str, str], launch: Launch
) -> None:
    """Both hosts' workers join one study; host-a's is killed mid-trial; host-b finishes."""
    objectives = prepare_sleepy_study(
        tmp_path, "hosts", postgres_url, 6, tmp_path / "shared" / "artifacts"
    )
    homes = {h: tmp_path / h for h in urls}
    for home in homes.values():
        home.mkdir()
    workers = {h: _start(launch(h, homes[h], urls[h], objectives)) for h in urls}
    study = optuna.load_study(study_name="hosts", storage=postgres_url)
    try:
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:
            for t in study.get_trials(states=(TrialState.RUNNING,)):
                if (
                    t.user_attrs.get("worker", {}).get("host") == "host-a"
                    and len(t.intermediate_values) >= 1
                ):
                    victim = t
            time.sleep(0.1)
        assert victim is not None, "host-a never ran a trial"
        os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)  # its trial process
        os.killpg(workers["host-a"].pid, signal.SIGKILL)  # and the worker itself
        out_b, _ = workers["host-b"].communicate(timeout=180)
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.kill()
    assert workers["host-b"].returncode == 0, out_b
    trials = optuna.load_study(study_name="hosts", storage=postgres_url).trials
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 6
    assert trials[victim.number].state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert retry.user_attrs["worker"]["host"] == "host-b"
    status = json.loads(
        run_cli(["status", "hosts", "-s", postgres_url, "-f", "json"], cwd=tmp_path).stdout
    )
    hosts = {w["host"]: w["state"] for w in status["workers"]}
    assert hosts == {"host-a": "dead", "host-b": "stopped"}


def _relay(a: socket.socket, b: socket.socket) -> None:
    with a, b:
        while True:
            ready, _, _ = select.select([a, b], [], [], 1.0)
            for src in ready:
                data = src.recv(65536)
                if not data:
                    return
                (b if src is a else a).sendall(data)


@contextmanager
def _forward(listen: tuple[str, int], target: tuple[str, int]) -> Iterator[None]:
    """A TCP forwarder on this machine's side of a veth pair, to the loopback-only server."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(listen)
    server.listen()
    server.settimeout(0.5)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(target)
            threading.Thread(target=_relay, args=(client, upstream), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        server.close()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def _network_host(index: int) -> Iterator[tuple[str, str]]:
    """A network namespace joined to this machine by a veth pair; yields (netns, gateway)."""
    tag = uuid.uuid4().hex[:6]
    netns, outside, inside = f"sctl-{tag}", f"sco{tag}", f"sci{tag}"
    gateway, address = f"10.233.{index}.1", f"10.233.{index}.2"
    _ip("netns", "add", netns)
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", netns)
        _ip("addr", "add", f"{gateway}/24", "dev", outside)
        _ip("link", "set", outside, "up")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", inside)
        _ip("-n", netns, "link", "set", inside, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        yield netns, gateway
    finally:
        subprocess.run(["ip", "link", "del", outside], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def _netns_unavailable() -> str | None:
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "iproute2 (ip) or unshare is not installed"
    probe = f"sctl-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"this sandbox does not allow network namespaces ({made.stderr.strip()})"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def test_two_network_hosts_one_killed_mid_trial(tmp_path: Path, postgres_url: str) -> None:
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    urls = {}
    netns_of = {}
    with ExitStack() as stack:
        for index, host in enumerate(("host-a", "host-b"), start=1):
            netns, gateway = stack.enter_context(_network_host(index))
            stack.enter_context(_forward((gateway, 5432), ("127.0.0.1", 5432)))
            netns_of[host] = netns
            # The same database, reached across the veth pair from inside the namespace.
            urls[host] = postgres_url.replace("127.0.0.1:5432", f"{gateway}:5432")

        def launch(host: str, cwd: Path, url: str, objectives: Path) -> list[str]:
            command = _worker_command(host, cwd, url, objectives)
            return ["ip", "netns", "exec", netns_of[host], "unshare", "--uts", "sh", "-c", command]

        _two_hosts_scenario(tmp_path, postgres_url, urls, launch)


def test_two_hostnames_one_killed_mid_trial(tmp_path: Path, postgres_url: str) -> None:
    """The same scenario without network namespaces: hostname and working directory only."""
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode != 0
    ):
        pytest.skip("this sandbox does not allow UTS namespaces (unshare --uts)")

    def launch(host: str, cwd: Path, url: str, objectives: Path) -> list[str]:
        return ["unshare", "--uts", "sh", "-c", _worker_command(host, cwd, url, objectives)]

    urls = {host: postgres_url for host in ("host-a", "host-b")}
    _two_hosts_scenario(tmp_path, postgres_url, urls, launch)
