"""One fan-out per process: a hub reads the channel layer once and feeds local sessions.

The naive Channels pattern gives every socket its own channel and group
membership, so each sample costs a layer message and a JSON encode per
socket. Here each server process joins a source's group once (when its first
local viewer subscribes), decodes each batch once, encodes each metric's
fragment once, and hands the same bytes to every session that wants them.
Sessions coalesce fragments into frames at their requested rate.

Loss in the channel layer (a full channel, a Redis hiccup) shows up as a
sequence gap per publisher and group; the hub then asks the affected sessions
to back-fill from the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from channels.layers import get_channel_layer

from dashboard import background, events, stats
from dashboard.timeutil import now_us

log = logging.getLogger(__name__)

GROUP_REFRESH_S = 3600  # the in-memory and core Redis layers forget members after group_expiry (1 day)
DEFAULT_MAX_RATE = 20.0  # frames per second per socket under load
MAX_BUFFER_SAMPLES = 50_000  # per socket; beyond this the oldest are dropped and back-filled later


@dataclass(slots=True)
class Fragment:
    """One metric's part of one batch, JSON-encoded once for every socket."""

    key: str
    first_ts: int
    last_ts: int
    count: int
    json: str
    ts: list[int]
    values: list[float]


def encode_fragment(key: str, ts: list[int], values: list[float]) -> Fragment:
    """Return the encoded fragment of one metric's samples."""
    text = json.dumps({"k": key, "t": ts, "v": values}, separators=(",", ":"))
    return Fragment(key, ts[0], ts[-1], len(ts), text, ts, values)


def data_frame(fragments: list[str], replay: bool = False) -> str:
    """Return a data frame made of already-encoded fragments."""
    head = '{"type":"data","replay":true,"batches":[' if replay else '{"type":"data","batches":['
    return head + ",".join(fragments) + "]}"


class Session:
    """The fan-out side of one live connection: its subscriptions, cursors and coalescing buffer.

    A frame goes out at once when the connection is idle, and under load at
    most `max_rate` times a second, carrying everything since the last frame.
    """

    def __init__(self, send: Callable[[str], Awaitable[None]], max_rate: float = DEFAULT_MAX_RATE) -> None:
        self._send = send
        self.max_rate = max_rate
        self.cursors: dict[str, int] = {}  # metric key -> newest ts delivered or promised
        self.sources: dict[int, set[str]] = {}  # source id -> subscribed keys of it
        self._buffer: list[Fragment] = []
        self._buffered = 0
        self._held: set[str] = set()  # keys being back-filled: live fragments wait
        self._last_send = 0.0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._sending = False
        self.dropped = 0
        self.on_gap: Callable[[set[str]], None] | None = None
        self.closed = False

    # --- Subscriptions --------------------------------------------------
    def add(self, source_id: int, key: str, cursor: int) -> None:
        self.sources.setdefault(source_id, set()).add(key)
        self.cursors[key] = max(cursor, self.cursors.get(key, 0))

    def remove(self, key: str) -> int | None:
        """Forget a key; return its source id when the session no longer wants any key of that source."""
        self.cursors.pop(key, None)
        for source_id, keys in self.sources.items():
            if key in keys:
                keys.discard(key)
                if not keys:
                    del self.sources[source_id]
                    return source_id
                return None
        return None

    def hold(self, keys: set[str]) -> None:
        """Keep live fragments of these keys buffered while their history is being sent."""
        self._held |= keys

    def release(self, keys: set[str]) -> None:
        """Let held keys flow again, dropping buffered samples already covered by the history sent."""
        self._held -= keys
        self._buffer = [self._trim(f) for f in self._buffer]
        self._buffer = [f for f in self._buffer if f is not None]
        self._buffered = sum(f.count for f in self._buffer)
        self._schedule()

    def _trim(self, fragment: Fragment) -> Fragment | None:
        cursor = self.cursors.get(fragment.key)
        if cursor is None:
            return None
        if fragment.first_ts > cursor:
            return fragment
        keep = [i for i, t in enumerate(fragment.ts) if t > cursor]
        if not keep:
            return None
        return encode_fragment(fragment.key, [fragment.ts[i] for i in keep], [fragment.values[i] for i in keep])

    # --- Delivery ---------------------------------------------------------
    def offer(self, fragment: Fragment) -> None:
        """Queue a live fragment for this connection (called by the hub, never blocks)."""
        if self.closed or fragment.key not in self.cursors:
            return
        if fragment.key not in self._held:
            cursor = self.cursors[fragment.key]
            if fragment.last_ts <= cursor:
                return  # already delivered by a back-fill
            if fragment.first_ts <= cursor:
                fragment = self._trim(fragment)
                if fragment is None:
                    return
        self._buffer.append(fragment)
        self._buffered += fragment.count
        if self._buffered > MAX_BUFFER_SAMPLES:
            self._shed()
        self._schedule()

    def _shed(self) -> None:
        """Drop the oldest half of the buffer, count it, and ask for a back-fill of those keys."""
        cut = len(self._buffer) // 2 or 1
        shed, self._buffer = self._buffer[:cut], self._buffer[cut:]
        count = sum(f.count for f in shed)
        self._buffered -= count
        self.dropped += count
        stats.SAMPLES_DROPPED.inc(count)
        if self.on_gap is not None:
            self.on_gap({f.key for f in shed})

    def _schedule(self) -> None:
        if self._flush_handle is not None or self._sending or self.closed:
            return
        if not any(f.key not in self._held for f in self._buffer):
            return
        loop = asyncio.get_running_loop()
        wait = self._last_send + 1.0 / self.max_rate - time.monotonic()
        # call_soon even when idle so every fragment of the current batch joins one frame.
        self._flush_handle = loop.call_later(max(wait, 0.0), self._start_flush)

    def _start_flush(self) -> None:
        self._flush_handle = None
        asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        """Send everything buffered (except held keys) as one frame."""
        if self._sending or self.closed:
            return
        ready = [f for f in self._buffer if f.key not in self._held]
        if not ready:
            return
        self._buffer = [f for f in self._buffer if f.key in self._held]
        self._buffered = sum(f.count for f in self._buffer)
        self._sending = True
        try:
            for fragment in ready:
                if fragment.last_ts > self.cursors.get(fragment.key, 0):
                    self.cursors[fragment.key] = fragment.last_ts
            await self._send(data_frame([f.json for f in ready]))
            now = now_us()
            stats.FRAMES_SENT.inc()
            stats.SAMPLES_SENT.inc(sum(f.count for f in ready))
            stats.LATENCY_SECONDS.observe(max(0, now - ready[-1].last_ts) / 1e6)
        except Exception:
            log.debug("send failed; the connection is closing", exc_info=True)
            self.closed = True
        finally:
            self._last_send = time.monotonic()
            self._sending = False
        self._schedule()

    def send_now(self, frame: str) -> None:
        """Send a control frame (alert, lag notice) without waiting for the data cadence."""
        if not self.closed:
            asyncio.ensure_future(self._send_quietly(frame))

    async def _send_quietly(self, frame: str) -> None:
        try:
            await self._send(frame)
        except Exception:
            self.closed = True

    def close(self) -> None:
        self.closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._buffer.clear()


