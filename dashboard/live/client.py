"""Protocol v1 (docs/protocol.md), independent of the transport.

A LiveClient speaks the protocol for one connection: the WebSocket consumer
and the Server-Sent Events fallback both wrap one, so both carry the same
frames with the same resume semantics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from dashboard import permissions, stats
from dashboard.keyindex import (
    KeyIndex,
    Reader,
)
from dashboard.live import protocol
from dashboard.live.hub import Hub
from dashboard.live.protocol import (
    ACK_WINDOW_FRAMES,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NOT_AUTHENTICATED,
    CLOSE_TOO_MANY_MESSAGES,
    CLOSE_TOO_SLOW,
    MAX_GLOBS,
    MAX_HISTORY_S,
    MAX_LIVE_GLOBS,
    MAX_MESSAGE_BYTES,
    MAX_MESSAGES_PER_S,
    MAX_PATTERNS,
    MAX_RATE,
    MAX_REPLAY_POINTS,
    MAX_REPLAY_TOTAL,
    MESSAGE_BURST,
    PROTOCOL_VERSION,
    SERVER_VERSION,
    Ack,
    CloseConnection,
    Ping,
    Subscribe,
    UnknownType,
    Unsubscribe,
    decode_bare_ack,
    decode_client,
    encode,
    error_frame,
)
from dashboard.live.replay import Replaying
from dashboard.live.session import NO_KEYS, Session, Transport
from dashboard.live.subscribe import Subscribing
from dashboard.live.subscriptions import HeldMetrics, LiveGlobs, alert_sources, share_grant
from dashboard.timeutil import now_us

log = logging.getLogger(__name__)

SHARE_RECHECK_S = 2.0  # how stale a share socket's grant may get when the change was saved in another process


class LiveClient(Subscribing, Replaying):
    """One connection's side of protocol v1: subscriptions, history, resume and live frames.

    One per connection: slots, and no task or set made before it is needed (bench/connmem.py).
    """

    __slots__ = (
        "user",
        "transport",
        "session",
        "hub",
        "metrics",
        "_tokens",
        "_tokens_at",
        "_tasks",
        "_gap_keys",
        "_reader",
        "_globs",
    )

    def __init__(
        self,
        user,
        transport: Transport,
        *,
        acks: bool = True,
    ) -> None:
        """Speak the protocol over a transport (WebSocket or SSE), which it closes with 4008 for a stuck reader.

        `acks=False` is for transports without a way back (Server-Sent Events),
        which bound their buffers another way.
        """
        self.user = user
        self.transport = transport
        self.session = Session(transport, window=ACK_WINDOW_FRAMES if acks else None, on_stuck=self._on_stuck)
        self.session.on_gap = self._on_gap
        self.hub = Hub.get()
        self.metrics = HeldMetrics(self.session, KeyIndex.get())  # the keys held, with their metric ids
        self._tokens = float(MESSAGE_BURST)
        self._tokens_at = time.monotonic()
        self._tasks: set[asyncio.Task] | None = None
        self._gap_keys: frozenset[str] = NO_KEYS  # being back-filled after a loss (frozenset() is 216 B each)
        self._reader: Reader | None = None  # what the user may read, as of the last subscribe
        self._globs: dict[str, tuple[Any, float]] | None = None  # followed glob -> (its request id, history_s)

    async def start(self) -> None:
        """Register with the hub and greet the client."""
        self.session.alert_sources = await alert_sources(self.user)
        await self.hub.register(self.session)
        if getattr(self.user, "share_link", None) is not None:
            self._spawn(self._watch_share())
        stats.CONNECTIONS.inc()
        await self.transport.send_text(
            encode(
                {
                    "type": "hello",
                    "protocol": PROTOCOL_VERSION,
                    "server": SERVER_VERSION,
                    "heartbeat_s": self.hub.heartbeat_s,
                    "time": now_us(),
                    "limits": {
                        "max_message_bytes": MAX_MESSAGE_BYTES,
                        "max_subscriptions": protocol.MAX_SUBSCRIPTIONS,
                        "max_patterns": MAX_PATTERNS,
                        "max_globs": MAX_GLOBS,
                        "max_live_globs": MAX_LIVE_GLOBS,
                        "max_replay_total": MAX_REPLAY_TOTAL,
                        "max_messages_per_s": MAX_MESSAGES_PER_S,
                        "max_replay_points": MAX_REPLAY_POINTS,
                        "max_history_s": MAX_HISTORY_S,
                        "max_rate": MAX_RATE,
                        "ack_window": self.session.window or 0,
                    },
                }
            )
        )

    async def stop(self) -> None:
        """Release everything this connection held."""
        for task in list(self._tasks or ()):
            task.cancel()
        if self._globs:
            registry = LiveGlobs.get()
            for glob in self._globs:
                registry.discard(glob, self)
            self._globs = None
        stats.SUBSCRIPTIONS.dec(len(self.metrics))
        stats.CONNECTIONS.dec()
        await self.hub.unregister(self.session)

    def _on_stuck(self, reason: str) -> None:
        """Tell the client why, then close the transport with 4008 (it resumes with `since`)."""

        async def close() -> None:
            try:
                await self.transport.send_text(
                    error_frame("too_slow", f"this connection {reason}; reconnect and resume with 'since'")
                )
                await self.transport.close(CLOSE_TOO_SLOW)
            except Exception:
                log.debug("closing a stuck connection failed", exc_info=True)

        self._spawn(close())

    async def _watch_share(self) -> None:
        """Keep a share-link socket within what the link grants now: drop keys it lost, close it when it ends.

        It re-checks every SHARE_RECHECK_S, and at once when this process saves
        a change the grant depends on (dashboard/permissions.py).
        """
        link = self.user.share_link
        wake = permissions.access_changed_event()
        while True:
            try:
                await asyncio.wait_for(wake.wait(), SHARE_RECHECK_S)
            except TimeoutError:
                pass
            # Listen for the next change before reading the grant, so one saved meanwhile is not missed.
            wake = permissions.access_changed_event()
            try:
                granted = await share_grant(link)
            except Exception:
                log.warning("could not re-check share link %s; keeping its subscriptions", link.lookup, exc_info=True)
                continue
            if granted is None:
                await self.transport.send_text(
                    error_frame("not_authenticated", "this share link was revoked or its creator's access ended")
                )
                await self.transport.close(CLOSE_NOT_AUTHENTICATED)
                return
            gone = [key for key, metric_id in self.metrics.items() if metric_id not in granted]
            if gone:
                for source_id in self.session.drop(gone):  # the sources of which no key is held any more
                    await self.hub.leave(self.session, source_id)
                self.session.release(set(gone))  # drops their samples still buffered
                stats.SUBSCRIPTIONS.dec(len(gone))
                for key in gone:
                    await self.transport.send_text(
                        error_frame("forbidden", f"this share link no longer grants {key!r}", metric=key, id=None)
                    )
                await self.transport.send_text(encode({"type": "unsubscribed", "id": None, "metrics": gone}))
            self.session.alert_sources = await alert_sources(self.user)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- Client messages -------------------------------------------------
    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(MESSAGE_BURST, self._tokens + (now - self._tokens_at) * MAX_MESSAGES_PER_S)
        self._tokens_at = now
        self._tokens -= 1
        return self._tokens >= 0

    async def handle(self, text: str | bytes) -> None:
        """Act on one client message; raise CloseConnection when the connection must end."""
        if len(text) > MAX_MESSAGE_BYTES:
            await self.transport.send_text(
                error_frame("message_too_big", f"messages are limited to {MAX_MESSAGE_BYTES} bytes")
            )
            raise CloseConnection(CLOSE_MESSAGE_TOO_BIG, "message too big")
        if isinstance(text, str) and text[:40].lstrip().startswith(('{"type":"ack"', '{"type": "ack"')):
            frame = decode_bare_ack(text)
            if frame is not None and self._ack(frame):
                return  # acknowledgements that move the window are free: they are the reader's pace
        if not self._take_token():
            if self._tokens < -MESSAGE_BURST:
                raise CloseConnection(CLOSE_TOO_MANY_MESSAGES, "too many messages")
            await self.transport.send_text(
                error_frame(
                    "rate_limited", f"send at most {MAX_MESSAGES_PER_S} messages a second; this one was ignored"
                )
            )
            return
        try:
            message = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: 20 KB of "[" is under the size limit and deeper than the decoder goes.
            await self.transport.send_text(error_frame("bad_message", "messages must be JSON objects"))
            return
        if not isinstance(message, dict):
            await self.transport.send_text(error_frame("bad_message", "messages must be JSON objects"))
            return
        request_id = message.get("id")
        try:
            match decode_client(message):
                case Subscribe() as subscribe:
                    await self.subscribe(subscribe)
                case Unsubscribe() as unsubscribe:
                    await self.unsubscribe(unsubscribe)
                case Ping() as ping:
                    await self.ping(ping)
                case Ack() as ack:
                    await self.ack(ack)
        except UnknownType as exc:
            await self.transport.send_text(
                error_frame(
                    "unknown_type",
                    f"unknown message type {exc.kind[:40]!r}; use subscribe, unsubscribe, ping or ack",
                    id=request_id,
                )
            )
        except ValueError as exc:
            await self.transport.send_text(error_frame("bad_message", str(exc), id=request_id))

    def _ack(self, frame: int) -> bool:
        """Apply an acknowledgement that moves the window; False sends it down the normal path."""
        try:
            return self.session.ack(frame)
        except ValueError:
            return False

    async def ack(self, message: Ack) -> None:
        """Acknowledge data frames 1..frame (counted by the client from the start of the connection)."""
        if self.session.window is None:
            raise ValueError("this transport takes no acknowledgements")
        self.session.ack(message.frame)

    async def ping(self, message: Ping) -> None:
        """Answer with a pong carrying the ping's id and the server's clock."""
        await self.transport.send_text(encode({"type": "pong", "id": message.id, "time": now_us()}))
