"""What a hub delivered per metric (KeyLedger), checked against the database to back-fill what it missed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import TYPE_CHECKING

from dashboard import events, reconcile, stats
from dashboard.live.frames import encode_fragment, stale_frame
from dashboard.timeutil import US, now_us

if TYPE_CHECKING:
    from dashboard.live.session import Session

log = logging.getLogger(__name__)

LEDGER_S = 60.0  # sample time a hub remembers per metric to check against the database and to drop duplicates
INTERVALS_REFRESH_S = 30.0  # how often a hub re-reads its metrics' expected intervals (operators change them)


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


class LedgerCheck:
    """Hub's part that follows delivered samples and reconciles them with the database."""

    # --- The ledger: what this hub delivered, checked against the database --------------------
    async def track(self, session: Session, metrics: dict[str, tuple[int, int]]) -> None:
        """Follow these metrics (key -> (metric id, source id)) in the ledger before a session replays them.

        A metric new to the hub is read once: what is stored above the floor
        counts as delivered (viewers get it from their own replays), so the
        checks back-fill only what is stored later and never reaches the hub.
        """
        await self.ensure_started()
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
        """Return the followed keys some local session still holds.

        Asked of each key's source's sessions, stopping at the first: a set of
        every key of every session was 1,000,000 insertions every check at
        1,000 viewers of a 1,000-key fleet, a 50-100 ms pause of the loop.
        """
        groups, held = self.groups, set()
        for key, ledger in self.ledgers.items():
            if any(key in session.cursors for session in groups.get(events.source_group(ledger.source_id), ())):
                held.add(key)
        return held

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
