"""What a connection holds: its keys (HeldMetrics), its followed globs (LiveGlobs), the subscribe gate, share grants."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from channels.db import database_sync_to_async

from dashboard import loops
from dashboard.keyindex import (
    KeyIndex,
    MetricEntry,
    glob_regex,
)
from dashboard.models import Source

if TYPE_CHECKING:
    from dashboard.live.client import LiveClient
    from dashboard.live.session import Session

log = logging.getLogger(__name__)


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


def subscribe_gate() -> asyncio.Semaphore:
    """Return the event loop's gate for subscribes: a storm takes its turns instead of filling every loop pass.

    100 viewers resubscribing at once each did ~10 ms of work on the loop
    after their database reads returned together; one pass of the loop then
    ran them all, and an ingest between two passes waited over a second.
    The history replay is outside the gate: it may wait for a slow reader's
    acknowledgements.
    """
    return loops.service("live.subscribe_gate", lambda: asyncio.Semaphore(SUBSCRIBE_CONCURRENCY))


class HeldMetrics(Mapping[str, int]):
    """Subscribed key -> metric id, read from the session's (shared) KeySet and the key index.

    A dict of its own per connection cost ~21 B per held key (a 10,000-key
    socket: 210 KB) to repeat what those two already know.
    """

    __slots__ = ("_session", "_index")

    def __init__(self, session: Session, index: KeyIndex) -> None:
        self._session = session
        self._index = index

    def __getitem__(self, key: str) -> int:
        if key not in self._session.keyset.slot:
            raise KeyError(key)
        return self._index.by_key[key].id

    def __contains__(self, key: object) -> bool:
        return key in self._session.keyset.slot and key in self._index.by_key

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._session.keyset.slot))

    def __len__(self) -> int:
        return len(self._session.keyset.slot)


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
