"""Every error type studyctl raises, and the one-line form in which it shows an exception.

Two families, as KerasTuner separates them:

* `StudyctlError` and its kinds: an error the user can fix (a bad spec, an unknown
  objective, an unreachable database). The CLI prints it as one line and exits with code 2.
* Trial failure kinds: `TrialFailed` (a trial that cannot give a value) and
  `WorkerInterrupted` (a stop signal reached a running trial). The trial is recorded FAIL
  with its reason and the worker goes on (or stops, for a signal).
"""

from __future__ import annotations

import logging
import signal
import traceback

from studyctl.storage.urls import mask_secrets


class StudyctlError(Exception):
    """An error the user can fix: a bad spec, an unknown objective, an unreachable database.

    The CLI prints ``str(error)`` as one line and exits with code 2. The message names
    where the problem is (file, key, study, storage with its password masked), what was
    expected, and the fix when there is one.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        # Whatever a message quotes (a URL, a driver's error), it never shows a password.
        message = mask_secrets(message)
        hint = None if hint is None else mask_secrets(hint)
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class SpecError(StudyctlError):
    """A study spec that cannot be used as written."""

    def __init__(self, path: str, key: str | None, message: str) -> None:
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.key = key


class ObjectiveError(StudyctlError):
    """An objective that cannot be found or loaded; no trial can succeed with it."""


class StorageError(StudyctlError):
    """A storage that cannot be opened, reached or used at this schema version."""


class TrialFailed(Exception):
    """A trial that cannot give a value (NaN loss, missing metric); recorded as FAIL."""


class WorkerInterrupted(KeyboardInterrupt):
    """A stop signal reached the trial loop; Optuna records the running trial FAIL."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def one_line(exc: BaseException, *, with_type: bool = True) -> str:
    """`exc` as one line for a message: ``Type: first line`` (or the message alone with
    `with_type=False`). A SQLAlchemy error shows the driver's error it wraps."""
    orig = getattr(exc, "orig", None) or exc
    if with_type:
        text = "".join(traceback.format_exception_only(orig)).strip().splitlines()
        return mask_secrets(text[-1]) if text else type(orig).__name__
    lines = str(orig).strip().splitlines()
    return mask_secrets(lines[0]) if lines else type(orig).__name__


class SecretMaskingFilter(logging.Filter):
    """Masks URL passwords and ``password=`` values in a log record, its traceback included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_text is None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = mask_secrets(text)
        return True


def mask_secrets_in_logs(logger: logging.Logger) -> None:
    """Every handler of `logger` masks secrets (Optuna's logs a failed trial's error and
    traceback, which may quote a database URL)."""
    for handler in logger.handlers:
        if not any(isinstance(f, SecretMaskingFilter) for f in handler.filters):
            handler.addFilter(SecretMaskingFilter())
