"""A local exchange speaking the Coinbase Exchange WebSocket feed protocol, for tests of collectors/ticker.py.

It accepts `subscribe` messages, answers `subscriptions`, and sends what the
test tells it to: trades (`match`), `ticker` updates and `heartbeat`s, each
with the product's next `sequence` number. The test can also skip sequence
numbers (a gap) and drop every connection (a forced disconnect).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.server import Server, ServerConnection

from collectors.ticker import now_iso
from dashboard.timeutil import now_us


@dataclass
class FakeExchange:
    """Serve ws://127.0.0.1:<port>; keep per-product sequences and trade ids across connections."""

    sequences: dict[str, int] = field(default_factory=dict)
    trade_ids: dict[str, int] = field(default_factory=dict)
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    connections: set[ServerConnection] = field(default_factory=set)
    server: Server | None = None
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def __aenter__(self) -> FakeExchange:
        self.server = await websockets.serve(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, connection: ServerConnection) -> None:
        try:
            async for raw in connection:
                message = json.loads(raw)
                if message.get("type") != "subscribe":
                    await connection.send(
                        json.dumps({"type": "error", "message": "Failed to subscribe", "reason": "expected subscribe"})
                    )
                    continue
                self.subscriptions.append(message)
                channels = [{"name": c, "product_ids": message["product_ids"]} for c in message["channels"]]
                await connection.send(json.dumps({"type": "subscriptions", "channels": channels}))
                self.connections.add(connection)
                self.subscribed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.connections.discard(connection)

    async def wait_subscribed(self, count: int = 1, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.subscriptions) < count or not self.connections:
                await asyncio.sleep(0.01)

    def next_sequence(self, product_id: str, skip: int = 0) -> int:
        self.sequences[product_id] = self.sequences.get(product_id, 100) + 1 + skip
        return self.sequences[product_id]

    async def broadcast(self, message: dict[str, Any]) -> None:
        for connection in list(self.connections):
            try:
                await connection.send(json.dumps(message))
            except websockets.ConnectionClosed:
                self.connections.discard(connection)

    async def trade(self, product_id: str, price: float, size: float, ts: int | None = None, side: str = "buy") -> None:
        self.trade_ids[product_id] = self.trade_ids.get(product_id, 0) + 1
        await self.broadcast(
            {
                "type": "match",
                "trade_id": self.trade_ids[product_id],
                "sequence": self.next_sequence(product_id),
                "maker_order_id": "ac928c66-ca53-498f-9c13-a110027a60e8",
                "taker_order_id": "132fb6ae-456b-4654-b4e0-d681ac05cea1",
                "time": now_iso(ts),
                "product_id": product_id,
                "size": f"{size:.8f}",
                "price": f"{price:.2f}",
                "side": side,
            }
        )

    async def ticker(self, product_id: str, price: float, bid: float, ask: float, ts: int | None = None) -> None:
        await self.broadcast(
            {
                "type": "ticker",
                "sequence": self.next_sequence(product_id),
                "product_id": product_id,
                "price": f"{price:.2f}",
                "open_24h": f"{price:.2f}",
                "volume_24h": "1000.00000000",
                "low_24h": f"{price:.2f}",
                "high_24h": f"{price:.2f}",
                "best_bid": f"{bid:.2f}",
                "best_bid_size": "0.50000000",
                "best_ask": f"{ask:.2f}",
                "best_ask_size": "0.50000000",
                "side": "buy",
                "time": now_iso(ts),
                "trade_id": self.trade_ids.get(product_id, 0),
                "last_size": "0.01000000",
            }
        )

    async def heartbeat(self, product_id: str, ts: int | None = None, skip: int = 0) -> None:
        await self.broadcast(
            {
                "type": "heartbeat",
                "sequence": self.next_sequence(product_id, skip=skip),
                "last_trade_id": self.trade_ids.get(product_id, 0),
                "product_id": product_id,
                "time": now_iso(ts if ts is not None else now_us()),
            }
        )

    def skip(self, product_id: str, count: int) -> None:
        """Make the next message's sequence jump `count` numbers ahead (messages "lost")."""
        self.sequences[product_id] = self.sequences.get(product_id, 100) + count

    async def drop_connections(self) -> None:
        """Close every client socket abruptly, as a flaky exchange does."""
        for connection in list(self.connections):
            await connection.close(code=1011, reason="forced disconnect")
        self.connections.clear()
