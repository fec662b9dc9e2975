"""One fan-out per process: a hub reads the channel layer once and feeds local sessions.

The naive Channels pattern gives every socket its own channel and group
membership, so each sample costs a layer message and a JSON encode per
socket. Here each server process's hub is in the samples group, where each
commit is one message whatever its sources; it decodes each once, encodes
each metric's fragment once, joins them once, and hands the same bytes to
every local session that holds keys of those sources, with one call per
session. Sessions coalesce what they get into frames at their requested rate.

Loss in the channel layer (a full channel, a Redis hiccup) shows up as a
sequence gap per publisher and group; the hub then asks the affected sessions
to back-fill from the database.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

from channels.layers import get_channel_layer
from django.conf import settings

from dashboard import background, events, keyindex, loops, stats
from dashboard.fastpaths import gcpolicy
from dashboard.live.frames import (
    FOLD_SPAN,
    Fold,
    alert_frame,
    batch_piece,
    degraded_frame,
    encode_fragment,
    heartbeat_frame,
)
from dashboard.live.ledger import KeyLedger, LedgerCheck
from dashboard.live.notices import Notices
from dashboard.live.protocol import MAX_FRAME_SAMPLES
from dashboard.live.session import Session
from dashboard.logthrottle import FailureLog

log = logging.getLogger(__name__)

HEARTBEAT_S = 25  # default of settings LIVE_HEARTBEAT_S: proxies drop idle sockets at 30-60 s; one loop beats for all
RECONCILE_S = 5.0  # default of settings LIVE_RECONCILE_S: how often a hub checks what it delivered against the database
GROUP_REFRESH_S = 3600  # the in-memory and core Redis layers forget members after group_expiry (1 day)
STALL_S = 30.0  # default of settings LIVE_STALL_S: a connection whose window stays full this long makes no progress: close it with 4008
WATCHDOG_S = 1.0  # how often the hub looks for stalled connections and silent sources


class Hub(LedgerCheck, Notices):
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
        self.groups: dict[str, set[Session]] = {}  # source.<id> -> local sessions holding keys of it
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
        self._fold = Fold()  # the clean batch pieces made lately (frames.Fold: cursors settled once per fold)
        self.receive_log = FailureLog(log, "channel layer receive")
        self.database_log = FailureLog(log, "live check against the database")

    async def ensure_started(self) -> None:
        if self.channel is not None:
            return
        async with self._start_lock:
            if self.channel is None:
                self.channel = await self.layer.new_channel("hub.")
                self.local_publisher = events.local_publisher()
                events.set_local_hub(self)
                await self.layer.group_add(events.ALERTS_GROUP, self.channel)
                await self.layer.group_add(events.METRICS_GROUP, self.channel)
                await self.layer.group_add(events.SAMPLES_GROUP, self.channel)
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
        await self.ensure_started()
        self.sessions.add(session)
        for reason, since in self.degraded.items():
            session.send_now(degraded_frame(reason, "degraded", since))

    async def unregister(self, session: Session) -> None:
        """Forget a closed connection and stop routing its sources to it."""
        self.sessions.discard(session)
        session.close()
        for source_id in list(session.sources):
            await self.leave(session, source_id)

    async def join(self, session: Session, source_id: int) -> None:
        """Route the source's samples to the session (the hub hears every commit, in the samples group)."""
        await self.ensure_started()
        self.groups.setdefault(events.source_group(source_id), set()).add(session)

    async def leave(self, session: Session, source_id: int) -> None:
        """Stop routing the source to the session (no layer call: 1,000 sockets closing at once cost nothing there)."""
        group = events.source_group(source_id)
        members = self.groups.get(group)
        if not members:
            return
        members.discard(session)
        if not members:
            del self.groups[group]

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

        Sample batches are the only publications delivered here, and the hub
        is in the samples group for as long as it runs.
        """
        self.dispatch(message)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(GROUP_REFRESH_S)
            for group in [events.ALERTS_GROUP, events.METRICS_GROUP, events.SAMPLES_GROUP]:
                try:
                    await self.layer.group_add(group, self.channel)
                except Exception:
                    log.warning("refreshing membership of %s failed", group)

    async def _heartbeat_loop(self) -> None:
        """Send every connection a heartbeat; one task per process rather than one per connection (memory)."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            frame = heartbeat_frame()
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
            frame = alert_frame(event)
            for session in self.sessions:
                if session.alert_sources is None or event.source in session.alert_sources:
                    session.send_now(frame)
        elif isinstance(event, events.MetricCreated):
            keyindex.KeyIndex.get().take(event.row())  # live globs hear of it (dashboard/keyindex.py)

    def _route_samples(self, event: events.SampleBatch) -> None:
        """Route one commit's samples (any number of sources) to the local sessions holding their keys.

        Each metric's fragment is encoded once and the message's fragments
        are joined once (a BatchPiece); every session holding a key of any of
        its sources gets one call (offer_batch), and takes only the keys it
        holds: permissions stay per source, as each session holds only keys
        its reader may read. A sample the hub already delivered (the check
        against the database back-filled it before its live copy came) is
        dropped here, once for every session.
        """
        groups, sources = self.groups, event.sources
        if event.publisher:
            seq_key = (event.publisher, events.SAMPLES_GROUP)
            last = self._last_seq.get(seq_key)
            self._last_seq[seq_key] = event.seq
            if last is not None and event.seq > last + 1 and groups:
                stats.GAPS_DETECTED.inc()
                log.warning(
                    "sequence gap from %s: %d -> %d; checking against the database", event.publisher, last, event.seq
                )
                self.reconcile_soon()
        wanted: dict[int, set[Session]] = {}
        for source_id in set(sources.values()):
            members = groups.get(events.source_group(source_id))
            if members:
                wanted[source_id] = members
        if not wanted:
            return  # a commit none of this process's viewers watches: one lookup per source
        frames: dict[frozenset[str], str] = {}  # frames built from this message, shared by sessions
        fragments = []
        ledgers, floor = self.ledgers, self.floor
        clean = True  # no sample late at this hub, and every key followed: sessions may take its ts as cursors
        for key, (ts, values) in event.series.items():
            if sources[key] not in wanted:
                continue
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
            if late or ledger is None:
                clean = False
            fragments.append(encode_fragment(key, ts, values, frames, late))
        if not fragments:
            return
        # One call per session, however many of the message's sources it holds keys of.
        sessions = next(iter(wanted.values())) if len(wanted) == 1 else set().union(*wanted.values())
        if len(fragments) == 1 or sum(f.count for f in fragments) > MAX_FRAME_SAMPLES:
            for session in sessions:  # nothing to join, or more than one frame may carry
                session.offer_all(fragments)
            return
        piece = batch_piece(fragments, clean, frames)
        if clean:
            if self._fold.count >= FOLD_SPAN:
                self._fold = Fold()
            self._fold.add(piece)
        for session in sessions:
            session.offer_batch(piece)
