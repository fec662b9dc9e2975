"""Retained MQTT messages on the real Mosquitto: skipped by default, taken once per value when asked, across restarts.

A retained message without a timestamp used to become a new reading, stamped
with the time of arrival, every time the agent started or reconnected.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest

from collectors.mqtt import MqttCollector, parse_url
from collectors.sinks import HttpSink
from dashboard.timeutil import now_us
from dashboard.validation import Reading

DEADLINE_S = 15.0


@pytest.fixture
def root() -> str:
    return f"pbtest-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def publisher(mqtt_url: str, root: str) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(**parse_url(mqtt_url)) as client:
        try:
            yield client
        finally:  # an empty retained payload deletes the retained message
            for device in ("boiler", "attic"):
                await client.publish(f"{root}/{device}/temp", b"", qos=1, retain=True)


async def run_until_sentinel(collector: MqttCollector, mqtt_url: str, root: str) -> list[Reading]:
    """Run the collector (a fresh connection: an agent start) until a live sentinel arrives; return its readings.

    The broker hands a new subscription its retained messages before anything
    published later, so once the sentinel is in, every retained message was seen.
    """
    readings: list[Reading] = []

    async def collect() -> None:
        async for batch in collector.batches():
            readings.extend(batch)

    task = asyncio.create_task(collect())
    try:
        async with aiomqtt.Client(**parse_url(mqtt_url)) as client, asyncio.timeout(DEADLINE_S):
            sentinel = 0
            # Published until one arrives: a message sent before the collector has subscribed reaches no one.
            while not any(r.source.endswith("sentinel") for r in readings):
                sentinel += 1
                await client.publish(f"{root}/sentinel/n", str(sentinel).encode(), qos=1)
                await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return [r for r in readings if not r.source.endswith("sentinel")]


def collector_for(mqtt_url: str, root: str, **options) -> MqttCollector:
    return MqttCollector(name="mqtt-test", url=mqtt_url, topics=[f"{root}/{{device}}/{{metric}}"], **options)


async def test_retained_messages_are_skipped_by_default_and_counted(mqtt_url: str, root: str) -> None:
    async with publisher(mqtt_url, root) as client:
        await client.publish(f"{root}/boiler/temp", b"61.5", qos=1, retain=True)
        for _ in range(2):  # two agent starts: no phantom reading at either
            collector = collector_for(mqtt_url, root)
            taken = await run_until_sentinel(collector, mqtt_url, root)
            assert taken == []
            assert collector.health()["retained_skipped"] == 1
            assert collector.health()["retained_taken"] == 0


async def test_accept_retained_takes_each_retained_value_once_across_restarts(
    mqtt_url: str, root: str, tmp_path: Path
) -> None:
    state = tmp_path / "agent-spool.sqlite3"
    async with publisher(mqtt_url, root) as client:
        await client.publish(f"{root}/boiler/temp", b"61.5", qos=1, retain=True)
        await client.publish(f"{root}/attic/temp", b'{"value": 19.0}', qos=1, retain=True)

        first = collector_for(mqtt_url, root, accept_retained=True, state_path=str(state))
        taken = await run_until_sentinel(first, mqtt_url, root)
        assert sorted((r.source, r.value) for r in taken) == [("iot.attic", 19.0), ("iot.boiler", 61.5)]

        # A restart: the same retained values are not taken again.
        second = collector_for(mqtt_url, root, accept_retained=True, state_path=str(state))
        assert await run_until_sentinel(second, mqtt_url, root) == []
        assert second.health()["retained_skipped"] == 2

        # A new retained value (published while the agent was away) is taken, once.
        await client.publish(f"{root}/boiler/temp", b"62.0", qos=1, retain=True)
        third = collector_for(mqtt_url, root, accept_retained=True, state_path=str(state))
        taken = await run_until_sentinel(third, mqtt_url, root)
        assert [(r.source, r.value) for r in taken] == [("iot.boiler", 62.0)]
        fourth = collector_for(mqtt_url, root, accept_retained=True, state_path=str(state))
        assert await run_until_sentinel(fourth, mqtt_url, root) == []


async def test_bad_payloads_are_counted_in_the_agents_health_readings(mqtt_url: str, root: str, tmp_path: Path) -> None:
    collector = collector_for(mqtt_url, root)
    readings: list[Reading] = []

    async def collect() -> None:
        async for batch in collector.batches():
            readings.extend(batch)

    task = asyncio.create_task(collect())
    try:
        async with aiomqtt.Client(**parse_url(mqtt_url)) as client, asyncio.timeout(DEADLINE_S):
            while not (readings and collector.bad_payloads):  # until subscribed and both came through
                await client.publish(f"{root}/boiler/temp", b"warm", qos=1)
                await client.publish(f"{root}/boiler/temp", b"61.5", qos=1)
                await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    bad = collector.health()["bad_payloads"]
    assert bad >= 1 and all(r.value == 61.5 for r in readings)

    sink = HttpSink("http://127.0.0.1:9", "pb_x_y", spool_path=tmp_path / "spool.sqlite3", agent_name="edge")
    sink.collectors = [collector]  # what the runner does
    health = {r.metric: r.value for r in sink.health_readings(now_us())}
    sink.spool.close()
    assert health["collector.mqtt-test.bad_payloads"] == bad
    assert health["collector.mqtt-test.errors"] == collector.errors
    assert "collector.mqtt-test.retained_skipped" in health
