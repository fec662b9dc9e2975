"""Fault tests of the live path on real Daphne workers: nothing stored is lost to viewers, and no outage is silent.

The channel layer is a private redis-server this test may pause (SIGSTOP)
and PostgreSQL sits behind a cuttable proxy (dashboard/testing.py); the shared
services are never touched. Heartbeats (and so the degraded deadline) and
the check against the database run at short test intervals.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator

import pytest

from dashboard.testing import Agent, RedisServer, Server, TcpProxy, async_wait_until, prepare_database, project_env
from tests.test_faults import PG_ADMIN_URL, missing, pg_database, pg_values  # noqa: F401 - pg_database is a fixture

pytestmark = pytest.mark.slow
KEY = "fault.counter.n"
HEARTBEAT_S = 2.0
LIVE_ENV = {"PULSEBOARD_LIVE_HEARTBEAT_S": str(HEARTBEAT_S), "PULSEBOARD_LIVE_RECONCILE_S": "1", "LOG_LEVEL": "WARNING"}
# After the last expected frame, a viewer watches this long (two reconcile passes) for late duplicates:
# a quiet window is the thing checked, there is nothing to wait on.
QUIET_S = 2 * float(LIVE_ENV["PULSEBOARD_LIVE_RECONCILE_S"])


@pytest.fixture
def redis(tmp_path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        missing("needs redis-server on PATH (apt install redis-server)")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def sqlite_samples(env: dict[str, str], key: str = KEY) -> list[tuple[int, float]]:
    with sqlite3.connect(env["SQLITE_PATH"], timeout=30) as db:
        return db.execute(
            "SELECT s.ts, s.value FROM dashboard_sample s JOIN dashboard_metric m ON m.id = s.metric_id WHERE m.key = ?",
            (key,),
        ).fetchall()


def set_expected_interval(env: dict[str, str], slug: str, seconds: float) -> None:
    with sqlite3.connect(env["SQLITE_PATH"], timeout=30) as db:
        db.execute("UPDATE dashboard_source SET expected_interval_s = ? WHERE slug = ?", (seconds, slug))


class Watcher:
    """One WebSocket viewer written from docs/protocol.md that keeps every frame with its arrival time."""

    def __init__(self, ws_url: str, session_key: str, keys: list[str]) -> None:
        self.ws_url = ws_url
        self.session_key = session_key
        self.keys = keys
        self.frames: list[tuple[float, dict]] = []
        self.connects = 0
        self.closed_with: int | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> Watcher:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        import websockets

        origin = self.ws_url.replace("ws://", "http://").split("/ws/")[0]
        async with websockets.connect(
            self.ws_url, origin=origin, additional_headers={"Cookie": f"sessionid={self.session_key}"}
        ) as ws:
            self.connects += 1
            await ws.send(json.dumps({"type": "subscribe", "metrics": self.keys, "history_s": 3600}))
            frames = 0
            try:
                async for raw in ws:
                    frame = json.loads(raw)
                    self.frames.append((time.monotonic(), frame))
                    if frame["type"] == "data":
                        frames += 1
                        await ws.send(json.dumps({"type": "ack", "frame": frames}))
            finally:
                self.closed_with = ws.close_code

    def samples(self, key: str = KEY) -> list[tuple[int, float]]:
        return [
            (t, v)
            for _, frame in self.frames
            if frame["type"] == "data"
            for batch in frame["batches"]
            if batch["k"] == key
            for t, v in zip(batch["t"], batch["v"], strict=True)
        ]

    def of(self, kind: str, after: float = 0.0, **match) -> list[tuple[float, dict]]:
        return [
            (at, f)
            for at, f in self.frames
            if f["type"] == kind and at >= after and all(f.get(k) == v for k, v in match.items())
        ]


def check_delivery(name: str, stored: list[tuple[int, float]], watcher: Watcher) -> None:
    seen = watcher.samples()
    lost = set(stored) - set(seen)
    duplicates = len(seen) - len(set(seen))
    line = f"[{name}] stored={len(stored)} viewer_received={len(seen)} loss={len(lost)} duplicates={duplicates}"
    print(line)
    assert not lost and not duplicates, line


@pytest.mark.sqlite_only
async def test_a_worker_killed_while_redis_is_paused_loses_no_sample_for_viewers_on_the_other(tmp_path, redis) -> None:
    """Worker a commits and answers 200, cannot hand the batches to a paused Redis, and is killed: b's viewer gets them."""
    env = project_env(tmp_path, REDIS_URL=redis.url, **LIVE_ENV)
    token, session = prepare_database(env)
    (tmp_path / "agent-token").write_text(token)
    ingesting = Server(env, tmp_path, "worker-a").start()
    viewing = Server(env, tmp_path, "worker-b").start()
    agent = Agent(env, tmp_path, ingesting.url).start()
    watcher = None
    try:
        await async_wait_until(lambda: len(sqlite_samples(env)) >= 20, 60, "the agent's first samples")
        watcher = Watcher(viewing.ws_url, session, [KEY]).start()
        await async_wait_until(lambda: len(watcher.samples()) >= 20, 30, "live samples on worker b")
        redis.pause()
        paused_with = len(sqlite_samples(env))
        await async_wait_until(lambda: len(sqlite_samples(env)) > paused_with + 20, 30, "commits during the pause")
        ingesting.kill()
        agent.kill()
        redis.resume()
        resumed = time.monotonic()
        stored = sqlite_samples(env)
        await async_wait_until(
            lambda: set(stored) <= set(watcher.samples()), 10, "every stored sample on the viewer of worker b"
        )
        print(f"[worker killed, redis paused] all {len(stored)} stored samples on b {time.monotonic() - resumed:.1f} s")
        await asyncio.sleep(QUIET_S)  # anything late would be a duplicate
        check_delivery("worker killed while redis paused", sqlite_samples(env), watcher)
        assert watcher.connects == 1 and watcher.closed_with is None
    finally:
        if watcher is not None:
            await watcher.stop()
        agent.kill()
        ingesting.kill()
        viewing.kill()


