"""Play a CSV of trades as a market feed, at real or accelerated speed; finite: it ends with the file.

The CSV has a header and the columns `time` (ISO 8601, or epoch seconds),
`symbol`, `price`, `size` and optionally `side`, in time order. Each trade
becomes a `last` price reading and is folded into candles (collectors/candles.py);
the open candles are emitted when the file ends.

Timestamps: with `rebase` (the default) the file's times are moved so the
replay happens now (the server refuses samples older than its retention or
far in the future): at `speed` > 0 the first trade is "now" and the rest
follow at 1/speed of their original spacing; at `speed` = 0 (as fast as
possible) the whole file lands in the recent past, keeping its spacing and,
moved by whole candle intervals, its candles.
Without `rebase` the original times are kept.
"""

from __future__ import annotations

import asyncio
import csv
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collectors.base import Collector, Reading, slugify_key
from collectors.candles import DEFAULT_INTERVALS_S, CandleBuilder
from collectors.reading import US, now_us
from collectors.ticker import exchange_time, number

log = logging.getLogger("collectors.replay")

MAX_SLEEP_S = 5.0  # sleep in slices so a stop request is never kept waiting for a long gap in the file
BATCH_WINDOW_US = 20_000  # trades due within 20 ms of each other go out as one batch


@dataclass(slots=True)
class Tick:
    ts: int  # µs, original
    symbol: str
    price: float
    size: float


def read_ticks(path: Path) -> Iterator[Tick | str]:
    """Yield each row as a Tick, or a string saying why the row was skipped."""
    with path.open(newline="") as handle:
        for line_no, row in enumerate(csv.DictReader(handle), start=2):
            raw_time = (row.get("time") or "").strip()
            ts = exchange_time(raw_time)
            if ts is None:
                seconds = number(raw_time)
                ts = int(seconds * US) if seconds is not None else None
            price, size = number(row.get("price")), number(row.get("size") or 0)
            symbol = (row.get("symbol") or "").strip()
            if ts is None or price is None or size is None or not symbol:
                yield f"line {line_no}: needs time, symbol, price and size, got {dict(row)}"
                continue
            yield Tick(ts, symbol, price, size)


class ReplayCollector(Collector):
    """Replay a CSV of trades; the runner sees a finite collector and stops driving it at the end."""

    kind = "replay"

    def __init__(
        self,
        name: str | None = None,
        interval_s: float | None = None,
        path: str = "ticks.csv",
        speed: float = 1.0,
        rebase: bool = True,
        source_prefix: str = "market.",
        candle_intervals_s: list[int] | None = None,
        venue: str = "replay",
        **options: Any,
    ) -> None:
        super().__init__(name, interval_s, **options)
        self.path = Path(path)
        if speed < 0:
            raise ValueError(f"{self.name}: speed must be 0 (as fast as possible) or positive")
        self.speed = float(speed)
        self.rebase = rebase
        self.source_prefix = source_prefix
        self.venue = venue
        self.candles = CandleBuilder(candle_intervals_s or DEFAULT_INTERVALS_S, {"venue": venue})
        self.played = 0
        self._last_ts: dict[str, int] = {}

    def _span(self) -> tuple[int, int]:
        times = [t.ts for t in read_ticks(self.path) if isinstance(t, Tick)]
        return (min(times), max(times)) if times else (0, 0)

    def _readings(self, tick: Tick, ts: int) -> list[Reading]:
        source = self.source_prefix + slugify_key(tick.symbol)
        at = max(ts, self._last_ts.get(source, 0) + 1)  # two trades in one µs would collide
        self._last_ts[source] = at
        labels = {"name": tick.symbol, "venue": self.venue}
        out = [Reading(source, "last", at, tick.price, "", "price", "feed", labels)]
        return out + self.candles.add_trade(source, at, tick.price, tick.size)

    async def batches(self) -> AsyncIterator[list[Reading]]:
        if not self.path.exists():
            raise FileNotFoundError(f"{self.name}: {self.path} does not exist")
        first, last = await asyncio.to_thread(self._span)
        started_wall = now_us()
        if not self.rebase:
            offset = 0
        elif self.speed == 0:
            # The whole file in the recent past, moved by whole candle intervals so it cuts the same candles.
            step = max(self.candles.intervals) * US
            offset = (started_wall - last) // step * step
        else:
            offset = started_wall - first
        loop = asyncio.get_running_loop()
        started_mono = loop.time()
        batch: list[Reading] = []
        batch_due = 0.0
        for tick in read_ticks(self.path):
            if isinstance(tick, str):
                self.errors += 1
                log.warning("%s: %s: %s", self.name, self.path, tick)
                continue
            elapsed_us = (tick.ts - first) / self.speed if self.speed else 0
            ts = first + offset + int(elapsed_us) if self.rebase and self.speed else tick.ts + offset
            due = started_mono + elapsed_us / US
            if batch and due - batch_due > BATCH_WINDOW_US / US:
                yield batch
                batch = []
            if not batch:
                batch_due = due
                while (wait := due - loop.time()) > 0:
                    await asyncio.sleep(min(wait, MAX_SLEEP_S))
            batch += self._readings(tick, ts)
            self.played += 1
        batch += self.candles.flush()
        if batch:
            yield batch
        log.info("%s: replayed %d trades from %s", self.name, self.played, self.path)
