"""A deleted study stays deleted, however it was deleted (`studyctl delete`, the
dashboard's delete button, `optuna.delete_study`, Optuna's own CLI): `resume NAME` must not
silently recreate and rerun it from a studyctl row left behind."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from ..conftest import run_cli, write_spec


def _studyctl_rows(url: str, name: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return sum(
                int(
                    conn.execute(
                        sa.text(f"SELECT count(*) FROM {table} WHERE study_name = :n"), {"n": name}
                    ).scalar_one()
                )
                for table in ("studyctl_studies", "studyctl_workers", "studyctl_claims")
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("how", ["storage", "plain_optuna"])
def test_resume_of_a_study_deleted_outside_studyctl(
    tmp_path: Path, objectives_dir: Path, storage_url: str, how: str
) -> None:
    spec = write_spec(
        tmp_path / "gone.toml",
        """
        name = "gone"
        objective = "quadratic"
        n_trials = 2
        [sampler]
        type = "random"
        """,
    )
    ran = run_cli(
        ["run", str(spec), "--storage", storage_url, "--objectives-dir", str(objectives_dir), "-q"],
        tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    if how == "storage":
        # What the dashboard does: delete through the storage studyctl serves it.
        from studyctl.storage import open_storage

        storage = open_storage(storage_url)
        storage.delete_study(storage.get_study_id_from_name("gone"))
        assert _studyctl_rows(storage_url, "gone") == 0
    else:
        # Optuna's own storage (e.g. `optuna delete-study`), which knows nothing of studyctl.
        plain = optuna.storages.RDBStorage(storage_url, skip_compatibility_check=True)
        optuna.delete_study(study_name="gone", storage=plain)
        plain.engine.dispose()
    resumed = run_cli(
        ["resume", "gone", "--storage", storage_url, "--objectives-dir", str(objectives_dir)],
        tmp_path,
    )
    assert resumed.returncode == 2, (resumed.returncode, resumed.stdout, resumed.stderr)
    assert resumed.stderr.startswith("error: no study 'gone'"), resumed.stderr
    assert "Traceback" not in resumed.stderr
    plain = optuna.storages.RDBStorage(storage_url, skip_compatibility_check=True)
    try:
        assert "gone" not in [s.study_name for s in optuna.get_all_study_summaries(plain)]
    finally:
        plain.engine.dispose()
    # The orphan row went with the refused resume; the name is free for a new study.
    assert _studyctl_rows(storage_url, "gone") == 0
