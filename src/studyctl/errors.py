"""The one error type a user can cause, and its formatting."""

from __future__ import annotations


class StudyctlError(Exception):
    """An error the user can fix: a bad spec, an unknown objective, an unreachable database.

    The CLI prints ``str(error)`` as one line and exits with code 2. The message names
    where the problem is (file, key, study, storage with its password masked), what was
    expected, and the fix when there is one.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
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
