"""Seeds per trial: the spec's seed combined with the trial's number, so no two trials of a
study share a random stream, whichever process runs them (choices.build_sampler).

Imported only when a sampler is built: it imports Optuna, which parsing a spec does not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.samplers import BaseSampler, GridSampler
from optuna.trial import FrozenTrial, TrialState


def trial_seed(seed: int, number: int) -> int:
    """The sampling seed of trial `number` in a study seeded with `seed` (< 2**32, as numpy
    needs). A hash, so the streams of neighbouring trials are unrelated."""
    digest = hashlib.sha256(f"studyctl-trial-seed:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class TrialSeededSampler(BaseSampler):
    """Builds its inner sampler again before every trial, seeded with
    `trial_seed(seed, trial.number)`.

    The samplers studyctl offers keep what they learn in the study's storage (its trials and
    their system attributes), not in the sampler object, so a fresh one per trial samples as
    a long-lived one would, apart from its random stream. Optuna calls `before_trial` first
    for every trial, an enqueued or retried one included, then the sampling methods, then
    `after_trial`, all in the process that runs the trial.
    """

    def __init__(self, build: Callable[[int | None], BaseSampler], seed: int) -> None:
        self._build = build
        self._seed = seed
        self.inner = build(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner = self._build(trial_seed(self._seed, trial.number))
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, Any]:
        return dict(self.inner.infer_relative_search_space(study, trial))

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        return dict(self.inner.sample_relative(study, trial, search_space))

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: Any,
    ) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


class SeededGridSampler(GridSampler):
    """Optuna's GridSampler, with the grid shuffled by the spec's seed (the same order in
    every process, as it must be: a trial whose number is below the grid's size takes the
    point of that number) and its random choice among the points left (once trial numbers
    pass the grid's size, after failed or enqueued trials) seeded by the trial's number, so
    two workers choosing at once do not draw the same point from one shared stream."""

    def __init__(self, search_space: dict[str, Any], seed: int | None = None) -> None:
        super().__init__(search_space, seed=seed)
        self._base_seed = 0 if seed is None else seed

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._rng.rng.seed(trial_seed(self._base_seed, trial.number))
        super().before_trial(study, trial)
