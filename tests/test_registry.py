"""Objective discovery: the objectives folder, an installed entry point, module:attr."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from studyctl.errors import ObjectiveError
from studyctl.objectives import FunctionObjective, KerasObjective, resolve_objective

from .conftest import REPO, run_cli, write_objectives


def test_folder_objective_by_its_file_name(objectives_dir: Path) -> None:
    write_objectives(
        objectives_dir,
        """
        from studyctl import function_objective

        @function_objective("folder_obj_one")
        def f(trial, ctx):
            return 1.0
    """,
        name="folder_obj_one.py",
    )
    obj = resolve_objective("folder_obj_one", objectives_dir)
    assert isinstance(obj, FunctionObjective)
    assert obj.source.endswith("folder_obj_one.py")


def test_folder_objective_registered_in_another_file(objectives_dir: Path) -> None:
    obj = resolve_objective("always_fails", objectives_dir)
    assert obj.name == "always_fails"
    assert obj.source.endswith("fast.py")


def test_shipped_objectives_are_keras_objectives() -> None:
    for name in ("digits_mlp", "digits_cnn", "seed_regression"):
        obj = resolve_objective(name, REPO / "objectives")
        assert isinstance(obj, KerasObjective)


def test_module_attr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_models_mod.py").write_text(
        "def score(trial, ctx):\n    return trial.suggest_float('x', 0, 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    obj = resolve_objective("my_models_mod:score")
    assert isinstance(obj, FunctionObjective)
    assert obj.func.__name__ == "score"
    with pytest.raises(ObjectiveError, match="has no attribute 'nope'"):
        resolve_objective("my_models_mod:nope")
    with pytest.raises(ObjectiveError, match="cannot import no_such_module_xyz"):
        resolve_objective("no_such_module_xyz:f")


def test_unknown_objective_lists_registered(objectives_dir: Path) -> None:
    with pytest.raises(ObjectiveError) as info:
        resolve_objective("nonexistent_model", objectives_dir)
    message = str(info.value)
    assert "unknown objective 'nonexistent_model'" in message
    assert "quadratic" in message and "always_fails" in message


def test_broken_objective_file_is_named(objectives_dir: Path) -> None:
    write_objectives(objectives_dir, "import not_a_real_package_qq\n", name="broken_one.py")
    with pytest.raises(ObjectiveError) as info:
        resolve_objective("broken_one", objectives_dir)
    assert "broken_one.py failed to import" in str(info.value)
    assert "not_a_real_package_qq" in str(info.value)


def test_entry_point_objective(tmp_path: Path) -> None:
    """An installed package registers an objective through the entry-point group."""
    site = tmp_path / "site"
    pkg = site / "ep_models_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from studyctl import FunctionObjective\n"
        "def _f(trial, ctx):\n    return 0.5\n"
        "objective = FunctionObjective(name='ep_model', func=_f)\n"
    )
    dist = site / "ep_models_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-models-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[studyctl.objectives]\nep_model = ep_models_pkg:objective\n"
    )
    result = run_cli(
        ["objectives", "--format", "json", "--objectives-dir", str(tmp_path / "none")],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{site}:{REPO / 'src'}"},
    )
    assert result.returncode == 0, result.stderr
    listed = {o["name"]: o for o in json.loads(result.stdout)["objectives"]}
    assert listed["ep_model"]["source"] == "entry point ep_models_pkg:objective"
    assert sys.modules.get("ep_models_pkg") is None
