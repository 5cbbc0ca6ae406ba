"""Keras's backend, the devices and the distribution strategy, once per process.

`use_backend` runs before Keras is imported (before the objective file, which may import
it): it sets ``KERAS_BACKEND`` and, for JAX, turns off XLA's whole-GPU preallocation so
several workers can share a GPU (the analogue of TensorFlow's memory growth).

Devices are configured before the first strategy: on TensorFlow, GPU memory growth on,
threads bounded by $STUDYCTL_THREADS, and $STUDYCTL_CPU_REPLICAS logical CPU devices on a
machine without GPUs (used to test multi-replica MirroredStrategy on CPU); on JAX,
$STUDYCTL_CPU_REPLICAS host devices (XLA's ``--xla_force_host_platform_device_count``) and
`keras.distribution.DataParallel` over every device the process sees. Neither framework is
imported at import time.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from studyctl.errors import StudyctlError
from studyctl.objectives import KerasObjective, load_objective_data
from studyctl.verbosity import quiet_native_stderr

if TYPE_CHECKING:
    from studyctl.objectives import Objective
    from studyctl.spec import StudySpec

THREADS_ENV = "STUDYCTL_THREADS"
CPU_REPLICAS_ENV = "STUDYCTL_CPU_REPLICAS"
BACKEND_ENV = "KERAS_BACKEND"
# JAX: allocate GPU memory as needed instead of 75 % of the GPU at start-up.
JAX_PREALLOCATE_ENV = "XLA_PYTHON_CLIENT_PREALLOCATE"
_HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"

_STRATEGY: Any = None
_DEVICES: list[str] = []
_CONFIGURED: list[str] = []


def backend_environment(backend: str) -> dict[str, str]:
    """The environment variables a process needs, before Keras or JAX is imported in it,
    to train on `backend`."""
    env = {BACKEND_ENV: backend}
    if backend == "jax":
        env[JAX_PREALLOCATE_ENV] = "false"
        replicas = int(os.environ.get(CPU_REPLICAS_ENV, "1") or 1)
        flags = os.environ.get("XLA_FLAGS", "")
        if replicas > 1 and _HOST_DEVICES_FLAG not in flags:
            env["XLA_FLAGS"] = f"{flags} {_HOST_DEVICES_FLAG}={replicas}".strip()
    return env


def use_backend(backend: str) -> None:
    """Make this process train on `backend` (``tensorflow`` or ``jax``). Call it before
    Keras is imported; if Keras already runs on another backend, that is an error a user
    can fix (e.g. an objective file imported by the process before with another one)."""
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != backend:
            raise StudyctlError(
                f"training.backend is {backend!r}, but Keras was already imported here with "
                f"backend {current!r}",
                hint=f"set {BACKEND_ENV}={backend} or run the study in its own process",
            )
        return
    for name, value in backend_environment(backend).items():
        if name == BACKEND_ENV or name == "XLA_FLAGS":
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)


def current_backend() -> str:
    """The backend this process's Keras uses (or will use once imported)."""
    if "keras" in sys.modules:
        return str(sys.modules["keras"].backend.backend())
    return os.environ.get(BACKEND_ENV, "tensorflow")


class JaxStrategy:
    """The JAX counterpart of a `tf.distribute` strategy: `keras.distribution.DataParallel`
    over the process's devices, set for the whole process (Keras's JAX trainer reads the
    distribution when `fit` runs, not only when the model is built). One device: no
    distribution. `scope()` exists so objectives written for TensorFlow run unchanged."""

    def __init__(self, devices: list[Any]) -> None:
        import keras

        self.devices = devices
        self.num_replicas_in_sync = len(devices)
        if len(devices) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        yield


def device_names() -> list[str]:
    """The devices this process's strategy trains on, as its framework names them."""
    return list(_DEVICES)


def configure_devices() -> list[str]:
    """Set threads, GPU memory growth and logical CPUs; return the devices to mirror over.
    Once per process (TensorFlow refuses these settings after its runtime started)."""
    if _CONFIGURED:
        return list(_CONFIGURED)
    _CONFIGURED[:] = _configure_devices()
    return list(_CONFIGURED)


def _configure_devices() -> list[str]:
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
    """One strategy per process: on TensorFlow, `tf.distribute.MirroredStrategy` over the
    devices it sees when there are several, and TensorFlow's default strategy on a single
    device, where MirroredStrategy only adds cost (measured: about 3x the time per epoch of
    a small model on one CPU; docs/ARCHITECTURE.md); on JAX, a `JaxStrategy`."""
    global _STRATEGY
    if _STRATEGY is None and current_backend() == "jax":
        import jax

        _STRATEGY = JaxStrategy(list(jax.devices()))
        _DEVICES[:] = [str(d) for d in _STRATEGY.devices]
    if _STRATEGY is None:
        # TensorFlow's C++ start-up lines (oneDNN, CPU features, CUDA probing) come while it
        # loads and finds its devices; they are dropped unless --verbose.
        with quiet_native_stderr():
            import tensorflow as tf

            devices = configure_devices()
            _DEVICES[:] = devices
            if len(devices) > 1:
                _STRATEGY = tf.distribute.MirroredStrategy(devices=devices)
            else:
                _STRATEGY = tf.distribute.get_strategy()
    return _STRATEGY


def warm_up(objective: Objective, spec: StudySpec) -> None:
    """Once per process, before its first trial starts: import the framework, set up the
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


def _sees_no_gpu() -> bool:
    """Whether this process has no GPU, asked without creating a device context (listing
    physical devices initializes no GPU memory; building logical ones would)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return True
    if current_backend() == "jax":
        return False  # JAX cannot list devices without starting its backends
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def prewarm(objective: Objective, spec: StudySpec) -> None:
    """A spare trial process in standby (`execution.spare`): what `warm_up` does that
    leaves the devices alone, while another trial process of the same worker still owns
    them. It imports the framework and Keras; on a machine without GPUs it also loads the
    objective's data (a user's `load_data` may create tensors, which on a GPU would start a
    device context and take memory beside the process that trains). No strategy is built."""
    if not isinstance(objective, KerasObjective):
        return
    with quiet_native_stderr():
        if current_backend() == "jax":
            import jax  # noqa: F401
        else:
            import tensorflow  # noqa: F401
        import keras  # noqa: F401

        no_gpu = _sees_no_gpu()
        if no_gpu and current_backend() != "jax":
            configure_devices()  # threads and logical CPUs, before any tensor exists
    if no_gpu:
        with contextlib.suppress(StudyctlError):
            load_objective_data(objective, spec.options)
    gc.collect()
    gc.freeze()
