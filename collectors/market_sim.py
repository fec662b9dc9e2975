"""A simulated market: geometric Brownian motion ticks with bid, ask, last and volume per symbol."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator

from collectors.base import Collector, Reading, slugify_key
from collectors.reading import now_us

DEFAULT_SYMBOLS = {"BTC-USD": 65000.0, "ETH-USD": 3200.0, "SOL-USD": 150.0, "AAPL": 230.0, "EUR-USD": 1.08}
SECONDS_PER_YEAR = 365 * 86400


class MarketSimulator(Collector):
    """M symbols, each ticking a few times a second with GBM prices and a spread around the last trade."""

    kind = "market_sim"
    default_interval_s = 0.25

    def __init__(
        self,
        name: str | None = None,
        interval_s: float | None = None,
        symbols: dict[str, float] | list[str] | None = None,
        volatility: float = 0.6,
        drift: float = 0.0,
        spread_bps: float = 2.0,
        seed: int | None = None,
        **options,
    ) -> None:
        super().__init__(name, interval_s, **options)
        if symbols is None:
            symbols = DEFAULT_SYMBOLS
        if isinstance(symbols, list):
            symbols = {s: DEFAULT_SYMBOLS.get(s, 100.0) for s in symbols}
        self.prices = dict(symbols)
        self.volatility = volatility
        self.drift = drift
        self.spread = spread_bps / 10_000
        self.random = random.Random(seed)

    def step(self, price: float) -> float:
        """Advance one price by one interval of geometric Brownian motion."""
        dt = self.interval_s / SECONDS_PER_YEAR
        shock = self.random.gauss(0, 1)
        return price * math.exp((self.drift - 0.5 * self.volatility**2) * dt + self.volatility * math.sqrt(dt) * shock)

    def sample(self, ts: int) -> list[Reading]:
        out: list[Reading] = []
        for symbol, price in self.prices.items():
            price = self.prices[symbol] = self.step(price)
            half = price * self.spread / 2
            source = "market." + slugify_key(symbol)
            labels = {"name": symbol, "venue": "simulated"}
            volume = round(self.random.expovariate(1.0) * 10 / max(price, 1) ** 0.5, 6)
            out += [
                Reading(source, "last", ts, price, "USD", "price", "feed", labels),
                Reading(source, "bid", ts, price - half, "USD", "price", "feed", labels),
                Reading(source, "ask", ts, price + half, "USD", "price", "feed", labels),
                Reading(source, "volume", ts, volume, "", "volume", "feed", labels),
            ]
        return out

    async def batches(self) -> AsyncIterator[list[Reading]]:
        while True:
            yield self.sample(now_us())
            await asyncio.sleep(self.interval_s)
