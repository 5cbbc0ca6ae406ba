"""studyctl's WSGI layer in front of optuna-dashboard: the checks the dashboard lacks.

optuna-dashboard has no authentication, no CSRF protection, never checks the Host header
(so a web page whose name is rebound to 127.0.0.1 reaches it), and serves uploaded
artifacts inline with ``Access-Control-Allow-Origin: *``. Every request passes here first:

* **Host allow-list.** The Host header must name the bound address, a loopback name, or a
  name given with ``--allowed-host``; anything else (a rebound attacker's name) gets 403.
* **Token.** With a token (the default: a random one per start, as Jupyter does), the first
  request carries it as ``?token=...`` and gets it back as an HttpOnly, SameSite=Strict
  cookie; later requests send the cookie (scripts may send ``Authorization: Token ...``).
* **Same origin for writes.** POST/PUT/PATCH/DELETE are accepted only when the browser says
  they come from the dashboard's own origin (``Origin``, else ``Referer``, and
  ``Sec-Fetch-Site``); ``read_only`` refuses every one of them.
* **Artifacts as attachments.** ``/artifacts/...`` responses are downloads
  (``Content-Disposition: attachment``) with ``X-Content-Type-Options: nosniff`` and a
  sandboxing CSP, so an uploaded HTML or SVG file never runs on the dashboard's origin;
  no response carries a wildcard CORS header.
"""

from __future__ import annotations

import hmac
import secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_PARAM = "token"
ARTIFACT_PREFIX = "/artifacts/"
# A downloaded artifact opened in the browser anyway runs in an opaque origin with nothing
# allowed: no script, no form, no plugin, no request back to the dashboard.
ARTIFACT_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_DROPPED_HEADERS = frozenset(
    {
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-allow-methods",
        "access-control-allow-headers",
    }
)


def new_token() -> str:
    return secrets.token_urlsafe(24)


def allowed_hosts(bound: str, extra: Sequence[str] = ()) -> frozenset[str]:
    """The names a request's Host header may carry: the loopback names, the bound address
    (or, bound to every interface, this machine's own names) and `extra`."""
    names = set(LOOPBACK_NAMES)
    names.update(_normal(h) for h in extra)
    bound_name = _normal(bound)
    if bound_name in WILDCARD_ADDRESSES:
        names.update({_normal(socket.gethostname()), _normal(socket.getfqdn())})
    else:
        names.add(bound_name)
    names.discard("")
    return frozenset(names)


def _normal(name: str) -> str:
    return name.strip().strip("[]").rstrip(".").lower()


def host_name(host_header: str) -> str | None:
    """The name in a Host header (`example.org:8080`, `[::1]:8080`), lower case; None when
    malformed."""
    value = host_header.strip()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return _normal(name)
    name, sep, port = value.rpartition(":")
    if not sep:
        name = value
    elif not port.isdigit():
        return None
    if not name or any(c in name for c in "/@ \t"):
        return None
    return _normal(name)


@dataclass(frozen=True)
class GuardPolicy:
    """What `DashboardGuard` lets through. `token` None means no token is asked for (only
    allowed on loopback; `serve_dashboard` checks)."""

    hosts: frozenset[str]
    token: str | None
    read_only: bool
    cookie_name: str = "studyctl-dashboard"


def _deny(start_response: StartResponse, status: str, message: str) -> list[bytes]:
    body = (message + "\n").encode()
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("X-Content-Type-Options", "nosniff"),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


def _origin_netloc(value: str) -> str | None:
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.netloc.lower()


def same_origin(environ: Environ) -> bool:
    """Whether a request comes from a page of the dashboard itself. Browsers send `Origin`
    (or at least `Referer`, and `Sec-Fetch-Site`) with every state-changing request; one
    with none of them is not from a browser, so no other site can have made it."""
    own = str(environ.get("HTTP_HOST", "")).lower()
    site = environ.get("HTTP_SEC_FETCH_SITE")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = environ.get("HTTP_ORIGIN")
    if origin is not None:
        return _origin_netloc(str(origin)) == own
    referer = environ.get("HTTP_REFERER")
    if referer is not None:
        return _origin_netloc(str(referer)) == own
    return True


