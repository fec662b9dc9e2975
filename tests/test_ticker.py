"""Market feeds: candles from trades, the exchange-protocol ticker against a fake exchange, CSV replay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from collectors.candles import CandleBuilder, candle_name
from collectors.replay import ReplayCollector
from collectors.runner import Runner
from collectors.sinks import LocalSink
from collectors.ticker import TickerCollector, now_iso
from dashboard.models import Metric, Sample
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading
from tests.fake_exchange import FakeExchange

pytestmark = pytest.mark.usefixtures("clock")

WAIT_S = 10.0


def minute_ago(minutes: int = 3) -> int:
    """A µs time on a whole minute, a few minutes back (inside the accepted window)."""
    return (now_us() // (60 * US) - minutes) * 60 * US


def as_dict(readings: list[Reading]) -> dict[str, tuple[int, float]]:
    return {r.key: (r.ts, r.value) for r in readings}


# --- Candles ------------------------------------------------------------------------------------


def test_candle_names_follow_their_interval() -> None:
    assert [candle_name(i) for i in (1, 15, 60, 300, 3600)] == [
        "candle_1s",
        "candle_15s",
        "candle_1m",
        "candle_5m",
        "candle_1h",
    ]


def test_trades_fold_into_ohlc_and_volume_emitted_when_the_bucket_closes() -> None:
    builder = CandleBuilder([1, 60])
    t0 = minute_ago()
    assert builder.add_trade("market.btc-usd", t0 + 100, 100.0, 1.0) == []
    assert builder.add_trade("market.btc-usd", t0 + 200_000, 105.0, 0.5) == []
    assert builder.add_trade("market.btc-usd", t0 + 300_000, 98.0, 2.0) == []
    assert builder.add_trade("market.btc-usd", t0 + 999_999, 101.0, 0.25) == []
    closed = as_dict(builder.add_trade("market.btc-usd", t0 + US, 102.0, 1.0))  # next second closes the 1 s candle
    assert closed == {
        "market.btc-usd.candle_1s.open": (t0, 100.0),
        "market.btc-usd.candle_1s.high": (t0, 105.0),
        "market.btc-usd.candle_1s.low": (t0, 98.0),
        "market.btc-usd.candle_1s.close": (t0, 101.0),
        "market.btc-usd.candle_1s.volume": (t0, 3.75),
    }
    minute = as_dict(builder.advance(t0 + 60 * US))  # a heartbeat a minute later closes the rest
    assert minute["market.btc-usd.candle_1m.open"] == (t0, 100.0)
    assert minute["market.btc-usd.candle_1m.close"] == (t0, 102.0)
    assert minute["market.btc-usd.candle_1m.volume"] == (t0, 4.75)
    assert minute["market.btc-usd.candle_1s.close"] == (t0 + US, 102.0)
    assert builder.open == {}


def test_symbols_have_their_own_candles_and_late_trades_are_counted() -> None:
    builder = CandleBuilder([1])
    t0 = minute_ago()
    builder.add_trade("market.a", t0, 1.0, 1.0)
    builder.add_trade("market.b", t0, 50.0, 1.0)
    closed = builder.add_trade("market.a", t0 + 2 * US, 2.0, 1.0)
    assert {r.source for r in closed} == {"market.a"}
    builder.add_trade("market.a", t0 + 10, 9.0, 1.0)  # older than a's open candle
    assert builder.late == 1
    flushed = as_dict(builder.flush())
    assert flushed["market.b.candle_1s.close"] == (t0, 50.0)
    assert flushed["market.a.candle_1s.close"] == (t0 + 2 * US, 2.0)


# --- The ticker's message handling --------------------------------------------------------------


def test_sequence_gaps_are_counted_and_old_messages_dropped(caplog) -> None:
    collector = TickerCollector(product_ids=["BTC-USD"])
    base = {"type": "ticker", "product_id": "BTC-USD", "price": "100.5", "best_bid": "100", "best_ask": "101"}
    assert len(collector.handle({**base, "sequence": 1, "time": now_iso()})) == 3
    assert len(collector.handle({**base, "sequence": 2, "time": now_iso()})) == 3
    assert collector.handle({**base, "sequence": 2, "time": now_iso()}) == []  # repeated
    assert collector.stale == 1
    assert len(collector.handle({**base, "sequence": 7, "time": now_iso()})) == 3
    assert (collector.gaps, collector.missed) == (1, 4)
    assert "sequence gap on BTC-USD: 2 -> 7 (4 missed" in caplog.text


@pytest.mark.parametrize(
    "message",
    [[], {"type": "ticker"}, {"type": "ticker", "product_id": "X", "sequence": 1}, {"type": "error", "message": "bad"},
     {"type": "match", "product_id": "X", "sequence": 5, "time": "2024-01-01T00:00:00Z", "price": "abc", "size": "1"}],
)  # fmt: skip
def test_unreadable_messages_are_counted_not_raised(message: object) -> None:
    collector = TickerCollector()
    assert collector.handle(message) == []
    assert collector.errors == 1


# --- Against the fake exchange ------------------------------------------------------------------


async def collect(collector: TickerCollector, into: list[Reading]) -> None:
    async for batch in collector.batches():
        into.extend(batch)


async def wait_until(condition, timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
async def exchange() -> AsyncIterator[FakeExchange]:
    async with FakeExchange() as fake:
        yield fake


async def test_the_ticker_subscribes_in_the_exchange_protocol_and_builds_candles(exchange: FakeExchange) -> None:
    collector = TickerCollector(url=exchange.url, product_ids=["BTC-USD", "ETH-USD"], candle_intervals_s=[1, 60])
    got: list[Reading] = []
    task = asyncio.create_task(collect(collector, got))
    try:
        await exchange.wait_subscribed()
        assert exchange.subscriptions[0] == {
            "type": "subscribe",
            "product_ids": ["BTC-USD", "ETH-USD"],
            "channels": ["ticker", "heartbeat", "matches"],
        }
        t0 = minute_ago()
        await exchange.ticker("BTC-USD", 100.0, 99.5, 100.5, ts=t0)
        for offset, price, size in ((1000, 100.0, 1.0), (2000, 103.0, 0.5), (3000, 99.0, 0.5)):
            await exchange.trade("BTC-USD", price, size, ts=t0 + offset)
        await exchange.heartbeat("BTC-USD", ts=t0 + 60 * US)  # closes both candles
        await wait_until(lambda: any(r.metric == "candle_1m.volume" for r in got))
    finally:
        task.cancel()
    values = as_dict(got)
    assert values["market.btc-usd.last"] == (t0, 100.0)
    assert values["market.btc-usd.bid"] == (t0, 99.5)
    assert values["market.btc-usd.ask"] == (t0, 100.5)
    for name in ("candle_1s", "candle_1m"):
        assert values[f"market.btc-usd.{name}.open"] == (t0, 100.0)
        assert values[f"market.btc-usd.{name}.high"] == (t0, 103.0)
        assert values[f"market.btc-usd.{name}.low"] == (t0, 99.0)
        assert values[f"market.btc-usd.{name}.close"] == (t0, 99.0)
        assert values[f"market.btc-usd.{name}.volume"] == (t0, 2.0)
    assert collector.gaps == 0 and collector.errors == 0 and collector.heartbeats == 1


async def test_the_ticker_counts_a_sequence_gap(exchange: FakeExchange, caplog) -> None:
    collector = TickerCollector(url=exchange.url, product_ids=["BTC-USD"])
    got: list[Reading] = []
    task = asyncio.create_task(collect(collector, got))
    try:
        await exchange.wait_subscribed()
        await exchange.ticker("BTC-USD", 100.0, 99.0, 101.0)
        exchange.skip("BTC-USD", 3)  # three messages lost on the way
        await exchange.ticker("BTC-USD", 101.0, 100.0, 102.0)
        await wait_until(lambda: len(got) >= 6)
    finally:
        task.cancel()
    assert (collector.gaps, collector.missed) == (1, 3)
    assert "sequence gap on BTC-USD" in caplog.text
    assert [r.value for r in got if r.metric == "last"] == [100.0, 101.0]


async def test_the_ticker_reconnects_and_subscribes_again_after_a_forced_disconnect(exchange: FakeExchange) -> None:
    collector = TickerCollector(url=exchange.url, product_ids=["ETH-USD"])
    got: list[Reading] = []
    task = asyncio.create_task(collect(collector, got))
    try:
        await exchange.wait_subscribed()
        await exchange.ticker("ETH-USD", 3000.0, 2999.0, 3001.0)
        await wait_until(lambda: len(got) >= 3)
        await exchange.drop_connections()
        await exchange.wait_subscribed(count=2)
        await exchange.ticker("ETH-USD", 3010.0, 3009.0, 3011.0)
        await wait_until(lambda: len(got) >= 6)
    finally:
        task.cancel()
    assert collector.reconnects == 1
    assert exchange.subscriptions[1] == exchange.subscriptions[0]
    assert [r.value for r in got if r.metric == "last"] == [3000.0, 3010.0]
    assert collector.gaps == 0  # sequences continued across the reconnect


async def test_the_ticker_reconnects_when_the_feed_goes_silent(exchange: FakeExchange) -> None:
    collector = TickerCollector(url=exchange.url, product_ids=["ETH-USD"], silence_timeout_s=0.3)
    task = asyncio.create_task(collect(collector, []))
    try:
        await exchange.wait_subscribed(count=2)
    finally:
        task.cancel()
    assert collector.reconnects >= 1


@pytest.mark.django_db(transaction=True)
async def test_ticker_candles_are_stored_through_the_ingest_action(exchange: FakeExchange) -> None:
    collector = TickerCollector(url=exchange.url, product_ids=["SOL-USD"], candle_intervals_s=[1])
    runner = Runner([collector], LocalSink())
    task = asyncio.create_task(runner.run())
    try:
        await exchange.wait_subscribed()
        t0 = minute_ago()
        await exchange.trade("SOL-USD", 150.0, 2.0, ts=t0)
        await exchange.trade("SOL-USD", 151.0, 1.0, ts=t0 + 10)
        await exchange.heartbeat("SOL-USD", ts=t0 + US)
        async with asyncio.timeout(WAIT_S):
            while not await Metric.objects.filter(key="market.sol-usd.candle_1s.volume").aexists():
                await asyncio.sleep(0.02)
    finally:
        runner.request_stop()
        await task
    volume = await Sample.objects.aget(metric__key="market.sol-usd.candle_1s.volume")
    assert (volume.ts, volume.value) == (t0, 3.0)


# --- Replay -------------------------------------------------------------------------------------


def write_ticks(path: Path, rows: list[str]) -> Path:
    path.write_text("time,symbol,price,size,side\n" + "\n".join(rows) + "\n")
    return path


async def test_a_replay_at_full_speed_ends_and_emits_every_trade_and_candle(tmp_path: Path) -> None:
    csv = write_ticks(
        tmp_path / "ticks.csv",
        [
            "2024-03-01T10:00:00.100Z,BTC-USD,100,1,buy",
            "2024-03-01T10:00:00.600Z,BTC-USD,104,1,sell",
            "not-a-time,BTC-USD,1,1,buy",
            "2024-03-01T10:00:01.200Z,BTC-USD,102,2,buy",
            "1709287202.5,ETH-USD,10,3,buy",
        ],
    )
    collector = ReplayCollector(path=str(csv), speed=0, candle_intervals_s=[1])
    got = [r async for batch in collector.batches() for r in batch]  # finite: the loop ends
    assert collector.played == 4 and collector.errors == 1
    last = [r for r in got if r.metric == "last"]
    assert [r.value for r in last] == [100.0, 104.0, 102.0, 10.0]
    gaps = [b.ts - a.ts for a, b in zip(last, last[1:], strict=False)]
    assert gaps[:2] == [500_000, 600_000]  # the file's spacing, moved into the recent past
    assert now_us() - 61 * US < last[-1].ts <= now_us()
    closes = [(r.source, r.value) for r in got if r.metric == "candle_1s.close"]
    assert closes == [("market.btc-usd", 104.0), ("market.btc-usd", 102.0), ("market.eth-usd", 10.0)]


async def test_an_accelerated_replay_keeps_the_order_and_compresses_time(tmp_path: Path) -> None:
    rows = [f"{1709287200 + i},AAPL,{200 + i},1,buy" for i in range(5)]  # one trade a second
    collector = ReplayCollector(path=str(write_ticks(tmp_path / "t.csv", rows)), speed=20, candle_intervals_s=[60])
    loop = asyncio.get_running_loop()
    started = loop.time()
    got = [r async for batch in collector.batches() for r in batch]
    took = loop.time() - started
    last = [r for r in got if r.metric == "last"]
    assert [r.value for r in last] == [200.0, 201.0, 202.0, 203.0, 204.0]
    assert [b.ts - a.ts for a, b in zip(last, last[1:], strict=False)] == [50_000] * 4  # 1 s at 20x
    print(f"\nreplayed 4 s of trades at 20x in {took:.2f} s")
    assert took >= 0.15  # it paced itself (a lower bound, not a speed threshold)
