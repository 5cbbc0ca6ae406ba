"""Which storage a command uses, and how its URL is stored and shown: never with its
credentials.

A storage URL may carry a secret in two places: the password of ``user:PASSWORD@host``, and
query parameters that libpq and the drivers read as secrets (``?password=``,
``?sslpassword=``). `scrub_url` removes both and keeps the rest (the user name, host,
database and the other parameters): it is what studyctl stores (a study's spec snapshot)
and what it sends (the proxy's ``study_spec``). `mask_url` replaces them with ``***`` for a
URL studyctl prints; `mask_secrets` does the same inside any text (an error message, a
traceback, a driver's connection error), wherever a URL or a ``password=`` pair appears.

This module imports nothing of studyctl's, so `studyctl.errors` and every layer can use it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

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


def is_loopback(address: str) -> bool:
    """Whether a bind address or host name is this machine's loopback only."""
    name = address.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


MASK = "***"

# Query parameters whose value is a secret (libpq's password and sslpassword, and the
# spellings other drivers accept); any parameter whose name contains one of the words in
# _SECRET_WORDS is treated as a secret too.
SECRET_PARAMS = frozenset({"password", "sslpassword", "passwd", "pwd"})
_SECRET_WORDS = ("password", "passwd", "secret", "token")


def is_secret_param(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_PARAMS or any(word in lowered for word in _SECRET_WORDS)


def _rebuild(url: str, *, replacement: str | None) -> str:
    """The URL with its password and secret query parameters replaced by `replacement`,
    or dropped when it is None."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        if sep:
            userinfo = user if replacement is None else f"{user}:{replacement}"
        netloc = f"{userinfo}@{hostport}" if userinfo else hostport
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        kept: list[tuple[str, str]] = []
        for key, value in pairs:
            if is_secret_param(key):
                if replacement is not None:
                    kept.append((key, replacement))
            else:
                kept.append((key, value))
        query = urlencode(kept, quote_via=quote, safe="*/:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub_url(url: str) -> str:
    """The URL without its credentials: ``postgresql+psycopg://u:PW@h/db?password=X&a=1``
    becomes ``postgresql+psycopg://u@h/db?a=1``. A URL without secrets comes back as is."""
    if not has_secret(url):
        return url
    try:
        return _rebuild(url, replacement=None)
    except ValueError:
        return mask_secrets(url)


def mask_url(url: str) -> str:
    """The URL with its password and secret parameters shown as ***, safe to print."""
    if not has_secret(url):
        return url
    try:
        return _rebuild(url, replacement=MASK)
    except ValueError:
        return mask_secrets(url)


# ``scheme://user:secret@`` anywhere in a text (the secret may not contain whitespace,
# quotes or @; a password containing @ must be percent-encoded in a URL anyway).
_USERINFO_RE = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"]*:)[^\s@'\"]*@")
# ``password=secret`` in a query string, a libpq DSN or a driver's message, also quoted
# (``password='secret'``) as libpq writes it.
_PARAM_RE = re.compile(
    r"(?P<head>\b(?:[a-zA-Z_]*(?:password|passwd|secret|token)|pwd)\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,'\")]+)",
    re.IGNORECASE,
)


def mask_secrets(text: str) -> str:
    """`text` with every URL password and every ``password=...``-like value shown as ***."""
    text = _USERINFO_RE.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    return _PARAM_RE.sub(lambda m: f"{m.group('head')}{MASK}", text)


def has_secret(url: str) -> bool:
    """Whether the URL carries a password or a secret query parameter."""
    return mask_secrets(url) != url or _userinfo_password(url)


def _userinfo_password(url: str) -> bool:
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return False
    userinfo = netloc.rpartition("@")[0]
    return ":" in userinfo


def scrub_secrets_in(value: Any) -> Any:
    """`value` (JSON: a spec snapshot) with every URL in it scrubbed of credentials."""
    if isinstance(value, str):
        return scrub_url(value) if "://" in value else value
    if isinstance(value, list):
        return [scrub_secrets_in(v) for v in value]
    if isinstance(value, dict):
        return {k: scrub_secrets_in(v) for k, v in value.items()}
    return value


def scrub_spec_json(text: str) -> str:
    """A stored spec snapshot without credentials (one written by an older studyctl may hold
    some); text that is not JSON is kept as it is."""
    try:
        data = json.loads(text)
    except ValueError:
        return text
    scrubbed = scrub_secrets_in(data)
    return text if scrubbed == data else json.dumps(scrubbed, sort_keys=True)