class DashboardGuard:
    """WSGI middleware enforcing `GuardPolicy` in front of `app`."""

    def __init__(self, app: WSGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    def _token_matches(self, candidate: str | None) -> bool:
        token = self.policy.token
        return (
            token is not None
            and candidate is not None
            and hmac.compare_digest(candidate.encode(), token.encode())
        )

    def _cookie_token(self, environ: Environ) -> str | None:
        cookie = SimpleCookie()
        try:
            cookie.load(str(environ.get("HTTP_COOKIE", "")))
        except CookieError:
            return None
        morsel = cookie.get(self.policy.cookie_name)
        return morsel.value if morsel is not None else None

    def _header_token(self, environ: Environ) -> str | None:
        scheme, _, value = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        return value.strip() if scheme.lower() in ("token", "bearer") else None

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        host_header = str(environ.get("HTTP_HOST", ""))
        name = host_name(host_header)
        if name is None or name not in self.policy.hosts:
            return _deny(
                start_response,
                "403 Forbidden",
                f"host {host_header!r} is not allowed here; start the dashboard with "
                "--allowed-host NAME to serve it under that name",
            )
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if self.policy.token is not None:
            query = parse_qsl(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
            from_query = next((v for k, v in query if k == TOKEN_PARAM), None)
            if self._token_matches(from_query) and method in ("GET", "HEAD"):
                return self._login(environ, start_response, query)
            if not (
                self._token_matches(self._cookie_token(environ))
                or self._token_matches(self._header_token(environ))
                or self._token_matches(from_query)
            ):
                return _deny(
                    start_response,
                    "403 Forbidden",
                    "this dashboard needs its token: open the URL `studyctl dashboard` printed "
                    "(.../dashboard/?token=...)",
                )
        if method not in SAFE_METHODS:
            if self.policy.read_only:
                return _deny(
                    start_response,
                    "403 Forbidden",
                    "this dashboard is read-only (started with --read-only)",
                )
            if not same_origin(environ):
                return _deny(
                    start_response,
                    "403 Forbidden",
                    "cross-origin request refused: changes are accepted only from the "
                    "dashboard's own pages",
                )
        artifact = str(environ.get("PATH_INFO", "")).startswith(ARTIFACT_PREFIX)

        def guarded_start(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            kept = [(k, v) for k, v in headers if k.lower() not in _DROPPED_HEADERS]
            if artifact:
                kept = [
                    (k, v)
                    for k, v in kept
                    if k.lower() not in ("content-disposition", "content-security-policy")
                ]
                kept += [
                    ("Content-Disposition", "attachment"),
                    ("Content-Security-Policy", ARTIFACT_CSP),
                    ("Cache-Control", "no-store"),
                ]
            names = {k.lower() for k, _ in kept}
            if "x-content-type-options" not in names:
                kept.append(("X-Content-Type-Options", "nosniff"))
            if "referrer-policy" not in names:
                kept.append(("Referrer-Policy", "same-origin"))
            if "x-frame-options" not in names:
                kept.append(("X-Frame-Options", "SAMEORIGIN"))
            return start_response(status, kept, *exc)

        return self.app(environ, guarded_start)

    def _login(
        self, environ: Environ, start_response: StartResponse, query: list[tuple[str, str]]
    ) -> list[bytes]:
        """Trade the URL's token for a cookie and send the browser to the same page
        without it, so the token leaves the address bar and the history."""
        rest = urlencode([(k, v) for k, v in query if k != TOKEN_PARAM])
        path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
        # One leading slash: "//evil.example/" would send the browser to another host.
        location = "/" + path.lstrip("/")
        if rest:
            location += "?" + rest
        cookie = f"{self.policy.cookie_name}={self.policy.token}; Path=/; HttpOnly; SameSite=Strict"
        start_response(
            "302 Found",
            [
                ("Location", location),
                ("Set-Cookie", cookie),
                ("Content-Length", "0"),
                ("Cache-Control", "no-store"),
                ("Referrer-Policy", "no-referrer"),
            ],
        )
        return [b""]
