"""A simulated IoT sensor fleet: temperature, humidity and battery per device, with noise, drift and dropouts."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

from collectors.base import Collector, Reading
from collectors.reading import US, now_us


@dataclass
class _Device:
    slug: str
    base_temp: float
    drift: float
    humidity: float
    battery: float
    silent_until: float = 0.0


class IotFleetSimulator(Collector):
    """N devices reporting every interval; each may go silent for a while, as real radios do."""

    kind = "iot_sim"
    default_interval_s = 2.0

    def __init__(
        self,
        name: str | None = None,
        interval_s: float | None = None,
        devices: int = 8,
        prefix: str = "iot.sensor",
        dropout_probability: float = 0.005,
        seed: int | None = None,
        **options,
    ) -> None:
        super().__init__(name, interval_s, **options)
        self.random = random.Random(seed)
        self.dropout_probability = dropout_probability
        self.devices = [
            _Device(
                slug=f"{prefix}-{i + 1:02d}",
                base_temp=self.random.uniform(18, 26),
                drift=self.random.uniform(-0.002, 0.002),
                humidity=self.random.uniform(35, 60),
                battery=self.random.uniform(60, 100),
            )
            for i in range(devices)
        ]

    def sample(self, ts: int) -> list[Reading]:
        """Return this round's readings from every device that is not in a dropout."""
        out: list[Reading] = []
        seconds = ts / US
        for device in self.devices:
            if seconds < device.silent_until:
                continue
            if self.random.random() < self.dropout_probability:
                device.silent_until = seconds + self.random.uniform(5, 30)
                continue
            device.base_temp += device.drift * self.interval_s
            daily = 1.5 * math.sin(2 * math.pi * (seconds % 86400) / 86400)
            temperature = device.base_temp + daily + self.random.gauss(0, 0.15)
            device.humidity = min(95.0, max(10.0, device.humidity + self.random.gauss(0, 0.3)))
            device.battery = max(0.0, device.battery - self.random.uniform(0, 0.002) * self.interval_s)
            labels = {"name": device.slug, "model": "pb-sim-1"}
            out += [
                Reading(device.slug, "temperature", ts, round(temperature, 3), "°C", "gauge", "device", labels),
                Reading(device.slug, "humidity", ts, round(device.humidity, 2), "%", "gauge", "device", labels),
                Reading(device.slug, "battery", ts, round(device.battery, 3), "%", "gauge", "device", labels),
            ]
        return out

    async def batches(self) -> AsyncIterator[list[Reading]]:
        while True:
            batch = self.sample(now_us())
            if batch:
                yield batch
            await asyncio.sleep(self.interval_s)
