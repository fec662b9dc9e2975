"""The WebSocket transport of protocol v1: one socket per browser tab carries every subscription.

This is a plain ASGI app, not a Channels consumer behind AuthMiddlewareStack:
an idle socket must stay small (≤ 32 KB, bench/connmem.py). The middleware
stack kept, for the whole life of each socket, three more copies of the scope,
the session object with its decoded data, the lazy user and a suspended
coroutine per layer; a Channels consumer adds a second task per socket (its
receive loop) and an `asyncio.wait` on it. Here the session is read once at
connect and dropped, and one coroutine per socket reads its messages.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Coroutine
from importlib import import_module
from types import SimpleNamespace
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie

from dashboard.exceptions import NotAuthenticated
from dashboard.fastpaths import writethrough
from dashboard.live.client import LiveClient
from dashboard.live.protocol import CLOSE_GOING_AWAY, CLOSE_NOT_AUTHENTICATED, CloseConnection, error_frame
from dashboard.models import ShareLink, SharePrincipal, TokenReader
from dashboard.readtokens import bearer_secret, reader_for

log = logging.getLogger(__name__)

CLOSE_HANDSHAKE_S = 5.0  # how long a close we send may wait for the client's answer (autobahn's own: 1 s, then RST)
_open: weakref.WeakSet[LiveConsumer] = weakref.WeakSet()  # this process's open sockets, closed with 1001 on SIGTERM
_shutdown_hooked = False


async def close_all_going_away() -> None:
    """Close every open live socket with 1001 and wait (at most CLOSE_HANDSHAKE_S) for the clients to answer."""
    consumers = [c for c in _open if c.state == "open"]
    log.info("shutting down: closing %d live connections with 1001", len(consumers))
    for consumer in consumers:
        try:
            await consumer.close(CLOSE_GOING_AWAY)
        except Exception:
            log.debug("closing a live connection on shutdown failed", exc_info=True)
    deadline = asyncio.get_running_loop().time() + CLOSE_HANDSHAKE_S
    while any(c.state == "closing" for c in consumers) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)  # shutdown only: no per-socket event kept for it


@database_sync_to_async
def share_principal(secret: str) -> SharePrincipal | AnonymousUser:
    """Return the reader a share-link secret stands for, or an anonymous user when it is unknown or revoked."""
    link = ShareLink.find(secret)
    return link.principal() if link is not None else AnonymousUser()


@database_sync_to_async
def token_reader(headers: list[tuple[bytes, bytes]]) -> TokenReader | AnonymousUser | None:
    """Return the reader of a read token in the Authorization header, anonymous for a bad one, None without one."""
    for name, value in headers:
        if name == b"authorization":
            secret = bearer_secret(value.decode("latin1"))
            if secret is not None:
                try:
                    return reader_for(secret)
                except NotAuthenticated:
                    return AnonymousUser()
    return None


@database_sync_to_async
def session_user(headers: list[tuple[bytes, bytes]]):
    """Return the user signed in with the request's session cookie (Django's own checks), or an anonymous user."""
    cookies: dict[str, str] = {}
    for name, value in headers:
        if name == b"cookie":
            cookies.update(parse_cookie(value.decode("latin1")))
    key = cookies.get(settings.SESSION_COOKIE_NAME)
    if not key:
        return AnonymousUser()
    store = import_module(settings.SESSION_ENGINE).SessionStore(key)
    # get_user verifies the session's auth hash (a changed password signs the socket out) like a request.
    return get_user(SimpleNamespace(session=store))


class LiveConsumer:
    """Serve /ws/live/ (and /ws/share/<secret>/): authenticate once, then hand every message to a LiveClient.

    It is the connection's Transport (dashboard/live/session.py): send_text,
    close, and `wire`, the fast path that writes framed bytes under Daphne.

    The user comes from scope["user"] when something set it (tests, an auth
    middleware), from the share link in the path, or else from the session
    cookie. The connection has no channel on the layer: the process hub
    (dashboard/live/hub.py) is its only reader.
    """

    __slots__ = ("send", "client", "state", "wire", "__weakref__")

    @classmethod
    def as_asgi(cls):
        """Return the ASGI app: one LiveConsumer and one coroutine per socket (its `run`, not a wrapper around it)."""

        def app(scope: dict[str, Any], receive, send) -> Coroutine[Any, Any, None]:
            return cls(send).run(scope, receive)

        app._asgi_single_callable = True  # asgiref would take a plain function for an ASGI 2 app
        return app

    def __init__(self, send) -> None:
        self.send = send
        self.client: LiveClient | None = None
        self.state = "connecting"  # then "open", "closing" (the server sent a close) or "closed"
        self.wire: Callable[[bytes], bool] | None = None  # set on connect: None unless under Daphne

    async def run(self, scope: dict[str, Any] | None, receive) -> None:
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    await self.receive(message)
                elif kind == "websocket.connect" and scope is not None:
                    await self.connect(scope)
                    # The scope (headers, cookies, addresses: ~1.5 KB) is read once; an idle socket keeps none of it.
                    scope = None
                elif kind == "websocket.disconnect":
                    self.state = "closed"
                    return
                # Not kept while the socket waits for its next message: the last one can be a 64 KB subscribe.
                del message
        except asyncio.CancelledError:
            # The server is stopping and cancelled the application: say so with 1001 and give the
            # client a bounded time to answer, rather than leave it a dropped connection (1006).
            await self._going_away(receive)
            raise
        finally:
            _open.discard(self)
            await self.disconnect()

    async def _going_away(self, receive) -> None:
        if self.state not in ("open", "closing"):
            return
        try:
            await self.close(CLOSE_GOING_AWAY)
            async with asyncio.timeout(CLOSE_HANDSHAKE_S):
                while (await receive())["type"] != "websocket.disconnect":
                    pass
            self.state = "closed"
        except Exception:
            log.debug("the close handshake on shutdown did not finish", exc_info=True)

    async def connect(self, scope: dict[str, Any]) -> None:
        secret = scope.get("url_route", {}).get("kwargs", {}).get("secret")
        if secret is not None:
            # A share link replaces whoever is signed in: it grants one dashboard's metrics only.
            user = await share_principal(secret)
        else:
            user = scope.get("user")
            if user is None:
                # A read token (scripts, other tools) comes before the cookie; a bad one is not replaced by it.
                user = await token_reader(scope.get("headers", []))
            if user is None:
                user = await session_user(scope.get("headers", []))
        await self.send({"type": "websocket.accept"})
        self.state = "open"
        _open.add(self)
        global _shutdown_hooked
        if not _shutdown_hooked:
            _shutdown_hooked = writethrough.before_shutdown(close_all_going_away)
        if not user.is_authenticated:
            await self.send_text(error_frame("not_authenticated", "sign in at /accounts/login/ first"))
            await self.close(CLOSE_NOT_AUTHENTICATED)
            return
        self.wire = writethrough.wire_sender(self.send)
        self.client = LiveClient(user, self)
        await self.client.start()

    async def send_text(self, frame: str) -> None:
        """Send one text frame through the ASGI send."""
        await self.send({"type": "websocket.send", "text": frame})

    async def close(self, code: int) -> None:
        """Close from the server side (4008 for a reader too slow, 1001 on shutdown), once.

        The client gets CLOSE_HANDSHAKE_S to answer: a reader that stopped
        reading finds the close frame behind the data it has not read yet.
        """
        if self.state != "open":
            return
        self.state = "closing"
        close = writethrough.server_closer(self.send, CLOSE_HANDSHAKE_S)
        if close is None or not close(code):
            # Daphne's own close goes through autobahn's sendClose, which refuses 1001.
            public_code = 1000 if code == CLOSE_GOING_AWAY else code
            await self.send({"type": "websocket.close", "code": public_code})

    async def receive(self, message: dict[str, Any]) -> None:
        if self.client is None:
            return
        text = message.get("text")
        try:
            await self.client.handle(text if text is not None else message.get("bytes") or b"")
        except CloseConnection as exc:
            await self.close(exc.code)

    async def disconnect(self) -> None:
        """Release the connection's subscriptions (the socket is closed, or the app is ending)."""
        if self.client is not None:
            client, self.client = self.client, None
            await client.stop()
