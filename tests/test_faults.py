"""Fault tests on real processes: Redis restarted, PostgreSQL unreachable, a worker killed, an MQTT broker gone, SIGTERM.

Each test runs Daphne workers and a collector agent as subprocesses, breaks
one thing, and then counts: every value the agent's counter produced is
stored exactly once (loss = 0, duplicates = 0, printed), and a viewer written
from docs/protocol.md ends up with exactly what is stored, without being
helped. Shared Redis and PostgreSQL servers are never touched: the tests
break their own redis-server, Mosquitto, or a TCP proxy in front of
PostgreSQL (dashboard/testing.py).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from dashboard.testing import (
    Agent,
    Mosquitto,
    RedisServer,
    ResumeViewer,
    Server,
    TcpProxy,
    async_wait_until,
    loss_and_duplicates,
    prepare_database,
    project_env,
    wait_until,
)

pytestmark = pytest.mark.slow
# These servers keep their own SQLite file whatever the run's database, so the PostgreSQL pass of the suite
# would only repeat them; the PostgreSQL outage test is the one that needs PostgreSQL.
RUN_ONCE = pytest.mark.sqlite_only
IN_CI = os.environ.get("CI", "").lower() == "true"
KEY = "fault.counter.n"
# After the last expected frame, a viewer watches this long for duplicates
# still in flight: a quiet window is the thing checked, there is nothing to wait on.
QUIET_S = 0.5
PROBE_EVERY_S = 1.0  # one ingest request a second through the 10 s database outage
PG_ADMIN_URL = os.environ.get("FAULT_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def missing(reason: str) -> None:
    """Skip for lack of a binary; under CI=true fail instead, as conftest does for service tests."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def sqlite_values(env: dict[str, str], key: str = KEY) -> list[float]:
    with sqlite3.connect(env["SQLITE_PATH"], timeout=30) as db:
        rows = db.execute(
            "SELECT s.value FROM dashboard_sample s JOIN dashboard_metric m ON m.id = s.metric_id WHERE m.key = ?",
            (key,),
        ).fetchall()
    return [r[0] for r in rows]


def report(name: str, produced: list[float], stored: list[float], viewer: ResumeViewer | None = None) -> None:
    lost, duplicates = loss_and_duplicates(produced, stored)
    line = f"[{name}] produced={len(produced)} stored={len(stored)} loss={lost} duplicates={duplicates}"
    if viewer is not None:
        seen = viewer.values(KEY)
        viewer_lost, viewer_duplicates = loss_and_duplicates(stored, seen)
        line += (
            f" viewer_received={len(seen)} viewer_loss={viewer_lost} viewer_duplicates={viewer_duplicates}"
            f" viewer_connects={viewer.connects} lag_notices={viewer.lags}"
        )
    print(line)
    assert lost == 0 and duplicates == 0, line
    assert sorted(produced) == sorted(stored), line
    if viewer is not None:
        assert viewer_lost == 0 and viewer_duplicates == 0, line


@pytest.fixture
def redis(tmp_path) -> Iterator[RedisServer]:
    """A private redis-server this test may stop and start (never the shared one)."""
    if shutil.which("redis-server") is None:
        missing("needs redis-server on PATH (apt install redis-server)")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


# --- (a) Redis restarted ------------------------------------------------------------------


