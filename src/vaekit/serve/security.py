"""Who may talk to ``vaekit serve``: the Host allow-list, the same-origin rule and the token.

A web page the user opens can make the browser send requests to ``http://127.0.0.1:8000`` (through a
host name of the attacker's that resolves there: DNS rebinding) and read the answers, or fire requests
at it from another origin. Three checks, in this order, stop that before a request reaches the API:

1. **Host**: the Host header must name this service: a loopback name or address, a name given in
   ``allowed_hosts``, or the IP address the connection reached. A rebinding page's requests carry the
   attacker's host name, so they get 421.
2. **Origin**: a request that a browser marks as coming from another origin (an ``Origin`` header
   that is not the service's own, or ``Sec-Fetch-Site`` cross-site or same-site outside a top-level
   navigation) gets 403. No CORS headers are ever sent, so no other origin may read an answer either.
3. **Token** (when one is set): ``Authorization: Bearer TOKEN``, or the session cookie that the
   one-time link ``/?token=TOKEN`` sets (HttpOnly, SameSite=Strict) before redirecting to ``/``;
   anything else gets 401. Tokens are compared in constant time.

This module is free of any web framework: the guard is a plain ASGI middleware.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigError
from ..names import TOKEN_ENV

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::", "[::]")
COOKIE_PREFIX = "vaekit_session_"
DEFAULT_PORTS = {"http": 80, "https": 443}
HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
PORT = re.compile(r"^:[0-9]{1,5}$")
TOKEN_CHARACTERS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces: safe in a header, a URL, a cookie
MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe())'"


def split_host(value: str) -> tuple[str, int | None] | None:
    """``'Example.org:8000'`` -> ``('example.org', 8000)``, ``'[::1]'`` -> ``('::1', None)``; None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket:
            return None
    elif value.count(":") > 1:  # a bare IPv6 address (not valid in a Host header, but a fine --allowed-host)
        name, rest = value, ""
    else:
        name, colon, digits = value.partition(":")
        rest = colon + digits
    if rest and not (PORT.match(rest) and int(rest[1:]) <= 65535):
        return None
    port = int(rest[1:]) if rest else None
    return (name, port) if name else None


def ip_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``name`` spells (IPv4-mapped IPv6 addresses as IPv4), or None for a host name."""
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def allowed_host_name(value: str) -> str:
    """A user's ``--allowed-host`` as the name the Host header is compared with; ConfigError if it is none."""
    parts = split_host(value)
    name = parts[0] if parts else ""
    if not name or not (ip_address(name) is not None or HOST_NAME.match(name)):
        raise ConfigError(f"--allowed-host {value!r} is not a host name or IP address: give one name per option, "
                          "such as --allowed-host myhost.lan (wildcards are not accepted)")
    address = ip_address(name)
    return str(address) if address is not None else name


def check_token(token: str | None) -> str | None:
    """``token`` if it is usable (printable ASCII, no spaces); None stays None; ConfigError otherwise."""
    if token is None:
        return None
    if not TOKEN_CHARACTERS.match(token):
        raise ConfigError("the token must be non-empty printable ASCII without spaces (it travels in a header, a URL "
                          f"and a cookie); make one with: {MAKE_TOKEN}")
    return token


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    address = ip_address(host)
    return host == "localhost" if address is None else address.is_loopback


def is_wildcard(host: str) -> bool:
    """True for the listen-on-every-address forms: '', 0.0.0.0, ::."""
    return host.strip() in WILDCARD_ADDRESSES


def require_token_off_loopback(host: str, token: str | None, no_auth: bool) -> None:
    """Refuse to listen beyond this machine without a token (``--token``), unless ``--no-auth`` says so."""
    if token is None and not no_auth and not is_loopback(host):
        raise ConfigError(f"listening on {host} opens the service to other machines, so it needs a token: pass "
                          f"--token TOKEN or set {TOKEN_ENV} (make one with: {MAKE_TOKEN}), or pass --no-auth to "
                          "serve without authentication")


@dataclass(frozen=True)
class AccessPolicy:
    """The host names the service answers to (beyond loopback) and its token (None: no authentication)."""

    allowed_hosts: frozenset[str] = frozenset()
    token: str | None = None

    @classmethod
    def build(cls, allowed_hosts: Iterable[str] = (), token: str | None = None) -> AccessPolicy:
        """Validate the names and the token; ConfigError saying what is wrong."""
        names = frozenset(allowed_host_name(h) for h in allowed_hosts)
        return cls(names, check_token(token))

    def host_allowed(self, name: str, local_address: str | None = None) -> bool:
        """Whether a Host header naming ``name`` reached this service rather than someone else's name for it.

        IP addresses cannot be rebound, so besides the names given the address the connection itself
        reached (``local_address``) is allowed: with ``--host 0.0.0.0`` clients may use any address of
        the machine without naming each one.
        """
        address = ip_address(name)
        if address is not None:
            if address.is_loopback or str(address) in self.allowed_hosts:
                return True
            return local_address is not None and ip_address(local_address) == address
        return name in LOOPBACK_HOSTS or name in self.allowed_hosts

    def token_matches(self, candidate: str) -> bool:
        return self.token is not None and hmac.compare_digest(candidate.encode("utf-8", "replace"),
                                                              self.token.encode())

    def session_value(self) -> str:
        """What the session cookie holds: derived from the token (it survives a restart with the same token), not it."""
        assert self.token is not None
        return hmac.new(self.token.encode(), b"vaekit serve session cookie", hashlib.sha256).hexdigest()

    def session_matches(self, candidate: str) -> bool:
        return self.token is not None and hmac.compare_digest(candidate.encode("utf-8", "replace"),
                                                              self.session_value().encode())


