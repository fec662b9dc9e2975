"""Protocol v1 (docs/protocol.md), independent of the transport.

A LiveClient speaks the protocol for one connection: the WebSocket consumer
and the Server-Sent Events fallback both wrap one, so both carry the same
frames with the same resume semantics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from dashboard import permissions, stats
from dashboard.fanout import (
    ACK_WINDOW_FRAMES,
    MAX_FRAME_SAMPLES,
    Hub,
    Session,
    data_frame,
    encode_fragment,
)
from dashboard.models import Metric, Sample, Source
from dashboard.timeutil import US, now_us

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
SERVER_VERSION = "pulseboard/0.1.0"
MAX_MESSAGE_BYTES = 64 * 1024
MAX_SUBSCRIPTIONS = 500  # metric keys per connection
MAX_MESSAGES_PER_S = 20  # client messages, sustained
MESSAGE_BURST = 40
MAX_REPLAY_POINTS = 10_000  # per metric per back-fill
MAX_HISTORY_S = 24 * 3600  # live windows reach back at most a day; longer ranges use /api/v1/series
MIN_RATE, MAX_RATE = 0.2, 100.0

# Close codes (docs/protocol.md).
CLOSE_GOING_AWAY = 1001  # the server process is stopping (SIGTERM)
CLOSE_NOT_AUTHENTICATED = 4001
CLOSE_FORBIDDEN = 4003
CLOSE_TOO_SLOW = 4008
CLOSE_MESSAGE_TOO_BIG = 4009
CLOSE_TOO_MANY_MESSAGES = 4029


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def error_frame(code: str, message: str, **extra: Any) -> str:
    return encode({"type": "error", "code": code, "message": message, **extra})


class CloseConnection(Exception):
    """Raised by the protocol when the transport must close with a code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@database_sync_to_async
def resolve_metrics(user, patterns: list[str]) -> tuple[list[Metric], list[dict[str, str]]]:
    """Return the metrics the user may read for keys/globs, and an error entry for each that gives nothing."""
    found: dict[str, Metric] = {}
    errors: list[dict[str, str]] = []
    visible = Metric.objects.visible_to(user).select_related("source")
    for pattern in patterns:
        matches = list(visible.matching(pattern))
        if not matches:
            exists = Metric.objects.matching(pattern).exists()
            errors.append(
                {
                    "metric": pattern,
                    "code": "forbidden" if exists else "unknown_metric",
                    "message": f"you may not read {pattern!r}"
                    if exists
                    else f"no metric matches {pattern!r}; list them at /api/v1/metrics",
                }
            )
        for metric in matches:
            # Interned: every connection subscribed to a key then holds the same string, not its own copy.
            metric.key = sys.intern(metric.key)
            found[metric.key] = metric
    return list(found.values()), errors


@database_sync_to_async
def load_samples(cursors: dict[int, int]) -> dict[int, tuple[list[int], list[float], bool]]:
    """Return, per metric id, samples newer than its cursor (at most MAX_REPLAY_POINTS, the newest ones)."""
    out: dict[int, tuple[list[int], list[float], bool]] = {}
    for metric_id, cursor in cursors.items():
        rows = list(
            Sample.objects.filter(metric_id=metric_id, ts__gt=cursor)
            .order_by("-ts")
            .values_list("ts", "value")[: MAX_REPLAY_POINTS + 1]
        )
        truncated = len(rows) > MAX_REPLAY_POINTS
        rows = rows[:MAX_REPLAY_POINTS]
        rows.reverse()
        out[metric_id] = ([r[0] for r in rows], [r[1] for r in rows], truncated)
    return out


SHARE_RECHECK_S = 2.0  # how stale a share socket's grant may get when the change was saved in another process


@database_sync_to_async
def share_grant(link) -> frozenset[int] | None:
    """Return the metric ids a share link grants now, or None when it no longer works."""
    return link.grant()


_shared_source_sets: dict[frozenset[int], frozenset[int]] = {}
SHARED_SOURCE_SETS_MAX = 1024  # distinct visibility sets kept for sharing; beyond that the cache starts over


