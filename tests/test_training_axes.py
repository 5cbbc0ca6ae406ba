"""Training settings studyctl applies itself (batch_size, epochs) are search axes: named in
[sampler.grid], [space] or [params], studyctl suggests them before the objective runs,
applies them to `fit` and records them in the trial's params. A grid axis that nothing
suggests stops the run with one error line naming it; a [space] or [params] entry that
nothing suggests is a warning."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest

from studyctl.errors import SpecError
from studyctl.spec import load_spec

from .conftest import run_cli, write_objectives, write_spec

pytestmark = pytest.mark.slow

# Suggests only the learning rate; never batch_size or epochs. The metric `batch_n` is the
# size of each training batch, averaged over the epoch's batches: it shows which batch size
# `fit` really used.
NO_BATCH_SIZE = """
from __future__ import annotations

from studyctl import TrainingData, keras_objective


def load_data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype("float32")
    return TrainingData(x=x[:1400], y=d.target[:1400], x_val=x[1400:], y_val=d.target[1400:])


@keras_objective("lr_only", load_data=load_data)
def build(trial, ctx):
    import keras

    lr = ctx.suggest_float("learning_rate", 1e-4, 1e-1, log=True)

    def batch_n(y_true, y_pred):
        return keras.ops.cast(keras.ops.shape(y_pred)[0], "float32")

    model = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=[batch_n])
    return model
