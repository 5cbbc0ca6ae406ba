"""Spec validation: the shipped specs parse, and every class of bad input gives one line
naming the file, the key and what was expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studyctl.errors import SpecError
from studyctl.spec import StudySpec, load_spec

from .conftest import REPO, write_spec

GOOD = """
name = "s1"
objective = "quadratic"
n_trials = 5
"""


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_specs_parse(path: Path) -> None:
    spec = load_spec(path)
    assert spec.n_trials is not None and spec.n_trials > 0


def test_seed_grid_budget_is_the_grid() -> None:
    spec = load_spec(REPO / "studies" / "seed_grid.toml")
    assert spec.sampler.type == "grid"
    assert spec.sampler.grid == {
        "learning_rate": [0.01, 0.001, 0.0001],
        "batch_size": [32, 64, 128],
    }
    assert spec.n_trials == 9


def test_full_spec_round_trips_through_its_snapshot(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path / "full.toml",
        """
        name = "full"
        objective = "pkg.mod:obj"
        directions = ["minimize", "maximize"]
        metrics = ["val_loss", "val_accuracy"]
        storage = "sqlite:///x.db"
        n_trials = 7
        timeout = 60
        [sampler]
        type = "nsga2"
        seed = 3
        population_size = 10
        [training]
        epochs = 2
        batch_size = 16
        validation_split = 0.1
        objective_value = "last"
        [worker]
        heartbeat_interval = 5
        grace_period = 20
        [params]
        units = 32
        [space.lr]
        type = "float"
        low = 0.0001
        high = 0.1
        log = true
        [space.act]
        type = "categorical"
        choices = ["relu", "tanh"]
        [artifacts]
        checkpoint_interval_s = 30
        [options]
        anything = {nested = [1, 2]}
        [[enqueue]]
        lr = 0.01
    """,
    )
    spec = load_spec(path)
    assert spec.directions == ("minimize", "maximize")
    assert spec.artifacts.checkpoint_interval_s == 30.0
    assert spec.params == {"units": 32}
    assert spec.space["lr"].log and spec.space["act"].choices == ("relu", "tanh")
    assert spec.enqueue == ({"lr": 0.01},)
    assert StudySpec.from_dict(spec.to_dict()) == spec


def test_every_sampler_pruner_and_shipped_spec_round_trips_through_its_stored_snapshot(
    tmp_path: Path,
) -> None:
    """The snapshot kept in the database (`spec_json`, secrets scrubbed) of every spec this
    studyctl parses rebuilds to the same spec: the check for a newer studyctl's settings
    refuses none of this version's own."""
    from studyctl.spec.choices import PRUNERS, SAMPLERS
    from studyctl.spec.stored import spec_from_snapshot
    from studyctl.storage.studies import spec_json

    specs = [load_spec(path) for path in sorted((REPO / "studies").glob("*.toml"))]
    for sampler in SAMPLERS:
        grid = "[sampler.grid]\nx = [1, 2]" if sampler == "grid" else ""
        specs.append(
            load_spec(
                write_spec(
                    tmp_path / f"{sampler}.toml",
                    f"""
                    name = "s"
                    objective = "o"
                    n_trials = 2
                    storage = "postgresql+psycopg://me:secret@db/hpo"
                    [sampler]
                    type = "{sampler}"
                    {grid}
                    """,
                )
            )
        )
    for pruner in PRUNERS:
        specs.append(
            load_spec(
                write_spec(
                    tmp_path / f"{pruner}.toml",
                    f'name = "p"\nobjective = "o"\nn_trials = 2\n[pruner]\ntype = "{pruner}"\n',
                )
            )
        )
    assert len(specs) > len(SAMPLERS) + len(PRUNERS)
    for spec in specs:
        rebuilt = spec_from_snapshot(json.loads(spec_json(spec)))
        assert rebuilt.to_dict() == {**spec.to_dict(), "storage": rebuilt.storage}


