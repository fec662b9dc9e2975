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
import concurrent.futures
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii

from channels.layers import get_channel_layer
from django.conf import settings

from dashboard import background, events, keyindex, loops, reconcile, stats
from dashboard.fastpaths import gcpolicy, writethrough
from dashboard.logthrottle import FailureLog
from dashboard.timeutil import US, now_us

log = logging.getLogger(__name__)

HEARTBEAT_S = 25  # default of settings LIVE_HEARTBEAT_S: proxies drop idle sockets at 30-60 s; one loop beats for all
RECONCILE_S = 5.0  # default of settings LIVE_RECONCILE_S: how often a hub checks what it delivered against the database
LEDGER_S = 60.0  # sample time a hub remembers per metric to check against the database and to drop duplicates
STALE_INTERVALS = 3  # a metric whose source is silent this many expected intervals is stale (as Source.is_stale)
INTERVALS_REFRESH_S = 30.0  # how often a hub re-reads its metrics' expected intervals (operators change them)
GROUP_REFRESH_S = 3600  # the in-memory and core Redis layers forget members after group_expiry (1 day)
DEFAULT_MAX_RATE = 20.0  # frames per second per socket under load
MAX_BUFFER_SAMPLES = 50_000  # per socket; beyond this the oldest are dropped and back-filled later
MAX_FRAME_SAMPLES = 2_500  # per data frame (~60 KB of JSON), so a full ack window stays a few MB
# Data frames a WebSocket client may leave unacknowledged; then its data waits here. Clients ack
# every ack_window/2 frames: with 8, acks from 1,000 viewers were a fifth of the server's time, and
# arriving together they stalled the loop for 10-20 ms (bench/README.md, Fan-out). 32 x 2,500
# samples in flight is the same bound as 8 x 10,000 was.
ACK_WINDOW_FRAMES = 32
STALL_S = 30.0  # default of settings LIVE_STALL_S: a connection whose window stays full this long makes no progress: close it with 4008
MAX_SHEDS = 3  # buffer overflows within SHED_WINDOW_S before a connection counts as hopelessly slow
SHED_WINDOW_S = 60.0
WATCHDOG_S = 1.0
PASS_SLICE_S = 0.002  # a flusher pass gives the event loop a turn this often (a pass over 1,000 sockets is ~20 ms)  # how often the hub looks for stalled connections
NO_KEYS: frozenset[str] = frozenset()  # shared by idle sessions: an empty set() is 216 B, a used one keeps its table


@dataclass(slots=True)
class Fragment:
    """One metric's part of one batch, JSON-encoded once for every socket.

    `frames` is shared by every fragment decoded from the same hub message:
    sessions that flush exactly those fragments reuse one frame string.
    """

    key: str
    first_ts: int
    last_ts: int
    count: int
    json: str
    ts: list[int]
    values: list[float]
    frames: dict[frozenset[str], str] | None = None


def encode_fragment(
    key: str,
    ts: list[int],
    values: list[float],
    frames: dict[frozenset[str], str] | None = None,
    late: bool = False,
) -> Fragment:
    """Return the encoded fragment of one metric's samples.

    Built by hand, not json.dumps of a dict: the same text for the finite
    floats and integers samples hold, at a third of the cost (a 1,000-key
    replay encodes 1,000 fragments on the event loop). `late` marks samples
    that committed after a newer sample of their key went out live
    (docs/protocol.md: the client inserts them by `t`).
    """
    text = (
        '{"k":'
        + encode_basestring_ascii(key)
        + (',"late":true,"t":[' if late else ',"t":[')
        + ",".join(map(str, ts))
        + '],"v":['
        + ",".join(map(repr, values))
        + "]}"
    )
    return Fragment(key, ts[0], ts[-1], len(ts), text, ts, values, frames)


def data_frame(fragments: list[str], replay: bool = False) -> str:
    """Return a data frame made of already-encoded fragments."""
    head = '{"type":"data","replay":true,"batches":[' if replay else '{"type":"data","batches":['
    return head + ",".join(fragments) + "]}"


def shared_frame(fragments: list[Fragment], cache: dict | None = None) -> str:
    """Return the live frame for these fragments, built once for every session that sends the same ones.

    Fragments all from one hub message share that message's frames (in any
    order: sessions may buffer them differently). Fragments coalesced from
    several messages are looked up in `cache`, the flusher's frames of its
    current pass: sessions due in the same slot usually hold the same ones.
    """
    frames = fragments[0].frames
    if frames is not None and all(f.frames is frames for f in fragments):
        key = frozenset(f.key for f in fragments)
        frame = frames.get(key)
        if frame is None:
            frame = frames[key] = data_frame([f.json for f in fragments])
            stats.FRAMES_ENCODED.inc()
        return frame
    if cache is not None:
        # Keyed by identity; the entry keeps its fragments alive, so no id is reused while it is cached.
        ident = tuple(map(id, fragments))
        hit = cache.get(ident)
        if hit is not None:
            return hit[1]
        frame = data_frame([f.json for f in fragments])
        cache[ident] = (tuple(fragments), frame)
        stats.FRAMES_ENCODED.inc()
        return frame
    stats.FRAMES_ENCODED.inc()
    return data_frame([f.json for f in fragments])