def same_origin(origin: str, host: str) -> bool:
    """Whether the ``Origin`` header names the origin the request's Host header addresses.

    A port left out on either side is the default of the origin's scheme, so a page served through a
    TLS proxy (Origin https://name, Host name) is still its own origin.
    """
    try:
        parts = urlsplit(origin)
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path or parts.query:
        return False
    own = split_host(host)
    if own is None:
        return False
    default = DEFAULT_PORTS[parts.scheme]
    return parts.hostname == own[0].strip("[]") and (origin_port or default) == (own[1] or default)


# --- the ASGI middleware ----------------------------------------------------------------------------

def _headers(scope: dict) -> dict[str, str]:
    """The request's headers by lower-case name: repeated Cookie headers joined, of any other the first."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "cookie" and name in headers:
            headers[name] += "; " + value
        else:
            headers.setdefault(name, value)
    return headers


def _cookies(header: str) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, eq, value = part.strip().partition("=")
        if eq and name not in cookies:
            cookies[name] = value.strip('"')
    return cookies


class AccessGuard:
    """ASGI middleware enforcing an ``AccessPolicy`` on every HTTP request (see the module docstring)."""

    def __init__(self, app: Any, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = headers.get("host", "")
        refusal = self._check_host(scope, host) or self._check_origin(headers, host)
        if refusal is None and self.policy.token is not None:
            link = _link_token(scope)
            if link is not None:
                await self._follow_link(scope, host, link, send)
                return
            refusal = self._check_token(scope, headers, host)
        if refusal is not None:
            await _answer(send, *refusal)
            return
        await self.app(scope, receive, send)

    def _check_host(self, scope: dict, host: str) -> tuple[int, str] | None:
        parts = split_host(host) if host else None
        if parts is None:
            return 400, (f"the Host header {host!r} is not a host name" if host else "the request has no Host header")
        local = (scope.get("server") or (None,))[0]
        if self.policy.host_allowed(parts[0], local):
            return None
        return 421, (f"this service does not answer to the host name {parts[0]!r} (only to localhost, 127.0.0.1, "
                     "::1 and the names it was started with): if you reach it by that name, start it with "
                     f"--allowed-host {parts[0]} (allowed_hosts=[...] in create_app)")

    @staticmethod
    def _check_origin(headers: dict[str, str], host: str) -> tuple[int, str] | None:
        origin = headers.get("origin")
        if origin is not None and not same_origin(origin, host):
            return 403, (f"cross-origin requests are refused: a page from {origin} may not use this service; "
                         "open the explorer page of the service itself, or call the API from outside a browser")
        site, mode = headers.get("sec-fetch-site"), headers.get("sec-fetch-mode")
        if site in ("cross-site", "same-site") and mode != "navigate":
            return 403, ("cross-origin requests are refused: another site's page may not use this service; open the "
                         "explorer page of the service itself, or call the API from outside a browser")
        return None

    async def _follow_link(self, scope: dict, host: str, token: str, send: Any) -> None:
        """The link ``/?token=TOKEN``: set the session cookie, then redirect to ``/`` (the token out of the URL)."""
        if not self.policy.token_matches(token):
            await _answer(send, 401, "the token in the link is wrong: open the link vaekit serve printed at its start")
            return
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{_cookie_name(host, scope)}={self.policy.session_value()}; Path=/; HttpOnly; SameSite=Strict{secure}"
        await _answer(send, 303, None, [(b"location", (scope.get("root_path", "") + "/").encode()),
                                         (b"set-cookie", cookie.encode()), (b"cache-control", b"no-store")])

    def _check_token(self, scope: dict, headers: dict[str, str], host: str) -> tuple[int, str] | None:
        policy = self.policy
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, credentials = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and policy.token_matches(credentials.strip()):
                return None
            return 401, ("the Authorization header does not carry this service's token: send "
                         "'Authorization: Bearer TOKEN' with the token vaekit serve was started with")
        session = _cookies(headers.get("cookie", "")).get(_cookie_name(host, scope))
        if session is not None:
            if policy.session_matches(session):
                return None
            return 401, ("the session cookie is from another token (was the service restarted with a new one?): "
                         "open the link vaekit serve printed when it started")
        return 401, ("this service needs its token: in a browser open the link vaekit serve printed when it started "
                     "(http://HOST:PORT/?token=...); API clients send 'Authorization: Bearer TOKEN'")


def _link_token(scope: dict) -> str | None:
    """The token of a one-time link: ``GET /?token=...`` (the page only, never the API)."""
    if scope.get("path") != "/" or scope.get("method") not in ("GET", "HEAD"):
        return None
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[-1] if values else None


def _cookie_name(host: str, scope: dict) -> str:
    """The session cookie's name, one per port: browsers share cookies between the ports of a host."""
    parts = split_host(host)
    port = (parts[1] if parts else None) or DEFAULT_PORTS.get(scope.get("scheme", "http"), 80)
    return f"{COOKIE_PREFIX}{port}"


async def _answer(send: Any, status: int, detail: str | None, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """A complete answer: ``{"detail": ...}`` as JSON (no body when ``detail`` is None)."""
    body = json.dumps({"detail": detail}).encode() if detail is not None else b""
    headers = [(b"content-length", str(len(body)).encode()), *(extra or [])]
    if detail is not None:
        headers.append((b"content-type", b"application/json"))
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="vaekit serve"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
