"""The baseline of bench/fanout.py: a minimal raw `websockets` fan-out with websockets.broadcast().

Viewers connect to `/`; the producer connects to `/publish` and sends one
protocol-v1 `data` frame per tick, which is broadcast as is (encoded once) to
every viewer. No storage, no auth, no channel layer, no flow control: the
ceiling a Python WebSocket fan-out can reach on this machine.

Run: python bench/raw_server.py PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve

viewers: set[ServerConnection] = set()


async def handler(connection: ServerConnection) -> None:
    if connection.request.path == "/publish":
        async for frame in connection:
            broadcast(viewers, frame)
        return
    viewers.add(connection)
    try:
        await connection.wait_closed()
    finally:
        viewers.discard(connection)


async def main(port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, max_size=2**24, ping_interval=20, ping_timeout=30, backlog=1024):
        await stop


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
