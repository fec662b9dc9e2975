"""Two real Daphne workers sharing the real Redis and one database: what the live path promises across processes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psutil
import pytest
import redis
import websockets

from dashboard.testing import Server, project_env, running_server
from dashboard.timeutil import now_us
from tests.streams import Viewer, cookie_header, create_viewer, issue_token, post_samples

# The workers share their own SQLite file: the PostgreSQL pass would only repeat this module.
pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.sqlite_only]

STALL_S = 3  # the workers close a reader whose ack window stays full this long (production: 30)
QUIET_S = 65  # longer than redis-py's old 5 s read timeout, the 25 s heartbeat and Daphne's 20 s ping, twice


class QuietViewer(threading.Thread):
    """A viewer on its own worker, subscribed to a source nobody writes to for a minute (its own event loop).

    Its worker has no other viewers, so that worker's Redis connection really
    is silent meanwhile.
    """

    def __init__(self, server: Server, cookies: str, key: str) -> None:
        super().__init__(daemon=True)
        self.server, self.cookies, self.key = server, cookies, key
        self.subscribed = threading.Event()
        self.subscribed_at = 0.0
        self.received: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._watch())
        except BaseException as exc:  # reported by the test that checks it
            self.error = exc
            self.subscribed.set()

    async def _watch(self) -> None:
        viewer = await Viewer.connect(self.server, self.cookies)
        await viewer.subscribe([self.key], history_s=0)
        self.subscribed_at = time.monotonic()
        self.subscribed.set()
        self.received = await viewer.collect(self.key, 1, within_s=QUIET_S + 120)
        await viewer.close()


@dataclass
class Cluster:
    a: Server
    b: Server
    cookies: str
    secret: str
    prefix: str
    redis: redis.Redis
    sqlite_path: str
    env: dict[str, str]

    def source_id(self, slug: str) -> int:
        with sqlite3.connect(self.sqlite_path, timeout=20) as db:
            return db.execute("SELECT id FROM dashboard_source WHERE slug = ?", (slug,)).fetchone()[0]

    def subscribers(self, group: str) -> int:
        """Return how many Redis connections listen to a group (one per worker whose hub has started)."""
        channel = f"{self.prefix}__group__{group}"
        return dict(self.redis.pubsub_numsub(channel)).get(channel.encode(), 0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    # The fixture cannot use the function-scoped redis_url fixture; probe the same way.
    from tests.conftest import reachable

    url = "redis://127.0.0.1:6379/0"
    if not reachable(url, 6379):
        pytest.skip(f"needs Redis at {url}: start it with `redis-server`")
    tmp = tmp_path_factory.mktemp("workers")
    prefix = f"pbtest{uuid.uuid4().hex[:8]}"  # this run's groups only, whoever else uses the Redis
    env = project_env(tmp, REDIS_URL=url, CHANNEL_LAYER_PREFIX=prefix, PULSEBOARD_LIVE_STALL_S=str(STALL_S))
    with running_server(env) as a:  # migrates the shared SQLite file once
        b = Server(env).start()
        try:
            create_viewer(env)
            secret = issue_token(env, tmp / "token")
            client = redis.Redis.from_url(url)
            yield Cluster(a, b, cookie_header(a), secret, prefix, client, env["SQLITE_PATH"], env)
            client.close()
        finally:
            b.stop()


@pytest.fixture(scope="module")
def quiet(cluster: Cluster) -> Iterator[QuietViewer]:
    """A QuietViewer subscribed on a third worker of the cluster (only the soak test needs one)."""
    asyncio.run(post_samples(cluster.a, cluster.secret, "w.quiet", [("temp", now_us(), 0.0)]))
    c = Server(cluster.env).start()
    try:
        viewer = QuietViewer(c, cluster.cookies, "w.quiet.temp")
        viewer.start()
        viewer.subscribed.wait(30)
        yield viewer
    finally:
        c.stop()


async def wait_for(predicate, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.2)
    return predicate()


async def test_a_sample_ingested_through_worker_a_reaches_a_viewer_on_worker_b(cluster: Cluster) -> None:
    await post_samples(cluster.a, cluster.secret, "w.cross", [("temp", now_us(), 1.0)])
    viewer = await Viewer.connect(cluster.b, cluster.cookies)
    await viewer.subscribe(["w.cross.temp"], history_s=0)
    ts = now_us()
    await post_samples(cluster.a, cluster.secret, "w.cross", [("temp", ts, 42.0)])
    assert await viewer.collect("w.cross.temp", 1) == [ts]
    await viewer.close()


async def test_a_viewer_resumes_on_the_other_worker_after_a_forced_disconnect_with_no_gap_and_no_duplicate(
    cluster: Cluster,
) -> None:
    key, start = "w.resume.temp", now_us()
    await post_samples(cluster.a, cluster.secret, "w.resume", [("temp", start, 0.0)])
    viewer = await Viewer.connect(cluster.b, cluster.cookies)
    await viewer.subscribe([key], history_s=60)
    for i in range(1, 10):
        await post_samples(cluster.a, cluster.secret, "w.resume", [("temp", start + i, float(i))])
    before = list(await viewer.collect(key, 10))
    viewer.socket.transport.abort()  # the network drops: no close handshake

    for i in range(10, 20):  # missed while away
        await post_samples(cluster.a, cluster.secret, "w.resume", [("temp", start + i, float(i))])
    again = await Viewer.connect(cluster.a, cluster.cookies)
    await again.subscribe([key], since={key: before[-1]})
    for i in range(20, 30):
        await post_samples(cluster.b, cluster.secret, "w.resume", [("temp", start + i, float(i))])
    after = await again.collect(key, 20)
    await again.close()
    assert before + after == [start + i for i in range(30)]


async def test_a_reader_that_stops_reading_costs_the_server_a_bounded_amount_and_is_closed(cluster: Cluster) -> None:
    slug = "w.slow"
    base = now_us() - 60_000_000
    await post_samples(cluster.a, cluster.secret, slug, [("temp", base, 0.0)])
    host = cluster.b.url.removeprefix("http://")
    # max_queue=1: the client library stops reading the socket once one message waits, as a stuck browser would.
    slow = await websockets.connect(
        cluster.b.ws_url, additional_headers={"Cookie": cluster.cookies, "Origin": f"http://{host}"}, max_queue=1
    )
    await slow.send('{"type":"subscribe","metrics":["w.slow.temp"],"history_s":0}')
    async with asyncio.timeout(20):  # read up to the answer to the subscription, then never again
        while json.loads(await slow.recv())["type"] != "subscribed":
            pass
    base = now_us()  # after the subscription: everything below is live data for it
    server = psutil.Process(cluster.b.process.pid)
    rss_before = server.memory_info().rss
    sent_bytes = 0
    # 150,000 samples, ~3.75 MB of frames for this one reader: even coalesced into the largest frames
    # (MAX_FRAME_SAMPLES, 2,500) that is 60 frames, past the 32-frame ack window, and past the buffer.
    # (60,000 samples could go out as 24 large frames when posts arrived faster than flushes: the
    # window never filled, nothing stalled, and the reader stayed open; a flaky test, not a leak.)
    for n in range(150):
        samples = [("temp", base + 1 + n * 1000 + i, 20.0 + i % 7) for i in range(1000)]
        sent_bytes += 25 * len(samples)
        await post_samples(cluster.a, cluster.secret, slug, samples)
    peak = server.memory_info().rss
    await wait_for(lambda: False, STALL_S + 2)  # past the stall limit
    try:  # read what is left: the 4008 close frame, unless the server already dropped the unresponsive peer
        while True:
            await asyncio.wait_for(slow.recv(), 10)
    except (websockets.ConnectionClosed, TimeoutError):
        pass
    assert slow.close_code in (4008, 1006)
    growth = peak - rss_before
    print(f"slow reader: ~{sent_bytes / 1e6:.1f} MB offered, server RSS grew {growth / 1e6:.1f} MB")
    # Bound: the ack window of frames in flight + a 50,000-sample buffer that sheds; no copy of the stream.
    assert growth < 64 * 1024 * 1024
    async with httpx.AsyncClient(base_url=cluster.b.url) as client:
        metrics = await client.get("/metrics", headers={"Cookie": cluster.cookies})
    assert metrics.status_code == 200
    counters = dict(line.split(" ", 1) for line in metrics.text.splitlines() if line and not line.startswith("#"))
    assert float(counters["pulseboard_slow_closes_total"]) >= 1
    assert float(counters["pulseboard_window_full_total"]) >= 1


async def test_a_thousand_viewers_disconnecting_at_once_leave_no_group_membership(cluster: Cluster) -> None:
    key, slug = "w.crowd.temp", "w.crowd"
    await post_samples(cluster.a, cluster.secret, slug, [("temp", now_us(), 0.0)])
    first = await Viewer.connect(cluster.b, cluster.cookies)  # worker B's hub joins the samples group
    await first.subscribe([key], history_s=0)
    listening = cluster.subscribers("samples")
    host = cluster.b.url.removeprefix("http://")
    headers = {"Cookie": cluster.cookies, "Origin": f"http://{host}"}

    async def viewer() -> websockets.ClientConnection:
        for attempt in range(3):  # Twisted listens with a backlog of 50: a burst may see a refused handshake
            try:
                socket = await websockets.connect(cluster.b.ws_url, additional_headers=headers, open_timeout=60)
                break
            except (OSError, EOFError, websockets.InvalidHandshake):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.5)
        await socket.recv()  # hello
        await socket.send('{"type":"subscribe","metrics":["w.crowd.temp"],"history_s":0}')
        await socket.recv()  # subscribed
        return socket

    sockets: list[websockets.ClientConnection] = []
    for _ in range(20):  # waves of 50, the listen backlog
        sockets += await asyncio.gather(*(viewer() for _ in range(50)))
    assert len(sockets) == 1000
    # Sample batches reach a worker on one Redis subscription (its hub's, to the samples group), not one per
    # socket or per source; no channel per socket either: each worker has its hub channel and three groups.
    assert cluster.subscribers("samples") == listening
    assert cluster.subscribers(f"source.{cluster.source_id(slug)}") == 0
    assert len(cluster.redis.pubsub_channels(f"{cluster.prefix}*")) < 20

    for socket in sockets:
        socket.transport.abort()  # all at once, without close handshakes: no UNSUBSCRIBE for any of them
    await asyncio.sleep(2)
    assert cluster.subscribers("samples") == listening

    # The worker still routes the source to the next viewer.
    late = await Viewer.connect(cluster.b, cluster.cookies)
    await late.subscribe([key], history_s=0)
    ts = now_us()
    await post_samples(cluster.a, cluster.secret, slug, [("temp", ts, 1.0)])
    assert await late.collect(key, 1) == [ts]
    assert await first.collect(key, 1) == [ts]
    await late.close()
    await first.close()


async def test_a_ten_device_agent_request_is_one_publication_that_every_viewer_gets_whole(cluster: Cluster) -> None:
    """Issue #18 item 5: a multi-device request crosses the channel layer once, and each viewer gets all of it."""
    devices = [f"w.fleet-{i:02d}" for i in range(10)]
    keys = [f"{device}.temp" for device in devices]
    start = now_us()
    await post_fleet(cluster, [(device, start, 0.0) for device in devices])  # the metrics exist
    viewers = [await Viewer.connect(server, cluster.cookies) for server in (cluster.b, cluster.b, cluster.a)]
    for viewer in viewers:
        await viewer.subscribe(["w.fleet-*"], history_s=0)
    listener = cluster.redis.pubsub()
    listener.subscribe(f"{cluster.prefix}__group__samples")
    listener.get_message(timeout=1)  # the subscribe confirmation
    try:
        ts = now_us()
        await post_fleet(cluster, [(device, ts, float(i)) for i, device in enumerate(devices)])
        publications = []
        deadline = time.monotonic() + 3  # a quiet window: a second publication would come within it
        while time.monotonic() < deadline:
            message = listener.get_message(timeout=0.2)
            if message is not None and message["type"] == "message":
                publications.append(message)
        assert len(publications) == 1
        for viewer in viewers:
            for key in keys:
                assert await viewer.collect(key, 1) == [ts]
    finally:
        listener.close()
        for viewer in viewers:
            await viewer.close()


