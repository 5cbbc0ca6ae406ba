"""Devices and the distribution strategy, once per process.

Devices are configured before the first strategy: GPU memory growth on, threads bounded by
$STUDYCTL_THREADS, and $STUDYCTL_CPU_REPLICAS logical CPU devices on a machine without GPUs
(used to test multi-replica MirroredStrategy on CPU). TensorFlow is imported on the first
call, never at import.
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import TYPE_CHECKING, Any

from studyctl.errors import StudyctlError
from studyctl.objectives import KerasObjective, load_objective_data
from studyctl.verbosity import quiet_native_stderr

if TYPE_CHECKING:
    from studyctl.objectives import Objective
    from studyctl.spec import StudySpec

THREADS_ENV = "STUDYCTL_THREADS"
CPU_REPLICAS_ENV = "STUDYCTL_CPU_REPLICAS"

_STRATEGY: Any = None


def configure_devices() -> list[str]:
    """Set threads, GPU memory growth and logical CPUs; return the devices to mirror over."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    threads = int(os.environ.get(THREADS_ENV, "0") or 0)
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        return [d.name for d in tf.config.list_logical_devices("GPU")]
    replicas = int(os.environ.get(CPU_REPLICAS_ENV, "1") or 1)
    cpus = tf.config.list_physical_devices("CPU")
    if replicas > 1:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def get_strategy() -> Any:
    """One strategy per process: `tf.distribute.MirroredStrategy` over the devices it sees
    when there are several; TensorFlow's default strategy on a single device, where
    MirroredStrategy only adds cost (measured: about 3x the time per epoch of a small model
    on one CPU; docs/ARCHITECTURE.md)."""
    global _STRATEGY
    if _STRATEGY is None:
        # TensorFlow's C++ start-up lines (oneDNN, CPU features, CUDA probing) come while it
        # loads and finds its devices; they are dropped unless --verbose.
        with quiet_native_stderr():
            import tensorflow as tf

            devices = configure_devices()
            if len(devices) > 1:
                _STRATEGY = tf.distribute.MirroredStrategy(devices=devices)
            else:
                _STRATEGY = tf.distribute.get_strategy()
    return _STRATEGY


def warm_up(objective: Objective, spec: StudySpec) -> None:
    """Once per process, before its first trial starts: import TensorFlow, set up the
    devices and strategy, and load the objective's data, so the first trial's duration
    measures training, not start-up. A data set that fails to
    load is left to the trial, which records the reason and stops the worker."""
    if not isinstance(objective, KerasObjective):
        return
    get_strategy()
    with contextlib.suppress(StudyctlError):
        load_objective_data(objective, spec.options)
    # Keras's clear_session before every trial runs a full gc.collect, whose cost grows with
    # every object alive in the process: TensorFlow, Optuna, SQLAlchemy and the data (about
    # 0.5 s per trial measured on the 2-core CI machine). Those live as long as the process;
    # frozen, the collector skips them and scans only what trials create.
    gc.collect()
    gc.freeze()
