"""Fold trades into OHLC candles and volume per symbol, for the market collectors (ticker, replay).

A candle covers [start, start + interval) and is emitted once, when it is
closed: when a trade or heartbeat of a later time arrives (exchange time,
not the local clock, so a replay at any speed cuts the same candles), or
at the end of a finite feed. Its readings carry the bucket start as their
timestamp: `<source>.candle_1m.open/high/low/close/volume`, so a candle
re-emitted after a restart is a duplicate the ingest action ignores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from collectors.reading import US, Reading

log = logging.getLogger("collectors.candles")

DEFAULT_INTERVALS_S = (1, 60)


def candle_name(interval_s: int) -> str:
    """Return the metric prefix of an interval: candle_1s, candle_1m, candle_1h, or candle_<n>s."""
    if interval_s % 3600 == 0:
        return f"candle_{interval_s // 3600}h"
    if interval_s % 60 == 0:
        return f"candle_{interval_s // 60}m"
    return f"candle_{interval_s}s"


@dataclass
class Candle:
    """One bucket of one symbol: first, highest, lowest and last price, and the traded size."""

    start: int  # µs
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int = 1

    def add(self, price: float, size: float) -> None:
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.close = price
        self.volume += size
        self.trades += 1


class CandleBuilder:
    """Per (source, interval) the open candle; closed candles come back as readings."""

    def __init__(
        self, intervals_s: list[int] | tuple[int, ...] = DEFAULT_INTERVALS_S, labels: dict[str, str] | None = None
    ) -> None:
        if not intervals_s or any(int(i) != i or i <= 0 for i in intervals_s):
            raise ValueError("candle_intervals_s must be positive whole seconds")
        self.intervals = [int(i) for i in intervals_s]
        self.labels = labels or {}
        self.open: dict[tuple[str, int], Candle] = {}
        self.late = 0  # trades older than their symbol's open candle: dropped, candles are emitted once

    def add_trade(self, source: str, ts: int, price: float, size: float) -> list[Reading]:
        """Fold one trade in; return the readings of any candle it closed."""
        out = self.advance(ts, source)
        for interval in self.intervals:
            start = ts - ts % (interval * US)
            candle = self.open.get((source, interval))
            if candle is None:
                self.open[(source, interval)] = Candle(start, price, price, price, price, size)
            elif start < candle.start:
                self.late += 1
                log.debug("late trade for %s at %d, candle %d already closed", source, ts, start)
            else:
                candle.add(price, size)
        return out

    def advance(self, now: int, source: str | None = None) -> list[Reading]:
        """Close candles (of one source, or all) whose bucket ended at or before `now` (exchange time)."""
        out: list[Reading] = []
        for (candle_source, interval), candle in list(self.open.items()):
            if source is not None and candle_source != source:
                continue
            if now >= candle.start + interval * US:
                out += self.readings(candle_source, interval, candle)
                del self.open[(candle_source, interval)]
        return out

    def flush(self) -> list[Reading]:
        """Close every open candle (end of a finite feed)."""
        out: list[Reading] = []
        for (source, interval), candle in sorted(self.open.items(), key=lambda item: item[1].start):
            out += self.readings(source, interval, candle)
        self.open.clear()
        return out

    def readings(self, source: str, interval: int, candle: Candle) -> list[Reading]:
        name = candle_name(interval)
        labels = {**self.labels, "interval_s": str(interval)}
        return [
            Reading(source, f"{name}.open", candle.start, candle.open, "", "price", "feed", labels),
            Reading(source, f"{name}.high", candle.start, candle.high, "", "price", "feed", labels),
            Reading(source, f"{name}.low", candle.start, candle.low, "", "price", "feed", labels),
            Reading(source, f"{name}.close", candle.start, candle.close, "", "price", "feed", labels),
            Reading(source, f"{name}.volume", candle.start, candle.volume, "", "volume", "feed", labels),
        ]
