"""This process's index of metric keys: subscriptions resolve in memory, never one query per pattern.

A `subscribe` used to resolve each key or glob with queries on the thread
that `database_sync_to_async` shares with ingest's token look-ups, alert
state changes and WebSocket handshakes: 10,000 × "*" held the server for
166 s. Here each process keeps, per metric, its id, key, source and its
entry of the `subscribed` frame, plus the viewer groups of restricted
sources, so matching and permission checks read only memory.

The index is loaded once per process, takes the metrics this process's
writer creates as soon as their transaction commits, and polls the metric
table every POLL_S (rows past the highest id seen, and the viewer groups of
restricted sources) for what other processes create or an admin changes.
Live globs (dashboard/live/subscriptions.py) hear of every new metric through `listen`.

Database work runs on this module's own small thread pool (`run_db`), not
on asgiref's shared thread, so no client message can hold a thread ingest
needs.
"""

from __future__ import annotations

import asyncio
import bisect
import fnmatch
import functools
import json
import logging
import re
import sys
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections, transaction

from dashboard import loops

log = logging.getLogger(__name__)

POLL_S = 1.0  # the fallback when a metric.created event is lost: metrics created elsewhere show up within this
RELOAD_S = 300.0  # a full reload drops deleted metrics and picks up edited units and names
MISSING_POLLS = 20  # ids skipped by a poll are looked for again this many times (commits land out of id order)
MISSING_MAX = 1_000  # at most this many such ids are remembered (rolled-back inserts leave holes for good)
SCAN_SLICE = 2_000  # keys matched against a glob between two turns of the event loop
MAX_PATTERN_CHARS = 200  # the longest key (models.KEY_RE): a longer pattern cannot name one
DB_THREADS = 2  # subscribe-path reads (permissions, history replay) and the index's polls

_executor = ThreadPoolExecutor(max_workers=DB_THREADS, thread_name_prefix="pulseboard-index")


def _in_thread(fn: Callable[..., Any], args: tuple) -> Any:
    close_old_connections()
    try:
        return fn(*args)
    finally:
        close_old_connections()


async def run_db(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a database function on the index's threads (not asgiref's shared one) and return its result."""
    return await asyncio.get_running_loop().run_in_executor(_executor, _in_thread, fn, args)


def is_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern or "[" in pattern


@functools.lru_cache(maxsize=4096)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Return the compiled form of a glob, with the meaning of models.glob_matches ('*' crosses dots)."""
    return re.compile(fnmatch.translate(pattern))


@dataclass(slots=True, frozen=True)
class MetricEntry:
    """One metric as the live path needs it; `meta` is its entry of a `subscribed` frame, encoded once."""

    id: int
    key: str
    source_id: int
    meta: str


# (id, key, source id, name, unit, kind, source slug): what the index reads of each metric.
ROW_FIELDS = ("id", "key", "source_id", "name", "unit", "kind", "source__slug")


def entry_of(row: tuple) -> MetricEntry:
    metric_id, key, source_id, name, unit, kind, slug = row
    key = sys.intern(key)  # every connection holding the key then shares this one string
    meta = json.dumps({"key": key, "source": slug, "unit": unit, "kind": kind, "name": name}, separators=(",", ":"))
    return MetricEntry(metric_id, key, source_id, meta)


@dataclass(slots=True, frozen=True)
class Reader:
    """What one reader may read, decided in memory against the index.

    The same rule as models.VisibleQuerySet: staff read everything; others
    read sources without viewer groups and those granted to one of their
    groups. A share link reads exactly the metrics its principal's
    `visible_to` gives (the link's own grant, asked of the database).
    """

    everything: bool = False
    groups: frozenset[int] = frozenset()
    metric_ids: frozenset[int] | None = None  # a share link: exactly these

    def may_read(self, entry: MetricEntry, restricted: dict[int, frozenset[int]]) -> bool:
        if self.metric_ids is not None:
            return entry.id in self.metric_ids
        if self.everything:
            return True
        allowed = restricted.get(entry.source_id)
        return allowed is None or not allowed.isdisjoint(self.groups)


NOBODY = Reader(metric_ids=frozenset())
EVERYONE = Reader(everything=True)
SHARED_READERS_MAX = 1024  # distinct readers kept for sharing; beyond that the table starts over
_shared_readers: dict[Reader, Reader] = {}


def shared_reader(reader: Reader) -> Reader:
    """Return the one Reader equal to `reader` that connections share.

    Each connection keeps its reader from its last subscribe: the viewers of
    a share link or of one group each kept a Reader and a frozenset of their
    own (~300 B, and a share link's metric ids ~30 B each, per socket).
    """
    if len(_shared_readers) >= SHARED_READERS_MAX:
        _shared_readers.clear()
    return _shared_readers.setdefault(reader, reader)