BAD = [
    # (what, toml, key named in the error, words in the error)
    ("invalid TOML", "name = ", None, "invalid TOML"),
    (
        "unknown backend",
        GOOD + '[training]\nbackend = "torch"',
        "training.backend",
        "expected one of tensorflow, jax, got 'torch'",
    ),
    ("missing name", 'objective = "q"\nn_trials = 1', "name", "missing"),
    ("unknown top-level key", GOOD + "n_trails = 3", "n_trails", "unknown key"),
    (
        "wrong type",
        'name = "s"\nobjective = "q"\nn_trials = "ten"',
        "n_trials",
        "expected an integer",
    ),
    ("negative budget", 'name = "s"\nobjective = "q"\nn_trials = -1', "n_trials", "> 0"),
    ("no budget", 'name = "s"\nobjective = "q"', "n_trials", "missing"),
    ("bad direction", GOOD + 'direction = "down"', "direction", "'minimize' or 'maximize'"),
    (
        "metrics vs directions",
        GOOD + 'directions = ["minimize", "maximize"]',
        "metric",
        "one per direction",
    ),
    ("unknown sampler", GOOD + '[sampler]\ntype = "bayes"', "sampler.type", "unknown sampler"),
    (
        "unknown sampler option",
        GOOD + '[sampler]\ntype = "random"\nn_startup_trials = 3',
        "sampler.n_startup_trials",
        "unknown key",
    ),
    ("grid without grid", GOOD + '[sampler]\ntype = "grid"', "sampler.grid", "parameter"),
    (
        "grid value of wrong type",
        GOOD + '[sampler]\ntype = "grid"\n[sampler.grid]\nlr = [0.1, "a"]',
        "sampler.grid.lr",
        "one type",
    ),
    (
        "grid value a table",
        GOOD + '[sampler]\ntype = "grid"\n[sampler.grid]\nlr = [{a = 1}]',
        "sampler.grid.lr",
        "expected numbers, strings or booleans",
    ),
    ("unknown pruner", GOOD + '[pruner]\ntype = "asha"', "pruner.type", "unknown pruner"),
    (
        "pruner option type",
        GOOD + '[pruner]\ntype = "median"\nn_warmup_steps = 1.5',
        "pruner.n_warmup_steps",
        "integer",
    ),
    ("training epochs zero", GOOD + "[training]\nepochs = 0", "training.epochs", "> 0"),
    (
        "validation split",
        GOOD + "[training]\nvalidation_split = 1.5",
        "training.validation_split",
        "[0, 1)",
    ),
    (
        "low > high",
        GOOD + '[space.lr]\ntype = "float"\nlow = 1.0\nhigh = 0.1',
        "space.lr.low",
        "low <= high",
    ),
    (
        "log with low <= 0",
        GOOD + '[space.lr]\ntype = "float"\nlow = 0.0\nhigh = 1.0\nlog = true',
        "space.lr.low",
        "low > 0",
    ),
    (
        "empty choices",
        GOOD + '[space.act]\ntype = "categorical"\nchoices = []',
        "space.act.choices",
        "non-empty",
    ),
    ("params value a table", GOOD + "[params]\nunits = {a = 1}", "params.units", "expected a"),
    (
        "grace <= heartbeat",
        GOOD + "[worker]\nheartbeat_interval = 10\ngrace_period = 5",
        "worker.grace_period",
        "more than heartbeat_interval",
    ),
    (
        "pruning with two objectives",
        GOOD
        + 'directions = ["minimize", "minimize"]\nmetrics = ["a", "b"]\n[pruner]\ntype = "median"',
        "pruner.type",
        "single objective",
    ),
    (
        "grid budget larger than grid",
        'name = "s"\nobjective = "q"\nn_trials = 5\n'
        '[sampler]\ntype = "grid"\n[sampler.grid]\nx = [1, 2]',
        "n_trials",
        "at most the grid's 2",
    ),
    ("bad study name", 'name = "a b"\nobjective = "q"\nn_trials = 1', "name", "letters"),
    (
        "negative checkpoint interval",
        GOOD + "[artifacts]\ncheckpoint_interval_s = -1",
        "artifacts.checkpoint_interval_s",
        "expected a number >= 0, got -1.0",
    ),
    (
        "checkpoint interval not a number",
        GOOD + '[artifacts]\ncheckpoint_interval_s = "1m"',
        "artifacts.checkpoint_interval_s",
        "expected a number, got '1m'",
    ),
]


@pytest.mark.parametrize(("what", "body", "key", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_spec_names_file_key_and_expectation(
    tmp_path: Path, what: str, body: str, key: str | None, words: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    if key is not None:
        assert f": {key}: " in message
    assert words in message


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.toml")
