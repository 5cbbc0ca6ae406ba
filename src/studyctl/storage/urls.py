"""Which storage a command uses, and how its URL is shown: never with its password."""

from __future__ import annotations

import os
import re

DEFAULT_STORAGE = "sqlite:///studyctl.db"
# The storage URL travels to worker and trial processes in this variable, never on a command
# line (`ps` would show a password).
STORAGE_ENV = "STUDYCTL_STORAGE"


def resolve_storage_url(cli_value: str | None, spec_value: str | None = None) -> str:
    """`--storage`, then $STUDYCTL_STORAGE, then the spec's `storage`, then the default."""
    for value in (cli_value, os.environ.get(STORAGE_ENV), spec_value):
        if value:
            return value
    return DEFAULT_STORAGE


_PASSWORD_RE = re.compile(r"(://[^:/@]*:)[^@]*@")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe to print or log."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return _PASSWORD_RE.sub(r"\1***@", url)
