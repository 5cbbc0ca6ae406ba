"""What a trial leaves for people to read: a dashboard note (model summary and settings),
TensorBoard logs and the HParams summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from studyctl.spec import StudySpec


def save_trial_note(trial: optuna.Trial, spec: StudySpec, model: Any) -> None:
    """A dashboard note: the model summary and the spec settings the trial trained with."""
    import json

    from optuna_dashboard import save_note

    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    settings = {
        "training": spec.to_dict()["training"],
        "params": trial.params,
        "fixed": dict(spec.params),
        "sampler": spec.sampler.type,
        "pruner": spec.pruner.type,
    }
    save_note(
        trial,
        "## Model\n\n```\n" + "\n".join(lines) + "\n```\n\n## Settings\n\n"
        "```json\n" + json.dumps(settings, indent=2, default=str) + "\n```\n",
    )


def tensorboard_dir(spec: StudySpec, number: int) -> Path | None:
    if spec.logging.tensorboard is None:
        return None
    return Path(spec.logging.tensorboard) / spec.name / f"trial-{number}"


def write_hparams(log_dir: Path, trial: optuna.Trial, spec: StudySpec, values: list[float]) -> None:
    """The HParams summary (the trial's parameters and objective values) that TensorBoard's
    HParams dashboard compares across trials, as KerasTuner users know it."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    with tf.summary.create_file_writer(str(log_dir)).as_default():
        hp.hparams(dict(trial.params), trial_id=f"trial-{trial.number}")
        for metric, value in zip(spec.metrics, values, strict=True):
            tf.summary.scalar(f"objective/{metric}", value, step=0)


def tensorboard_logs(spec: StudySpec, number: int) -> Path | None:
    """The trial's TensorBoard folder, or None when the spec asks for no logs or
    TensorFlow (which writes them, whatever the backend) is not installed."""
    import importlib.util

    log_dir = tensorboard_dir(spec, number)
    if log_dir is not None and importlib.util.find_spec("tensorflow") is None:
        from studyctl.artifacts import warn

        warn("[logging] tensorboard needs TensorFlow, which is not installed: no logs")
        return None
    return log_dir