"""


@pytest.fixture
def lr_only(tmp_path: Path) -> Path:
    return write_objectives(tmp_path / "objectives", NO_BATCH_SIZE, "lr_only.py")


def test_grid_of_learning_rate_and_batch_size(
    tmp_path: Path, sqlite_url: str, lr_only: Path
) -> None:
    spec = write_spec(
        tmp_path / "grid.toml",
        """
        name = "lr-bs"
        objective = "lr_only"
        metric = "val_loss"
        [sampler]
        type = "grid"
        [sampler.grid]
        learning_rate = [0.01, 0.001]
        batch_size = [16, 4096]
        [training]
        epochs = 1
        batch_size = 32
        [artifacts]
        checkpoints = false
        keep_best_model = false
        """,
    )
    result = run_cli(
        ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(lr_only), "-q"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    trials = optuna.load_study(study_name="lr-bs", storage=sqlite_url).trials
    assert all(t.state.name == "COMPLETE" for t in trials)
    points = sorted((t.params["learning_rate"], t.params["batch_size"]) for t in trials)
    assert points == sorted(itertools.product([0.01, 0.001], [16, 4096]))
    for t in trials:
        used = t.user_attrs["final_metrics"]["batch_n"]
        # 1,400 training rows: 87 batches of 16 and one of 8, or one batch of all 1,400.
        expected = 1400.0 if t.params["batch_size"] == 4096 else (87 * 16 + 8) / 88
        assert used == pytest.approx(expected, rel=1e-3), (t.params, used)


def test_space_and_params_name_batch_size_and_epochs(
    tmp_path: Path, sqlite_url: str, lr_only: Path
) -> None:
    spec = write_spec(
        tmp_path / "space.toml",
        """
        name = "space-bs"
        objective = "lr_only"
        metric = "val_loss"
        n_trials = 2
        [sampler]
        type = "random"
        seed = 3
        [params]
        epochs = 2
        [space.batch_size]
        type = "categorical"
        choices = [700, 1400]
        [training]
        epochs = 1
        batch_size = 32
        [artifacts]
        checkpoints = false
        keep_best_model = false
        """,
    )
    result = run_cli(
        ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(lr_only), "-q"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    trials = optuna.load_study(study_name="space-bs", storage=sqlite_url).trials
    assert len(trials) == 2
    for t in trials:
        assert t.state.name == "COMPLETE"
        assert t.params["epochs"] == 2 and t.user_attrs["epochs_run"] == 2
        assert t.params["batch_size"] in (700, 1400)
        assert t.user_attrs["final_metrics"]["batch_n"] == pytest.approx(t.params["batch_size"])


def test_grid_axis_nothing_suggests_is_an_error(tmp_path: Path, sqlite_url: str) -> None:
    objectives = write_objectives(tmp_path / "objectives")  # quadratic suggests only x
    spec = write_spec(
        tmp_path / "typo.toml",
        """
        name = "typo-axis"
        objective = "quadratic"
        metric = "value"
        [sampler]
        type = "grid"
        [sampler.grid]
        x = [1.0, 2.0]
        y_typo = [1, 2]
        """,
    )
    result = run_cli(
        ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives)], cwd=tmp_path
    )
    assert result.returncode == 2, result.stdout + result.stderr
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "sampler.grid.y_typo" in errors[0] and "Traceback" not in output
    # At most the first trial ran, and a spec error leaves no failed trial behind.
    names = optuna.get_all_study_names(sqlite_url)
    assert "typo-axis" not in names or not optuna.load_study(
        study_name="typo-axis", storage=sqlite_url
    ).get_trials(states=(optuna.trial.TrialState.FAIL,))


def test_space_or_params_entry_nothing_suggests_is_a_warning(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A [space] or [params] name the objective never suggests (a typo, or a parameter
    suggested only under a condition) warns once per entry, naming the key and the closest
    suggested name; the run goes on, since a conditional parameter is legitimate."""
    objectives = write_objectives(tmp_path / "objectives")  # quadratic suggests only x
    spec = write_spec(
        tmp_path / "typo.toml",
        """
        name = "typo-space"
        objective = "quadratic"
        metric = "value"
        n_trials = 3
        [space.xx]
        type = "float"
        low = -1.0
        high = 1.0
        [params]
        unused = 3
        """,
    )
    result = run_cli(
        ["run", str(spec), "-s", sqlite_url, "--objectives-dir", str(objectives)], cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    space = [line for line in warnings if "space.xx" in line]
    params = [line for line in warnings if "params.unused" in line]
    assert len(space) == 1 and len(params) == 1, output  # once per entry, not per trial
    assert "typo.toml" in space[0] and "did you mean 'x'?" in space[0], space[0]
    study = optuna.load_study(study_name="typo-space", storage=sqlite_url)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("[params]\nbatch_size = 0", "params.batch_size"),
        ("[sampler]\ntype = 'grid'\n[sampler.grid]\nepochs = [1.5, 2]", "sampler.grid.epochs"),
        ("[space.batch_size]\ntype = 'float'\nlow = 8.0\nhigh = 64.0", "space.batch_size.type"),
        ("[space.epochs]\ntype = 'int'\nlow = 0\nhigh = 3", "space.epochs.low"),
        (
            "[sampler]\ntype = 'grid'\n[sampler.grid]\nx = [1]\n"
            "[space.batch_size]\ntype = 'int'\nlow = 8\nhigh = 64",
            "space.batch_size",
        ),
    ],
)
def test_training_axes_take_positive_integers(tmp_path: Path, table: str, key: str) -> None:
    path = tmp_path / "axes.toml"
    path.write_text(f'name = "axes"\nobjective = "x"\nn_trials = 2\n{table}\n')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert f"{path}: {key}: " in str(info.value)


def test_epochs_axis_sets_hyperband_max_resource(tmp_path: Path) -> None:
    from studyctl.spec.choices import build_pruner

    path = tmp_path / "hb.toml"
    path.write_text(
        'name = "hb"\nobjective = "x"\nn_trials = 2\n[pruner]\ntype = "hyperband"\n'
        "[space.epochs]\ntype = 'categorical'\nchoices = [2, 9]\n"
    )
    spec = load_spec(path)
    assert spec.training_axes == ("epochs",) and spec.max_epochs == 9
    pruner = build_pruner(spec)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert pruner._max_resource == 9
