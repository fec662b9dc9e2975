"""Typed events pushed from the ingest path to every server process, and the one way to publish them.

Each event has a dotted type (`sample.batch`) that Channels maps to a handler
name (`sample_batch`). Events travel on the channel layer to per-process hubs
(dashboard/live/hub.py), never to individual sockets. Nothing but `publish`
and `publish_soon` (through its loop's Outbox) calls group_send.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from channels.layers import get_channel_layer

from dashboard import loops, stats
from dashboard.logthrottle import FailureLog

log = logging.getLogger(__name__)

# Identifies this process as a publisher so hubs can follow each publisher's
# sequence numbers and detect messages lost in the channel layer.
PUBLISHER_ID = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
_seq: dict[str, int] = {}  # group -> last sequence number sent by this process

# The hub of each event loop in this process, as a callable taking (group,
# message). publish hands a message to it directly, so a viewer on the
# process that ingested the sample does not wait for the round trip through
# Redis; the hub then ignores the copy the layer brings back (its publisher
# is local_publisher()).
# (The hub registers itself as the loop's LocalDelivery service in dashboard/loops.py.)


class LocalDelivery(Protocol):
    """What publish hands this loop's sample batches to directly: the loop's hub."""

    def deliver_local(self, group: str, message: dict[str, Any]) -> None:
        """Take one published layer message (a sample batch) of this process, before the layer sees it."""


def local_publisher() -> str:
    """Return the publisher id of the running event loop (one per loop: each loop has its own hub)."""
    return f"{PUBLISHER_ID}-{id(asyncio.get_running_loop()):x}"


def set_local_hub(hub: LocalDelivery | None) -> None:
    """Register the running loop's hub to receive this loop's publications directly (None: none)."""
    loops.register(LocalDelivery, hub)


def source_group(source_id: int) -> str:
    """Return the name under which a hub routes one source's samples to the local sessions that hold its keys."""
    return f"source.{source_id}"


ALERTS_GROUP = "alerts"
# Every committed batch, whatever its sources, is one SampleBatch on this group, which every hub joins: a
# 10-device agent request crosses the layer and each hub once, not ten times (issue #18 item 5). Hubs
# route it per source to the local sessions holding its keys, so permissions stay per source.
SAMPLES_GROUP = "samples"


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


@dataclass(slots=True)
class Event:
    type: ClassVar[str] = "event"

    def as_message(self) -> dict[str, Any]:
        # Shallow: dataclasses.asdict deep-copied every series list, ~8% of a busy server's time.
        message = {name: getattr(self, name) for name in _field_names(type(self))}
        message["type"] = self.type
        return message

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Event:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(message) - fields - {"type"}
        if unknown:
            raise ValueError(f"{cls.type} has unknown fields {sorted(unknown)}")
        return cls(**{k: v for k, v in message.items() if k != "type"})


@dataclass(slots=True)
class SampleBatch(Event):
    """Samples one commit added, of any number of sources: {metric key: [[ts µs...], [values...]]}.

    `sources` maps each key to its source id (the string keys msgpack's
    decoder insists on): a hub routes each key to the sessions that hold it
    through its source, whose readers were checked when they subscribed.
    """

    type: ClassVar[str] = "sample.batch"
    series: dict[str, list[list]]
    sources: dict[str, int]
    publisher: str = ""
    seq: int = 0


@dataclass(slots=True)
class AlertState(Event):
    """An alert instance changed state."""

    type: ClassVar[str] = "alert.state"
    rule: int
    rule_name: str
    metric: str
    state: str
    previous: str
    severity: str
    value: float | None
    at: int  # µs
    message: str = ""
    instance: int = 0  # AlertInstance id, for the acknowledge and silence endpoints
    acknowledged_by: str = ""  # username, empty when not acknowledged
    silenced_until: int = 0  # µs; 0 when notifications are not silenced
    source: int = 0  # source id of the metric: hubs send the alert only to viewers who may read it


@dataclass(slots=True)
class MetricCreated(Event):
    """A metric was committed by some process: every hub's key index takes it in without waiting for its poll."""

    type: ClassVar[str] = "metric.created"
    id: int
    key: str
    source: int  # source id
    name: str
    unit: str
    kind: str
    source_slug: str

    def row(self) -> tuple:
        """Return the metric as a row of dashboard.keyindex.ROW_FIELDS."""
        return (self.id, self.key, self.source, self.name, self.unit, self.kind, self.source_slug)


