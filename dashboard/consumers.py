"""The WebSocket transport of protocol v1: one socket per browser tab carries every subscription."""

from __future__ import annotations

import logging

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth.models import AnonymousUser

from dashboard.live import CLOSE_NOT_AUTHENTICATED, CloseConnection, LiveClient, error_frame
from dashboard.models import ShareLink, SharePrincipal

log = logging.getLogger(__name__)


@database_sync_to_async
def share_principal(secret: str) -> SharePrincipal | AnonymousUser:
    """Return the reader a share-link secret stands for, or an anonymous user when it is unknown or revoked."""
    link = ShareLink.find(secret)
    return link.principal() if link is not None else AnonymousUser()


class LiveConsumer(AsyncWebsocketConsumer):
    """Serve /ws/live/: authenticate by session, then hand every message to a LiveClient."""

    # No per-socket channel: the process hub (dashboard/fanout.py) is the only
    # reader of the channel layer. An alias that names no layer makes Channels
    # skip new_channel() for each socket.
    channel_layer_alias = "__hub_only__"

    client: LiveClient | None = None

    async def dispatch(self, message: dict) -> None:
        """Handle one ASGI message without Channels' close_old_connections() hop before it.

        AsyncConsumer.dispatch runs close_old_connections in a thread before
        every message, acks included: with 1,000 viewers acking, those thread
        hops cost more server CPU than sending the data (py-spy, bench/README.md).
        Our handlers touch the database only through database_sync_to_async,
        which closes stale connections on its own thread hop.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        user = self.scope.get("user")
        secret = self.scope.get("url_route", {}).get("kwargs", {}).get("secret")
        if secret is not None:
            # A share link replaces whoever is signed in: it grants one dashboard's metrics only.
            user = await share_principal(secret)
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.send(text_data=error_frame("not_authenticated", "sign in at /accounts/login/ first"))
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        self.client = LiveClient(user, self._send_text, close=self._close_with)
        await self.client.start()

    async def _send_text(self, frame: str) -> None:
        # The hot path (once per frame per socket): straight to the server, past send()'s argument checks.
        await self.base_send({"type": "websocket.send", "text": frame})

    async def _close_with(self, code: int) -> None:
        """Close from the server side (a reader too slow to keep up gets 4008)."""
        await self.close(code=code)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.client is None:
            return
        try:
            await self.client.handle(text_data if text_data is not None else bytes_data or b"")
        except CloseConnection as exc:
            await self.close(code=exc.code)

    async def disconnect(self, code: int) -> None:
        if self.client is not None:
            await self.client.stop()
            self.client = None
