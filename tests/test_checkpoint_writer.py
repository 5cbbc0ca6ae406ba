"""Checkpoints written off the training thread (`training.checkpoint_writer`) in format 2
(`.weights.npz` and its metadata), and format-1 checkpoints (`.weights.h5`) still restored."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from studyctl import signals
from studyctl.training import checkpoints
from studyctl.training.callbacks import make_epoch_callback
from studyctl.training.checkpoint_writer import CheckpointWriter

X, Y = np.ones((8, 4), "float32"), np.zeros((8, 3), "float32")


def _model(units: int = 3) -> Any:
    import keras

    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(units)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def _trained() -> Any:
    model = _model()
    model.fit(X, Y, epochs=1, verbose=0)
    return model


def _state(model: Any) -> list[Any]:
    return [np.array(v.numpy()) for v in model.weights + list(model.optimizer.variables)]


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _recorder(folder: Path, **kwargs: Any) -> Any:
    """studyctl's epoch callback on a tiny model, as `fit` starts it (3 epochs of 2 steps)."""
    study = optuna.create_study()
    callback = make_epoch_callback(study.ask(), ("val_loss",), False, checkpoint=folder, **kwargs)
    model = _trained()
    model.stop_training = False
    callback.set_model(model)
    callback.set_params({"steps": 2, "epochs": 3})
    callback.on_train_begin()
    return callback


def _epoch(callback: Any, epoch: int) -> None:
    callback.on_epoch_begin(epoch)
    callback.on_train_batch_end(0)
    callback.on_train_batch_end(1)
    callback.on_epoch_end(epoch, {"loss": 0.5, "val_loss": 0.5 - epoch / 10})


def test_epoch_checkpoints_are_written_on_the_writer_thread(tmp_path: Path) -> None:
    """The epoch callback copies the model at the epoch end and a writer thread writes and
    uploads it; the trial settles only once the last one is committed."""
    writers: list[str] = []
    callback = _recorder(
        tmp_path, after_commit=lambda _: writers.append(threading.current_thread().name)
    )
    for epoch in range(3):
        _epoch(callback, epoch)
    callback.settle()
    assert writers == ["studyctl-checkpoint-writer"] * 3
    assert threading.current_thread().name not in writers
    assert checkpoints.complete_epochs(tmp_path) == [3, 2]
    assert checkpoints.weights_path(tmp_path, 3).exists()
    meta = json.loads(checkpoints.metadata_path(tmp_path, 3).read_text())
    assert meta["format"] == 2
    assert meta["history"] == {"loss": [0.5] * 3, "val_loss": [0.5, 0.4, 0.3]}
    digest = hashlib.sha256(checkpoints.weights_path(tmp_path, 3).read_bytes()).hexdigest()
    assert meta["weights_sha256"] == digest
    fresh = _model()
    restored = checkpoints.restore(fresh, tmp_path)
    assert restored.epoch == 3 and restored.fallback_reason() is None
    assert _same(_state(fresh), _state(callback.model))
    assert not any(t.name == "studyctl-checkpoint-writer" for t in threading.enumerate())


def test_the_next_epoch_end_waits_for_the_write_in_flight(tmp_path: Path) -> None:
    """One write at a time: the next hand-over waits until the previous checkpoint is
    committed (at most one copy of the model besides the model)."""
    release = threading.Event()
    committed: list[int] = []

    def slow_upload(folder: Path) -> None:
        release.wait(10)
        committed.append(checkpoints.complete_epochs(folder)[0])

    writer = CheckpointWriter(tmp_path, after_commit=slow_upload)
    model = _trained()
    assert writer.submit(model, 1, {"loss": [1.0]})
    second = threading.Thread(target=writer.submit, args=(model, 2, {"loss": [1.0, 0.5]}))
    second.start()
    second.join(0.5)
    assert second.is_alive(), "the second hand-over did not wait for the first write"
    assert checkpoints.complete_epochs(tmp_path) == [1]
    release.set()
    second.join(10)
    assert not second.is_alive()
    writer.close()
    assert committed == [1, 2]
    assert checkpoints.complete_epochs(tmp_path) == [2, 1]