@database_sync_to_async
def alert_sources(user) -> frozenset[int] | None:
    """Return the ids of the sources whose alerts the user may see (None: every source, for staff).

    Viewers who see the same sources share one frozenset rather than a set per connection.
    """
    if getattr(user, "share_link", None) is None and (user.is_staff or user.is_superuser):
        return None
    ids = frozenset(Source.objects.visible_to(user).values_list("id", flat=True))
    if len(_shared_source_sets) >= SHARED_SOURCE_SETS_MAX:
        _shared_source_sets.clear()
    return _shared_source_sets.setdefault(ids, ids)


class LiveClient:
    """One connection's side of protocol v1: subscriptions, history, resume and live frames.

    One per connection: slots, and no task or set made before it is needed (bench/connmem.py).
    """

    __slots__ = ("user", "_send", "_close", "session", "hub", "metrics", "_tokens", "_tokens_at", "_tasks", "_gap_keys")

    def __init__(
        self,
        user,
        send: Callable[[str], Awaitable[None]],
        *,
        close: Callable[[int], Awaitable[None]] | None = None,
        acks: bool = True,
    ) -> None:
        """Speak the protocol over `send`; `close` ends the transport with a close code (4008 for a stuck reader).

        `acks=False` is for transports without a way back (Server-Sent Events),
        which bound their buffers another way.
        """
        self.user = user
        self._send = send
        self._close = close
        self.session = Session(send, window=ACK_WINDOW_FRAMES if acks else None, on_stuck=self._on_stuck)
        self.session.on_gap = self._on_gap
        self.hub = Hub.get()
        self.metrics: dict[str, int] = {}  # subscribed key -> metric id (not the model: ~2 KB each per connection)
        self._tokens = float(MESSAGE_BURST)
        self._tokens_at = time.monotonic()
        self._tasks: set[asyncio.Task] | None = None
        self._gap_keys: frozenset[str] = frozenset()  # being back-filled after a loss

    async def start(self) -> None:
        """Register with the hub and greet the client."""
        self.session.alert_sources = await alert_sources(self.user)
        await self.hub.register(self.session)
        if getattr(self.user, "share_link", None) is not None:
            self._spawn(self._watch_share())
        stats.CONNECTIONS.inc()
        await self._send(
            encode(
                {
                    "type": "hello",
                    "protocol": PROTOCOL_VERSION,
                    "server": SERVER_VERSION,
                    "heartbeat_s": self.hub.heartbeat_s,
                    "time": now_us(),
                    "limits": {
                        "max_message_bytes": MAX_MESSAGE_BYTES,
                        "max_subscriptions": MAX_SUBSCRIPTIONS,
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
        stats.SUBSCRIPTIONS.dec(len(self.metrics))
        stats.CONNECTIONS.dec()
        self.metrics.clear()
        await self.hub.unregister(self.session)

    def _on_stuck(self, reason: str) -> None:
        """Tell the client why, then close the transport with 4008 (it resumes with `since`)."""

        async def close() -> None:
            try:
                await self._send(
                    error_frame("too_slow", f"this connection {reason}; reconnect and resume with 'since'")
                )
                if self._close is not None:
                    await self._close(CLOSE_TOO_SLOW)
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
                await self._send(
                    error_frame("not_authenticated", "this share link was revoked or its creator's access ended")
                )
                if self._close is not None:
                    await self._close(CLOSE_NOT_AUTHENTICATED)
                return
            gone = [key for key, metric_id in self.metrics.items() if metric_id not in granted]
            if gone:
                for key in gone:
                    self.metrics.pop(key)
                    source_id = self.session.remove(key)
                    if source_id is not None:
                        await self.hub.leave(self.session, source_id)
                self.session.release(set(gone))  # drops their samples still buffered
                stats.SUBSCRIPTIONS.dec(len(gone))
                for key in gone:
                    await self._send(
                        error_frame("forbidden", f"this share link no longer grants {key!r}", metric=key, id=None)
                    )
                await self._send(encode({"type": "unsubscribed", "id": None, "metrics": gone}))
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
            await self._send(error_frame("message_too_big", f"messages are limited to {MAX_MESSAGE_BYTES} bytes"))
            raise CloseConnection(CLOSE_MESSAGE_TOO_BIG, "message too big")
        if (
            isinstance(text, str)
            and text[:40].lstrip().startswith(('{"type":"ack"', '{"type": "ack"'))
            and self._ack(text)
        ):
            return  # acknowledgements that move the window are free: they are the reader's pace
        if not self._take_token():
            if self._tokens < -MESSAGE_BURST:
                raise CloseConnection(CLOSE_TOO_MANY_MESSAGES, "too many messages")
            await self._send(
                error_frame(
                    "rate_limited", f"send at most {MAX_MESSAGES_PER_S} messages a second; this one was ignored"
                )
            )
            return
        try:
            message = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            await self._send(error_frame("bad_message", "messages must be JSON objects"))
            return
        if not isinstance(message, dict):
            await self._send(error_frame("bad_message", "messages must be JSON objects"))
            return
        kind = message.get("type")
        request_id = message.get("id")
        handler = {
            "subscribe": self.subscribe,
            "unsubscribe": self.unsubscribe,
            "ping": self.ping,
            "ack": self.ack,
        }.get(kind)
        if handler is None:
            await self._send(
                error_frame(
                    "unknown_type",
                    f"unknown message type {kind!r}; use subscribe, unsubscribe, ping or ack",
                    id=request_id,
                )
            )
            return
        try:
            await handler(message)
        except ValueError as exc:
            await self._send(error_frame("bad_message", str(exc), id=request_id))

    def _ack(self, text: str | bytes) -> bool:
        """Apply a well-formed acknowledgement that moves the window; False sends it down the normal path."""
        try:
            message = json.loads(text)
            frame = message["frame"]
            if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0 or len(message) != 2:
                return False
            return self.session.ack(frame)
        except (ValueError, KeyError, TypeError):
            return False

    async def ack(self, message: dict[str, Any]) -> None:
        """Acknowledge data frames 1..frame (counted by the client from the start of the connection)."""
        frame = message.get("frame")
        if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
            raise ValueError("ack needs 'frame': the number of data frames received on this connection")
        if self.session.window is None:
            raise ValueError("this transport takes no acknowledgements")
        self.session.ack(frame)

    async def ping(self, message: dict[str, Any]) -> None:
        await self._send(encode({"type": "pong", "id": message.get("id"), "time": now_us()}))

    async def subscribe(self, message: dict[str, Any]) -> None:
        """Subscribe to keys or globs; send history (or what was missed since the given cursors), then live."""
        patterns = message.get("metrics")
        if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError("subscribe needs 'metrics': a non-empty list of metric keys or globs")
        since = message.get("since") or {}
        if not isinstance(since, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in since.values()
        ):
            raise ValueError("'since' must map metric keys to integer cursors (µs)")
        history_s = message.get("history_s", settings.PULSEBOARD["HISTORY_ON_SUBSCRIBE_S"])
        if (
            isinstance(history_s, bool)
            or not isinstance(history_s, (int, float))
            or not 0 <= history_s <= MAX_HISTORY_S
        ):
            raise ValueError(f"'history_s' must be a number of seconds from 0 to {MAX_HISTORY_S}")
        max_rate = message.get("max_rate")
        if max_rate is not None:
            if (
                isinstance(max_rate, bool)
                or not isinstance(max_rate, (int, float))
                or not MIN_RATE <= max_rate <= MAX_RATE
            ):
                raise ValueError(f"'max_rate' must be between {MIN_RATE} and {MAX_RATE} frames a second")
            self.session.max_rate = float(max_rate)

        metrics, errors = await resolve_metrics(self.user, patterns)
        new = [m for m in metrics if m.key not in self.metrics]
        if len(self.metrics) + len(new) > MAX_SUBSCRIPTIONS:
            await self._send(
                error_frame(
                    "too_many_subscriptions",
                    f"a connection may hold {MAX_SUBSCRIPTIONS} metrics; open another or narrow the pattern",
                    id=message.get("id"),
                )
            )
            return
        for error in errors:
            await self._send(encode({"type": "error", "id": message.get("id"), **error}))

        start = now_us() - int(history_s * US)
        keys = {m.key for m in new}
        self.session.hold(keys)
        for metric in new:
            self.metrics[metric.key] = metric.id
            cursor = since.get(metric.key, start)
            self.session.add(metric.source_id, metric.key, cursor)
            await self.hub.join(self.session, metric.source_id)
        stats.SUBSCRIPTIONS.inc(len(new))
        await self._send(
            encode(
                {
                    "type": "subscribed",
                    "id": message.get("id"),
                    "metrics": [
                        {"key": m.key, "source": m.source.slug, "unit": m.unit, "kind": m.kind, "name": m.name}
                        for m in metrics
                    ],
                }
            )
        )
        await self._replay(keys)

    async def unsubscribe(self, message: dict[str, Any]) -> None:
        patterns = message.get("metrics")
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ValueError("unsubscribe needs 'metrics': a list of metric keys or globs")
        from dashboard.models import glob_matches

        gone = [k for k in self.metrics if any(glob_matches(p, k) for p in patterns)]
        for key in gone:
            self.metrics.pop(key)
            source_id = self.session.remove(key)
            if source_id is not None:
                await self.hub.leave(self.session, source_id)
        stats.SUBSCRIPTIONS.dec(len(gone))
        await self._send(encode({"type": "unsubscribed", "id": message.get("id"), "metrics": gone}))

    # --- Back-fill ---------------------------------------------------------
    async def _replay(self, keys: set[str]) -> None:
        """Send what the database holds past each key's cursor, then let live data for those keys flow.

        The hub follows the keys first (its ledger), so at the seam each
        sample goes out exactly once: held live samples the replay sent are
        dropped by timestamp, and replayed samples the hub has not delivered
        yet are remembered (the session's seam) and dropped when they come.
        """
        replayed: dict[str, set[int]] = {}
        try:
            key_of = {self.metrics[k]: k for k in keys if k in self.metrics}
            source_of = {k: source_id for source_id, ks in self.session.sources.items() for k in ks if k in keys}
            await self.hub.track(
                self.session,
                {key: (metric_id, source_of[key]) for metric_id, key in key_of.items() if key in source_of},
            )
            cursors = {metric_id: self.session.cursors[key] for metric_id, key in key_of.items()}
            rows = await load_samples(cursors)
            fragments: list = []
            filled, truncated = 0, []
            for metric_id, (ts, values, cut) in rows.items():
                key = key_of[metric_id]
                replayed[key] = set(ts)
                if cut:
                    truncated.append(key)
                if ts:
                    fragments.append(encode_fragment(key, ts, values))
                    self.session.cursors[key] = max(self.session.cursors[key], ts[-1])
                    filled += len(ts)
            chunk: list = []
            samples = 0
            for fragment in [*fragments, None]:
                if chunk and (fragment is None or samples + fragment.count > MAX_FRAME_SAMPLES):
                    newest = {f.key: f.last_ts for f in chunk}
                    await self.session.send_data(data_frame([f.json for f in chunk], replay=True), newest)
                    chunk, samples = [], 0
                if fragment is not None:
                    chunk.append(fragment)
                    samples += fragment.count
            if truncated:
                await self._send(
                    encode(
                        {
                            "type": "lag",
                            "truncated": truncated,
                            "message": "older samples were skipped; use /api/v1/series for them",
                        }
                    )
                )
        finally:
            # Keys whose replay never ran (an error) fall back to the cursor; the rest drop exactly what was sent.
            seam = {key: self.hub.unseen(key, ts) for key, ts in replayed.items()}
            self.session.release(keys, replayed if replayed.keys() >= keys else None, seam)

    def _on_gap(self, keys: set[str]) -> None:
        """Back-fill keys whose live samples were lost (layer gap or a shed buffer)."""
        keys = keys & set(self.metrics) - self._gap_keys
        if not keys:
            return
        self._gap_keys = self._gap_keys | keys
        self.session.hold(keys)
        self.session.send_now(encode({"type": "lag", "metrics": sorted(keys), "dropped": self.session.dropped}))

        async def refill() -> None:
            await asyncio.sleep(0.2)  # let the in-flight batches land first
            try:
                await self._replay(keys)
            finally:
                self._gap_keys = self._gap_keys - keys

        self._spawn(refill())
