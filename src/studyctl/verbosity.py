"""Quiet by default: TensorFlow's C++ start-up lines and Optuna's per-trial log lines are
hidden unless `--verbose`.

A failed trial already prints studyctl's own line, and its traceback stays on the trial
(`studyctl trials STUDY -f json`); Optuna's `[W ...] Trial 3 failed ...` line with the same
traceback only repeats it. TensorFlow prints oneDNN, CPU-feature and CUDA-probing lines
(on a machine without a GPU, `E0000 ... failed call to cuInit ... (303)`, which reads as a
failure) through absl before its own `TF_CPP_MIN_LOG_LEVEL` applies, so those are filtered
from the process's stderr while TensorFlow loads.

The choice travels to worker and trial processes in `$STUDYCTL_VERBOSE`, and
`TF_CPP_MIN_LOG_LEVEL=3` is set (unless the user set it) before any of them imports
TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

VERBOSE_ENV = "STUDYCTL_VERBOSE"
TF_LOG_ENV = "TF_CPP_MIN_LOG_LEVEL"

# absl/TensorFlow native log lines: "I0000 00:00:1795942429.418775   12542 port.cc:153] ..."
_NATIVE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] ")
_NATIVE_NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions:",
)


def set_verbose(verbose: bool | None) -> None:
    """Choose for this process and every process it starts from now on; None keeps what
    the environment says (a worker started by `run --workers N --verbose`)."""
    if verbose is None:
        verbose = is_verbose()
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)
        os.environ.setdefault(TF_LOG_ENV, "3")
    configure_optuna_logging()


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def configure_optuna_logging() -> None:
    """Optuna's warnings (a failed trial with its traceback) only with --verbose; its INFO
    lines ("A new study created", "Trial 3 finished") never: studyctl prints its own."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING if is_verbose() else logging.ERROR)


def is_native_noise(line: str) -> bool:
    return bool(_NATIVE_LINE.match(line)) or line.startswith(_NATIVE_NOISE)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """While TensorFlow loads: send the process's stderr (file descriptor 2, where its C++
    code writes) to a temporary file, then write back every line that is not TensorFlow's
    start-up noise. Nothing is lost but those lines; with --verbose nothing is touched."""
    if is_verbose():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedding host)
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines()
                if not is_native_noise(line)
            ]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()
