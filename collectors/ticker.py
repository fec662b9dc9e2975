"""An exchange WebSocket feed in the Coinbase Exchange protocol: prices, trades into candles, gaps counted.

Protocol (Coinbase Exchange WebSocket feed, wss://ws-feed.exchange.coinbase.com,
https://docs.cdp.coinbase.com/exchange/websocket-feed/overview):

* the client sends `{"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["ticker", "heartbeat", "matches"]}`;
* the server answers `{"type": "subscriptions", "channels": [...]}` and then streams
  `ticker` (price, best_bid, best_ask, time), `match` / `last_match` (trade_id,
  price, size, side, time) and `heartbeat` (once a second per product) messages,
  each with the product's `sequence` number, and `error` messages.

Readings: `<source_prefix><symbol>.last/bid/ask` from ticker messages, and
`candle_1s.*` / `candle_1m.*` (open, high, low, close, volume) built from
matches (collectors/candles.py). A `sequence` that jumps ahead is a gap: counted
in `gaps` and logged (on the public feed the ticker channel may skip messages
under load, so a gap means "updates were missed", not "data is wrong"); an
older or repeated one is dropped. A closed socket, or silence longer than
`silence_timeout_s` (heartbeats stopped), is a reconnect with exponential
backoff and jitter, then the same subscription again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import websockets

from collectors.base import Collector, Reading, slugify_key
from collectors.candles import DEFAULT_INTERVALS_S, CandleBuilder
from collectors.reading import US, now_us
from collectors.retry import Backoff, Schedule

log = logging.getLogger("collectors.ticker")

DEFAULT_URL = "wss://ws-feed.exchange.coinbase.com"
DEFAULT_CHANNELS = ("ticker", "heartbeat", "matches")
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
SILENCE_TIMEOUT_S = 5.0  # heartbeats come every second; five missing means the feed is dead
MAX_MESSAGE_BYTES = 1 << 20


def exchange_time(text: Any) -> int | None:
    """Return an exchange ISO 8601 time ("2022-10-19T23:28:22.061769Z") in µs, or None."""
    if not isinstance(text, str):
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * US)
    except ValueError:
        return None


def number(value: Any) -> float | None:
    """Return an exchange decimal string ("1285.22") as a float, or None."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if result == result and abs(result) != float("inf") else None