def reader_of(user) -> Reader:
    """Return what the user may read (database work: call through run_db); equal readers are one object."""
    from dashboard.models import Metric

    if not user.is_authenticated:
        return NOBODY
    token = getattr(user, "read_token", None)
    if token is not None:
        # A read token reads as its user; narrowed to source patterns, exactly the metrics its
        # visible_to gives now (models.ReadToken.restrict).
        if token.patterns() == ["*"]:
            return reader_of(token.user)
        return shared_reader(Reader(metric_ids=frozenset(Metric.objects.visible_to(user).values_list("id", flat=True))))
    if getattr(user, "share_link", None) is not None:
        return shared_reader(Reader(metric_ids=frozenset(Metric.objects.visible_to(user).values_list("id", flat=True))))
    if user.is_staff or user.is_superuser:
        return EVERYONE
    return shared_reader(Reader(groups=frozenset(user.groups.values_list("id", flat=True))))


def grants_of(user) -> tuple[Reader, dict[int, frozenset[int]] | None]:
    """Return what the user may read and, when it depends on them, the viewer groups of restricted sources now.

    A subscribe decides with both read at that moment, so a source restricted
    a moment ago is not served from the index's last poll.
    """
    from dashboard.models import Source

    reader = reader_of(user)
    if reader.everything or reader.metric_ids is not None:
        return reader, None
    return reader, restricted_sources(Source.viewer_groups.through.objects.values_list("source_id", "group_id"))


def restricted_sources(pairs) -> dict[int, frozenset[int]]:
    """Return source id -> viewer group ids from (source id, group id) pairs."""
    restricted: dict[int, set[int]] = {}
    for source_id, group_id in pairs:
        restricted.setdefault(source_id, set()).add(group_id)
    return {source_id: frozenset(groups) for source_id, groups in restricted.items()}


def _load_all() -> tuple[list[tuple], list[tuple[int, int]]]:
    from dashboard.models import Metric, Source

    rows = list(Metric.objects.order_by("id").values_list(*ROW_FIELDS))
    return rows, list(Source.viewer_groups.through.objects.values_list("source_id", "group_id"))


def _load_since(high_water: int, missing: list[int]) -> tuple[list[tuple], list[tuple[int, int]]]:
    from django.db.models import Q

    from dashboard.models import Metric, Source

    where = Q(id__gt=high_water) | Q(id__in=missing) if missing else Q(id__gt=high_water)
    rows = list(Metric.objects.filter(where).order_by("id").values_list(*ROW_FIELDS))
    return rows, list(Source.viewer_groups.through.objects.values_list("source_id", "group_id"))


