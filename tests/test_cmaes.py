"""`[sampler] type = "cmaes"` works as installed: its `cmaes` dependency comes with
studyctl, so a CMA-ES study runs to its budget instead of failing after its startup
trials."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from .conftest import run_cli, write_spec


def test_cmaes_study_runs_to_its_budget(
    tmp_path: Path, sqlite_url: str, objectives_dir: Path
) -> None:
    spec = write_spec(
        tmp_path / "cma.toml",
        """
        name = "cma"
        objective = "quadratic"
        n_trials = 5
        [sampler]
        type = "cmaes"
        seed = 1
        n_startup_trials = 1
        """,
    )
    ran = run_cli(
        ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives_dir), "-q"],
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    trials = optuna.load_study(study_name="cma", storage=sqlite_url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    # CMA-ES really sampled (its state is kept in the trials' system attributes).
    assert any(k.startswith("cma:") for t in trials for k in t.system_attrs)