@RUN_ONCE
async def test_a_redis_restart_loses_nothing_and_viewers_back_fill_by_themselves(tmp_path, redis) -> None:
    env = project_env(tmp_path, REDIS_URL=redis.url, LOG_LEVEL="WARNING")
    token, session = prepare_database(env)
    (tmp_path / "agent-token").write_text(token)
    worker = Server(env, tmp_path).start()
    agent = Agent(env, tmp_path, worker.url).start()
    viewer = None
    try:
        await async_wait_until(lambda: len(sqlite_values(env)) >= 20, 60, "the agent's first samples")
        viewer = ResumeViewer([worker.ws_url], session, [KEY]).start()
        await async_wait_until(lambda: viewer.live_count >= 20, 30, "live samples before the fault")

        redis.stop()
        stored_at_cut = len(sqlite_values(env))
        await async_wait_until(
            lambda: len(sqlite_values(env)) > stored_at_cut + 10, 30, "ingest to keep storing while Redis is down"
        )
        live_before = viewer.live_count
        redis.start()

        # Live delivery resumes by itself (the hub's layer connection comes back) ...
        await async_wait_until(lambda: viewer.live_count > live_before + 20, 60, "live delivery after the restart")
        assert agent.terminate() == 0, agent.log_path.read_text()[-3000:]
        stored = sqlite_values(env)
        # ... and what was published while Redis was gone is back-filled.
        await async_wait_until(lambda: len(set(viewer.values(KEY))) >= len(stored), 30, "the back-fill of the gap")
        await asyncio.sleep(QUIET_S)  # anything still in flight would be a duplicate
        report("redis restart", agent.produced(), stored, viewer)
        assert viewer.connects == 1, "the socket itself never needed to reconnect"
    finally:
        if viewer is not None:
            await viewer.stop()
        agent.kill()
        worker.kill()


