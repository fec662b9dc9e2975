from __future__ import annotations

import asyncio
import os

import psutil
import pytest

from collectors.base import Collector, Reading
from collectors.iot_sim import IotFleetSimulator
from collectors.market_sim import MarketSimulator
from collectors.registry import build
from collectors.runner import Runner
from collectors.sinks import Sink
from collectors.system import SystemCollector
from dashboard.timeutil import now_us
from dashboard.validation import check_reading

pytestmark = pytest.mark.usefixtures("clock")


def test_the_system_collector_reads_sane_values_from_psutil() -> None:
    collector = SystemCollector(host="Test Host")
    collector.sample()
    readings = {r.metric: r for r in collector.sample()}
    assert all(r.source == "host.test-host" for r in readings.values())
    assert 0 <= readings["cpu.total"].value <= 100
    assert sum(1 for m in readings if m.startswith("cpu.core")) == psutil.cpu_count()
    assert readings["mem.available"].value > 0 and readings["mem.available"].unit == "B"
    assert readings["load.1m"].value == pytest.approx(os.getloadavg()[0], abs=5)
    assert readings["procs.count"].value > 1
    assert readings["net.rx_bps"].value >= 0 and readings["disk.write_bps"].value >= 0
    for reading in readings.values():
        check_reading(reading)  # every reading passes the ingest rules


def test_the_iot_fleet_reports_every_device_with_plausible_values() -> None:
    fleet = IotFleetSimulator(devices=5, dropout_probability=0, seed=1)
    readings = fleet.sample(now_us())
    assert {r.source for r in readings} == {f"iot.sensor-{i:02d}" for i in range(1, 6)}
    temps = [r.value for r in readings if r.metric == "temperature"]
    assert all(10 < t < 35 for t in temps)
    assert all(0 <= r.value <= 100 for r in readings if r.metric in ("humidity", "battery"))


def test_an_iot_device_in_a_dropout_sends_nothing() -> None:
    fleet = IotFleetSimulator(devices=3, dropout_probability=1.0, seed=2)
    assert fleet.sample(now_us()) == []


def test_market_ticks_keep_bid_below_ask_and_prices_positive() -> None:
    market = MarketSimulator(symbols=["BTC-USD", "AAPL"], seed=3, volatility=2.0)
    for _ in range(500):
        ticks = {(r.source, r.metric): r.value for r in market.sample(now_us())}
    for source in ("market.btc-usd", "market.aapl"):
        assert 0 < ticks[(source, "bid")] < ticks[(source, "last")] < ticks[(source, "ask")]
        assert ticks[(source, "volume")] >= 0


def test_the_registry_builds_collectors_from_config_and_names_unknown_kinds() -> None:
    assert isinstance(build({"kind": "iot_sim", "devices": 2}), IotFleetSimulator)
    with pytest.raises(KeyError, match="known kinds"):
        build({"kind": "telepathy"})


class ListSink(Sink):
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    async def put(self, readings: list[Reading]) -> None:
        self.readings.extend(readings)


class Flaky(Collector):
    kind = "flaky"

    def __init__(self) -> None:
        super().__init__("flaky", 0.01)
        self.calls = 0

    async def batches(self):
        self.calls += 1
        raise RuntimeError("sensor unplugged")
        yield []


class Steady(Collector):
    kind = "steady"

    async def batches(self):
        while True:
            yield [Reading("test.steady", "n", now_us(), 1.0)]
            await asyncio.sleep(0.01)


async def test_the_runner_keeps_good_collectors_running_when_one_fails(monkeypatch) -> None:
    monkeypatch.setattr("collectors.runner.MAX_BACKOFF_S", 0.02)
    sink = ListSink()
    flaky = Flaky()
    runner = Runner([flaky, Steady("steady", 0.01)], sink)
    task = asyncio.create_task(runner.run())
    async with asyncio.timeout(10):
        while flaky.calls < 3 or len(sink.readings) < 10:
            await asyncio.sleep(0.01)
    runner.request_stop()
    await asyncio.wait_for(task, 5)
    assert runner.failures["flaky"] >= 3
    assert runner.failures["steady"] == 0
