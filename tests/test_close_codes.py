"""Server-side closes reach a real client with their code over a real Daphne: 1001 on SIGTERM, 4008 for a slow reader.

Both used to end as a dropped TCP connection (the client saw 1006): on
SIGTERM Daphne cancelled the application and closed the socket without a
close frame, and for 4008 autobahn gave the close handshake 1 s and then
reset the connection, before a reader that had stopped reading got to the
close frame.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
import websockets

from dashboard.testing import Server, prepare_database, project_env

pytestmark = [pytest.mark.slow, pytest.mark.sqlite_only]


def connect(worker: Server, session: str, **options) -> websockets.connect:
    return websockets.connect(
        worker.ws_url,
        origin=worker.url,
        additional_headers={"Cookie": f"sessionid={session}"},
        open_timeout=10,
        **options,
    )


async def test_sigterm_closes_live_sockets_with_1001_and_a_finished_handshake(tmp_path) -> None:
    env = project_env(tmp_path)
    _, session = prepare_database(env)
    worker = Server(env, tmp_path).start()
    try:
        async with connect(worker, session) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            await asyncio.to_thread(worker.stop)
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 15)
            print(f"closed with {ws.close_code} ({ws.close_reason!r}); server exit {worker.process.returncode}")
            assert ws.close_code == 1001
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_sent is not None
    finally:
        worker.kill()


async def test_a_reader_that_stopped_reading_still_gets_its_4008_close_when_it_reads_again(tmp_path) -> None:
    env = project_env(tmp_path, PULSEBOARD_LIVE_STALL_S="1")
    token, session = prepare_database(env)
    worker = Server(env, tmp_path).start()
    headers = {"Authorization": f"Token {token}"}

    async def post(client: httpx.AsyncClient, samples: list[dict]) -> None:
        body = {"source": "slow.src", "precision": "us", "samples": samples}
        response = await client.post(worker.url + "/api/v1/ingest", json=body, headers=headers)
        assert response.status_code == 200, response.text

    async def counter(client: httpx.AsyncClient, name: str) -> float:
        text = (await client.get(worker.url + "/metrics", headers={"Cookie": f"sessionid={session}"})).text
        values = dict(line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
        return float(values.get(name, 0))

    try:
        async with httpx.AsyncClient(timeout=30) as client:
            base = time.time_ns() // 1000
            await post(client, [{"metric": "m", "ts": base - 60_000_000, "value": 0}])
            # max_queue=1: the client library stops reading the socket once a message waits, as a stuck tab
            # would; a small receive buffer keeps what it has not read on the server's side of the connection.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", worker.port))
            async with connect(worker, session, max_queue=1, sock=sock) as ws:
                subscribe = {"type": "subscribe", "metrics": ["slow.src.m"], "history_s": 0, "max_rate": 100}
                await ws.send(json.dumps(subscribe))
                # Data frames the reader never acknowledges, until its window (32 frames) is full.
                n = 0
                while await counter(client, "pulseboard_window_full_total") < 1:
                    n += 1
                    assert n < 2000, "the window never filled"
                    # Full frames (2,500 samples, ~60 KB): the close frame ends up behind megabytes.
                    await post(client, [{"metric": "m", "ts": base + n * 10_000 + i, "value": i} for i in range(2500)])
                deadline = time.monotonic() + 30
                while await counter(client, "pulseboard_slow_closes_total") < 1:
                    assert time.monotonic() < deadline, "the server never gave up on the reader"
                    await asyncio.sleep(0.2)
                await asyncio.sleep(2)  # the reader stays stuck past autobahn's 1 s close timeout, then reads again
                frames = []
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        frames.append(json.loads(await asyncio.wait_for(ws.recv(), 15))["type"])
                print(f"reader closed with {ws.close_code} after {frames.count('data')} data frames")
                assert ws.close_code == 4008
                assert "error" in frames  # too_slow came first
    finally:
        worker.kill()