def pg_samples(database: str, key: str = KEY) -> list[tuple[int, float]]:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database, connect_timeout=5) as db:
        return db.execute(
            "SELECT s.ts, s.value FROM dashboard_sample s JOIN dashboard_metric m ON m.id = s.metric_id WHERE m.key = %s",
            (key,),
        ).fetchall()


@pytest.mark.postgres
async def test_viewers_are_told_of_a_hung_redis_and_a_stopped_database_and_back_filled_after(
    tmp_path,
    redis,
    pg_database,  # noqa: F811 - the fixture imported above
) -> None:
    """Redis paused 15 s, then PostgreSQL unreachable 10 s: degraded and stale notices in time, then all data, once."""
    import psycopg

    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    direct = project_env(tmp_path, DATABASE_URL=f"{base}/{pg_database}")
    token, session = prepare_database(direct)
    (tmp_path / "agent-token").write_text(token)
    proxy = TcpProxy("127.0.0.1", int(base.rsplit(":", 1)[1])).start()
    env = project_env(
        tmp_path,
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{proxy.port}/{pg_database}",
        REDIS_URL=redis.url,
        **LIVE_ENV,
    )
    env["SECRET_KEY"] = direct["SECRET_KEY"]
    ingesting = Server(env, tmp_path, "worker-a").start()
    viewing = Server(env, tmp_path, "worker-b").start()
    agent = Agent(env, tmp_path, ingesting.url).start()
    watcher = None
    try:
        await async_wait_until(lambda: len(pg_values(pg_database)) >= 20, 60, "the agent's first samples")
        with psycopg.connect(f"{base}/{pg_database}", autocommit=True) as db:
            db.execute("UPDATE dashboard_source SET expected_interval_s = 0.5 WHERE slug = 'fault.counter'")
        watcher = Watcher(viewing.ws_url, session, [KEY]).start()
        await async_wait_until(lambda: len(watcher.samples()) >= 20, 30, "live samples on worker b")

        # Redis hung for 15 s: the viewer is told within two heartbeats, and data keeps coming from the database.
        redis.pause()
        paused = time.monotonic()
        await async_wait_until(lambda: watcher.of("degraded", paused, reason="layer"), 2 * HEARTBEAT_S + 2, "degraded")
        told = watcher.of("degraded", paused, reason="layer")[0]
        print(f"[redis paused] degraded(layer) after {told[0] - paused:.1f} s (heartbeat {HEARTBEAT_S} s)")
        assert told[1]["state"] == "degraded"
        during = len(watcher.samples())
        await asyncio.sleep(15 - (time.monotonic() - paused))  # the outage lasts 15 s: the fault, not a wait
        print(f"[redis paused] samples reaching the viewer during the pause: {len(watcher.samples()) - during}")
        redis.resume()
        resumed = time.monotonic()
        await async_wait_until(lambda: watcher.of("degraded", resumed, reason="layer", state="ok"), 15, "recovery")
        print(f"[redis resumed] degraded(layer) ok after {watcher.of('degraded', resumed)[0][0] - resumed:.1f} s")

        # PostgreSQL unreachable for 10 s: degraded(database) and the metric stale, both within two heartbeats.
        proxy.cut()
        cut = time.monotonic()
        await async_wait_until(
            lambda: watcher.of("degraded", cut, reason="database") and watcher.of("stale", cut, state="stale"),
            2 * HEARTBEAT_S + 2,
            "degraded(database) and stale",
        )
        print(
            f"[database cut] degraded(database) after {watcher.of('degraded', cut)[0][0] - cut:.1f} s, "
            f"stale after {watcher.of('stale', cut)[0][0] - cut:.1f} s"
        )
        assert watcher.of("stale", cut)[0][1]["metrics"] == [KEY]
        await asyncio.sleep(10 - (time.monotonic() - cut))  # the outage lasts 10 s: the fault, not a wait
        proxy.start()
        restored = time.monotonic()
        await async_wait_until(
            lambda: (
                watcher.of("degraded", restored, reason="database", state="ok")
                and watcher.of("stale", restored, state="ok")
            ),
            30,
            "recovery from the database outage",
        )
        assert agent.terminate() == 0, agent.log_path.read_text()[-3000:]
        stored = pg_samples(pg_database)
        await async_wait_until(lambda: set(stored) <= set(watcher.samples()), 15, "the back-fill after recovery")
        await asyncio.sleep(QUIET_S)  # anything late would be a duplicate
        check_delivery("redis paused 15 s, database cut 10 s", pg_samples(pg_database), watcher)
        assert watcher.connects == 1
    finally:
        if watcher is not None:
            await watcher.stop()
        agent.kill()
        ingesting.kill()
        viewing.kill()
        proxy.close()


