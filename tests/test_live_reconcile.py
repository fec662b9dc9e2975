"""The live path checked against the database: late commits, lost publications, seams, degraded and stale notices.

Each test drives a real WebSocket consumer over the test database. A
publication is "lost" by holding back what the writer hands to the hub
(as a publisher killed between commit and publish would), and "late" by
handing it over afterwards (as the layer does after a Redis pause).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings

from dashboard import actions, reconcile, writer
from dashboard.live.hub import Hub
from dashboard.live.websocket import LiveConsumer
from dashboard.models import Source
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading

pytestmark = pytest.mark.django_db(transaction=True)
KEY = "iot.probe.temperature"


def temp(value: float, ts: int) -> Reading:
    return Reading("iot.probe", "temperature", ts, value, "°C", "gauge", "device")


class Viewer:
    """A protocol client that acknowledges every data frame and keeps every frame it got."""

    def __init__(self, ws: WebsocketCommunicator) -> None:
        self.ws = ws
        self.frames: list[dict] = []
        self.data_frames = 0

    @classmethod
    async def connect(cls, user) -> Viewer:
        ws = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
        ws.scope["user"] = user
        connected, _ = await ws.connect()
        assert connected
        viewer = cls(ws)
        assert (await viewer.next("hello"))["protocol"] == 1
        return viewer

    async def pump(self, timeout: float = 0.05) -> None:
        """Read every frame waiting now."""
        # receive_nothing does not cancel the application when nothing comes (receive_from does).
        while not await self.ws.receive_nothing(timeout):
            self._keep(json.loads(await self.ws.receive_from()))

    def _keep(self, frame: dict) -> None:
        self.frames.append(frame)
        if frame["type"] == "data":
            self.data_frames += 1
            asyncio.ensure_future(self.ws.send_json_to({"type": "ack", "frame": self.data_frames}))

    async def next(self, kind: str, timeout: float = 5) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = len(self.frames)
        while True:
            for frame in self.frames[seen:]:
                if frame["type"] == kind:
                    return frame
            seen = len(self.frames)
            if loop.time() > deadline:
                raise AssertionError(f"no {kind} frame within {timeout} s; frames: {self.frames[-10:]}")
            await self.pump()

    async def until(self, predicate, timeout: float = 10, what: str = "") -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; frames: {self.frames[-10:]}")
            await self.pump()

    def samples(self, key: str = KEY) -> list[tuple[int, float]]:
        return [
            (t, v)
            for frame in self.frames
            if frame["type"] == "data"
            for batch in frame["batches"]
            if batch["k"] == key
            for t, v in zip(batch["t"], batch["v"], strict=True)
        ]

    def of(self, kind: str) -> list[dict]:
        return [f for f in self.frames if f["type"] == kind]

    async def subscribe(self, history_s: int = 300) -> None:
        await self.ws.send_json_to({"type": "subscribe", "metrics": [KEY], "history_s": history_s, "max_rate": 100})
        await self.next("subscribed")

    async def close(self) -> None:
        await self.ws.disconnect()


async def test_a_sample_that_commits_after_a_newer_one_still_reaches_the_viewer(viewer) -> None:
    """Out-of-order ingest: the older sample commits second; it used to be trimmed at the viewer's cursor."""
    now = now_us()
    await actions.ingest([temp(0.0, now - 10 * US)])
    client = await Viewer.connect(viewer)
    await client.subscribe()
    await client.until(lambda: len(client.samples()) == 1, what="the replay")
    await actions.ingest([temp(2.0, now + 2 * US)])  # the newer sample commits first ...
    await actions.ingest([temp(1.0, now + 1 * US)])  # ... the older one after it
    await client.until(lambda: len(client.samples()) == 3, what="both live samples")
    await asyncio.sleep(0.2)
    await client.pump()
    assert sorted(client.samples()) == [(now - 10 * US, 0.0), (now + 1 * US, 1.0), (now + 2 * US, 2.0)]
    await client.close()


async def test_samples_whose_publication_was_lost_are_back_filled_from_the_database_once(viewer, monkeypatch) -> None:
    """A publisher that committed and died: the hub's check finds what is stored and was never delivered."""
    now = now_us()
    await actions.ingest([temp(0.0, now - 5 * US)])
    client = await Viewer.connect(viewer)
    await client.subscribe()
    await client.until(lambda: len(client.samples()) == 1, what="the replay")
    held: list = []
    publish = writer.publish_inserted
    monkeypatch.setattr(writer, "publish_inserted", held.append)
    await actions.ingest([temp(float(i), now + i * 1000) for i in range(1, 6)])  # stored, never published
    assert held and len(client.samples()) == 1
    filled = await Hub.get().reconcile()
    print(f"back-filled {filled} samples")
    assert filled == 5
    await client.until(lambda: len(client.samples()) == 6, what="the back-fill")
    # The lost publication turns up after all (the layer was only slow): nothing twice.
    for batch in held:
        publish(batch)
    assert await Hub.get().reconcile() == 0
    await asyncio.sleep(0.2)
    await client.pump()
    values = [v for _, v in client.samples()]
    assert sorted(values) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], values
    await client.close()


