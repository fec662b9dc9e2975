"""The fan-out side of one live connection: its keys, cursors, buffer and ack window."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from dashboard import stats
from dashboard.live.delivery import FOLD_PIECES, SessionDelivery
from dashboard.live.frames import BatchPiece, Fold, Fragment, encode_fragment, unpack
from dashboard.live.heldkeys import HeldKeys
from dashboard.live.protocol import ACK_WINDOW_FRAMES

log = logging.getLogger(__name__)

DEFAULT_MAX_RATE = 20.0  # frames per second per socket under load
NO_KEYS: frozenset[str] = frozenset()  # shared by idle sessions: an empty set() is 216 B, a used one keeps its table


class Transport(Protocol):
    """How one live connection's frames reach its client: the WebSocket consumer or an SSE response.

    `wire`, where the server allows it (Daphne: dashboard/fastpaths/writethrough.py),
    writes a data frame's WebSocket wire bytes, framed once per flusher pass for
    every socket; it returns False when it cannot, and the frame goes through
    send_text. None: every frame goes through send_text.
    """

    wire: Callable[[bytes], bool] | None

    async def send_text(self, frame: str) -> None:
        """Send one text frame (a JSON object of protocol v1)."""

    async def close(self, code: int) -> None:
        """End the connection with a close code (4008: a reader too slow); a no-op where there is none."""


class Session(HeldKeys, SessionDelivery):
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
    Its keys are a KeySet shared with every session holding the same ones,
    and its cursors two arrays beside it (dashboard/live/heldkeys.py): 16 B a
    held key of its own.
    """

    __slots__ = (
        "transport",
        "max_rate",
        "window",
        "on_stuck",
        "keyset",
        "cursor_ts",
        "delivered_ts",
        "_buffer",
        "_buffered",
        "_held",
        "_last_slot",
        "due_at",
        "_sending",
        "queued",
        "frames_sent",
        "frames_acked",
        "_full_since",
        "_window_open",
        "_sheds",
        "dropped",
        "on_gap",
        "closed",
        "alert_sources",
        "seam",
        "_unfolded",
        "_fold_at",
        "_cursor_hi",
        "__weakref__",
    )

    def __init__(
        self,
        transport: Transport,
        max_rate: float = DEFAULT_MAX_RATE,
        window: int | None = ACK_WINDOW_FRAMES,
        on_stuck: Callable[[str], None] | None = None,
    ) -> None:
        self.transport = transport
        self.max_rate = max_rate
        self.window = window
        self.on_stuck = on_stuck
        self.init_keys()  # cursors (newest ts delivered or promised), delivered, sources: see HeldKeys
        self._buffer: list[Fragment] = []
        self._buffered = 0
        self._held: frozenset[str] | set[str] = NO_KEYS  # keys being back-filled: live fragments wait
        self._last_slot = 0.0  # when (monotonic s) the flusher pass that sent the last data frame began
        self.due_at: float | None = None  # when a flusher timer will make this session due
        self._sending = False
        self.queued = False  # waiting in the loop's Flusher
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
        # `cursors` and `delivered` lag the clean batch pieces flushed since the last settle_cursors()
        # (dashboard/live/delivery.py): they wait here, in flush order, and are folded in when they
        # make up a whole fold of the hub's (frames.Fold), every _fold_at pieces otherwise (staggered at
        # random: sessions made together would fold in one pass), and before anything reads or writes
        # a cursor.
        self._unfolded: list[BatchPiece | Fold] | None = None
        self._fold_at = FOLD_PIECES + random.randrange(FOLD_PIECES)
        # The newest cursor any path but a clean piece set: a piece whose keys' newest ts are all
        # above it may become the cursors as it is.
        self._cursor_hi = 0

    # --- Subscriptions (add, add_keys, remove_keys, remove: HeldKeys, through these two) ---------
    def take(self, fresh: Mapping[str, int], cursor_of: Callable[[str], int]) -> None:
        """Hold keys (key -> its source id) with their cursors (HeldKeys.take), the unfolded cursors settled first."""
        self.settle_cursors()
        self._cursor_hi = max(self._cursor_hi, 0, *(cursor_of(key) for key in fresh))
        super().take(fresh, cursor_of)

    def drop(self, gone: Iterable[str]) -> list[int]:
        """Stop holding keys (HeldKeys.drop), the unfolded cursors settled first."""
        self.settle_cursors()
        return super().drop(gone)

    def hold(self, keys: set[str]) -> None:
        """Keep live fragments of these keys buffered while their history is being sent (replays read cursors next)."""
        self.settle_cursors()
        self._held = self._held | keys
        self._buffer = unpack(self._buffer)

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
        self.settle_cursors()
        self._buffer = unpack(self._buffer)
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
        self.settle_cursors()
        slot, delivered = self.keyset.slot, self.delivered_ts
        for key, ts in newest.items():
            i = slot.get(key)  # None: unsubscribed meanwhile
            if i is not None and ts > delivered[i]:
                delivered[i] = ts
            if ts > self._cursor_hi:
                self._cursor_hi = ts
        self._count_sent()
        await self.transport.send_text(frame)