async def post_fleet(cluster: Cluster, readings: list[tuple[str, int, float]]) -> None:
    """Post one agent request carrying each device's reading (a sample per source), through worker A."""
    body = {
        "precision": "us",
        "samples": [{"source": source, "metric": "temp", "ts": ts, "value": value} for source, ts, value in readings],
    }
    async with httpx.AsyncClient(base_url=cluster.a.url, timeout=30) as client:
        response = await client.post("/api/v1/ingest", json=body, headers={"Authorization": f"Token {cluster.secret}"})
    assert response.status_code == 200 and response.json()["accepted"] == len(readings), response.text[:500]


@pytest.mark.soak  # a minute of silence; the layer's own quiet spell (test_channel_layer_redis.py) stays in make test
async def test_a_quiet_subscription_still_receives_the_next_sample_after_a_minute(
    cluster: Cluster, quiet: QuietViewer
) -> None:
    assert quiet.error is None, quiet.error
    await asyncio.sleep(max(0.0, QUIET_S - (time.monotonic() - quiet.subscribed_at)))
    ts = now_us()
    await post_samples(cluster.a, cluster.secret, "w.quiet", [("temp", ts, 1.0)])
    await asyncio.to_thread(quiet.join, 30)
    assert quiet.error is None, quiet.error
    assert quiet.received == [ts]
