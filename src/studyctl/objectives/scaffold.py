"""`studyctl init NAME`: a new objective and study spec that run as written.

The templates are the README's Keras example (a small MLP on scikit-learn's digits, which
ships inside scikit-learn), so a new user starts from something that trains, then edits
`load_data` and `build_model` for their own data and model. Nothing here imports
TensorFlow or Optuna.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from studyctl.errors import StudyctlError

# A Python identifier: the objective's name, its file `objectives/NAME.py` and the study.
INIT_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")

OBJECTIVE_TEMPLATE = '''\
"""{name}: a Keras objective for studyctl (written by `studyctl init {name}`).

Edit load_data for your data set and build_model for your model; `studyctl run
studies/{name}.toml` runs the study. The data here is scikit-learn's digits (1,797 8x8
images, bundled with scikit-learn: nothing is downloaded).
"""

from __future__ import annotations

from typing import Any

import optuna

from studyctl import TrainingData, TrialContext, keras_objective


def load_data(options: dict[str, Any]) -> TrainingData:
    """Called once per process, then cached; `options` is the spec's [options] table."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target
    n_train = int(len(x) * (1.0 - float(options.get("val_fraction", 0.2))))
    return TrainingData(x=x[:n_train], y=y[:n_train], x_val=x[n_train:], y_val=y[n_train:])


@keras_objective("{name}", load_data=load_data)
def build_model(trial: optuna.Trial, ctx: TrialContext) -> Any:
    """Build and compile a model from the trial's parameters; studyctl fits it."""
    import keras

    units = trial.suggest_int("units", 16, 256, log=True)
    # ctx.suggest_*: the spec's [space.learning_rate] can override this range.
    learning_rate = ctx.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
'''

SPEC_TEMPLATE = """\
# Study {name} (written by `studyctl init {name}`); run it with
#   studyctl run studies/{name}.toml
# and again to continue it: n_trials is the study's total. The README lists every key.
name = "{name}"
objective = "{name}"           # objectives/{name}.py
direction = "minimize"
metric = "val_loss"            # the Keras log the study optimizes
n_trials = 20

[sampler]
type = "tpe"
seed = 0

[pruner]
type = "median"
n_startup_trials = 5
n_warmup_steps = 2

[training]
epochs = 8
batch_size = 64

[options]
val_fraction = 0.2
"""


@dataclass(frozen=True)
class InitResult:
    objective: Path
    spec: Path


def init_study(name: str, root: Path, objectives_dir: Path | None = None) -> InitResult:
    """Write `objectives/NAME.py` and `studies/NAME.toml` under `root`.

    Refuses (before writing anything) an invalid name or a file that already exists.
    """
    if not INIT_NAME_RE.match(name):
        raise StudyctlError(
            f"init {name!r}: expected a Python identifier (a letter, then letters, digits "
            "or _), e.g. my_model",
            hint="the name is the objective's, its file's and the study's",
        )
    objective = (objectives_dir or root / "objectives") / f"{name}.py"
    spec = root / "studies" / f"{name}.toml"
    for path in (objective, spec):
        if path.exists():
            raise StudyctlError(
                f"init {name!r}: {path} already exists; nothing written",
                hint="choose another name, or remove the file",
            )
    written: list[Path] = []
    for path, text in (
        (objective, OBJECTIVE_TEMPLATE.format(name=name)),
        (spec, SPEC_TEMPLATE.format(name=name)),
    ):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # "x": never replace a file created since the check above.
            with path.open("x", encoding="utf-8") as f:
                written.append(path)
                f.write(text)
        except OSError as exc:
            for done in written:  # nothing half-written
                done.unlink(missing_ok=True)
            raise StudyctlError(f"init {name!r}: cannot write {path}: {exc.strerror}") from None
    return InitResult(objective=objective, spec=spec)