class TickerCollector(Collector):
    """Subscribe to products on an exchange feed and yield prices and closed candles."""

    kind = "ticker"

    def __init__(
        self,
        name: str | None = None,
        interval_s: float | None = None,
        url: str = DEFAULT_URL,
        product_ids: list[str] | None = None,
        channels: list[str] | None = None,
        source_prefix: str = "market.",
        candle_intervals_s: list[int] | None = None,
        silence_timeout_s: float = SILENCE_TIMEOUT_S,
        venue: str = "coinbase",
        **options: Any,
    ) -> None:
        super().__init__(name, interval_s, **options)
        self.url = url
        self.product_ids = list(product_ids or ["BTC-USD"])
        self.channels = list(channels or DEFAULT_CHANNELS)
        self.source_prefix = source_prefix
        self.silence_timeout_s = silence_timeout_s
        self.venue = venue
        self.candles = CandleBuilder(candle_intervals_s or DEFAULT_INTERVALS_S, {"venue": venue})
        self.sequences: dict[str, int] = {}
        self.gaps = 0  # sequence jumps (messages missed)
        self.missed = 0  # sequence numbers skipped over all gaps
        self.stale = 0  # messages with an old or repeated sequence, dropped
        self.connects = 0
        self.reconnects = 0
        self.heartbeats = 0
        self._last_ts: dict[str, int] = {}

    def source(self, product_id: str) -> str:
        return self.source_prefix + slugify_key(product_id)

    def subscribe_message(self) -> dict[str, Any]:
        return {"type": "subscribe", "product_ids": self.product_ids, "channels": self.channels}

    def check_sequence(self, product_id: str, sequence: Any) -> bool:
        """Return False for a message to drop (old or repeated); count and log a jump ahead."""
        if isinstance(sequence, bool) or not isinstance(sequence, int):
            return True
        last = self.sequences.get(product_id)
        if last is not None:
            if sequence <= last:
                self.stale += 1
                return False
            if sequence > last + 1:
                self.gaps += 1
                self.missed += sequence - last - 1
                log.warning(
                    "%s: sequence gap on %s: %d -> %d (%d missed; %d gaps so far)",
                    self.name, product_id, last, sequence, sequence - last - 1, self.gaps,
                )  # fmt: skip
        self.sequences[product_id] = sequence
        return True

    def _unique_ts(self, key: str, ts: int) -> int:
        # Two updates in the same microsecond would collide on (metric, ts); nudge the later one.
        ts = max(ts, self._last_ts.get(key, 0) + 1)
        self._last_ts[key] = ts
        return ts

    def handle(self, message: Any) -> list[Reading]:
        """Return the readings one feed message yields (often none); count what cannot be read."""
        if not isinstance(message, dict):
            self.errors += 1
            return []
        kind = message.get("type")
        if kind in ("subscriptions", None):
            return []
        if kind == "error":
            self.errors += 1
            log.error("%s: the exchange says: %s %s", self.name, message.get("message"), message.get("reason", ""))
            return []
        product_id = message.get("product_id")
        if not isinstance(product_id, str) or not product_id:
            self.errors += 1
            return []
        if not self.check_sequence(product_id, message.get("sequence")):
            return []
        source = self.source(product_id)
        ts = exchange_time(message.get("time"))
        if kind == "heartbeat":
            self.heartbeats += 1
            return self.candles.advance(ts, source) if ts is not None else []
        if ts is None:
            self.errors += 1
            log.warning("%s: %s message without a readable time: %.200s", self.name, kind, message)
            return []
        labels = {"name": product_id, "venue": self.venue}
        if kind == "ticker":
            out = []
            for metric, field in (("last", "price"), ("bid", "best_bid"), ("ask", "best_ask")):
                value = number(message.get(field))
                if value is not None:
                    at = self._unique_ts(f"{source}.{metric}", ts)
                    out.append(Reading(source, metric, at, value, "", "price", "feed", labels))
            return out
        if kind in ("match", "last_match"):
            price, size = number(message.get("price")), number(message.get("size"))
            if price is None or size is None:
                self.errors += 1
                log.warning("%s: match without price or size: %.200s", self.name, message)
                return []
            return self.candles.add_trade(source, ts, price, size)
        return []  # other channels: nothing to store

    async def batches(self) -> AsyncIterator[list[Reading]]:
        backoff = Backoff(Schedule(BACKOFF_START_S, max_s=BACKOFF_MAX_S, jitter=0.5))
        while True:
            try:
                async with websockets.connect(self.url, max_size=MAX_MESSAGE_BYTES, open_timeout=10) as socket:
                    self.connects += 1
                    if self.connects > 1:
                        self.reconnects += 1
                        log.info("%s: reconnected to %s; subscribing again", self.name, self.url)
                    await socket.send(json.dumps(self.subscribe_message()))
                    while True:
                        try:
                            async with asyncio.timeout(self.silence_timeout_s):
                                raw = await socket.recv()
                        except TimeoutError:
                            log.warning("%s: no message for %.0f s; reconnecting", self.name, self.silence_timeout_s)
                            break
                        backoff.reset()
                        try:
                            message = json.loads(raw)
                        except ValueError:
                            self.errors += 1
                            log.warning("%s: a message that is not JSON: %.200r", self.name, raw)
                            continue
                        readings = self.handle(message)
                        if readings:
                            yield readings
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                log.warning("%s: feed %s lost (%s: %s)", self.name, self.url, type(exc).__name__, exc)
            await asyncio.sleep(backoff.next())

    def final_readings(self) -> list[Reading]:
        """Return the open candles (when the collector is stopped for good)."""
        return self.candles.flush()


def now_iso(ts: int | None = None) -> str:
    """Return µs as the exchange's time format (used by the fake exchange and replays)."""
    ts = now_us() if ts is None else ts
    return datetime.fromtimestamp(ts / US, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