class Session:
    """The fan-out side of one live connection: its subscriptions, cursors, coalescing buffer and ack window.

    A frame goes out at once when the connection is idle, and under load at
    most `max_rate` times a second, carrying everything since the last frame.
    With a `window` (WebSocket), at most that many data frames may be
    unacknowledged by the client; further data waits here, coalesced, so a
    slow reader costs at most `window` frames in the server's transport buffer
    plus MAX_BUFFER_SAMPLES here. Daphne's send never blocks, so without
    acknowledgements nothing would stop its transport buffer from growing.

    There is one per connection, so an idle one must stay small
    (bench/connmem.py): slots, and nothing allocated before it is needed.
    """

    __slots__ = (
        "_send",
        "max_rate",
        "window",
        "on_stuck",
        "cursors",
        "delivered",
        "sources",
        "_buffer",
        "_buffered",
        "_held",
        "_last_slot",
        "_due_at",
        "_sending",
        "_queued",
        "frames_sent",
        "frames_acked",
        "_full_since",
        "_window_open",
        "_sheds",
        "dropped",
        "on_gap",
        "closed",
        "alert_sources",
        "send_wire",
        "seam",
        "__weakref__",
    )

    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        max_rate: float = DEFAULT_MAX_RATE,
        window: int | None = ACK_WINDOW_FRAMES,
        on_stuck: Callable[[str], None] | None = None,
    ) -> None:
        self._send = send
        # Where the server allows it (Daphne: dashboard/fastpaths/writethrough.py), writes a data
        # frame's wire bytes, framed once per pass for every socket; returns False
        # when it cannot, and the frame goes through `send`.
        self.send_wire: Callable[[bytes], bool] | None = None
        self.max_rate = max_rate
        self.window = window
        self.on_stuck = on_stuck
        self.cursors: dict[str, int] = {}  # metric key -> newest ts delivered or promised
        self.delivered: dict[str, int] = {}  # metric key -> newest ts handed to the transport
        # source id -> subscribed keys of it; a tuple (120 B for 10 keys, a set 730 B): the hub only iterates it.
        self.sources: dict[int, tuple[str, ...]] = {}
        self._buffer: list[Fragment] = []
        self._buffered = 0
        self._held: frozenset[str] | set[str] = NO_KEYS  # keys being back-filled: live fragments wait
        self._last_slot = 0.0  # when (monotonic s) the flusher pass that sent the last data frame began
        self._due_at: float | None = None  # when a flusher timer will make this session due
        self._sending = False
        self._queued = False  # waiting in the loop's Flusher
        self.frames_sent = 0  # data frames handed to the transport
        self.frames_acked = 0  # data frames the client confirmed
        self._full_since: float | None = None  # when the ack window last filled up
        # Made only when a replay waits for room: an idle connection should cost little (deques are ~600 B).
        self._window_open: asyncio.Event | None = None
        self._sheds: list[float] | None = None  # when the buffer last overflowed, at most MAX_SHEDS
        self.dropped = 0
        self.on_gap: Callable[[set[str]], None] | None = None
        self.closed = False
        # Ids of the sources whose alerts this viewer may see; None: all (staff).
        self.alert_sources: frozenset[int] | None = None
        # key -> timestamps a replay of this session already sent but the hub has not delivered yet:
        # when their live copy comes, it is dropped (no duplicate at the seam). Usually None.
        self.seam: dict[str, set[int]] | None = None

    # --- Subscriptions --------------------------------------------------
    def add(self, source_id: int, key: str, cursor: int) -> None:
        keys = self.sources.get(source_id, ())
        if key not in keys:
            self.sources[source_id] = (*keys, key)
        self.cursors[key] = max(cursor, self.cursors.get(key, 0))

    def add_keys(self, source_id: int, keys: list[str], cursors: list[int]) -> None:
        """Subscribe to several keys of one source at once (add() per key rebuilds the source's tuple each time)."""
        held = self.sources.get(source_id, ())
        known = set(held)
        fresh = [key for key in keys if key not in known]
        if fresh:
            self.sources[source_id] = (*held, *fresh)
        own = self.cursors
        for key, cursor in zip(keys, cursors, strict=True):
            own[key] = max(cursor, own.get(key, 0))

    def remove_keys(self, source_id: int, keys: set[str]) -> bool:
        """Forget several keys of one source; return whether the session no longer wants any key of it."""
        for key in keys:
            self.cursors.pop(key, None)
            self.delivered.pop(key, None)
        rest = tuple(key for key in self.sources.get(source_id, ()) if key not in keys)
        if rest:
            self.sources[source_id] = rest
            return False
        self.sources.pop(source_id, None)
        return True

    def remove(self, key: str) -> int | None:
        """Forget a key; return its source id when the session no longer wants any key of that source."""
        self.cursors.pop(key, None)
        self.delivered.pop(key, None)
        for source_id, keys in self.sources.items():
            if key in keys:
                rest = tuple(k for k in keys if k != key)
                if not rest:
                    del self.sources[source_id]
                    return source_id
                self.sources[source_id] = rest
                return None
        return None

    def hold(self, keys: set[str]) -> None:
        """Keep live fragments of these keys buffered while their history is being sent."""
        self._held = self._held | keys

    def release(
        self,
        keys: set[str],
        replayed: dict[str, set[int]] | None = None,
        seam: dict[str, set[int]] | None = None,
    ) -> None:
        """Let held keys flow again, dropping buffered samples already covered by the history sent.

        With `replayed` (the timestamps the replay sent, per key), exactly
        those are dropped: a sample that committed after the replay's query
        but is older than the newest one replayed (out-of-order ingest) still
        goes out. Without it, everything up to the key's cursor is dropped.
        `seam` holds replayed timestamps whose live copy may still come.
        """
        self._held = self._held - keys or NO_KEYS  # a new set: one emptied in place keeps its table
        if replayed is None:
            buffer = [self._trim(f) if f.key in keys else f for f in self._buffer]
        else:
            buffer = [self._drop_ts(f, replayed[f.key]) if f.key in replayed else f for f in self._buffer]
        self._buffer = [f for f in buffer if f is not None]
        self._buffered = sum(f.count for f in self._buffer)
        if seam:
            self.seam = {**(self.seam or {}), **{k: ts for k, ts in seam.items() if ts}} or None
        self._schedule()

    @staticmethod
    def _drop_ts(fragment: Fragment, drop: set[int]) -> Fragment | None:
        """Return the fragment without the timestamps in `drop` (None if nothing is left)."""
        if not drop:
            return fragment
        keep = [i for i, t in enumerate(fragment.ts) if t not in drop]
        if len(keep) == fragment.count:
            return fragment
        if not keep:
            return None
        return encode_fragment(fragment.key, [fragment.ts[i] for i in keep], [fragment.values[i] for i in keep])

    def _unseam(self, fragment: Fragment) -> Fragment | None:
        """Drop from a live fragment what this session's replay already sent, and forget those seam entries."""
        seam = self.seam
        pending = seam[fragment.key]
        out = self._drop_ts(fragment, pending)
        pending.difference_update(fragment.ts)
        if not pending:
            del seam[fragment.key]
            if not seam:
                self.seam = None
        return out

    def forget_seam_below(self, floor: int) -> None:
        """Forget seam entries at or below the hub's ledger floor (their live copies are no longer tracked)."""
        seam = self.seam
        if seam is None:
            return
        for key in list(seam):
            seam[key] = {t for t in seam[key] if t > floor}
            if not seam[key]:
                del seam[key]
        if not seam:
            self.seam = None

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

    # --- Flow control ------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Data frames sent but not yet acknowledged."""
        return self.frames_sent - self.frames_acked

    def window_full(self) -> bool:
        return self.window is not None and self.in_flight >= self.window

    def ack(self, frame: int) -> bool:
        """Record that the client has received data frames 1..frame; return whether the window moved."""
        if frame > self.frames_sent:
            raise ValueError(f"'frame' {frame} was not sent yet: {self.frames_sent} data frames so far")
        if frame <= self.frames_acked:
            return False
        self.frames_acked = frame
        if not self.window_full():
            self._full_since = None
            if self._window_open is not None:
                self._window_open.set()
            self._schedule()
        return True

    def stalled_for(self, now: float) -> float:
        """Return how long the ack window has been full (0 when it is not)."""
        return 0.0 if self._full_since is None else now - self._full_since

    def _count_sent(self) -> None:
        self.frames_sent += 1
        if self.window_full():
            stats.WINDOW_FULL.inc()
            self._full_since = time.monotonic()

    async def send_data(self, frame: str, newest: dict[str, int]) -> None:
        """Send a replay frame once the ack window has room; `newest` is its last ts per key."""
        while self.window_full() and not self.closed:
            if self._window_open is None:
                self._window_open = asyncio.Event()
            self._window_open.clear()
            await self._window_open.wait()
        if self.closed:
            return
        for key, ts in newest.items():
            if ts > self.delivered.get(key, 0):
                self.delivered[key] = ts
        self._count_sent()
        await self._send(frame)

    # --- Delivery ---------------------------------------------------------
    def offer(self, fragment: Fragment) -> None:
        """Queue a live fragment for this connection (called by the hub, never blocks)."""
        self.offer_all((fragment,))

    def offer_all(self, fragments: list[Fragment] | tuple[Fragment, ...]) -> None:
        """Queue the fragments of one batch this connection subscribes to; skip the others.

        The hub calls this once per session per batch (100,000 times a second
        with 1,000 viewers of a source sending 100 batches a second), so it
        does the least it can: a session already waiting for its next slot
        only appends.
        """
        if self.closed:
            return
        cursors, held, seam = self.cursors, self._held, self.seam
        added = False
        for fragment in fragments:
            if fragment.key not in cursors:
                continue
            # No trimming at the cursor: a sample older than the newest one delivered may still be new
            # (it committed late: out-of-order ingest). The hub delivers each sample once; only what this
            # session's own replay sent can come twice, and the seam says exactly which.
            if seam is not None and fragment.key not in held and fragment.key in seam:
                fragment = self._unseam(fragment)
                if fragment is None:
                    continue
            self._buffer.append(fragment)
            self._buffered += fragment.count
            added = True
        if not added:
            return
        if self._buffered > MAX_BUFFER_SAMPLES:
            self._shed()
        if self._due_at is None and not self._queued:
            self._schedule()

    def _shed(self) -> None:
        """Drop the oldest half of the buffer, count it, and ask for a back-fill of those keys."""
        cut = len(self._buffer) // 2 or 1
        shed, self._buffer = self._buffer[:cut], self._buffer[cut:]
        count = sum(f.count for f in shed)
        self._buffered -= count
        self.dropped += count
        stats.SAMPLES_DROPPED.inc(count)
        now = time.monotonic()
        self._sheds = [*(self._sheds or ())[-(MAX_SHEDS - 1) :], now] if MAX_SHEDS > 1 else [now]
        if len(self._sheds) == MAX_SHEDS and now - self._sheds[0] <= SHED_WINDOW_S:
            self.stuck(f"shed its buffer {MAX_SHEDS} times within {SHED_WINDOW_S:.0f} s")
            return
        if self.on_gap is not None:
            self.on_gap({f.key for f in shed})

    def stuck(self, reason: str) -> None:
        """Give up on a connection that cannot keep up: stop sending and let the transport close it (4008)."""
        if self.closed:
            return
        stats.SLOW_CLOSES.inc()
        log.info("closing a live connection that %s", reason)
        on_stuck = self.on_stuck
        self.close()
        if on_stuck is not None:
            on_stuck(reason)

    def _schedule(self) -> None:
        if self._due_at is not None or self._queued or self._sending or self.closed or self.window_full():
            return
        if not self._buffer or (self._held and all(f.key in self._held for f in self._buffer)):
            return
        # At most one data frame per 1/max_rate, counted from the start of the
        # flusher pass that sent the last one: every session of a pass becomes
        # due again at the same instant with the same buffered fragments, so
        # they share one frame, and a session late in a long pass is not held
        # back longer than one early in it.
        wait = self._last_slot + 1.0 / self.max_rate - time.monotonic()
        if wait <= 0:
            # Due now: the flusher runs on the next loop iteration, after the
            # hub has offered every fragment of the current batch, so they all
            # join one frame. No timer: 1,000 sessions would make 1,000.
            self._start_flush()
            return
        self._due_at = Flusher.get().due_in(wait, self._last_slot + 1.0 / self.max_rate, self)

    def _start_flush(self) -> None:
        self._due_at = None
        self._queued = True
        Flusher.get().add(self)

    async def flush(self, flusher: Flusher | None = None) -> None:
        """Send what is buffered (except held keys) as one frame of at most MAX_FRAME_SAMPLES samples."""
        pending = self.flush_now(flusher or Flusher.get())
        if pending is not None:
            await pending

    def flush_now(self, flusher: Flusher) -> Coroutine[None, None, None] | None:
        """Flush without suspending where the frame can be written straight to the socket.

        Returns the coroutine to await when the frame must go through the
        ASGI send instead (no wire sender, or the connection has something
        queued). The flusher calls this for every due session of a pass:
        creating and awaiting a coroutine per session was a measurable part
        of a pass over 1,000 sockets.
        """
        if self._sending or self.closed or self.window_full():
            return None
        held = self._held
        if not held and self._buffered <= MAX_FRAME_SAMPLES:
            ready, samples = self._buffer, self._buffered  # the common case: all of it
            if not ready:
                return None
            self._buffer = []
        else:
            # A prefix of what is not held: once a fragment does not fit, nothing
            # after it may go ahead of it (a later fragment of the same key would
            # reach the client first, and the earlier one would look old).
            ready, rest, samples, full = [], [], 0, False
            for fragment in self._buffer:
                if fragment.key in held or full:
                    rest.append(fragment)
                elif ready and samples + fragment.count > MAX_FRAME_SAMPLES:
                    full = True
                    rest.append(fragment)
                else:
                    ready.append(fragment)
                    samples += fragment.count
            if not ready:
                return None
            self._buffer = rest
        self._buffered -= samples
        cursors, delivered = self.cursors, self.delivered
        for fragment in ready:
            last = fragment.last_ts
            if last > cursors.get(fragment.key, 0):
                cursors[fragment.key] = last
            if last > delivered.get(fragment.key, 0):
                delivered[fragment.key] = last
        frame = shared_frame(ready, flusher.frames)
        self._count_sent()
        send_wire = self.send_wire
        if send_wire is not None:
            try:
                sent = send_wire(flusher.wire(frame))
            except Exception:
                log.debug("send failed; the connection is closing", exc_info=True)
                self.closed = True
                return None
            if sent:
                flusher.count(frame, samples, ready[-1].last_ts)
                self._last_slot = flusher.pass_started if flusher._running else time.monotonic()
                self._schedule()
                return None
        self._sending = True
        return self._send_frame(frame, samples, ready[-1].last_ts, flusher)

    async def _send_frame(self, frame: str, samples: int, newest_ts: int, flusher: Flusher) -> None:
        try:
            await self._send(frame)
            flusher.count(frame, samples, newest_ts)
        except Exception:
            log.debug("send failed; the connection is closing", exc_info=True)
            self.closed = True
        finally:
            self._last_slot = flusher.pass_started if flusher._running else time.monotonic()
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
        if self._window_open is not None:
            self._window_open.set()  # wake replays waiting for room so they end
        self._due_at = None  # a flusher timer that still lists this session skips it: it is closed
        self._buffer.clear()
        self._buffered = 0


