"""`studyctl proxy` authenticated: a token on every call (Optuna's service and studyctl's),
TLS with a CA the workers trust, no study deletion or CMA-ES state writes by clients,
checked control arguments, and one clear line for a wrong token or certificate."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import grpc
import optuna
import pytest
from optuna.storages import GrpcStorageProxy
from optuna.trial import TrialState, create_trial

from studyctl.errors import StorageError
from studyctl.storage import open_worker_storage

from .conftest import STUDYCTL, run_cli, write_spec
from .test_proxy import free_port

TOKEN = "proxy-token-0123456789abcdef"


def _make_certs(folder: Path) -> tuple[Path, Path, Path, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost signed by it, and an unrelated CA."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    for name in ("ca", "other-ca"):
        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=studyctl test {name}",
        )  # fmt: skip
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf",
    )  # fmt: skip
    return folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "other-ca.pem"


@contextmanager
def proxy(
    storage_url: str, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [*STUDYCTL, "proxy", "-s", storage_url, "--port", str(port), *args],
        cwd=cwd,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f":{port}" in line and "listening" in line, line + proc.stdout.read()
        assert TOKEN not in line
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _study(url: str, name: str = "guarded") -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=url)
    study.enqueue_trial({"x": 1.0})
    study.optimize(lambda t: t.suggest_float("x", 0, 2), n_trials=2)
    return study


def test_anonymous_clients_are_refused(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _study(sqlite_url)
    with proxy(sqlite_url, tmp_path, env={"STUDYCTL_PROXY_TOKEN": TOKEN}) as port:
        anonymous = GrpcStorageProxy(host="127.0.0.1", port=port)
        try:
            with pytest.raises(grpc.RpcError) as refused:
                anonymous.get_all_studies()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError):
                anonymous.delete_study(1)
        finally:
            anonymous.close()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        call: Any = channel.unary_unary("/studyctl.Control/Call")
        with pytest.raises(grpc.RpcError) as control_refused:
            call(b'{"op": "study_spec", "kwargs": {"study_name": "guarded"}}', timeout=10)
        assert control_refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel.close()

        # A worker with the token (from the environment) gets through.
        monkeypatch.setenv("STUDYCTL_PROXY_TOKEN", TOKEN)
        storage = open_worker_storage(f"grpc://127.0.0.1:{port}")
        assert [s.study_name for s in storage.get_all_studies()] == ["guarded"]
    assert optuna.get_all_study_names(storage=sqlite_url) == ["guarded"]


def test_clients_cannot_delete_studies_or_write_cmaes_state(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    n_before = len(_study(sqlite_url).trials)
    monkeypatch.setenv("STUDYCTL_PROXY_TOKEN", TOKEN)
    with proxy(sqlite_url, tmp_path) as port:
        storage = open_worker_storage(f"grpc://127.0.0.1:{port}")
        sid = storage.get_study_id_from_name("guarded")
        with pytest.raises(grpc.RpcError) as deleted:
            storage.delete_study(sid)
        assert deleted.value.code() == grpc.StatusCode.PERMISSION_DENIED
        trial_id = storage.create_new_trial(sid)
        for key in ("cma:optimizer:0", "cmawm:optimizer:0"):
            with pytest.raises(grpc.RpcError) as written:
                storage.set_trial_system_attr(trial_id, key, "80049500")
            assert written.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError):
            storage.set_study_system_attr(sid, "cma:optimizer", "80049500")
        template = create_trial(
            state=TrialState.WAITING, system_attrs={"cma:optimizer:0": "80049500"}
        )
        with pytest.raises(grpc.RpcError) as created:
            storage.create_new_trial(sid, template_trial=template)
        assert created.value.code() == grpc.StatusCode.PERMISSION_DENIED
        storage.set_trial_system_attr(trial_id, "fixed_params", {"x": 1.0})  # others pass
    stored = optuna.load_study(study_name="guarded", storage=sqlite_url)
    assert len(stored.trials) == n_before + 1  # the plain trial created above
    assert not any(k.startswith("cma") for t in stored.trials for k in t.system_attrs)


BAD_CALLS: list[tuple[dict[str, object], str]] = [
    ({"study_name": "guarded", "grace_s": 0.0, "max_retries": 1}, "grace_s must be at least"),
    ({"study_name": "guarded", "grace_s": -5, "max_retries": 1}, "grace_s must be at least"),
    ({"study_name": 5, "grace_s": 60.0, "max_retries": 1}, "study_name must be a string"),
    ({"study_name": "guarded", "grace_s": 60.0, "max_retries": "1"}, "must be an integer"),
    ({"study_name": "guarded", "grace_s": 60.0, "max_retries": 1, "x": 1}, "unknown"),
]


def test_control_arguments_are_checked(tmp_path: Path, sqlite_url: str) -> None:
    _study(sqlite_url)
    with proxy(sqlite_url, tmp_path) as port:
        remote = cast(Any, open_worker_storage(f"grpc://127.0.0.1:{port}")).remote
        for kwargs, words in BAD_CALLS:
            with pytest.raises(StorageError, match=words):
                remote.rpc("fail_lost_trials", **kwargs)
        assert remote.rpc("fail_lost_trials", **{**BAD_CALLS[0][0], "grace_s": 60.0}) == []


def test_proxy_refuses_a_public_address_without_a_token(tmp_path: Path, sqlite_url: str) -> None:
    refused = run_cli(
        ["proxy", "-s", sqlite_url, "--host", "0.0.0.0", "--port", "1"], cwd=tmp_path, timeout=60
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ") and "token" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    flags = run_cli(["proxy", "--help"], cwd=tmp_path).stdout
    assert "--token-file" in flags and "--tls-cert" in flags


@pytest.mark.slow
def test_tls_and_token_workers_see_one_clear_line(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    ca, cert, key, other_ca = _make_certs(tmp_path / "tls")
    spec = write_spec(
        tmp_path / "t.toml",
        """
        name = "tls-study"
        objective = "quadratic"
        n_trials = 2
        [sampler]
        type = "random"
        """,
    )
    made = run_cli(
        ["create", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives_dir)],
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args = ["--host", "127.0.0.1", "--tls-cert", str(cert), "--tls-key", str(key)]
    with proxy(sqlite_url, tmp_path, *args, "--token-file", str(token_file)) as port:
        url = f"grpcs://127.0.0.1:{port}"

        def worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
            return run_cli(
                ["worker", "tls-study", "-s", url, "--objectives-dir", str(objectives_dir), "-q"],
                cwd=tmp_path,
                env=env,
                timeout=180,
            )

        wrong_token = worker({"STUDYCTL_PROXY_TOKEN": "x" * 24, "STUDYCTL_PROXY_CA": str(ca)})
        untrusted = worker({"STUDYCTL_PROXY_TOKEN": TOKEN, "STUDYCTL_PROXY_CA": str(other_ca)})
        good = worker({"STUDYCTL_PROXY_TOKEN_FILE": str(token_file), "STUDYCTL_PROXY_CA": str(ca)})
    assert wrong_token.returncode == 2
    assert "refused this worker's token" in wrong_token.stderr
    assert untrusted.returncode == 2
    assert "certificate is not trusted" in untrusted.stderr
    for out in (wrong_token, untrusted):
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert good.returncode == 0, good.stdout + good.stderr
    study = optuna.load_study(study_name="tls-study", storage=sqlite_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2


def test_cmaes_workers_are_sent_to_the_database(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    spec = write_spec(
        tmp_path / "cma.toml",
        """
        name = "cma-study"
        objective = "quadratic"
        n_trials = 2
        [sampler]
        type = "cmaes"
        """,
    )
    made = run_cli(
        ["create", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives_dir)],
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    with proxy(sqlite_url, tmp_path) as port:
        url = f"grpc://127.0.0.1:{port}"
        refused = run_cli(
            ["worker", "cma-study", "-s", url, "-q", "--objectives-dir", str(objectives_dir)],
            cwd=tmp_path,
            timeout=120,
        )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "cmaes" in refused.stderr and "database URL" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert optuna.load_study(study_name="cma-study", storage=sqlite_url).trials == []
