"""One flush pass per loop iteration for every session that came due, and the frames shared in that pass."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from dashboard import loops, stats
from dashboard.fastpaths import writethrough
from dashboard.live.frames import Fragment
from dashboard.timeutil import now_us

if TYPE_CHECKING:
    from dashboard.live.session import Session

log = logging.getLogger(__name__)

PASS_SLICE_S = 0.002  # a flusher pass gives the event loop a turn this often (a pass over 1,000 sockets is ~20 ms)


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
        self.running = False
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
            if session.due_at == key and not session.closed:
                session.start_flush()

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
        if not self.running:
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
        if not self.running:
            self.running = True
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
                    session.queued = False
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
            self.running = False
            self.frames = {}
            self._wire = {}
            self._publish_counts()
