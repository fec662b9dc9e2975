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
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection

from dashboard import loops, permissions, stats
from dashboard.fanout import (
    ACK_WINDOW_FRAMES,
    MAX_FRAME_SAMPLES,
    Hub,
    Session,
    data_frame,
    encode_fragment,
)
from dashboard.keyindex import (
    MAX_PATTERN_CHARS,
    KeyIndex,
    MetricEntry,
    Reader,
    glob_regex,
    grants_of,
    is_glob,
    reader_of,
    run_db,
)
from dashboard.models import Source
from dashboard.timeutil import US, now_us

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
SERVER_VERSION = "pulseboard/0.1.0"
MAX_MESSAGE_BYTES = 64 * 1024
MAX_SUBSCRIPTIONS = settings.PULSEBOARD["LIVE_MAX_KEYS"]  # metric keys per connection, through keys or globs
MAX_GLOBS = settings.PULSEBOARD["LIVE_MAX_GLOBS"]  # globs per subscribe message (each is a scan of every key)
MAX_PATTERNS = 10_000  # keys and globs per subscribe or unsubscribe message, after removing repeats
MAX_LIVE_GLOBS = 64  # globs a connection keeps following for new metrics
MAX_MESSAGES_PER_S = 20  # client messages, sustained
MESSAGE_BURST = 40
MAX_REPLAY_POINTS = 10_000  # per metric per back-fill
# Per back-fill, all metrics together: a 10,000-key subscription replays its newest 20 points a key
# (and says which were cut: `lag` `truncated`), not 10,000 x 300 s of history.
MAX_REPLAY_TOTAL = 200_000
REPLAY_CHUNK = 1_000  # metrics per replay query
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


def _samples_past(cursors: dict[int, int], limit: int) -> dict[int, tuple[list[int], list[float], bool]]:
    """Return, per metric id, its newest `limit` samples past its cursor, oldest first, and whether more were skipped.

    One query per REPLAY_CHUNK metrics, not one per metric (a 1,000-key
    subscribe made 1,000 queries).
    """
    empty: tuple[list[int], list[float], bool] = ([], [], False)
    out = dict.fromkeys(cursors, empty)
    # A client's cursor may be any integer; the column is 64-bit.
    cursors = {mid: max(-(2**63), min(cursor, 2**63 - 1)) for mid, cursor in cursors.items()}
    items = sorted(cursors.items())
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The plan's estimated cost makes PostgreSQL JIT-compile it: ~100 ms per 1,000 metrics, for a
            # query that then runs in ~15 ms. This connection serves only the key index's threads.
            cursor.execute("SET jit = off")
        for start in range(0, len(items), REPLAY_CHUNK):
            chunk = items[start : start + REPLAY_CHUNK]
            if connection.vendor == "postgresql":
                # An index scan per metric that stops after limit + 1 rows.
                cursor.execute(
                    "SELECT m.id, s.ts, s.value FROM unnest(%s::bigint[], %s::bigint[]) AS m(id, cursor) "
                    "CROSS JOIN LATERAL (SELECT ts, value FROM dashboard_sample WHERE metric_id = m.id "
                    "AND ts > m.cursor ORDER BY ts DESC LIMIT %s) AS s ORDER BY m.id, s.ts",
                    [[m for m, _ in chunk], [c for _, c in chunk], limit + 1],
                )
            else:
                # The newest limit + 1 rows past the chunk's oldest cursor hold the newest past each one's own.
                cursor.execute(
                    "SELECT metric_id, ts, value FROM (SELECT metric_id, ts, value, ROW_NUMBER() OVER "
                    "(PARTITION BY metric_id ORDER BY ts DESC) AS n FROM dashboard_sample "
                    f"WHERE metric_id IN ({','.join(['%s'] * len(chunk))}) AND ts > %s) WHERE n <= %s "
                    "ORDER BY metric_id, ts",
                    [*(m for m, _ in chunk), min(c for _, c in chunk), limit + 1],
                )
            rows = cursor.fetchall()
            i, n = 0, len(rows)
            while i < n:  # rows come grouped by metric, oldest first
                metric_id = rows[i][0]
                j = i + 1
                while j < n and rows[j][0] == metric_id:
                    j += 1
                own = cursors[metric_id]
                ts = [r[1] for r in rows[i:j] if r[1] > own]
                if ts:
                    values = [r[2] for r in rows[j - len(ts) : j]]
                    cut = len(ts) > limit
                    out[metric_id] = (ts[-limit:], values[-limit:], cut) if cut else (ts, values, False)
                i = j
    return out