METRICS_GROUP = "metrics"  # MetricCreated events; every hub joins it

EVENT_TYPES: dict[str, type[Event]] = {cls.type: cls for cls in (SampleBatch, AlertState, MetricCreated)}


def parse(message: dict[str, Any]) -> Event:
    """Return the typed event for a channel-layer message; raise ValueError for unknown types or fields."""
    cls = EVENT_TYPES.get(message.get("type", ""))
    if cls is None:
        raise ValueError(f"unknown event type {message.get('type')!r}")
    return cls.from_message(message)


def _number_and_deliver(group: str, event: Event) -> dict[str, Any]:
    """Number a sample batch, hand it to this loop's hub, and return the message for the layer."""
    if isinstance(event, SampleBatch):
        event.publisher = local_publisher()
        event.seq = _seq[group] = _seq.get(group, 0) + 1
    message = event.as_message()
    # Sample batches only: they carry the publisher id the hub uses to ignore the layer's copy.
    hub: LocalDelivery | None = loops.existing(LocalDelivery) if isinstance(event, SampleBatch) else None
    if hub is not None:
        try:
            hub.deliver_local(group, message)
        except Exception:
            log.exception("local delivery of %s failed", event.type)
    return message


# Every failed publish of an outage used to log a traceback (25 in 5 s at 5 batches a second).
_publish_failures = FailureLog(log, "publish to the channel layer (viewers elsewhere back-fill from the database)")


async def _send(group: str, message: dict[str, Any]) -> bool:
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        await layer.group_send(group, message)
    except Exception as exc:
        _publish_failures.failure(exc)
        return False
    _publish_failures.success()
    return True


async def publish(group: str, event: Event) -> bool:
    """Send an event to a group after its data is committed; return False (and count) if the layer failed.

    A failed publish loses nothing durable: hubs see the sequence gap and
    back-fill from the database.
    """
    message = _number_and_deliver(group, event)
    await drain()  # after what publish_soon queued before it: one order per group
    return await _send(group, message)


def publish_soon(group: str, event: Event) -> None:
    """Publish without waiting for the layer: this process's hub gets it now, the layer in order, soon.

    The writer publishes every committed batch. Awaiting group_send there put
    a Redis round trip into each commit cycle, and with 1,000 viewers the
    busy loop made that round trip 10-60 ms, which delayed the next batch's
    commit and so its live latency (bench/README.md, Fan-out). Viewers on
    this process get the batch at once from the hub; the layer's copy for
    other processes goes out from the loop's Outbox, in publication order.
    """
    message = _number_and_deliver(group, event)
    Outbox.get().put(group, message)


async def drain() -> None:
    """Wait until what publish_soon queued on this loop has gone to the layer (tests, shutdown)."""
    outbox = Outbox.of_running_loop()
    if outbox is not None:
        await outbox.drain()


class Outbox:
    """One event loop's layer sends, in order, off the publisher's path.

    At most MAX_BACKLOG messages wait; beyond that a message is dropped and
    counted (pulseboard_publish_failures), and hubs elsewhere see the
    sequence gap and back-fill from the database, as for any loss in the layer.
    """

    MAX_BACKLOG = 10_000

    @classmethod
    def get(cls) -> Outbox:
        """Return the running loop's outbox, making it on first use."""
        return loops.service(Outbox, cls)

    @classmethod
    def of_running_loop(cls) -> Outbox | None:
        """Return the running loop's outbox if it was made."""
        return loops.existing(Outbox)

    def __init__(self) -> None:
        self._queue: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._task: asyncio.Task | None = None
        self._overflow = FailureLog(log, f"the channel layer outbox ({self.MAX_BACKLOG} messages behind)")

    def put(self, group: str, message: dict[str, Any]) -> None:
        if len(self._queue) >= self.MAX_BACKLOG:
            stats.PUBLISH_FAILURES.inc()
            self._overflow.failure(
                f"dropped a message for {group}; hubs back-fill from the database", level=logging.WARNING
            )
            return
        if self._overflow.failing:
            self._overflow.success()
        self._queue.append((group, message))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pulseboard-outbox")

    async def _run(self) -> None:
        while self._queue:
            group, message = self._queue[0]
            if not await _send(group, message):
                stats.PUBLISH_FAILURES.inc()
            self._queue.popleft()

    async def drain(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
