"""Read tokens on HTTP: `Authorization: Bearer pbr_…` signs a request in as the token's reader.

Scripts, Grafana's JSON data sources and other tools read Pulseboard with a
read token instead of a browser session (docs/security.md, Read tokens). The
middleware runs after Django's AuthenticationMiddleware and, when a read
token is presented, replaces `request.user` with the token's reader
(models.TokenReader), so every view checks permissions exactly as for the
user. The secret is only ever read from the header, never from the URL:
URLs end up in proxy logs and browser history.

A read token never writes: any method but GET, HEAD and OPTIONS is refused
with 403 `read_only_token`. An agent token presented here is refused with 401
(agent tokens write, they do not read), and so is an unknown or revoked read
token, rather than falling back to whoever the cookie names.
"""

from __future__ import annotations

from datetime import timedelta

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from dashboard.api import error_response
from dashboard.exceptions import NotAuthenticated, ReadOnlyToken
from dashboard.models import AgentToken, ReadToken, TokenReader

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LAST_USED_EVERY = timedelta(minutes=1)  # last_used is for operators auditing tokens: a minute is precise enough


def bearer_secret(authorization: str) -> str | None:
    """Return the secret of an `Authorization: Bearer <secret>` (or `Token <secret>`) header, or None."""
    scheme, _, secret = authorization.strip().partition(" ")
    if scheme.lower() not in ("bearer", "token") or not secret.strip():
        return None
    return secret.strip()


def presented_secret(request: HttpRequest) -> str | None:
    """Return the secret this middleware must judge: any read token, or an agent token on a read.

    An agent token sent with a write is left to the agent endpoints, which
    authenticate themselves (dashboard/api.py: authenticate_agent), and any
    other bearer secret (METRICS_TOKEN) to the view it is meant for.
    """
    secret = bearer_secret(request.headers.get("Authorization", ""))
    if secret is None or secret.startswith(ReadToken.PREFIX):
        return secret
    if secret.startswith(AgentToken.PREFIX) and request.method in SAFE_METHODS:
        return secret
    return None  # another credential (METRICS_TOKEN on /metrics): its view judges it


def reader_for(secret: str) -> TokenReader:
    """Return the reader of a presented secret, or raise NotAuthenticated saying what to do instead."""
    if secret.startswith(AgentToken.PREFIX):
        raise NotAuthenticated("agent tokens only write; create a read token (manage.py readtoken create) to read")
    token = ReadToken.find(secret) if secret.startswith(ReadToken.PREFIX) else None
    if token is None:
        raise NotAuthenticated("unknown or revoked read token; create a new one in the admin (Read tokens)")
    now = timezone.now()
    if token.last_used is None or now - token.last_used > LAST_USED_EVERY:
        # A script polling every second would otherwise write a row per read.
        ReadToken.objects.filter(pk=token.pk).update(last_used=now)
    return token.reader()


def _refusal(exc: NotAuthenticated | ReadOnlyToken) -> HttpResponse:
    response = error_response(exc)
    if exc.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="pulseboard"'
    return response


class ReadTokenMiddleware:
    """Sign a request in as a read token's reader when it carries one (sync and async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        secret = presented_secret(request)
        if secret is None:
            return self.get_response(request)
        try:
            self._sign_in(request, secret, _lookup(secret))
        except (NotAuthenticated, ReadOnlyToken) as exc:
            return _refusal(exc)
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest):
        secret = presented_secret(request)
        if secret is None:
            return await self.get_response(request)
        try:
            self._sign_in(request, secret, await sync_to_async(_lookup)(secret))
        except (NotAuthenticated, ReadOnlyToken) as exc:
            return _refusal(exc)
        return await self.get_response(request)

    @staticmethod
    def _sign_in(request: HttpRequest, secret: str, reader: TokenReader | Exception) -> None:
        if isinstance(reader, Exception):
            raise reader
        if request.method not in SAFE_METHODS:
            raise ReadOnlyToken("read tokens only read; this request changes something, sign in to do it")
        request.user = reader

        async def auser() -> TokenReader:
            return reader

        request.auser = auser
        request.read_token = reader.read_token


def _lookup(secret: str) -> TokenReader | NotAuthenticated:
    try:
        return reader_for(secret)
    except NotAuthenticated as exc:
        return exc