async def load_samples(cursors: dict[int, int]) -> dict[int, tuple[list[int], list[float], bool]]:
    """Return, per metric id, samples newer than its cursor (the newest ones, oldest first, and whether more were cut).

    At most MAX_REPLAY_POINTS per metric and MAX_REPLAY_TOTAL in all, read
    on the key index's threads, not on the thread ingest shares.
    """
    if not cursors:
        return {}
    limit = max(1, min(MAX_REPLAY_POINTS, MAX_REPLAY_TOTAL // len(cursors)))
    # Through the subscribe gate too: replays read one after another, and each is encoded on the loop
    # as its rows arrive, instead of a storm's rows arriving together.
    async with _subscribe_gate():
        return await run_db(_samples_past, cursors, limit)


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


SUBSCRIBE_CONCURRENCY = 1  # subscribes resolved at once per process: a storm takes turns


def _subscribe_gate() -> asyncio.Semaphore:
    """Return the event loop's gate for subscribes: a storm takes its turns instead of filling every loop pass.

    100 viewers resubscribing at once each did ~10 ms of work on the loop
    after their database reads returned together; one pass of the loop then
    ran them all, and an ingest between two passes waited over a second.
    The history replay is outside the gate: it may wait for a slow reader's
    acknowledgements.
    """
    return loops.service("live.subscribe_gate", lambda: asyncio.Semaphore(SUBSCRIBE_CONCURRENCY))


class HeldMetrics(Mapping[str, int]):
    """Subscribed key -> metric id, read from the session's cursors and the key index.

    A dict of its own per connection cost ~21 B per held key (a 10,000-key
    socket: 210 KB) to repeat what those two already know.
    """

    __slots__ = ("_session", "_index")

    def __init__(self, session: Session, index: KeyIndex) -> None:
        self._session = session
        self._index = index

    def __getitem__(self, key: str) -> int:
        if key not in self._session.cursors:
            raise KeyError(key)
        return self._index.by_key[key].id

    def __contains__(self, key: object) -> bool:
        return key in self._session.cursors and key in self._index.by_key

    def __iter__(self) -> Iterator[str]:
        return iter(self._session.cursors)

    def __len__(self) -> int:
        return len(self._session.cursors)


class LiveGlobs:
    """The globs this event loop's connections follow: each new metric is matched once per distinct glob.

    Viewers of one board mostly share their globs, so a new device costs one
    match per glob, not one per connection.
    """

    @classmethod
    def get(cls) -> LiveGlobs:
        """Return the running loop's globs, listening to its key index from the first use."""
        return loops.service(LiveGlobs, cls._first)

    @classmethod
    def _first(cls) -> LiveGlobs:
        registry = cls()
        KeyIndex.get().listen(registry.on_new)
        return registry

    def __init__(self) -> None:
        self.by_glob: dict[str, set[LiveClient]] = {}

    def add(self, glob: str, client: LiveClient) -> None:
        self.by_glob.setdefault(glob, set()).add(client)

    def discard(self, glob: str, client: LiveClient) -> None:
        clients = self.by_glob.get(glob)
        if clients is not None:
            clients.discard(client)
            if not clients:
                del self.by_glob[glob]

    def on_new(self, entries: list[MetricEntry]) -> None:
        """Offer metrics new to the index to every connection with a glob that matches them."""
        wanted: dict[LiveClient, dict[str, list[MetricEntry]]] = {}
        for glob, clients in self.by_glob.items():
            test = glob_regex(glob).match
            hits = [entry for entry in entries if test(entry.key)]
            if hits:
                for client in clients:
                    wanted.setdefault(client, {})[glob] = hits
        for client, by_glob in wanted.items():
            client.offer_new(by_glob)


class LiveClient:
    """One connection's side of protocol v1: subscriptions, history, resume and live frames.

    One per connection: slots, and no task or set made before it is needed (bench/connmem.py).
    """

    __slots__ = (
        "user",
        "_send",
        "_close",
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
        self.metrics = HeldMetrics(self.session, KeyIndex.get())  # the keys held, with their metric ids
        self._tokens = float(MESSAGE_BURST)
        self._tokens_at = time.monotonic()
        self._tasks: set[asyncio.Task] | None = None
        self._gap_keys: frozenset[str] = frozenset()  # being back-filled after a loss
        self._reader: Reader | None = None  # what the user may read, as of the last subscribe
        self._globs: dict[str, tuple[Any, float]] | None = None  # followed glob -> (its request id, history_s)

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
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: 20 KB of "[" is under the size limit and deeper than the decoder goes.
            await self._send(error_frame("bad_message", "messages must be JSON objects"))
            return
        if not isinstance(message, dict):
            await self._send(error_frame("bad_message", "messages must be JSON objects"))
            return
        kind = message.get("type")
        request_id = message.get("id")
        if not isinstance(kind, str):  # {"type": [0]} is JSON too, and a list is no dictionary key
            kind = repr(kind)[:40]
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
                    f"unknown message type {kind[:40]!r}; use subscribe, unsubscribe, ping or ack",
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
        except (ValueError, KeyError, TypeError, RecursionError):
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

        async with _subscribe_gate():
            new = await self._subscribe(message.get("id"), patterns, since, history_s)
        await self._replay(new)

    async def _subscribe(
        self, request_id: Any, patterns: list[str], since: dict[str, int], history_s: float
    ) -> set[str]:
        """Apply the limits first, resolve against the key index, hold what fits, and say what did not.

        Return the new keys, which wait for their history (`_replay`).

        Every step is bounded before any work: repeats count once, at most
        MAX_PATTERNS patterns and MAX_GLOBS globs a message, no pattern
        longer than a key; no pattern reaches the database.
        """
        patterns = list(dict.fromkeys(patterns))
        errors: list[str] = []
        if len(patterns) > MAX_PATTERNS:
            errors.append(
                self._pattern_error(
                    "too_many_patterns",
                    patterns[MAX_PATTERNS:],
                    request_id,
                    f"a subscribe may name {MAX_PATTERNS} distinct keys or globs; these were not looked at",
                )
            )
            patterns = patterns[:MAX_PATTERNS]
        # No key is longer than MAX_PATTERN_CHARS: a longer pattern names nothing, whatever it holds.
        unknown = [p for p in patterns if len(p) > MAX_PATTERN_CHARS]
        if unknown:
            patterns = [p for p in patterns if len(p) <= MAX_PATTERN_CHARS]
        globs = [p for p in patterns if is_glob(p)]
        room = MAX_LIVE_GLOBS - len(set(self._globs or ()) - set(globs))
        allowed = min(MAX_GLOBS, max(0, room))
        if len(globs) > allowed:
            skipped = set(globs[allowed:])
            errors.append(
                self._pattern_error(
                    "too_many_globs",
                    globs[allowed:],
                    request_id,
                    f"a subscribe may carry {MAX_GLOBS} globs, and a connection follow {MAX_LIVE_GLOBS}; "
                    "these were not looked at",
                )
            )
            patterns = [p for p in patterns if p not in skipped]
            globs = globs[:allowed]

        index = KeyIndex.get()
        await index.ready()
        reader, fresh = await run_db(grants_of, self.user)
        self._reader = reader
        matched: list[tuple[str, list[MetricEntry]]] = []
        forbidden: list[str] = []
        for n, pattern in enumerate(patterns, 1):
            if is_glob(pattern):
                entries = await index.match(pattern)
            else:
                entry = index.by_key.get(pattern)
                entries = [entry] if entry is not None else []
            restricted = index.restricted if fresh is None else fresh
            readable = [e for e in entries if reader.may_read(e, restricted)]
            if readable:
                matched.append((pattern, readable))
            else:
                (forbidden if entries else unknown).append(pattern)
            if n % 2_000 == 0:
                await asyncio.sleep(0)  # 10,000 keys in one message: let ingest run between slices
        if unknown:
            errors.append(
                self._pattern_error(
                    "unknown_metric", unknown, request_id, "no metric matches these; list them at /api/v1/metrics"
                )
            )
        if forbidden:
            errors.append(self._pattern_error("forbidden", forbidden, request_id, "you may not read these"))

        if globs:
            registry = LiveGlobs.get()
            if self._globs is None:
                self._globs = {}
            for glob in globs:
                self._globs[glob] = (request_id, history_s)
                registry.add(glob, self)

        start = now_us() - int(history_s * US)
        new, named, error = self._take(matched, request_id, lambda key: since.get(key, start))
        if error is not None:
            errors.append(error)
        for frame in errors:
            await self._send(frame)
        await self._hold(new)
        await self._send(
            '{"type":"subscribed","id":' + json.dumps(request_id) + ',"metrics":[' + ",".join(named) + "]}"
        )
        return set(new)

    @staticmethod
    def _pattern_error(code: str, patterns: list[str], request_id: Any, message: str, **extra: Any) -> str:
        """One error frame for every pattern refused for one reason: `metric` names the first, `metrics` all."""
        return error_frame(code, message, id=request_id, metric=patterns[0], metrics=patterns, **extra)

    def _take(
        self, matched: list[tuple[str, list[MetricEntry]]], request_id: Any, cursor_of: Callable[[str], int]
    ) -> tuple[dict[str, MetricEntry], list[str], str | None]:
        """Hold what fits under MAX_SUBSCRIPTIONS, in pattern order; return the new keys, the entries to list, the cut.

        No await between choosing and holding: a live-glob extension running
        beside a subscribe cannot add a key twice.
        """
        held = self.session.cursors
        room = MAX_SUBSCRIPTIONS - len(held)
        new: dict[str, MetricEntry] = {}
        named: dict[str, str] = {}
        cut: list[str] = []
        left_out = 0
        for pattern, entries in matched:
            whole = True
            for entry in entries:
                key = entry.key
                if key in held or key in new:
                    named[key] = entry.meta
                elif len(new) < room:
                    new[key] = entry
                    named[key] = entry.meta
                else:
                    left_out += 1
                    whole = False
            if not whole:
                cut.append(pattern)
        session = self.session
        by_source: dict[int, list[str]] = {}
        for key, entry in new.items():
            by_source.setdefault(entry.source_id, []).append(key)
        session.hold(set(new))
        for source_id, keys in by_source.items():
            session.add_keys(source_id, keys, [cursor_of(key) for key in keys])
        stats.SUBSCRIPTIONS.inc(len(new))
        error = None
        if cut:
            error = self._pattern_error(
                "too_many_subscriptions",
                cut,
                request_id,
                f"a connection may hold {MAX_SUBSCRIPTIONS} metrics: {left_out} matched by these were left out; "
                "narrow the globs, unsubscribe some, or open another connection",
                keys_left_out=left_out,
                limit=MAX_SUBSCRIPTIONS,
            )
        return new, list(named.values()), error

    async def _hold(self, new: dict[str, MetricEntry]) -> None:
        """Make the hub route the new keys' sources to this connection (their keys are held until replayed)."""
        for source_id in dict.fromkeys(entry.source_id for entry in new.values()):
            await self.hub.join(self.session, source_id)

    def offer_new(self, by_glob: dict[str, list[MetricEntry]]) -> None:
        """Take in metrics created after this connection's globs were made (called by LiveGlobs)."""
        if self.session.closed:
            return
        self._spawn(self._extend(by_glob))

    async def _extend(self, by_glob: dict[str, list[MetricEntry]]) -> None:
        """Subscribe to new metrics of followed globs the reader may read, within the key limit; announce them."""
        globs = self._globs or {}
        by_glob = {glob: entries for glob, entries in by_glob.items() if glob in globs}
        if not by_glob or self._reader is None:
            return
        async with _subscribe_gate():
            new = await self._extend_now(by_glob)
        if new:
            await self._replay(new)

    async def _extend_now(self, by_glob: dict[str, list[MetricEntry]]) -> set[str]:
        globs = self._globs or {}  # again: the glob may have been unsubscribed while this waited at the gate
        reader = self._reader
        if reader.metric_ids is not None:
            # A share link's grant is the database's answer now (a panel glob may cover the new metric).
            reader = self._reader = await run_db(reader_of, self.user)
        restricted = KeyIndex.get().restricted
        matched = [
            (glob, readable)
            for glob, entries in by_glob.items()
            if glob in globs and (readable := [e for e in entries if reader.may_read(e, restricted)])
        ]
        if not matched:
            return set()
        now = now_us()
        cursors: dict[str, int] = {}
        for glob, entries in matched:
            history_s = globs[glob][1]
            for entry in entries:
                cursors.setdefault(entry.key, now - int(history_s * US))
        request_id = globs[matched[0][0]][0]
        new, _named, error = self._take(matched, request_id, cursors.__getitem__)
        if error is not None:
            await self._send(error)
        if not new:
            return set()
        await self._hold(new)
        await self._send(
            '{"type":"subscribed","id":'
            + json.dumps(request_id)
            + ',"globs":'
            + json.dumps([glob for glob, _ in matched])
            + ',"metrics":['
            + ",".join(entry.meta for entry in new.values())
            + "]}"
        )
        return set(new)

    async def unsubscribe(self, message: dict[str, Any]) -> None:
        patterns = message.get("metrics")
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ValueError("unsubscribe needs 'metrics': a list of metric keys or globs")
        patterns = list(dict.fromkeys(patterns))
        globs = [p for p in patterns if is_glob(p)]
        if len(patterns) > MAX_PATTERNS or len(globs) > MAX_GLOBS:
            raise ValueError(f"unsubscribe takes at most {MAX_PATTERNS} keys or globs, {MAX_GLOBS} of them globs")
        exact = [p for p in patterns if not is_glob(p)]
        tests = [glob_regex(g).match for g in globs if len(g) <= MAX_PATTERN_CHARS]
        gone_set = {k for k in exact if k in self.metrics}
        if tests:
            keys = list(self.metrics)
            for start in range(0, len(keys), 2_000):
                gone_set.update(k for k in keys[start : start + 2_000] if any(t(k) for t in tests))
                await asyncio.sleep(0)
        if self._globs:
            # A followed glob ends when it is named, or when an unsubscribe glob matches its text.
            registry = LiveGlobs.get()
            for glob in [g for g in self._globs if g in patterns or any(t(g) for t in tests)]:
                del self._globs[glob]
                registry.discard(glob, self)
        gone = [k for k in self.metrics if k in gone_set]
        by_source: dict[int, set[str]] = {}
        for source_id, keys in self.session.sources.items():
            hit = gone_set.intersection(keys)
            if hit:
                by_source[source_id] = hit
        for source_id, keys in by_source.items():
            if self.session.remove_keys(source_id, keys):
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
            for n, (metric_id, (ts, values, cut)) in enumerate(rows.items(), 1):
                if n % 256 == 0:
                    await asyncio.sleep(0)  # a 10,000-key replay is encoded in slices: ingest runs between them
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
