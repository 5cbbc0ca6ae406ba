"""`[artifacts] store = "s3://..."`: checkpoints and the best model in an object store, for
workers on machines without a shared file system.

The store is moto's S3 server, a real HTTP endpoint on loopback spoken to by boto3 exactly
as S3 or MinIO would be. "Machines" are worker processes with different working
directories, so each has its own local `[artifacts] path` and only the store is shared.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from studyctl.execution.prepare import prepare_study
from studyctl.spec import load_spec

from .conftest import STUDYCTL, run_cli, write_objectives
from .test_proxy import free_port
from .test_resume import SLOW_DIGITS, kill_mid_trial, slow_digits_spec

BUCKET = "studyctl-test"


@pytest.fixture
def s3_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3 endpoint with an empty bucket; the environment points boto3 at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    from studyctl.artifacts import objectstore

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "studyctl",
        "AWS_SECRET_ACCESS_KEY": "studyctl-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    objectstore._CLIENT.clear()
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    try:
        yield f"s3://{BUCKET}/runs"
    finally:
        objectstore._CLIENT.clear()
        server.stop()


def _keys(prefix: str) -> list[str]:
    import boto3

    pages = (
        boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    )
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _spec(tmp_path: Path, store: str) -> Path:
    # A relative path: each "machine" (working directory) has its own local artifacts.
    return slow_digits_spec(
        tmp_path / "remote.toml", "remote", f'path = "artifacts"\nstore = "{store}"'
    )


@pytest.mark.slow
def test_retry_on_another_machine_resumes_from_the_store(
    tmp_path: Path, sqlite_url: str, s3_store: str
) -> None:
    folder = write_objectives(tmp_path / "objectives", SLOW_DIGITS, name="slow_digits.py")
    machines = {name: tmp_path / name for name in ("machine-a", "machine-b", "laptop")}
    for home in machines.values():
        home.mkdir()
    prepare_study(load_spec(_spec(tmp_path, s3_store)), sqlite_url, folder)
    command = [*STUDYCTL, "worker", "remote", "-s", sqlite_url, "--objectives-dir", str(folder)]
    worker = subprocess.Popen(
        [*command, "-q"],
        cwd=machines["machine-a"],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        start_new_session=True,
    )
    study = optuna.load_study(study_name="remote", storage=sqlite_url)

    def checkpoint_uploaded(trial: FrozenTrial) -> None:
        assert _keys(f"runs/remote/trial-{trial.number}/"), "no checkpoint reached the store"

    victim = kill_mid_trial(study, worker, before_kill=checkpoint_uploaded)
    epochs_before_kill = len(study.trials[victim.number].intermediate_values)

    second = run_cli(command[3:], cwd=machines["machine-b"])  # another machine, no shared disk
    assert second.returncode == 0, second.stderr
    # machine-b pulled the checkpoint into its own artifacts path, and removed it when done.
    assert not (machines["machine-b"] / "artifacts" / "remote" / f"trial-{victim.number}").exists()
    assert (machines["machine-a"] / "artifacts" / "remote" / f"trial-{victim.number}").exists()
    trials = optuna.load_study(study_name="remote", storage=sqlite_url).trials
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    # machine-b had no local copy: the checkpoint it resumed from came from the store.
    assert 0 < retry.user_attrs["resumed_from_epoch"] <= epochs_before_kill
    assert sorted(retry.intermediate_values) == list(range(8))
    assert [k for k in _keys("runs/remote/") if "/trial-" in k and "/models/" not in k] == []
    best = study.best_trial
    assert best.user_attrs["model_path"] == f"{s3_store}/remote/models/trial-{best.number}.keras"
    assert _keys("runs/remote/models/") == [f"runs/remote/models/trial-{best.number}.keras"]

    exported = machines["laptop"] / "best.keras"
    out = run_cli(
        ["best", "remote", "-s", sqlite_url, "--export-model", str(exported)],
        cwd=machines["laptop"],
    )
    assert out.returncode == 0, out.stderr
    import keras

    model = keras.models.load_model(exported)
    assert model.count_params() == best.user_attrs["n_params"]
    print(
        f"store: kill -9 after {epochs_before_kill} epochs on machine-a; machine-b resumed "
        f"at epoch {retry.user_attrs['resumed_from_epoch']}"
    )


def test_unreachable_store_stops_before_any_trial(
    tmp_path: Path, sqlite_url: str, s3_store: str
) -> None:
    folder = write_objectives(tmp_path / "objectives", SLOW_DIGITS, name="slow_digits.py")
    spec = _spec(tmp_path, "s3://no-such-bucket/runs")
    out = run_cli(["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(folder)], tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert "artifacts.store s3://no-such-bucket/runs is not writable from here" in lines[0]
    assert "NoSuchBucket" in lines[0] or "does not exist" in lines[0]
    assert optuna.get_all_study_names(storage=sqlite_url) == []  # nothing created


def test_store_must_be_an_s3_url(tmp_path: Path) -> None:
    from studyctl.errors import StudyctlError

    with pytest.raises(StudyctlError, match=r"artifacts.store: expected s3://BUCKET\[/PREFIX\]"):
        load_spec(_spec(tmp_path, "gs://bucket/runs"))
