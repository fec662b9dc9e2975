"""The WebSocket handshake's Origin check: scheme, host and port must be an origin this server serves.

Channels' AllowedHostsOriginValidator compares the host name only, so a page
on another port of the same host (`http://127.0.0.1:9999`, any local dev
server or a second app) could open a socket with the visitor's cookies. This
check follows Django's CSRF rule for the Origin header instead: an origin is
served when it is the handshake's own origin (its scheme, or https under
TLS=1 or a trusted X-Forwarded-Proto, and its Host header, which must be one
of ALLOWED_HOSTS) or is listed in CSRF_TRUSTED_ORIGINS
(`https://*.example.com` covers subdomains, as for CSRF). A handshake without
Origin, with `Origin: null` or with any other origin is refused with HTTP 403.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443}
WS_TO_HTTP = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def parse_origin(value: str) -> tuple[str, str, int] | None:
    """Return (scheme, host, port) of an origin such as 'https://Example.com:8443', or None when it is not one."""
    try:
        parts = urlsplit(value.strip())
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:  # a port out of range or not a number
        return None
    if scheme not in DEFAULT_PORTS or not host or parts.path not in ("", "/") or parts.query or parts.username:
        return None
    return scheme, host, port if port is not None else DEFAULT_PORTS[scheme]


def _headers(scope: dict[str, Any]) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", [])}


def own_origin(scope: dict[str, Any]) -> tuple[str, str, int] | None:
    """Return the origin the handshake was addressed to: its scheme and Host, if the host is one of ALLOWED_HOSTS."""
    headers = _headers(scope)
    # Daphne leaves "scheme" out of a WebSocket scope, even behind its own TLS
    # endpoint: then TLS=1 (the site is served over HTTPS) says which.
    default = "wss" if settings.TLS else "ws"
    scheme = WS_TO_HTTP.get(scope.get("scheme") or default, "http")
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy is not None:
        name = proxy[0].removeprefix("HTTP_").replace("_", "-").lower().encode()
        forwarded = headers.get(name, b"").decode("latin1").split(",")[0].strip()
        if forwarded:
            scheme = "https" if forwarded == proxy[1] else "http"
    host_name = b"x-forwarded-host" if settings.USE_X_FORWARDED_HOST and b"x-forwarded-host" in headers else b"host"
    host = headers.get(host_name, b"").decode("latin1").split(",")[0].strip()
    if not host:
        return None
    domain, _ = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS or (["localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    if not domain or not validate_host(domain, allowed):
        return None
    return parse_origin(f"{scheme}://{host}")


def trusted(origin: tuple[str, str, int]) -> bool:
    """Return whether an origin is listed in CSRF_TRUSTED_ORIGINS (scheme and port exact, '*.' for subdomains)."""
    scheme, host, port = origin
    for entry in settings.CSRF_TRUSTED_ORIGINS:
        wildcard = "://*." in entry
        listed = parse_origin(entry.replace("://*.", "://", 1))
        if listed is None or listed[0] != scheme or listed[2] != port:
            continue
        if host == listed[1] or (wildcard and is_same_domain(host, "." + listed[1])):
            return True
    return False


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Return whether the handshake's Origin is one this server serves."""
    raw = _headers(scope).get(b"origin")
    if raw is None:
        return False
    origin = parse_origin(raw.decode("latin1"))
    if origin is None:
        return False
    return origin == own_origin(scope) or trusted(origin)


class ServedOriginValidator:
    """ASGI middleware: refuse (HTTP 403) a WebSocket handshake whose Origin this server does not serve.

    A call returns the application's coroutine (or the refusal's) rather than
    awaiting it, so the middleware does not stay suspended for the socket's
    whole life (~1.5 KB per idle WebSocket, bench/connmem.py).
    """

    _asgi_single_callable = True  # asgiref would take a class with a plain __call__ for an ASGI 2 app

    def __init__(self, application) -> None:
        self.application = application

    def __call__(self, scope: dict[str, Any], receive, send) -> Awaitable[None]:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return self._refuse(scope, receive, send)
        return self.application(scope, receive, send)

    async def _refuse(self, scope: dict[str, Any], receive, send) -> None:
        origin = _headers(scope).get(b"origin", b"(none)").decode("latin1")[:200]
        log.info("refused a WebSocket handshake from origin %s to %s", origin, scope.get("path"))
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": 1008})  # before accept: Daphne answers HTTP 403
