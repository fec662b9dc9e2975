"""The Server-Sent Events fallback on a real Daphne: same frames as the WebSocket, same resume semantics, bounded responses."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from dashboard.live.sse import encode_cursors, parse_cursors
from dashboard.testing import Server, project_env, running_server
from dashboard.timeutil import now_us
from tests.streams import Viewer, cookie_header, create_viewer, issue_token, post_samples, sse_events

# The server keeps its own SQLite file: the PostgreSQL pass would only repeat this module.
pytestmark = [pytest.mark.slow, pytest.mark.sqlite_only]

SSE_BUDGET_BYTES = 8192  # small, so a test sees responses end and the browser-style resume


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[tuple[Server, str, str]]:
    """A Daphne with a viewer, its cookies and an agent token's secret."""
    tmp = tmp_path_factory.mktemp("sse")
    env = project_env(tmp, PULSEBOARD_SSE_RESPONSE_BYTES=str(SSE_BUDGET_BYTES))
    with running_server(env) as server:
        create_viewer(env)
        secret = issue_token(env, tmp / "token")
        yield server, cookie_header(server), secret


async def read_sse(
    server: Server,
    cookies: str,
    query: str,
    key: str,
    count: int,
    last_event_id: str | None = None,
    subscribed: asyncio.Event | None = None,
) -> tuple[list[int], str | None, bool]:
    """Read one SSE response until `count` samples of `key` came or it ended; return them, the last id, and whether it ended.

    `subscribed` is set when the stream's subscription is answered.
    """
    headers = {"Cookie": cookies}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    got: list[int] = []
    last_id = None
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        async with client.stream("GET", "/api/v1/stream?" + query, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for event_id, frame in sse_events(response):
                if frame["type"] == "subscribed" and subscribed is not None:
                    subscribed.set()
                if frame["type"] == "data":
                    last_id = event_id
                    for batch in frame["batches"]:
                        if batch["k"] == key:
                            got += batch["t"]
                if len(got) >= count:
                    return got, last_id, False
    return got, last_id, True


def test_cursors_round_trip_through_the_event_id_form() -> None:
    cursors = {"host.web-01.cpu.total": 1764133200000000, "modbus:1.temp": 5}
    assert parse_cursors(encode_cursors(cursors)) == cursors
    with pytest.raises(ValueError):
        parse_cursors("no-cursor-here")


async def test_an_sse_client_receives_the_same_samples_as_a_websocket_client(live) -> None:
    server, cookies, secret = live
    key = "sse.same.temp"
    start = now_us()
    await post_samples(server, secret, "sse.same", [("temp", start, 0.0)])
    viewer = await Viewer.connect(server, cookies)
    await viewer.subscribe([key], history_s=0)
    sse_subscribed = asyncio.Event()
    sse = asyncio.create_task(read_sse(server, cookies, f"metrics={key}&history_s=0", key, 30, None, sse_subscribed))
    await asyncio.wait_for(sse_subscribed.wait(), 30)  # the stream subscribes before the samples go out
    live_from = now_us()  # both subscriptions start live from "now": older samples are history
    for round_ in range(3):
        await post_samples(
            server, secret, "sse.same", [("temp", live_from + round_ * 10 + i, float(i)) for i in range(10)]
        )
    over_ws = await viewer.collect(key, 30)
    over_sse, _, ended = await asyncio.wait_for(sse, 30)
    await viewer.close()
    assert not ended
    assert over_sse == over_ws == [live_from + i for i in range(30)]


async def test_an_sse_client_resumes_from_last_event_id_without_gap_or_duplicate(live) -> None:
    server, cookies, secret = live
    key = "sse.resume.temp"
    start = now_us() - 60_000_000
    await post_samples(server, secret, "sse.resume", [("temp", start + i, float(i)) for i in range(10)])
    first, last_id, _ = await read_sse(server, cookies, f"metrics={key}&history_s=120", key, 10)
    assert first == [start + i for i in range(10)]
    # Gone for a while: more samples land meanwhile.
    await post_samples(server, secret, "sse.resume", [("temp", start + i, float(i)) for i in range(10, 25)])
    rest, _, _ = await read_sse(server, cookies, f"metrics={key}&history_s=120", key, 15, last_event_id=last_id)
    assert rest == [start + i for i in range(10, 25)]


async def test_a_response_ends_at_its_byte_budget_and_the_browser_resumes_where_it_ended(live) -> None:
    server, cookies, secret = live
    key = "sse.budget.temp"
    start = now_us() - 60_000_000
    await post_samples(server, secret, "sse.budget", [("temp", start, 0.0)])
    batches, per_batch = 20, 100  # ~2.3 KB a frame: a response ends every few frames
    total = 1 + batches * per_batch
    received: list[int] = []
    responses = 0

    async def browser() -> None:
        nonlocal responses
        last_id = None
        while len(received) < total and responses < 50:
            got, last_id, _ = await read_sse(
                server, cookies, f"metrics={key}&history_s=120", key, total - len(received), last_event_id=last_id
            )
            received.extend(got)
            responses += 1

    reader = asyncio.create_task(browser())
    for n in range(batches):
        first = 1 + n * per_batch
        await post_samples(
            server, secret, "sse.budget", [("temp", start + i, 1.5) for i in range(first, first + per_batch)]
        )
        await asyncio.sleep(0.05)
    await asyncio.wait_for(reader, 60)
    assert responses > 1  # the budget ended responses ...
    assert received == [start + i for i in range(total)]  # ... and each resume carried on exactly


async def test_the_stream_refuses_anonymous_requests(live) -> None:
    server, _, _ = live
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/api/v1/stream?metrics=x")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


async def test_a_malformed_since_is_a_bad_request(live) -> None:
    server, cookies, _ = live
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/api/v1/stream?metrics=x&since=nonsense", headers={"Cookie": cookies})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


async def test_a_stream_the_browser_closed_releases_its_connection_on_the_server(live) -> None:
    server, cookies, secret = live
    key = "sse.closed.temp"
    await post_samples(server, secret, "sse.closed", [("temp", now_us() - 1_000_000, 1.0)])
    await read_sse(server, cookies, f"metrics={key}&history_s=60", key, 1)  # reads one sample, then hangs up

    async def open_connections() -> float:
        async with httpx.AsyncClient(base_url=server.url) as client:
            text = (await client.get("/metrics", headers={"Cookie": cookies})).text
        return float(next(line.split()[1] for line in text.splitlines() if line.startswith("pulseboard_connections ")))

    for _ in range(50):
        if await open_connections() == 0:
            break
        await asyncio.sleep(0.2)
    assert await open_connections() == 0
