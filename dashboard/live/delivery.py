"""How a session's buffered fragments leave: coalescing, shedding, the flush into its transport."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine

from dashboard import stats
from dashboard.live.flusher import Flusher
from dashboard.live.frames import BatchPiece, Fold, Fragment, shared_frame, unpack
from dashboard.live.protocol import MAX_FRAME_SAMPLES

log = logging.getLogger(__name__)

MAX_BUFFER_SAMPLES = 50_000  # per socket; beyond this the oldest are dropped and back-filled later
MAX_SHEDS = 3  # buffer overflows within SHED_WINDOW_S before a connection counts as hopelessly slow
SHED_WINDOW_S = 60.0
# A session folds the cursors of the batch pieces it flushed when it has flushed a whole fold of the hub's
# (frames.Fold: one copy), else every 256-511 pieces (2.5-5 s of a fleet committing 100 times a second):
# once per key rather than once per piece, at staggered times.
FOLD_PIECES = 256


class SessionDelivery:
    """Session's part that queues live fragments and sends them as frames at the session's rate."""

    __slots__ = ()

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
        slot, held, seam = self.keyset.slot, self._held, self.seam
        added = False
        for fragment in fragments:
            if fragment.key not in slot:
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
        if self.due_at is None and not self.queued:
            self._schedule()

    def offer_batch(self, piece: BatchPiece) -> None:
        """Queue one hub message's samples: as one piece when this session holds all its keys and waits for none.

        The hub calls this once per session per message (100,000 times a
        second for 1,000 viewers of a fleet committing 100 times a second).
        A session holding some of the keys, holding keys back for a replay,
        or with a seam takes the fragments one by one (offer_all).
        """
        if not self._held and self.seam is None and not self.closed and piece.covered_by(self.keyset):
            self._buffer.append(piece)
            self._buffered += piece.count
            if self._buffered > MAX_BUFFER_SAMPLES:
                self._shed()
            if self.due_at is None and not self.queued:
                self._schedule()
            return
        self.offer_all(piece.parts)

    def settle_cursors(self) -> None:
        """Bring `cursors` and `delivered` up to date with the clean batch pieces flushed since they last were."""
        entries, self._unfolded = self._unfolded, None
        if not entries:
            return
        last = entries[-1]
        if type(last) is Fold:
            # A whole fold, flushed last, holding every held key: each key's newest ts is in it, newer than
            # anything before it. One copy into each array (all viewers of a fleet, every FOLD_SPAN pieces).
            found = last.timestamps(self.keyset)
            if found is not None:
                self.cursor_ts[:] = found
                self.delivered_ts[:] = found
                return
        merged: dict[str, int] = {}
        for entry in entries:  # in flush order, and each key's ts only grows from a piece to the next
            merged.update(entry.merged if type(entry) is Fold else entry.newest)
        # Straight into the arrays, one loop for both: through the `cursors` and `delivered` mappings
        # this was 30 % of the fan-out's own time at 1,000 viewers of a 1,000-key fleet (the timestamps
        # are stored samples', inside the accepted window, so they need no clamp()).
        slot_get, cursors, delivered = self.keyset.slot.get, self.cursor_ts, self.delivered_ts
        for key, ts in merged.items():
            i = slot_get(key)
            if i is not None:  # None: unsubscribed since it was flushed
                cursors[i] = ts
                delivered[i] = ts

    def _shed(self) -> None:
        """Drop the oldest half of the buffer, count it, and ask for a back-fill of those keys."""
        self._buffer = unpack(self._buffer)
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
        if not self._buffer:  # first: the common case after a flush
            return
        if self.due_at is not None or self.queued or self._sending or self.closed or self.window_full():
            return
        if self._held and all(f.key in self._held for f in self._buffer):
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
            self.start_flush()
            return
        self.due_at = Flusher.get().due_in(wait, self._last_slot + 1.0 / self.max_rate, self)

    def start_flush(self) -> None:
        self.due_at = None
        self.queued = True
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
            if held:
                self._buffer = unpack(self._buffer)
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
        slot, cursors, delivered = self.keyset.slot, self.cursor_ts, self.delivered_ts
        for fragment in ready:
            if type(fragment) is BatchPiece:
                if fragment.clean and fragment.floor > self._cursor_hi:
                    # Each key's newest ts here is above anything its cursor was set to: it is the cursor,
                    # as it is. Recorded now, folded in later (settle_cursors), with no per-key work here:
                    # two 1,000-key dicts per piece per session were a fifth of a 1,000 x 1,000 fleet's time.
                    unfolded = self._unfolded
                    if unfolded is None:
                        self._unfolded = [fragment]
                        continue
                    previous = unfolded[-1]
                    if type(previous) is BatchPiece and previous.fold is not fragment.fold:
                        fold = previous.fold  # over: the hub has begun the next one
                        if fold is not None and fold.holds_all(unfolded):
                            del unfolded[-fold.count :]
                            unfolded.append(fold)
                            self.settle_cursors()  # a copy when the fold holds every held key
                            self._unfolded = [fragment]
                            continue
                    unfolded.append(fragment)
                    if len(unfolded) >= self._fold_at:
                        self.settle_cursors()
                    continue
                pairs = fragment.newest.items()
            else:
                pairs = ((fragment.key, fragment.last_ts),)
            if self._unfolded is not None:
                self.settle_cursors()  # first: a piece folded after this max() must not undo it
            hi = self._cursor_hi
            for key, last in pairs:
                i = slot.get(key)
                if i is None:
                    continue  # unsubscribed since it was buffered
                if last > cursors[i]:
                    cursors[i] = last
                if last > delivered[i]:
                    delivered[i] = last
                if last > hi:
                    hi = last
            self._cursor_hi = hi
        if self.window is None and self._unfolded is not None:
            self.settle_cursors()  # Server-Sent Events send `delivered` as each frame's id
        frame = shared_frame(ready, flusher.frames)
        self._count_sent()
        wire = self.transport.wire
        if wire is not None:
            try:
                sent = wire(flusher.wire(frame))
            except Exception:
                log.debug("send failed; the connection is closing", exc_info=True)
                self.closed = True
                return None
            if sent:
                flusher.count(frame, samples, ready[-1].last_ts)
                self._last_slot = flusher.pass_started if flusher.running else time.monotonic()
                self._schedule()
                return None
        self._sending = True
        return self._send_frame(frame, samples, ready[-1].last_ts, flusher)

    async def _send_frame(self, frame: str, samples: int, newest_ts: int, flusher: Flusher) -> None:
        try:
            await self.transport.send_text(frame)
            flusher.count(frame, samples, newest_ts)
        except Exception:
            log.debug("send failed; the connection is closing", exc_info=True)
            self.closed = True
        finally:
            self._last_slot = flusher.pass_started if flusher.running else time.monotonic()
            self._sending = False
        self._schedule()

    def send_now(self, frame: str) -> None:
        """Send a control frame (alert, lag notice) without waiting for the data cadence."""
        if not self.closed:
            asyncio.ensure_future(self._send_quietly(frame))

    async def _send_quietly(self, frame: str) -> None:
        try:
            await self.transport.send_text(frame)
        except Exception:
            self.closed = True

    def close(self) -> None:
        self.closed = True
        if self._window_open is not None:
            self._window_open.set()  # wake replays waiting for room so they end
        self.due_at = None  # a flusher timer that still lists this session skips it: it is closed
        self._buffer.clear()
        self._buffered = 0
