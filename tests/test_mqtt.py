"""The MQTT collector on the real Mosquitto: mosquitto_pub to a live frame, bad payloads, reconnects."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import pytest
from channels.testing import WebsocketCommunicator

from collectors.mqtt import MqttCollector, PayloadError, TopicPattern, parse_payload
from collectors.runner import Runner
from collectors.sinks import LocalSink
from dashboard.live.websocket import LiveConsumer
from dashboard.models import Metric, Sample, Source
from dashboard.timeutil import US, now_us

pytestmark = pytest.mark.usefixtures("clock")  # readings are stamped in this process: run at fixed instants

MOSQUITTO_PUB = shutil.which("mosquitto_pub") or next(
    (p for p in ["/usr/bin/mosquitto_pub"] if os.path.exists(p)), None
)
FRAME_TIMEOUT_S = 10.0  # generous: the latency is measured and printed, not asserted
PROBE_WAIT_S = 0.5  # a probe not stored by then was published before the subscription: send another


# --- Pure parts ---------------------------------------------------------------------------------


def test_a_pattern_subscribes_with_wildcards_and_extracts_device_and_metric() -> None:
    pattern = TopicPattern.parse("sensors/{device}/{metric}")
    assert pattern.subscription == "sensors/+/+"
    assert pattern.match("sensors/boiler-1/temperature") == ("boiler-1", "temperature")
    assert pattern.match("sensors/boiler-1") is None
    assert pattern.match("other/boiler-1/temperature") is None
    assert TopicPattern.parse("site/+/{metric}").match("site/x/rssi") == (None, "rssi")


@pytest.mark.parametrize("bad", ["sensors/{device}", "a/{dev}/{metric}", "a/#/{metric}"])
def test_a_pattern_without_a_metric_or_with_unknown_placeholders_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        TopicPattern.parse(bad)


def test_payloads_may_be_plain_numbers_or_json() -> None:
    assert parse_payload(b" 21.5 ") == (21.5, None, "")
    assert parse_payload(b"-3") == (-3.0, None, "")
    assert parse_payload(b'{"value": 7, "ts": 1700000000000, "unit": "%"}') == (7.0, 1_700_000_000 * US, "%")
    assert parse_payload(b'{"value": 1, "ts": "2023-11-14T22:13:20Z"}')[1] == 1_700_000_000 * US


@pytest.mark.parametrize(
    "payload",
    [
        b"warm",
        b"",
        b"true",
        b'"21"',
        b"NaN",
        b'{"val": 1}',
        b'{"value": "x"}',
        b'{"value": 1, "ts": "yesterday"}',
        b"\xff",
        b"[1]",
        b"1e999",
    ],
)
def test_malformed_payloads_are_refused_with_a_reason(payload: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_payload(payload)


def test_a_malformed_message_is_counted_and_logged_with_its_topic(caplog) -> None:
    collector = MqttCollector(topics=["s/{device}/{metric}"])
    assert collector.reading("s/d1/temp", b"oops", now_us()) is None
    assert collector.reading("elsewhere", b"1", now_us()) is None
    assert collector.errors == 2
    assert "s/d1/temp" in caplog.text
    reading = collector.reading("s/Dev 1/Temp", b"2", 5)
    assert reading is not None
    assert (reading.source, reading.metric, reading.ts, reading.source_kind) == ("iot.dev-1", "temp", 5, "device")


# --- On the real broker -------------------------------------------------------------------------


async def publish(url: str, topic: str, payload: str, *extra: str) -> None:
    parsed = urlparse(url)
    process = await asyncio.create_subprocess_exec(
        MOSQUITTO_PUB or "mosquitto_pub",
        "-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 1883),
        "-q", "1", "-t", topic, "-m", payload, *extra,
    )  # fmt: skip
    assert await process.wait() == 0


async def wait_until(condition, timeout_s: float = FRAME_TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not await condition():
            await asyncio.sleep(0.02)


async def until_subscribed(url: str, prefix: str, timeout_s: float = FRAME_TIMEOUT_S) -> None:
    """Publish probes until one is stored: the collector's subscription is then in place at the broker.

    A message published before the broker has the subscription is dropped, so
    each probe that does not arrive within PROBE_WAIT_S is followed by another.
    """
    probe = f"probe-{uuid.uuid4().hex[:6]}"
    arrived = Metric.objects.filter(key=f"iot.{probe}.ready").aexists
    async with asyncio.timeout(timeout_s):
        while True:
            await publish(url, f"{prefix}/{probe}/ready", "1")
            try:
                await wait_until(arrived, timeout_s=PROBE_WAIT_S)
                return
            except TimeoutError:
                continue


async def next_data(communicator: WebsocketCommunicator, key: str, timeout_s: float = FRAME_TIMEOUT_S) -> list[float]:
    async with asyncio.timeout(timeout_s):
        while True:
            frame = json.loads(await communicator.receive_from(timeout=timeout_s))
            if frame["type"] == "data":
                values = [v for b in frame["batches"] if b["k"] == key for v in b["v"]]
                if values:
                    return values


@pytest.fixture
async def running(mqtt_url: str) -> AsyncIterator[tuple[MqttCollector, str]]:
    if MOSQUITTO_PUB is None:
        pytest.skip("needs the mosquitto_pub command (apt install mosquitto-clients)")
    prefix = f"pbtest/{uuid.uuid4().hex[:8]}"
    collector = MqttCollector(
        url=mqtt_url,
        topics=[prefix + "/{device}/{metric}"],
        source_prefix="iot.",
        client_id=f"pulseboard-test-{uuid.uuid4().hex[:8]}",
    )
    runner = Runner([collector], LocalSink())
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: _true(collector.connects >= 1))
    await until_subscribed(mqtt_url, prefix)
    yield collector, prefix
    runner.request_stop()
    await task


async def _true(value: bool) -> bool:
    return value


@pytest.mark.mqtt
@pytest.mark.django_db(transaction=True)
async def test_a_published_value_reaches_a_subscribed_socket(
    running: tuple[MqttCollector, str], mqtt_url: str, owner
) -> None:
    collector, prefix = running
    device = f"dev-{uuid.uuid4().hex[:6]}"
    key = f"iot.{device}.temperature"
    await publish(mqtt_url, f"{prefix}/{device}/temperature", "20.0")
    await wait_until(lambda: Metric.objects.filter(key=key).aexists())
    source = await Source.objects.aget(slug=f"iot.{device}")
    assert source.kind == "device"  # a new device appears as a source by itself

    communicator = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
    communicator.scope["user"] = owner
    connected, _ = await communicator.connect()
    assert connected
    try:
        assert json.loads(await communicator.receive_from())["type"] == "hello"
        await communicator.send_to(json.dumps({"type": "subscribe", "id": 1, "metrics": [key], "history_s": 0}))
        assert json.loads(await communicator.receive_from())["type"] == "subscribed"

        latencies = []
        for value in (21.5, 22.5, 23.5):
            started = time.perf_counter()
            await publish(mqtt_url, f"{prefix}/{device}/temperature", json.dumps({"value": value, "unit": "°C"}))
            assert await next_data(communicator, key) == [value]
            latencies.append(time.perf_counter() - started)
        print(
            f"\nmosquitto_pub -> live frame: {', '.join(f'{s * 1000:.0f} ms' for s in latencies)} "
            "(including the mosquitto_pub process start)"
        )
    finally:
        await communicator.disconnect()
    assert await Sample.objects.filter(metric__key=key).acount() == 4
    assert collector.errors == 0


@pytest.mark.mqtt
@pytest.mark.django_db(transaction=True)
async def test_malformed_payloads_are_counted_and_the_collector_keeps_going(
    running: tuple[MqttCollector, str], mqtt_url: str
) -> None:
    collector, prefix = running
    device = f"dev-{uuid.uuid4().hex[:6]}"
    for payload in ("not-a-number", '{"value": "x"}', "NaN"):
        await publish(mqtt_url, f"{prefix}/{device}/humidity", payload)
    await publish(mqtt_url, f"{prefix}/{device}/humidity", json.dumps({"value": 41, "ts": now_us() // 1000}))
    await wait_until(lambda: Sample.objects.filter(metric__key=f"iot.{device}.humidity").aexists())
    assert collector.errors == 3
    assert (await Sample.objects.aget(metric__key=f"iot.{device}.humidity")).value == 41.0


@pytest.mark.mqtt
@pytest.mark.django_db(transaction=True)
async def test_the_collector_reconnects_and_subscribes_again_after_losing_the_broker(
    running: tuple[MqttCollector, str], mqtt_url: str
) -> None:
    collector, prefix = running
    # The broker drops a client when another connects with the same id: a real disconnect.
    await publish(mqtt_url, f"{prefix}/kick/x", "0", "-i", collector.client_id or "")
    await wait_until(lambda: _true(collector.reconnects >= 1), timeout_s=20)
    await until_subscribed(mqtt_url, prefix)  # subscribed again on the new connection
    device = f"dev-{uuid.uuid4().hex[:6]}"
    await publish(mqtt_url, f"{prefix}/{device}/rssi", "-61")
    await wait_until(lambda: Sample.objects.filter(metric__key=f"iot.{device}.rssi").aexists())
    print(f"\nreconnects: {collector.reconnects}")
