"""The trial loop's decisions, one by one, without running a study: which failure is fatal,
when failures in a row stop a worker, what an objective's result must look like."""

from __future__ import annotations

import math

import pytest
from optuna.trial import TrialState

from studyctl.errors import ObjectiveError, StudyctlError, TrialFailed
from studyctl.execution.trial_loop import (
    TrialOutcome,
    _check_result,
    failures_in_a_row,
    is_fatal,
    stop_after,
)
from studyctl.spec import StudySpec, parse_spec


def outcome(state: TrialState, reason: str | None = None) -> TrialOutcome:
    return TrialOutcome(number=3, state=state, values=None, duration_s=1.0, reason=reason)


def spec_with(directions: list[str]) -> StudySpec:
    return parse_spec(
        {
            "name": "s",
            "objective": "q",
            "directions": directions,
            "metrics": [f"m{i}" for i in range(len(directions))],
            "n_trials": 3,
        },
        "s.toml",
    )


def test_failures_in_a_row_count_and_reset() -> None:
    assert failures_in_a_row(outcome(TrialState.FAIL), 0) == 1
    assert failures_in_a_row(outcome(TrialState.FAIL), 4) == 5
    assert failures_in_a_row(outcome(TrialState.COMPLETE), 4) == 0
    assert failures_in_a_row(outcome(TrialState.PRUNED), 4) == 0


def test_fatal_errors_are_the_users_to_fix() -> None:
    assert is_fatal(ObjectiveError("objective 'x': load_data failed"))
    assert is_fatal(StudyctlError("no study"))
    assert not is_fatal(RuntimeError("a bug in one trial"))
    assert not is_fatal(TrialFailed("loss became nan"))
    assert not is_fatal(None)


def test_a_finished_trial_never_stops_the_loop() -> None:
    assert stop_after(outcome(TrialState.COMPLETE), None, 0, 1) is None
    assert stop_after(outcome(TrialState.PRUNED), None, 0, 1) is None


def test_a_fatal_failure_stops_at_once() -> None:
    reason = "objective 'x': load_data failed: OSError: gone"
    stop = stop_after(outcome(TrialState.FAIL, reason), ObjectiveError(reason), 1, 5)
    assert stop == ("fatal", reason)


def test_failures_stop_only_at_the_limit() -> None:
    fail = outcome(TrialState.FAIL, "RuntimeError: boom")
    assert stop_after(fail, RuntimeError("boom"), 2, 3) is None
    assert stop_after(fail, RuntimeError("boom"), 3, 3) == (
        "failures",
        "3 trials failed in a row; last: RuntimeError: boom",
    )


def test_result_is_one_number_per_direction() -> None:
    one, two = spec_with(["minimize"]), spec_with(["minimize", "maximize"])
    assert _check_result(0.5, one) == 0.5
    assert _check_result((1, 2.5), two) == [1.0, 2.5]
    with pytest.raises(TrialFailed, match=r"returned 2 value\(s\); the study has 1"):
        _check_result([1.0, 2.0], one)
    for not_a_number in ("high", None, {"loss": 1.0}):
        with pytest.raises(TrialFailed, match="expected a number"):
            _check_result(not_a_number, one)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(TrialFailed, match="objective returned"):
            _check_result(bad, one)