class Flusher:
    """Flush the sessions that came due in one loop iteration from one task, not a task per session.

    A batch reaching 1,000 idle viewers makes 1,000 sessions due at once;
    creating a task for each cost more than the sends themselves (py-spy).
    Daphne's send does not suspend, so one task walks them all quickly.
    """

    _last: tuple[asyncio.AbstractEventLoop | None, Flusher | None] = (None, None)

    @classmethod
    def get(cls) -> Flusher:
        loop = asyncio.get_running_loop()
        last_loop, flusher = cls._last
        if last_loop is loop:  # called once per due session: skip the weak-key lookup (py-spy: 5 %)
            return flusher
        flusher = loops.service(Flusher, cls)
        cls._last = (loop, flusher)
        return flusher

    def __init__(self) -> None:
        self._due: list[Session] = []
        self._running = False
        self.frames: dict[tuple[int, ...], tuple[tuple[Fragment, ...], str]] = {}  # this pass's frames
        self._wire: dict[int, tuple[str, bytes]] = {}  # id(frame) -> (frame, its WebSocket frame bytes)
        self._frames_sent = self._samples_sent = 0
        self._observed: str | None = None
        self.pass_started = 0.0  # monotonic s
        self._timers: dict[float, list[Session]] = {}  # due time -> sessions waiting for their next slot

    def due_in(self, wait: float, key: float, session: Session) -> float:
        """Make the session due in `wait` seconds, on one timer for every session with the same `key`.

        The sessions of one pass share their last-pass start and rate, and so
        their next due time (`key`): one timer for all of them, not 1,000.
        """
        waiting = self._timers.get(key)
        if waiting is None:
            waiting = self._timers[key] = []
            asyncio.get_running_loop().call_later(wait, self._fire, key)
        waiting.append(session)
        return key

    def _fire(self, key: float) -> None:
        for session in self._timers.pop(key, ()):
            if session._due_at == key and not session.closed:
                session._start_flush()

    def count(self, frame: str, samples: int, newest_ts: int) -> None:
        """Count a data frame sent; the Prometheus counters are updated once per pass, not per socket.

        Latency is observed once per distinct frame: the sockets sharing a
        frame got it within the same pass.
        """
        self._frames_sent += 1
        self._samples_sent += samples
        if frame is not self._observed:
            self._observed = frame
            stats.LATENCY_SECONDS.observe(max(0, now_us() - newest_ts) / 1e6)
        if not self._running:
            self._publish_counts()

    def _publish_counts(self) -> None:
        if self._frames_sent:
            stats.FRAMES_SENT.inc(self._frames_sent)
            stats.SAMPLES_SENT.inc(self._samples_sent)
            self._frames_sent = self._samples_sent = 0
        self._observed = None

    def wire(self, frame: str) -> bytes:
        """Return the frame as WebSocket wire bytes, framed once per pass however many sockets send it."""
        hit = self._wire.get(id(frame))
        if hit is not None and hit[0] is frame:
            return hit[1]
        data = writethrough.websocket_text_frame(frame)
        self._wire[id(frame)] = (frame, data)  # holding the frame keeps its id unique in this pass
        return data

    def add(self, session: Session) -> None:
        self._due.append(session)
        if not self._running:
            self._running = True
            asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while self._due:
                due, self._due = self._due, []
                self.pass_started = time.monotonic()
                self.frames = {}
                self._wire = {}
                self._publish_counts()
                yielded = time.perf_counter()
                for index, session in enumerate(due):
                    session._queued = False
                    try:
                        pending = session.flush_now(self)
                        if pending is not None:
                            await pending
                    except Exception:
                        log.exception("flushing a live connection failed")
                    if index & 31 == 31 and time.perf_counter() - yielded > PASS_SLICE_S:
                        await asyncio.sleep(0)  # let ingest, acks and the hub run; the pass goes on after
                        yielded = time.perf_counter()
        finally:
            self._running = False
            self.frames = {}
            self._wire = {}
            self._publish_counts()