# --- (b) PostgreSQL unreachable for 10 s -------------------------------------------------


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A throwaway database on the shared PostgreSQL server; return its name."""
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        pytest.skip(f"needs PostgreSQL at {PG_ADMIN_URL} (set FAULT_PG_URL)")
    name = f"pulseboard_fault_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def pg_values(database: str, key: str = KEY) -> list[float]:
    with psycopg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database, connect_timeout=5) as db:
        rows = db.execute(
            "SELECT s.value FROM dashboard_sample s JOIN dashboard_metric m ON m.id = s.metric_id WHERE m.key = %s",
            (key,),
        ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.postgres
def test_a_database_outage_answers_503_and_the_agent_delivers_everything_afterwards(tmp_path, pg_database) -> None:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    direct = project_env(tmp_path, DATABASE_URL=f"{base}/{pg_database}")
    token, _ = prepare_database(direct)
    (tmp_path / "agent-token").write_text(token)
    host, port = "127.0.0.1", int(base.rsplit(":", 1)[1])
    proxy = TcpProxy(host, port).start()
    env = project_env(tmp_path, DATABASE_URL=f"postgres://postgres@127.0.0.1:{proxy.port}/{pg_database}")
    worker = Server(env, tmp_path).start()
    agent = Agent(env, tmp_path, worker.url).start()
    try:
        wait_until(lambda: len(pg_values(pg_database)) >= 20, 60, "the agent's first samples")
        proxy.cut()
        cut_at = time.monotonic()
        outage: list[httpx.Response] = []
        while time.monotonic() - cut_at < 10:
            body = {
                "precision": "us",
                "samples": [{"source": "fault.probe", "metric": "m", "ts": time.time_ns() // 1000, "value": 1}],
            }
            outage.append(
                httpx.post(
                    worker.url + "/api/v1/ingest", json=body, headers={"Authorization": f"Token {token}"}, timeout=15
                )
            )
            time.sleep(PROBE_EVERY_S)  # paces the probes; the outage lasts 10 s whatever they do
        stored_during = len(pg_values(pg_database))
        proxy.start()
        statuses = sorted({r.status_code for r in outage})
        print(f"[database outage] ingest answers while PostgreSQL was unreachable: {statuses}")
        assert statuses == [503], [(r.status_code, r.text[:200]) for r in outage]
        assert all(r.headers.get("Retry-After", "").isdigit() for r in outage)
        assert all(r.json()["error"]["code"] == "storage_unavailable" for r in outage)

        spooled = wait_until(lambda: _agent_log_mentions(agent, "503"), 5, "the agent to see 503 and spool")
        assert spooled
        wait_until(lambda: len(pg_values(pg_database)) > stored_during + 50, 90, "the spool to drain after the outage")
        assert agent.terminate() == 0, agent.log_path.read_text()[-3000:]
        report("database outage 10 s", agent.produced(), pg_values(pg_database))
    finally:
        agent.kill()
        worker.kill()
        proxy.close()


def _agent_log_mentions(agent: Agent, text: str) -> bool:
    return text in agent.log_path.read_text()


def _agent_failures(agent: Agent) -> int:
    """Return how many times the agent has logged that the server was unreachable or answered an error."""
    log = agent.log_path.read_text() if agent.log_path.exists() else ""
    return log.count("server unreachable") + log.count("server answered")


# --- (c) one of two workers killed ------------------------------------------------------


@RUN_ONCE
async def test_a_killed_worker_s_viewers_resume_on_the_other_without_a_gap(tmp_path, redis) -> None:
    env = project_env(tmp_path, REDIS_URL=redis.url, LOG_LEVEL="WARNING")
    token, session = prepare_database(env)
    (tmp_path / "agent-token").write_text(token)
    doomed = Server(env, tmp_path, "worker-a").start()
    survivor = Server(env, tmp_path, "worker-b").start()
    agent = Agent(env, tmp_path, survivor.url).start()
    viewer = None
    try:
        await async_wait_until(lambda: len(sqlite_values(env)) >= 20, 60, "the agent's first samples")
        viewer = ResumeViewer([doomed.ws_url, survivor.ws_url], session, [KEY]).start()
        await async_wait_until(lambda: viewer.live_count >= 20, 30, "live samples through worker a")
        assert viewer.connected_to == doomed.ws_url
        doomed.kill()
        await async_wait_until(lambda: viewer.connected_to == survivor.ws_url, 30, "the viewer to move to worker b")
        live_after = viewer.live_count
        await async_wait_until(lambda: viewer.live_count > live_after + 20, 30, "live samples through worker b")
        assert agent.terminate() == 0, agent.log_path.read_text()[-3000:]
        stored = sqlite_values(env)
        await async_wait_until(lambda: len(set(viewer.values(KEY))) >= len(stored), 30, "the viewer to catch up")
        await asyncio.sleep(QUIET_S)  # anything still in flight would be a duplicate
        report("worker killed", agent.produced(), stored, viewer)
        assert viewer.connects == 2
    finally:
        if viewer is not None:
            await viewer.stop()
        agent.kill()
        doomed.kill()
        survivor.kill()


# --- (d) a collector's upstream drops ------------------------------------------------------


def source_state(env: dict[str, str], slug: str) -> tuple[bool, int]:
    """Return (Source.is_stale, samples stored) for a source of the server's SQLite database."""
    from datetime import datetime

    from dashboard.models import Source

    with sqlite3.connect(env["SQLITE_PATH"], timeout=30) as db:
        row = db.execute(
            "SELECT last_seen, expected_interval_s, samples_accepted FROM dashboard_source WHERE slug = ?", (slug,)
        ).fetchone()
    if row is None:
        return True, 0
    last_seen = datetime.fromisoformat(row[0]) if row[0] else None
    return Source(slug=slug, last_seen=last_seen, expected_interval_s=row[1]).is_stale(), row[2]


