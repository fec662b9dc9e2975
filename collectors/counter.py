"""A deterministic counter: readings whose values are 0, 1, 2, ... so tests can tell exactly what was produced.

Used by the agent outage test: every value is produced once, in order, with
a strictly increasing timestamp, and (with `log_path`) written to a file
before it is handed to the sink, so "stored exactly once" can be checked
against the producer's own record by count and checksum.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from collectors.base import Collector, Reading
from collectors.reading import now_us


class CounterCollector(Collector):
    """Yield `per_batch` readings of `<source>.<metric>` every interval, counting up from `start`."""

    kind = "counter"
    default_interval_s = 0.1

    def __init__(
        self,
        name: str | None = None,
        interval_s: float | None = None,
        source: str = "test.counter",
        metric: str = "n",
        per_batch: int = 5,
        start: int = 0,
        limit: int | None = None,
        log_path: str | None = None,
        **options,
    ) -> None:
        super().__init__(name, interval_s, **options)
        if per_batch < 1:
            raise ValueError(f"{self.name}: per_batch must be at least 1")
        self.source = source
        self.metric = metric
        self.per_batch = per_batch
        self.next_value = start
        self.limit = limit  # stop after this many readings (None: never)
        self.produced = 0
        self.log_path = Path(log_path) if log_path else None
        self._last_ts = 0

    def sample(self) -> list[Reading]:
        """Return the next batch; timestamps strictly increase so no two readings collide."""
        count = self.per_batch if self.limit is None else min(self.per_batch, self.limit - self.produced)
        out: list[Reading] = []
        for _ in range(count):
            self._last_ts = max(now_us(), self._last_ts + 1)
            out.append(Reading(self.source, self.metric, self._last_ts, float(self.next_value), "", "counter", "other"))
            self.next_value += 1
        self.produced += count
        return out

    async def batches(self) -> AsyncIterator[list[Reading]]:
        while self.limit is None or self.produced < self.limit:
            batch = self.sample()
            if self.log_path is not None:
                with self.log_path.open("a") as log:
                    log.writelines(f"{r.ts} {r.value:.0f}\n" for r in batch)
            yield batch
            await asyncio.sleep(self.interval_s)