class KeyIndex:
    """Every metric of the deployment, by key, and the viewer groups of restricted sources.

    One per event loop, like the hub and the writer (a server process has one
    loop; each test has its own, so no test sees another's metrics).
    """

    @classmethod
    def get(cls) -> KeyIndex:
        """Return the index of the running event loop."""
        return loops.service(KeyIndex, lambda: cls(asyncio.get_running_loop()))

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop_ref = weakref.ref(loop)  # not the loop itself: it is this index's key in dashboard/loops.py
        self.by_key: dict[str, MetricEntry] = {}
        self.keys: list[str] = []  # sorted; replaced, never changed in place (a scan in progress keeps its list)
        self.restricted: dict[int, frozenset[int]] = {}  # source id -> its viewer group ids (restricted ones only)
        self.high_water = 0  # highest metric id seen
        self.loaded = False
        self.generation = 0  # bumped by reset: a load or poll of an older generation is discarded
        self._missing: dict[int, int] = {}  # ids below high_water not seen yet -> polls left
        self._loaded_at = 0.0
        self._loading: asyncio.Task | None = None
        self._poller: asyncio.Task | None = None
        self._listener: Callable[[list[MetricEntry]], None] | None = None

    def reset(self) -> None:
        """Forget everything; the next use loads again (after deletes in the admin, and between tests)."""
        self.by_key = {}
        self.keys = []
        self.restricted = {}
        self.high_water = 0
        self.loaded = False
        self.generation += 1
        self._missing = {}
        self._loading = None

    # --- Keeping fresh ---------------------------------------------------------
    async def ready(self) -> None:
        """Load the index if this process has not yet, and keep it fresh from this event loop."""
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop(), name="pulseboard-keyindex")
        if self.loaded:
            return
        if self._loading is None or self._loading.done():
            self._loading = asyncio.get_running_loop().create_task(self._load())
        await asyncio.shield(self._loading)

    async def _load(self) -> None:
        generation = self.generation
        rows, groups = await run_db(_load_all)
        if generation != self.generation:
            return
        self.by_key = {}
        self.keys = []
        self._missing = {}
        self.high_water = 0
        self._set_groups(groups)
        self._apply(rows, notify=False)
        self.loaded = True
        self._loaded_at = time.monotonic()

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("refreshing the metric key index failed; retrying in %.1f s", POLL_S, exc_info=True)

    async def poll(self) -> list[MetricEntry]:
        """Take in metrics created (and viewer groups changed) since the last look; return the new metrics."""
        if not self.loaded or time.monotonic() - self._loaded_at > RELOAD_S:
            known = set(self.by_key) if self.loaded else None
            await self._load()
            if known is None:
                return []
            new = [entry for key, entry in self.by_key.items() if key not in known]
            self._notify(new)
            return new
        generation, high_water = self.generation, self.high_water
        rows, groups = await run_db(_load_since, high_water, list(self._missing))
        if generation != self.generation:
            return []
        self._set_groups(groups)
        seen = {row[0] for row in rows}
        for metric_id in list(self._missing):
            left = self._missing[metric_id] - 1
            if metric_id in seen or left <= 0:
                del self._missing[metric_id]
            else:
                self._missing[metric_id] = left
        top = max(seen, default=high_water)
        for metric_id in range(high_water + 1, top):
            if len(self._missing) >= MISSING_MAX:
                break
            if metric_id not in seen:
                self._missing[metric_id] = MISSING_POLLS
        return self._apply(rows)

    def _set_groups(self, pairs: list[tuple[int, int]]) -> None:
        self.restricted = restricted_sources(pairs)

    def _apply(self, rows: list[tuple], notify: bool = True) -> list[MetricEntry]:
        """Add metrics (rows of ROW_FIELDS) on the event loop; return and announce those not known before."""
        new: list[MetricEntry] = []
        by_key = self.by_key
        for row in rows:
            old = by_key.get(row[1])
            if old is not None and old.id == row[0]:
                continue
            entry = entry_of(row)
            by_key[entry.key] = entry
            if old is None:
                new.append(entry)
            if entry.id > self.high_water:
                self.high_water = entry.id
        if new:
            self.keys = sorted([*self.keys, *(e.key for e in new)])
            if notify:
                self._notify(new)
        return new

    def _notify(self, new: list[MetricEntry]) -> None:
        if not new:
            return
        listener = self._listener
        if listener is not None:
            try:
                listener(new)
            except Exception:
                log.exception("announcing %d new metrics to live globs failed", len(new))

    def listen(self, callback: Callable[[list[MetricEntry]], None]) -> None:
        """Call `callback` (on the event loop) with every batch of metrics new to the index."""
        self._listener = callback

    def take(self, row: tuple) -> None:
        """Take in one metric (a row of ROW_FIELDS) on the event loop, if the index is loaded."""
        if self.loaded:
            self._apply([row])

    # --- Reading ------------------------------------------------------------------
    async def match(self, pattern: str) -> list[MetricEntry]:
        """Return the metrics whose key matches a glob, in key order, giving the event loop turns on long scans."""
        prefix = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        keys = self.keys
        lo = bisect.bisect_left(keys, prefix) if prefix else 0
        hi = bisect.bisect_left(keys, prefix + "\U0010ffff") if prefix else len(keys)
        test = glob_regex(pattern).match
        found: list[str] = []
        for start in range(lo, hi, SCAN_SLICE):
            found += [key for key in keys[start : min(hi, start + SCAN_SLICE)] if test(key)]
            if start + SCAN_SLICE < hi:
                await asyncio.sleep(0)
        by_key = self.by_key
        return [by_key[key] for key in found if key in by_key]


def note_created(metric, source_slug: str) -> None:
    """Announce a metric this process creates, once its transaction commits (storage calls this).

    This process's live globs take it in before its first batch is
    published (the commit's callbacks run before the writer hands the batch
    back to the event loop), and the other processes' hubs get a
    `metric.created` event (actions.announce_metric); their poll is the
    fallback if the layer loses it.
    """
    row = (metric.id, metric.key, metric.source_id, metric.name, metric.unit, metric.kind, source_slug)

    def announce() -> None:
        loop = _writer_loop()
        targets = [loop] if loop is not None else [target for target, _index in loops.instances(KeyIndex)]
        for target in targets:
            if target is not None and not target.is_closed():
                try:
                    target.call_soon_threadsafe(_announce, row)
                except RuntimeError:
                    pass  # the loop closed meanwhile

    transaction.on_commit(announce)


def _writer_loop() -> asyncio.AbstractEventLoop | None:
    """Return the event loop whose writer runs on this thread, if it is a writer's thread."""
    from dashboard.writer import Writer

    for loop, writer in loops.instances(Writer):
        if writer.runs_on_this_thread():
            return loop
    return None


def _announce(row: tuple) -> None:
    # Imported here: dashboard.actions imports the writer, whose storage imports this module.
    from dashboard import actions

    KeyIndex.get().take(row)
    actions.announce_metric(row)