@RUN_ONCE
async def test_an_mqtt_broker_outage_shows_the_source_stale_and_the_collector_reconnects(tmp_path) -> None:
    import aiomqtt

    if shutil.which("mosquitto", path="/usr/sbin:/usr/bin:/usr/local/sbin") is None:
        missing("needs mosquitto (apt install mosquitto)")

    broker = Mosquitto(tmp_path).start()
    env = project_env(tmp_path, LOG_LEVEL="WARNING")
    token, _ = prepare_database(env)
    (tmp_path / "agent-token").write_text(token)
    worker = Server(env, tmp_path).start()
    mqtt = (
        f'[[collectors]]\nkind = "mqtt"\nurl = "{broker.url}"\ntopics = ["plant/{{device}}/{{metric}}"]\n'
        'source_prefix = "plant."\n'
    )
    agent = Agent(env, tmp_path, worker.url, source="", extra_collectors=mqtt).start()
    sent = 0
    stop_publishing = asyncio.Event()

    async def publish_forever() -> None:
        nonlocal sent
        while not stop_publishing.is_set():
            try:
                async with aiomqtt.Client("127.0.0.1", port=broker.port) as client:
                    while not stop_publishing.is_set():
                        await client.publish("plant/boiler-1/temperature", str(20 + sent % 5), qos=1)
                        sent += 1
                        await asyncio.sleep(0.1)  # a device reporting ten times a second
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)  # the device waits for the broker too

    device = asyncio.ensure_future(publish_forever())
    try:
        # The source appears; make it stale after 3 s of silence (3 x 1 s) to keep the test short.
        await async_wait_until(lambda: source_state(env, "plant.boiler-1")[1] > 5, 60, "the first MQTT readings")
        with sqlite3.connect(env["SQLITE_PATH"], timeout=30) as db:
            db.execute("UPDATE dashboard_source SET expected_interval_s = 1 WHERE slug = 'plant.boiler-1'")
        await async_wait_until(lambda: not source_state(env, "plant.boiler-1")[0], 30, "the source to be fresh")

        broker.stop()
        outage_at = time.monotonic()
        await async_wait_until(lambda: source_state(env, "plant.boiler-1")[0], 30, "the source to show as stale")
        print(f"[mqtt outage] source shown stale {time.monotonic() - outage_at:.1f} s after the broker went down")
        during = source_state(env, "plant.boiler-1")[1]

        broker.start()  # same port: the collector's backoff finds it again
        back_at = time.monotonic()
        await async_wait_until(
            lambda: (lambda state: not state[0] and state[1] > during + 10)(source_state(env, "plant.boiler-1")),
            60,
            "fresh readings after the broker is back",
        )
        print(f"[mqtt outage] source fresh again {time.monotonic() - back_at:.1f} s after the broker came back")
        log = agent.log_path.read_text()
        assert "lost or refused" in log and "retrying in" in log, log[-2000:]
        assert "reconnected" in log or "subscribing again" in log, log[-2000:]
        print("[mqtt outage] the collector backed off, reconnected and the source is fresh again")
    finally:
        stop_publishing.set()
        device.cancel()
        await asyncio.gather(device, return_exceptions=True)
        agent.kill()
        worker.kill()
        broker.stop()


# --- Graceful shutdown ----------------------------------------------------------------


@RUN_ONCE
async def test_sigterm_on_the_server_and_the_agent_loses_and_duplicates_nothing(tmp_path) -> None:
    env = project_env(tmp_path, LOG_LEVEL="WARNING")
    token, _ = prepare_database(env)
    (tmp_path / "agent-token").write_text(token)
    worker = Server(env, tmp_path).start()
    agent = Agent(env, tmp_path, worker.url, interval_s=0.01, per_batch=20).start()
    try:
        await async_wait_until(lambda: len(sqlite_values(env)) >= 200, 60, "the agent's first samples")
        # SIGTERM the server while requests are in flight, then bring it back on the same port and database.
        failures_before = _agent_failures(agent)
        code = worker.stop()
        print(f"[graceful shutdown] daphne exited with {code} after SIGTERM")
        stored_while_down = len(sqlite_values(env))
        # The server stays down until the agent has failed to reach it and spooled.
        await async_wait_until(lambda: _agent_failures(agent) > failures_before, 30, "the agent to spool")
        worker.start()
        await async_wait_until(
            lambda: len(sqlite_values(env)) > stored_while_down + 200, 60, "ingest after the restart"
        )
        # SIGTERM the agent mid-stream: it stops producing and flushes its spool before exiting.
        assert agent.terminate() == 0, agent.log_path.read_text()[-3000:]
        produced, stored = agent.produced(), sqlite_values(env)
        report("graceful shutdown", produced, stored)
        assert "stopping with" not in agent.log_path.read_text(), "the agent exited with readings still spooled"
    finally:
        agent.kill()
        worker.kill()