def test_a_write_error_is_raised_on_the_training_thread(tmp_path: Path) -> None:
    """A failed write (here: the folder is a file) is raised at the next epoch end, with
    its own type; at the trial's end, after the pending reports, when no epoch followed."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    writer = CheckpointWriter(blocked)
    model = _trained()
    assert writer.submit(model, 1, {})
    with pytest.raises(OSError):
        writer.submit(model, 2, {})
    writer.close()  # raised once

    callback = _recorder(blocked)
    _epoch(callback, 0)
    with pytest.raises(OSError):
        callback.settle()
    assert callback.epochs_run == 1


def test_a_format_1_checkpoint_restores_and_is_continued_in_format_2(tmp_path: Path) -> None:
    """A trial checkpointed by an older studyctl (`epoch-N.weights.h5`, Keras's
    save_weights) resumes from it; its next checkpoint is format 2, and the format-1 one
    stays as the previous checkpoint to fall back to."""
    old = _trained()
    h5 = checkpoints.h5_weights_path(tmp_path, 2)
    old.save_weights(str(h5))
    meta = {
        "format": 1,
        "epoch": 2,
        "history": {"loss": [2.0, 1.0]},
        "weights_size": h5.stat().st_size,
        "weights_sha256": hashlib.sha256(h5.read_bytes()).hexdigest(),
    }
    checkpoints.metadata_path(tmp_path, 2).write_text(json.dumps(meta))

    model = _model()
    restored = checkpoints.restore(model, tmp_path)
    assert restored.epoch == 2 and restored.history == {"loss": [2.0, 1.0]}
    assert restored.fallback_reason() is None
    assert _same(_state(model), _state(old))

    model.fit(X, Y, epochs=1, verbose=0)
    checkpoints.save(model, tmp_path, 3, {"loss": [2.0, 1.0, 0.5]})
    assert checkpoints.complete_epochs(tmp_path) == [3, 2]
    assert checkpoints.weights_path(tmp_path, 3).exists() and h5.exists()
    damaged = checkpoints.weights_path(tmp_path, 3)
    damaged.write_bytes(damaged.read_bytes()[:200])
    again = _model()
    restored = checkpoints.restore(again, tmp_path)
    assert restored.epoch == 2
    assert _same(_state(again), _state(old))
    assert "epoch-000003.weights.npz" in (restored.fallback_reason() or "")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("flip", "epoch-000002.weights.npz does not match its SHA-256"),
        ("truncate", "epoch-000002.weights.npz has 100 bytes, not"),
        ("other model", "variables, the model"),
    ],
)
def test_a_bad_format_2_checkpoint_falls_back_with_its_reason(
    tmp_path: Path, damage: str, reason: str
) -> None:
    model = _trained()
    checkpoints.save(model, tmp_path, 1, {"loss": [1.0]})
    first = _state(model)
    model.fit(X, Y, epochs=1, verbose=0)
    checkpoints.save(model, tmp_path, 2, {"loss": [1.0, 0.5]})
    newest = checkpoints.weights_path(tmp_path, 2)
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    elif damage == "truncate":
        newest.write_bytes(bytes(data[:100]))
    fresh = _model()
    if damage == "other model":  # readable, but not this model's variables
        import keras

        fresh = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3)])
        fresh.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        before = [np.array(v.numpy()) for v in fresh.weights]
        restored = checkpoints.restore(fresh, tmp_path)
        assert restored.epoch == 0
        assert _same([np.array(v.numpy()) for v in fresh.weights], before)
        assert reason in (restored.fallback_reason() or "")
        return
    restored = checkpoints.restore(fresh, tmp_path)
    assert restored.epoch == 1 and restored.history == {"loss": [1.0]}
    assert _same(_state(fresh), first)
    text = restored.fallback_reason() or ""
    assert reason in text and text.endswith("resumed from epoch 1"), text


def test_the_interval_skips_epochs_but_not_the_last_or_a_stopped_one(tmp_path: Path) -> None:
    """With `checkpoint_interval_s`, an epoch is written only once the interval has passed
    since the last write (or the fit's start); the fit's last epoch, and an epoch ending
    with a stop requested, are written whatever the interval."""
    model = _trained()  # before the writer: its interval counts from its start
    writer = CheckpointWriter(tmp_path / "w", interval_s=1.0)
    assert not writer.submit(model, 1, {})
    time.sleep(1.05)
    assert writer.submit(model, 2, {})
    assert not writer.submit(model, 3, {})
    assert writer.submit(model, 4, {}, force=True)
    writer.close()
    assert checkpoints.complete_epochs(tmp_path / "w") == [4, 2]

    callback = _recorder(tmp_path / "last", checkpoint_interval_s=3600)
    for epoch in range(3):
        _epoch(callback, epoch)
    callback.settle()
    assert checkpoints.complete_epochs(tmp_path / "last") == [3]

    callback = _recorder(tmp_path / "stopped", checkpoint_interval_s=3600)
    _epoch(callback, 0)
    try:
        with signals.safe_points(lambda: None):
            signals.stop_at_safe_point(signal.SIGTERM, None)
            _epoch(callback, 1)
    finally:
        signals.reset_stop()
    callback.settle()
    assert checkpoints.complete_epochs(tmp_path / "stopped") == [2]