async def test_a_replay_and_a_late_publication_of_the_same_sample_reach_the_viewer_once(viewer, monkeypatch) -> None:
    """The seam: a sample committed before the viewer's replay whose live copy arrives after it."""
    now = now_us()
    await actions.ingest([temp(0.0, now - 5 * US)])
    first = await Viewer.connect(viewer)
    await first.subscribe()  # the hub follows the key already
    held: list = []
    publish = writer.publish_inserted
    monkeypatch.setattr(writer, "publish_inserted", held.append)
    await actions.ingest([temp(1.0, now - 1 * US)])  # committed; its publication is in flight
    second = await Viewer.connect(viewer)
    await second.subscribe()
    await second.until(lambda: len(second.samples()) == 2, what="the replay of both samples")
    for batch in held:
        publish(batch)
    await first.until(lambda: len(first.samples()) == 2, what="the live copy on the first viewer")
    await Hub.get().reconcile()
    await asyncio.sleep(0.2)
    await second.pump()
    assert [v for _, v in second.samples()] == [0.0, 1.0]
    assert [v for _, v in first.samples()] == [0.0, 1.0]
    await first.close()
    await second.close()


async def test_a_database_the_check_cannot_reach_is_announced_and_its_recovery_too(viewer, monkeypatch) -> None:
    now = now_us()
    await actions.ingest([temp(0.0, now - 5 * US)])
    client = await Viewer.connect(viewer)
    await client.subscribe()

    def unreachable(*args):
        from django.db import OperationalError

        raise OperationalError("connection refused")

    monkeypatch.setattr(reconcile, "bucket_counts", unreachable)
    hub = Hub.get()
    from django.db import OperationalError

    with pytest.raises(OperationalError):
        await hub.reconcile()
    hub._database_failed(RuntimeError("connection refused"))
    degraded = await client.next("degraded")
    assert degraded["reason"] == "database" and degraded["state"] == "degraded" and degraded["since"] > 0
    monkeypatch.undo()
    await hub.reconcile()
    recovered = await client.next("degraded")
    assert recovered["reason"] == "database" and recovered["state"] == "ok"
    assert recovered["since"] == degraded["since"]
    await client.close()


async def test_a_layer_that_stops_answering_is_announced_within_two_heartbeats(viewer, monkeypatch) -> None:
    monkeypatch.setitem(settings.PULSEBOARD, "LIVE_HEARTBEAT_S", 0.6)
    client = await Viewer.connect(viewer)
    hub = Hub.get()
    assert hub.heartbeat_s == 0.6
    layer = hub.layer
    hung = asyncio.Event()
    send = layer.send

    async def hanging_send(channel: str, message: dict) -> None:
        if message.get("type") == "hub.probe" and not hung.is_set():
            await asyncio.sleep(3600)
        await send(channel, message)

    monkeypatch.setattr(layer, "send", hanging_send)
    loop = asyncio.get_running_loop()
    started = loop.time()
    degraded = await client.next("degraded", timeout=2 * hub.heartbeat_s + 1)
    print(f"degraded notice after {loop.time() - started:.2f} s (heartbeat {hub.heartbeat_s} s)")
    assert degraded["reason"] == "layer" and degraded["state"] == "degraded"
    hung.set()
    recovered = await client.next("degraded", timeout=5)
    assert recovered["reason"] == "layer" and recovered["state"] == "ok"
    await client.close()


async def test_a_metric_whose_source_misses_three_intervals_is_announced_stale_then_fresh(viewer) -> None:
    now = now_us()
    await actions.ingest([temp(0.0, now)])
    await Source.objects.filter(slug="iot.probe").aupdate(expected_interval_s=0.2)
    client = await Viewer.connect(viewer)
    await client.subscribe()
    stale = await client.next("stale", timeout=5)
    assert stale == {"type": "stale", "metrics": [KEY], "state": "stale", "since": stale["since"]}
    await actions.ingest([temp(1.0, now_us())])
    fresh = await client.next("stale", timeout=5)
    assert fresh["metrics"] == [KEY] and fresh["state"] == "ok"
    await client.close()
