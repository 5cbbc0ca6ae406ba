"""The validated form of a study spec (`StudySpec` and its parts), and its JSON snapshot.

`studyctl.spec.parse` builds it from TOML; `studyctl.spec.choices` lists the samplers and
pruners it may name.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

DIRECTIONS = ("minimize", "maximize")
STUDY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")

SPACE_TYPES = ("float", "int", "categorical")
BACKENDS = ("tensorflow", "jax")
OBJECTIVE_VALUES = ("best", "last")
GridValue = str | int | float | bool

# Training settings studyctl applies itself to a Keras objective's `fit`. Named in
# [sampler.grid], [space] or [params], each is a search axis: studyctl suggests it before the
# objective runs, trains with it and records it in the trial's params.
TRAINING_AXES = ("batch_size", "epochs")


@dataclass(frozen=True)
class SamplerSpec:
    type: str = "tpe"
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[GridValue]] = field(default_factory=dict)


@dataclass(frozen=True)
class PrunerSpec:
    type: str = "none"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingSpec:
    epochs: int = 10
    batch_size: int = 32
    validation_split: float = 0.2
    shuffle: bool = True
    verbose: int = 0
    # "best": the objective value is the best epoch's metric (as KerasTuner reports it);
    # "last": the final epoch's metric.
    objective_value: str = "best"
    # Keras 3's backend in every trial process: "tensorflow" (MirroredStrategy over the
    # worker's GPUs) or "jax" (keras.distribution.DataParallel over them).
    backend: str = "tensorflow"


@dataclass(frozen=True)
class WorkerSpec:
    """How a worker runs trials; the defaults suit epochs of seconds to minutes."""

    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retries: int = 3
    trials_per_process: int = 25
    # Start a trial process's successor while it trains its last trial, so a recycle costs
    # no start-up (`execution.spare`); off saves the spare's memory for that trial's time.
    prewarm: bool = True
    max_consecutive_failures: int = 5
    # Seconds every process of a run waits for a database that went away (a restart, a
    # fail-over, a network cut) before it stops with one error line; 0 stops at once. Five
    # minutes: longer than a restart or a fail-over, shorter than the time after which an
    # operator would rather see the run stop and resume it.
    storage_outage_tolerance: int = 300


@dataclass(frozen=True)
class ArtifactsSpec:
    """Where per-trial checkpoints live: `path/<study>/trial-<n>/` (relative to the
    worker's working directory; on several machines, a shared file system path)."""

    path: str = "artifacts"
    checkpoints: bool = True
    # At most one checkpoint write per this many seconds of a fit (0: every epoch); the
    # fit's last epoch, and an epoch ending with a stop requested, are always written.
    checkpoint_interval_s: float = 0.0
    # Save the best trial's trained model as <path>/<study>/models/trial-<n>.keras
    # (single-objective studies).
    keep_best_model: bool = True
    # s3://bucket/prefix: checkpoints and kept models are mirrored there
    # (studyctl.artifacts.objectstore) for workers without a shared file system; `path` is
    # then each machine's local copy.
    store: str | None = None


@dataclass(frozen=True)
class LoggingSpec:
    """TensorBoard logs per trial (`<tensorboard>/<study>/trial-<n>/`) with the HParams
    summary, so TensorBoard's HParams dashboard compares trials."""

    tensorboard: str | None = None


@dataclass(frozen=True)
class SpaceParam:
    """A search-space range from the spec that overrides the objective's default range."""

    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[GridValue, ...] = ()


@dataclass(frozen=True)
class StudySpec:
    path: str
    name: str
    objective: str
    directions: tuple[str, ...]
    metrics: tuple[str, ...]
    storage: str | None = None
    n_trials: int | None = None
    timeout: float | None = None
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    worker: WorkerSpec = field(default_factory=WorkerSpec)
    artifacts: ArtifactsSpec = field(default_factory=ArtifactsSpec)
    logging: LoggingSpec = field(default_factory=LoggingSpec)
    params: dict[str, GridValue] = field(default_factory=dict)
    space: dict[str, SpaceParam] = field(default_factory=dict)
    enqueue: tuple[dict[str, GridValue], ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_multi_objective(self) -> bool:
        return len(self.directions) > 1

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def training_axes(self) -> tuple[str, ...]:
        """The training settings (`TRAINING_AXES`) this spec makes search axes."""
        named = (*self.sampler.grid, *self.space, *self.params)
        return tuple(name for name in TRAINING_AXES if name in named)

    def axis_values(self, name: str) -> list[int]:
        """The values training axis `name` can take: its fixed value, its grid values, its
        categorical choices or the bounds of its integer range (for the largest epochs)."""
        if name in self.params:
            return [int(self.params[name])]
        if name in self.sampler.grid:
            return [int(v) for v in self.sampler.grid[name]]
        p = self.space[name]
        if p.type == "categorical":
            return [int(v) for v in p.choices]
        assert p.low is not None and p.high is not None
        return [int(p.low), int(p.high)]

    @property
    def max_epochs(self) -> int:
        """The most epochs a trial can train (Hyperband's default max_resource)."""
        if "epochs" in self.training_axes:
            return max(self.axis_values("epochs"))
        return self.training.epochs

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot, stored with the study."""
        data = asdict(self)
        data["space"] = {k: asdict(v) for k, v in self.space.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudySpec:
        """Rebuild a spec from `to_dict` output. A snapshot kept in the database goes
        through `spec.stored.spec_from_snapshot`, which first refuses what this studyctl
        does not know."""
        d = dict(data)
        d["directions"] = tuple(d["directions"])
        d["metrics"] = tuple(d["metrics"])
        d["sampler"] = SamplerSpec(**d["sampler"])
        d["pruner"] = PrunerSpec(**d["pruner"])
        d["training"] = TrainingSpec(**d["training"])
        d["worker"] = WorkerSpec(**d["worker"])
        d["artifacts"] = ArtifactsSpec(**d.get("artifacts", {}))
        d["logging"] = LoggingSpec(**d.get("logging", {}))
        d["space"] = {
            k: SpaceParam(**{**v, "choices": tuple(v.get("choices", ()))})
            for k, v in d.get("space", {}).items()
        }
        d["enqueue"] = tuple(d.get("enqueue", ()))
        return cls(**d)