class Hub:
    """The process's single reader of the channel layer."""

    _instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()

    @classmethod
    def get(cls) -> Hub:
        """Return the hub of the running event loop."""
        loop = asyncio.get_running_loop()
        hub = cls._instances.get(loop)
        if hub is None:
            hub = cls._instances[loop] = cls()
            background.ensure_started()
        return hub

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.channel: str | None = None
        self.groups: dict[str, set[Session]] = {}
        self.sessions: set[Session] = set()
        self._last_seq: dict[tuple[str, str], int] = {}
        self._tasks: list[asyncio.Task] = []
        self._start_lock = asyncio.Lock()

    async def _ensure_started(self) -> None:
        if self.channel is not None:
            return
        async with self._start_lock:
            if self.channel is None:
                self.channel = await self.layer.new_channel("hub.")
                await self.layer.group_add(events.ALERTS_GROUP, self.channel)
                loop = asyncio.get_running_loop()
                self._tasks = [
                    loop.create_task(self._receive_loop(), name="pulseboard-hub"),
                    loop.create_task(self._refresh_loop(), name="pulseboard-hub-refresh"),
                ]

    async def register(self, session: Session) -> None:
        """Start delivering process-wide events (alerts) to a new connection."""
        await self._ensure_started()
        self.sessions.add(session)

    async def unregister(self, session: Session) -> None:
        """Forget a closed connection and leave the groups only it wanted."""
        self.sessions.discard(session)
        session.close()
        for source_id in list(session.sources):
            await self.leave(session, source_id)

    async def join(self, session: Session, source_id: int) -> None:
        """Make sure this process receives the source's batches and route them to the session."""
        await self._ensure_started()
        group = events.source_group(source_id)
        members = self.groups.setdefault(group, set())
        first = not members
        members.add(session)
        if first:
            await self.layer.group_add(group, self.channel)

    async def leave(self, session: Session, source_id: int) -> None:
        """Stop routing the source to the session; leave the group when no local session wants it."""
        group = events.source_group(source_id)
        members = self.groups.get(group)
        if not members:
            return
        members.discard(session)
        if not members:
            del self.groups[group]
            try:
                await self.layer.group_discard(group, self.channel)
            except Exception:
                log.warning("group_discard(%s) failed; the group will be left on the next refresh", group)

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("channel layer receive failed; retrying in 1 s")
                await asyncio.sleep(1)
                continue
            try:
                self.dispatch(message)
            except Exception:
                log.exception("bad message on the channel layer: %.200r", message)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(GROUP_REFRESH_S)
            for group in [events.ALERTS_GROUP, *self.groups]:
                try:
                    await self.layer.group_add(group, self.channel)
                except Exception:
                    log.warning("refreshing membership of %s failed", group)

    def dispatch(self, message: dict) -> None:
        """Route one channel-layer message to the local sessions that want it."""
        event = events.parse(message)
        if isinstance(event, events.SampleBatch):
            self._route_samples(event)
        elif isinstance(event, events.AlertState):
            body = event.as_message()
            body["type"] = "alert"
            frame = json.dumps(body, separators=(",", ":"))
            for session in self.sessions:
                session.send_now(frame)

    def _route_samples(self, event: events.SampleBatch) -> None:
        group = events.source_group(event.source)
        members = self.groups.get(group)
        if event.publisher:
            seq_key = (event.publisher, group)
            last = self._last_seq.get(seq_key)
            self._last_seq[seq_key] = event.seq
            if last is not None and event.seq > last + 1 and members:
                stats.GAPS_DETECTED.inc()
                log.warning("sequence gap on %s from %s: %d -> %d; back-filling", group, event.publisher, last, event.seq)
                for session in members:
                    if session.on_gap is not None:
                        session.on_gap(set(session.sources.get(event.source, ())))
        if not members:
            return
        fragments: dict[str, Fragment] = {}
        for session in members:
            for key in session.sources.get(event.source, ()):
                series = event.series.get(key)
                if series is None:
                    continue
                fragment = fragments.get(key)
                if fragment is None:
                    fragment = fragments[key] = encode_fragment(key, series[0], series[1])
                session.offer(fragment)
