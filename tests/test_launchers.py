"""Cluster launchers are valid for their tools; unreachable artifact paths stop workers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml

from studyctl.execution.prepare import prepare_study
from studyctl.spec import load_spec

from .conftest import REPO, run_cli, write_spec


def test_kubernetes_indexed_job_manifest() -> None:
    job = yaml.safe_load((REPO / "scripts" / "k8s" / "studyctl-workers.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] >= 1
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (container,) = pod["containers"]
    assert container["name"] and container["image"]
    assert container["command"][:2] == ["studyctl", "worker"]
    env = {e["name"]: e for e in container["env"]}
    assert env["STUDYCTL_STORAGE"]["valueFrom"]["secretKeyRef"] == {
        "name": "studyctl-storage",
        "key": "url",
    }
    assert "value" not in env["STUDYCTL_STORAGE"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert mounts <= {v["name"] for v in pod["volumes"]}
    # No storage URL in plain text anywhere in the manifest (only in the kubectl example).
    body = [
        line
        for line in (REPO / "scripts/k8s/studyctl-workers.yaml").read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    assert not any("postgresql" in line for line in body)


def test_shell_scripts_pass_shellcheck() -> None:
    checker = shutil.which("shellcheck")
    if checker is None:
        pytest.skip("shellcheck is not installed (scripts/test.sh installs it in CI)")
    scripts = [
        *(REPO / "scripts").rglob("*.sh"),
        *(REPO / "scripts").rglob("*.sbatch"),
        REPO / ".ci" / "run",
    ]
    result = subprocess.run(
        [checker, "--shell=bash", *map(str, scripts)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_worker_stops_before_a_trial_when_artifacts_are_not_writable(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    spec = write_spec(
        tmp_path / "a.toml",
        """
        name = "art"
        objective = "quadratic"
        n_trials = 2
        [artifacts]
        path = "shared/artifacts"
    """,
    )
    prepare_study(load_spec(spec), sqlite_url, objectives_dir)
    elsewhere = tmp_path / "other-host"
    elsewhere.mkdir()
    (elsewhere / "shared").write_text("a file where the shared mount should be")
    result = run_cli(
        ["worker", "art", "-s", sqlite_url, "--objectives-dir", str(objectives_dir)], cwd=elsewhere
    )
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "artifacts.path 'shared/artifacts' is not writable here" in line
    assert "shared file system" in line and "\n" not in line
    assert optuna.load_study(study_name="art", storage=sqlite_url).trials == []