class KeyLedger:
    """What a hub delivered of one metric: its timestamps above the hub's floor, and when data last came."""

    __slots__ = (
        "key",
        "metric_id",
        "source_id",
        "buckets",
        "seeded",
        "interval_s",
        "last_data_us",
        "stale_since",
        "newest_live",
    )

    def __init__(self, key: str, metric_id: int, source_id: int) -> None:
        self.key = key
        self.metric_id = metric_id
        self.source_id = source_id
        # The ts above the hub's floor delivered (or stored before the hub followed it), per counted bucket
        # (reconcile.BUCKET_US): the check compares their sizes with the database's counts, and forgetting
        # the oldest drops whole buckets, with no pass over every timestamp.
        self.buckets: dict[int, set[int]] = {}
        self.seeded = False  # whether what was stored when the hub started following it is in `seen`
        self.interval_s = 10.0  # its source's expected_interval_s
        self.last_data_us = now_us()  # when its newest sample reached the hub (or was stored, before that)
        self.stale_since: int | None = None
        self.newest_live = 0  # the newest ts this hub routed live: an older one routed after it is late

    def has(self, t: int) -> bool:
        bucket = self.buckets.get(t // reconcile.BUCKET_US)
        return bucket is not None and t in bucket

    def add(self, t: int) -> None:
        bucket = self.buckets.get(t // reconcile.BUCKET_US)
        if bucket is None:
            bucket = self.buckets[t // reconcile.BUCKET_US] = set()
        bucket.add(t)

    def forget_below(self, floor: int) -> None:
        """Forget the buckets at or below the floor (a bucket boundary minus 1 µs)."""
        first = (floor + 1) // reconcile.BUCKET_US
        for bucket in [b for b in self.buckets if b < first]:
            del self.buckets[bucket]


def ledger_floor(now: int) -> int:
    """Return the floor for a clock reading: LEDGER_S back, rounded down to a bucket boundary, minus 1 µs."""
    return (now - int(LEDGER_S * US)) // reconcile.BUCKET_US * reconcile.BUCKET_US - 1


class Hub:
    """The process's single reader of the channel layer, and the check of what it delivered against the database."""

    @classmethod
    def get(cls) -> Hub:
        """Return the hub of the running event loop, starting the background jobs with the first."""
        return loops.service(Hub, cls._first)

    @classmethod
    def _first(cls) -> Hub:
        background.ensure_started()
        return cls()

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.channel: str | None = None
        self.local_publisher = ""  # publications of this loop, delivered by deliver_local, not by the layer
        self.groups: dict[str, set[Session]] = {}
        self.sessions: set[Session] = set()
        self._last_seq: dict[tuple[str, str], int] = {}
        self._tasks: list[asyncio.Task] = []
        self._start_lock = asyncio.Lock()
        live = settings.PULSEBOARD
        self.stall_s = float(live.get("LIVE_STALL_S", STALL_S))
        self.heartbeat_s = float(live.get("LIVE_HEARTBEAT_S", HEARTBEAT_S))
        self.reconcile_s = min(float(live.get("LIVE_RECONCILE_S", RECONCILE_S)), RECONCILE_S)
        # The layer is probed this often, and a probe not back within the same time makes it degraded:
        # connections hear of it within two heartbeats.
        self.probe_s = min(self.heartbeat_s / 2, 5.0)
        self.ledgers: dict[str, KeyLedger] = {}
        self.floor = 0  # µs: ledgers remember nothing at or below it (it trails the clock by LEDGER_S)
        self.degraded: dict[str, int] = {}  # reason ("layer", "database") -> since when (µs)
        self._reconcile_now: asyncio.Event | None = None
        self._db: concurrent.futures.ThreadPoolExecutor | None = None
        self._db_future: asyncio.Future | None = None
        self._probe_sent = self._probe_seen = 0
        self._probe_arrived: asyncio.Event | None = None
        self._recovered: list[KeyLedger] | None = None
        self._intervals_read = 0.0  # monotonic s
        self.receive_log = FailureLog(log, "channel layer receive")
        self.database_log = FailureLog(log, "live check against the database")

    async def _ensure_started(self) -> None:
        if self.channel is not None:
            return
        async with self._start_lock:
            if self.channel is None:
                self.channel = await self.layer.new_channel("hub.")
                self.local_publisher = events.local_publisher()
                events.set_local_hub(self)
                await self.layer.group_add(events.ALERTS_GROUP, self.channel)
                await self.layer.group_add(events.METRICS_GROUP, self.channel)
                self._reconcile_now = asyncio.Event()
                self._probe_arrived = asyncio.Event()
                loop = asyncio.get_running_loop()
                self._tasks = [
                    loop.create_task(self._receive_loop(), name="pulseboard-hub"),
                    loop.create_task(self._refresh_loop(), name="pulseboard-hub-refresh"),
                    loop.create_task(self._watchdog_loop(), name="pulseboard-hub-watchdog"),
                    loop.create_task(self._heartbeat_loop(), name="pulseboard-hub-heartbeat"),
                    loop.create_task(self._reconcile_loop(), name="pulseboard-hub-reconcile"),
                    loop.create_task(self._probe_loop(), name="pulseboard-hub-probe"),
                ]

    async def register(self, session: Session) -> None:
        """Start delivering process-wide events (alerts, degraded notices) to a new connection."""
        await self._ensure_started()
        self.sessions.add(session)
        for reason, since in self.degraded.items():
            session.send_now(degraded_frame(reason, "degraded", since))

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
            # Publications go unseen while the group is left: a later rejoin must not read that as a gap.
            for seq_key in [k for k in self._last_seq if k[1] == group]:
                del self._last_seq[seq_key]
            try:
                await self.layer.group_discard(group, self.channel)
            except Exception:
                log.warning("group_discard(%s) failed; the group will be left on the next refresh", group)

    # --- The ledger: what this hub delivered, checked against the database --------------------
    async def track(self, session: Session, metrics: dict[str, tuple[int, int]]) -> None:
        """Follow these metrics (key -> (metric id, source id)) in the ledger before a session replays them.

        A metric new to the hub is read once: what is stored above the floor
        counts as delivered (viewers get it from their own replays), so the
        checks back-fill only what is stored later and never reaches the hub.
        """
        await self._ensure_started()
        if not self.floor:
            self.floor = ledger_floor(now_us())
        new = []
        for key, (metric_id, source_id) in metrics.items():
            if key not in self.ledgers:
                # Made before the read: samples arriving meanwhile are recorded, then merged with the read.
                self.ledgers[key] = KeyLedger(key, metric_id, source_id)
                new.append(self.ledgers[key])
        if new:
            await self._seed(new, thread_sensitive=True)
        stale = [self.ledgers[k] for k in metrics if k in self.ledgers and self.ledgers[k].stale_since is not None]
        if stale:
            session.send_now(stale_frame([ledger.key for ledger in stale], "stale", stale[0].stale_since or 0))

    async def _seed(self, ledgers: list[KeyLedger], thread_sensitive: bool = False) -> None:
        from channels.db import database_sync_to_async

        floor = self.floor
        ids = [ledger.metric_id for ledger in ledgers]
        try:
            if thread_sensitive:  # on a subscription: the thread its replay uses next, so the read comes first
                facts = await database_sync_to_async(reconcile.metric_facts)(ids, floor)
            else:
                facts = await self._query(reconcile.metric_facts, ids, floor)
        except Exception as exc:
            self._database_failed(exc)  # the next check seeds them
            return
        for ledger in ledgers:
            interval_s, newest, recent = facts.get(ledger.metric_id, (10.0, 0, []))
            ledger.interval_s = interval_s
            for t in recent:
                if t > self.floor:
                    ledger.add(t)
            if newest and ledger.stale_since is None:
                ledger.last_data_us = min(ledger.last_data_us, newest)
            ledger.seeded = True

    def unseen(self, key: str, ts: list[int]) -> set[int]:
        """Return those of a replay's timestamps the hub may still deliver live (so the session drops them then)."""
        ledger = self.ledgers.get(key)
        if ledger is None:
            return set()
        floor = self.floor
        return {t for t in ts if t > floor and not ledger.has(t)}

    def _held_keys(self) -> set[str]:
        return {key for session in self.sessions for keys in session.sources.values() for key in keys}

    async def _query(self, fn, *args):
        """Run a reconcile query on the hub's own database thread, with a deadline."""
        if self._db is None:
            self._db = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pulseboard-hub-db")
        if self._db_future is not None and not self._db_future.done():
            raise TimeoutError("the previous query is still running")
        self._db_future = asyncio.get_running_loop().run_in_executor(self._db, reconcile.in_db_thread, fn, *args)
        return await asyncio.wait_for(asyncio.shield(self._db_future), max(self.reconcile_s, 1.0))

    def reconcile_soon(self) -> None:
        """Check against the database now (after a gap, a layer error or a reconnect) rather than at the next tick."""
        if self._reconcile_now is not None:
            self._reconcile_now.set()

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._reconcile_now.wait(), self.reconcile_s)
            except TimeoutError:
                pass
            self._reconcile_now.clear()
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._database_failed(exc)

    async def reconcile(self) -> int:
        """Deliver what is stored of the followed metrics and this hub never delivered; return how many samples.

        One grouped count for all followed metrics; only buckets whose stored
        count exceeds what the hub delivered are read back.
        """
        held = self._held_keys()
        for key in [k for k in self.ledgers if k not in held]:
            del self.ledgers[key]
        if not self.ledgers:
            return 0
        floor = ledger_floor(now_us())
        if floor > self.floor:
            self.floor = floor
            for ledger in self.ledgers.values():
                ledger.forget_below(floor)
            for session in self.sessions:
                if session.seam is not None:
                    session.forget_seam_below(floor)
        floor = self.floor
        unseeded = [ledger for ledger in self.ledgers.values() if not ledger.seeded]
        if unseeded:
            await self._seed(unseeded)
        ledgers = {ledger.metric_id: ledger for ledger in self.ledgers.values() if ledger.seeded}
        if time.monotonic() - self._intervals_read > INTERVALS_REFRESH_S:
            intervals = await self._query(reconcile.expected_intervals, list(ledgers))
            for metric_id, interval_s in intervals.items():
                ledgers[metric_id].interval_s = interval_s
            self._intervals_read = time.monotonic()
        counts = await self._query(reconcile.bucket_counts, list(ledgers), floor)
        short = []
        for (metric_id, bucket), count in counts.items():
            ledger = ledgers.get(metric_id)
            if ledger is not None and len(ledger.buckets.get(bucket, ())) < count:
                short.append((metric_id, bucket))
        filled = 0
        if short:
            rows = await self._query(reconcile.bucket_samples, short, floor)
            for metric_id, samples in rows.items():
                ledger = ledgers.get(metric_id)
                if ledger is None or self.ledgers.get(ledger.key) is not ledger:
                    continue  # nobody here wants it any more
                missing = [(t, v) for t, v in samples if t > self.floor and not ledger.has(t)]
                if not missing:
                    continue
                for t, _ in missing:
                    ledger.add(t)
                self._note_data(ledger)
                fragment = encode_fragment(ledger.key, [t for t, _ in missing], [v for _, v in missing])
                for session in self.groups.get(events.source_group(ledger.source_id), ()):
                    session.offer_all((fragment,))
                filled += len(missing)
            if filled:
                stats.SAMPLES_RECONCILED.inc(filled)
                log.info("back-filled %d stored samples this hub had not delivered live", filled)
        self._database_ok()
        return filled

    def _database_failed(self, exc: BaseException) -> None:
        self.database_log.failure(exc, level=logging.WARNING)
        self._set_degraded("database")

    def _database_ok(self) -> None:
        self.database_log.success()
        self._clear_degraded("database")

    # --- Degraded and stale notices ----------------------------------------------------------
    def _set_degraded(self, reason: str) -> None:
        if reason in self.degraded:
            return
        since = self.degraded[reason] = now_us()
        stats.DEGRADED.labels(reason).inc()
        log.warning("live delivery degraded (%s); telling %d connections", reason, len(self.sessions))
        frame = degraded_frame(reason, "degraded", since)
        for session in list(self.sessions):
            session.send_now(frame)

    def _clear_degraded(self, reason: str) -> None:
        since = self.degraded.pop(reason, None)
        if since is None:
            return
        log.warning("live delivery recovered (%s) after %.1f s", reason, (now_us() - since) / US)
        frame = degraded_frame(reason, "ok", since)
        for session in list(self.sessions):
            session.send_now(frame)
        self.reconcile_soon()  # back-fill now, not at the source's next publication

    def _note_data(self, ledger: KeyLedger) -> None:
        ledger.last_data_us = now_us()
        if ledger.stale_since is not None:
            ledger.stale_since = None
            if self._recovered is None:
                self._recovered = []
                asyncio.get_running_loop().call_soon(self._announce_recovered)
            self._recovered.append(ledger)

    def _announce_recovered(self) -> None:
        recovered, self._recovered = self._recovered or [], None
        self._announce(recovered, "ok", now_us())

    def check_stale(self, now: int | None = None) -> None:
        """Tell connections about metrics whose source missed STALE_INTERVALS expected intervals."""
        now = now_us() if now is None else now
        newly = []
        for ledger in self.ledgers.values():
            limit = int(STALE_INTERVALS * ledger.interval_s * US)
            if ledger.stale_since is None and ledger.seeded and now - ledger.last_data_us > limit:
                ledger.stale_since = ledger.last_data_us + limit
                newly.append(ledger)
        if newly:
            self._announce(newly, "stale", min(ledger.stale_since or now for ledger in newly))

    def _announce(self, ledgers: list[KeyLedger], state: str, since: int) -> None:
        by_source: dict[int, list[str]] = {}
        for ledger in ledgers:
            by_source.setdefault(ledger.source_id, []).append(ledger.key)
        per_session: dict[Session, list[str]] = {}
        for source_id, keys in by_source.items():
            for session in self.groups.get(events.source_group(source_id), ()):
                per_session.setdefault(session, []).extend(k for k in keys if k in session.cursors)
        for session, keys in per_session.items():
            if keys:
                session.send_now(stale_frame(keys, state, since))

    async def _probe_loop(self) -> None:
        """Send this hub a message through the layer every probe_s; one not back in time means the layer is degraded."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.probe_s)
            self._probe_sent += 1
            number = self._probe_sent
            try:
                await asyncio.wait_for(self.layer.send(self.channel, {"type": "hub.probe", "n": number}), self.probe_s)
                deadline = loop.time() + self.probe_s
                while self._probe_seen < number and loop.time() < deadline:
                    self._probe_arrived.clear()
                    try:
                        await asyncio.wait_for(self._probe_arrived.wait(), deadline - loop.time())
                    except TimeoutError:
                        break
            except asyncio.CancelledError:
                raise
            except Exception:
                pass  # a send that fails or hangs is what the probe is for
            if self._probe_seen >= number:
                self._clear_degraded("layer")
            else:
                self._set_degraded("layer")

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.receive_log.failure(exc)
                self._set_degraded("layer")
                await asyncio.sleep(1)
                continue
            if self.receive_log.failing:
                self.receive_log.success()
                self.reconcile_soon()
            if message.get("type") == "hub.probe":
                self._probe_seen = max(self._probe_seen, message.get("n", 0))
                if self._probe_arrived is not None:
                    self._probe_arrived.set()
                continue
            if message.get("publisher") == self.local_publisher:
                continue  # delivered by deliver_local when it was published
            try:
                self.dispatch(message)
            except Exception:
                log.exception("bad message on the channel layer: %.200r", message)

    def deliver_local(self, group: str, message: dict) -> None:
        """Dispatch a publication of this loop at once, without the round trip through the layer.

        Only groups this hub has joined are delivered, as the layer would.
        """
        if group in self.groups:
            self.dispatch(message)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(GROUP_REFRESH_S)
            for group in [events.ALERTS_GROUP, events.METRICS_GROUP, *self.groups]:
                try:
                    await self.layer.group_add(group, self.channel)
                except Exception:
                    log.warning("refreshing membership of %s failed", group)

    async def _heartbeat_loop(self) -> None:
        """Send every connection a heartbeat; one task per process rather than one per connection (memory)."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            frame = json.dumps({"type": "heartbeat", "time": now_us()}, separators=(",", ":"))
            for session in list(self.sessions):
                session.send_now(frame)

    async def _watchdog_loop(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_S)
            self.reap_stalled(time.monotonic())
            self.check_stale()
            gcpolicy.maybe_refreeze(len(self.sessions))

    def reap_stalled(self, now: float) -> None:
        """Close connections whose ack window has stayed full for LIVE_STALL_S (clients that stopped reading)."""
        for session in list(self.sessions):
            if session.stalled_for(now) > self.stall_s:
                session.stuck(f"acknowledged nothing for {self.stall_s:.0f} s")

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
                if session.alert_sources is None or event.source in session.alert_sources:
                    session.send_now(frame)
        elif isinstance(event, events.MetricCreated):
            keyindex.KeyIndex.get().take(event.row())  # live globs hear of it (dashboard/keyindex.py)

    def _route_samples(self, event: events.SampleBatch) -> None:
        group = events.source_group(event.source)
        members = self.groups.get(group)
        if event.publisher:
            seq_key = (event.publisher, group)
            last = self._last_seq.get(seq_key)
            self._last_seq[seq_key] = event.seq
            if last is not None and event.seq > last + 1 and members:
                stats.GAPS_DETECTED.inc()
                log.warning(
                    "sequence gap on %s from %s: %d -> %d; checking against the database",
                    group,
                    event.publisher,
                    last,
                    event.seq,
                )
                self.reconcile_soon()
        if not members:
            return
        frames: dict[frozenset[str], str] = {}  # frames built from this message, shared by sessions
        # Each metric's fragment is encoded once, for every session; a session
        # then takes the ones it subscribes to (offer_all). A sample the hub
        # already delivered (the check against the database back-filled it
        # before its live copy came) is dropped here, once for every session.
        fragments = []
        ledgers, floor = self.ledgers, self.floor
        for key, (ts, values) in event.series.items():
            ledger = ledgers.get(key)
            late = False
            if ledger is not None:
                has = ledger.has
                if any(t > floor and has(t) for t in ts):
                    keep = [i for i, t in enumerate(ts) if t <= floor or not has(t)]
                    if not keep:
                        continue
                    ts, values = [ts[i] for i in keep], [values[i] for i in keep]
                add = ledger.add
                for t in ts:
                    if t > floor:
                        add(t)
                self._note_data(ledger)
                # Commit order is not time order (several requests in flight): say so, so viewers insert it.
                late = ts[0] <= ledger.newest_live
                if ts[-1] > ledger.newest_live:
                    ledger.newest_live = ts[-1]
            fragments.append(encode_fragment(key, ts, values, frames, late))
        if not fragments:
            return
        for session in members:
            session.offer_all(fragments)


def degraded_frame(reason: str, state: str, since: int) -> str:
    """Return the connection-level notice that live delivery is degraded (or ok again) for a reason."""
    body = {"type": "degraded", "reason": reason, "state": state, "since": since, "time": now_us()}
    return json.dumps(body, separators=(",", ":"))


def stale_frame(keys: list[str], state: str, since: int) -> str:
    """Return the notice that these metrics' sources missed their expected interval (or sent again)."""
    return json.dumps({"type": "stale", "metrics": keys, "state": state, "since": since}, separators=(",", ":"))