@pytest.mark.sqlite_only
async def test_samples_committed_out_of_order_all_reach_a_viewer_of_a_real_server(tmp_path) -> None:
    """An older sample committed after a newer one (inverted on purpose), then 8 requests kept in flight for 3 s."""
    import httpx

    # Eight senders that post again as soon as they are answered outrun the per-token rate limit
    # (200 requests/s) on an idle machine; the limit is not what this test is about.
    env = project_env(tmp_path, **LIVE_ENV, PULSEBOARD_RATE_LIMIT_PER_S="0")
    token, session = prepare_database(env)
    worker = Server(env, tmp_path).start()
    headers = {"Authorization": f"Token {token}"}
    watcher = None

    async def post(client: httpx.AsyncClient, samples: list[tuple[int, float]]) -> None:
        body = {
            "source": "fault.counter",
            "precision": "us",
            "samples": [{"metric": "n", "ts": t, "value": v} for t, v in samples],
        }
        response = await client.post(worker.url + "/api/v1/ingest", json=body, headers=headers)
        assert response.status_code == 200, response.text

    try:
        async with httpx.AsyncClient(timeout=30) as client:
            base = time.time_ns() // 1000
            await post(client, [(base - 10_000_000, -1.0)])  # the metric exists before the viewer subscribes
            watcher = Watcher(worker.ws_url, session, [KEY]).start()
            await async_wait_until(lambda: len(watcher.samples()) == 1, 30, "the replay")
            await post(client, [(base + 2000, 2.0)])  # the newer sample commits first ...
            await post(client, [(base + 1000, 1.0)])  # ... then the older one
            await async_wait_until(lambda: len(watcher.samples()) == 3, 10, "both live samples")

            sent = 0

            async def sender() -> None:
                nonlocal sent
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    sent += 1
                    ts = time.time_ns() // 1000
                    await post(client, [(ts + j, float(sent * 10 + j)) for j in range(3)])

            await asyncio.gather(*(sender() for _ in range(8)))
        stored = sqlite_samples(env)
        await async_wait_until(lambda: set(stored) <= set(watcher.samples()), 15, "every stored sample live")
        late, unmarked, newest = 0, 0, 0
        for _, frame in watcher.frames:
            if frame["type"] != "data" or frame.get("replay"):
                continue
            for batch in frame["batches"]:
                if batch["t"][0] < newest:
                    late += len(batch["t"])
                    unmarked += 0 if batch.get("late") else len(batch["t"])  # docs/protocol.md: marked late
                newest = max(newest, batch["t"][-1])
        print(
            f"[out-of-order ingest] {len(stored)} stored, {late} delivered after a newer sample of the key, "
            f"{unmarked} of them not marked late"
        )
        await asyncio.sleep(QUIET_S)  # anything late would be a duplicate
        check_delivery("out-of-order ingest, 8 requests in flight", sqlite_samples(env), watcher)
        assert late >= 1  # the inverted pair at least
        assert unmarked == 0
    finally:
        if watcher is not None:
            await watcher.stop()
        worker.kill()
