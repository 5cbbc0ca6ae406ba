"""What a trial says about its artifacts stays true: a superseded best model's file, its
`model_path` attribute and its dashboard artifact go together; a removed checkpoint folder
is no longer named by `checkpoint_dir`; nothing else lies in the artifact folder; and the
paths resolve from any folder, so `studyctl best --export-model` works from anywhere."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from .conftest import DIGITS_DATA, run_cli, write_objectives, write_spec

pytestmark = pytest.mark.slow

# The enqueued learning rates make each trial better than the one before it (1e-6 barely
# moves from the initial loss; 0.05 reaches about 0.3 in one epoch).
IMPROVING = (
    DIGITS_DATA
    + """


@keras_objective("improving", load_data=load_data)
def build(trial, ctx):
    import keras

    lr = trial.suggest_float("lr", 1e-6, 0.1, log=True)
    model = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
    return model
"""
)

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_superseded_models_leave_no_stale_references(tmp_path: Path) -> None:
    run_dir = tmp_path / "project"
    objectives = write_objectives(run_dir / "objectives", IMPROVING, "improving.py")
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = write_spec(
        run_dir / "better.toml",
        """
        name = "better"
        objective = "improving"
        metric = "val_loss"
        n_trials = 3
        [training]
        epochs = 1
        [[enqueue]]
        lr = 0.000001
        [[enqueue]]
        lr = 0.001
        [[enqueue]]
        lr = 0.05
        """,
    )
    result = run_cli(
        ["run", str(spec), "-s", url, "--objectives-dir", str(objectives), "-q"], cwd=run_dir
    )
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="better", storage=url)
    trials = sorted(study.trials, key=lambda t: t.number)
    values = [float(t.values[0]) for t in trials]
    assert values == sorted(values, reverse=True), values  # each beat the one before
    *superseded, best = trials
    assert study.best_trial.number == best.number

    # Only the best trial names a model, by a path that resolves from anywhere.
    model_path = Path(best.user_attrs["model_path"])
    assert model_path.is_absolute() and model_path.is_file()
    for t in superseded:
        assert t.user_attrs.get("model_path") is None, t.user_attrs
        assert not any(k.startswith("artifacts:") for k in t.system_attrs), t.system_attrs
    # The best model's dashboard artifact is the only file of Optuna's artifact store.
    artifact_ids = [k.split(":", 1)[1] for k in best.system_attrs if k.startswith("artifacts:")]
    assert len(artifact_ids) == 1
    artifacts = run_dir / "artifacts"
    stray = sorted(p.name for p in artifacts.iterdir() if UUID.match(p.name))
    assert stray == artifact_ids
    # No checkpoint_dir names a removed folder.
    for t in trials:
        folder = t.user_attrs.get("checkpoint_dir")
        assert folder is None or Path(folder).is_dir(), (t.number, folder)
    assert sorted(p.name for p in (artifacts / "better").iterdir()) == ["models"]

    # Export from another folder.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exported = run_cli(["best", "better", "-s", url, "--export-model", "best.keras"], cwd=elsewhere)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert (elsewhere / "best.keras").stat().st_size > 0

    # A missing file is reported as missing, not blamed on keep_best_model (it was on).
    model_path.unlink()
    missing = run_cli(["best", "better", "-s", url, "--export-model", "b.keras"], cwd=elsewhere)
    assert missing.returncode == 2
    assert str(model_path) in missing.stderr and "keep_best_model" not in missing.stderr
