"""This host's vital signs from psutil, once a second."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator

import psutil

from collectors.base import Collector, Reading, slugify_key
from collectors.reading import now_us


class SystemCollector(Collector):
    """CPU (total and per core), load, memory, swap, disk usage and I/O rates, network rates, process count."""

    kind = "system"
    default_interval_s = 1.0

    def __init__(
        self,
        name: str | None = None,
        interval_s: float | None = None,
        host: str | None = None,
        disk_path: str = "/",
        **options,
    ) -> None:
        super().__init__(name, interval_s, **options)
        self.source = "host." + slugify_key(host or socket.gethostname())
        self.disk_path = disk_path
        self._last_io: tuple[float, psutil._common.sdiskio | None, psutil._common.snetio | None] | None = None

    def sample(self) -> list[Reading]:
        """Return one round of readings (blocking calls, all fast)."""
        ts = now_us()
        values: list[tuple[str, float, str, str]] = []
        values.append(("cpu.total", psutil.cpu_percent(interval=None), "%", "gauge"))
        for index, percent in enumerate(psutil.cpu_percent(interval=None, percpu=True)):
            values.append((f"cpu.core{index}", percent, "%", "gauge"))
        for label, load in zip(("1m", "5m", "15m"), os.getloadavg(), strict=True):
            values.append((f"load.{label}", load, "", "gauge"))
        memory = psutil.virtual_memory()
        values += [
            ("mem.used_pct", memory.percent, "%", "gauge"),
            ("mem.available", float(memory.available), "B", "gauge"),
            ("mem.used", float(memory.used), "B", "gauge"),
        ]
        swap = psutil.swap_memory()
        values.append(("swap.used_pct", swap.percent, "%", "gauge"))
        disk = psutil.disk_usage(self.disk_path)
        values += [("disk.used_pct", disk.percent, "%", "gauge"), ("disk.free", float(disk.free), "B", "gauge")]
        values.append(("procs.count", float(len(psutil.pids())), "", "gauge"))

        now = time.monotonic()
        disk_io = psutil.disk_io_counters()
        net_io = psutil.net_io_counters()
        if self._last_io is not None:
            then, last_disk, last_net = self._last_io
            elapsed = max(now - then, 1e-3)
            if disk_io and last_disk:
                values += [
                    ("disk.read_bps", (disk_io.read_bytes - last_disk.read_bytes) / elapsed, "B/s", "rate"),
                    ("disk.write_bps", (disk_io.write_bytes - last_disk.write_bytes) / elapsed, "B/s", "rate"),
                ]
            if net_io and last_net:
                values += [
                    ("net.rx_bps", (net_io.bytes_recv - last_net.bytes_recv) / elapsed, "B/s", "rate"),
                    ("net.tx_bps", (net_io.bytes_sent - last_net.bytes_sent) / elapsed, "B/s", "rate"),
                ]
        self._last_io = (now, disk_io, net_io)
        return [
            Reading(self.source, metric, ts, float(value), unit, kind, "host", {"name": socket.gethostname()})
            for metric, value, unit, kind in values
        ]

    async def batches(self) -> AsyncIterator[list[Reading]]:
        # psutil keeps cpu_percent's reference point per thread, so sampling
        # stays on the event loop thread (each round takes about a millisecond).
        self.sample()  # prime: the first round has no interval to measure
        while True:
            await asyncio.sleep(self.interval_s)
            yield self.sample()
