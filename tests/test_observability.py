"""Health checks, Prometheus /metrics (checked with promtool) and JSON logs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import httpx
import pytest
from django.test import AsyncClient, Client, override_settings

from dashboard import storage
from dashboard.testing import ROOT, RedisServer, Server, prepare_database, project_env, running_server
from dashboard.timeutil import now_us
from dashboard.validation import Reading

pytestmark = pytest.mark.django_db
# Subprocesses with their own settings and database: the PostgreSQL pass would only repeat them.
RUN_ONCE = pytest.mark.sqlite_only
# Only socket tests need real transactions (the consumer reads on another thread); they say so themselves.
TRANSACTIONAL = pytest.mark.django_db(transaction=True)


def test_healthz_answers_without_touching_anything(client: Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


@TRANSACTIONAL
async def test_readyz_checks_the_database_and_a_channel_layer_round_trip() -> None:
    client = AsyncClient()
    for _ in range(3):  # the probe channel is reused, not leaked, across probes
        response = await client.get("/readyz")
        assert response.status_code == 200, response.content
        assert response.json() == {"status": "ok", "database": "ok", "channel_layer": "ok"}


@RUN_ONCE
@pytest.mark.slow
def test_readyz_fails_while_redis_is_down_and_recovers(tmp_path) -> None:
    redis = RedisServer(tmp_path).start()
    env = project_env(tmp_path, REDIS_URL=redis.url)
    try:
        with running_server(env) as server:
            assert httpx.get(server.url + "/readyz", timeout=10).json()["channel_layer"] == "ok"
            redis.stop()
            down = httpx.get(server.url + "/readyz", timeout=10)
            assert down.status_code == 503 and down.headers["Retry-After"]
            assert down.json()["database"] == "ok" and down.json()["channel_layer"] != "ok"
            redis.start()
            for _ in range(50):
                up = httpx.get(server.url + "/readyz", timeout=10)
                if up.status_code == 200:
                    break
            assert up.status_code == 200, up.text
    finally:
        redis.stop()


def ingest_agent_health() -> None:
    now = now_us()
    storage.store(
        [
            Reading("agent.edge-01", "spool.depth", now, 1234.0, "", "gauge", "agent"),
            Reading("agent.edge-01", "last_success_age", now, 2.5, "s", "gauge", "agent"),
        ]
    )


def test_metrics_refuses_anonymous_and_non_staff_users(client: Client, viewer) -> None:
    assert client.get("/metrics").status_code == 403
    client.force_login(viewer)
    assert client.get("/metrics").status_code == 403


@override_settings(METRICS_TOKEN="scrape-secret-123")
def test_metrics_accepts_a_scraper_bearer_token_only_when_it_matches(client: Client) -> None:
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-123"}).status_code == 200


# Under CI=true the test runs regardless, so a missing promtool fails instead of skipping quietly.
@pytest.mark.skipif(
    shutil.which("promtool") is None and os.environ.get("CI") != "true",
    reason="needs promtool (apt install prometheus)",
)
def test_metrics_pass_promtool_and_include_the_agents_spool_depth(client: Client, owner, tmp_path) -> None:
    ingest_agent_health()
    client.force_login(owner)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    assert 'pulseboard_agent_spool_depth{agent="edge-01"} 1234.0' in text
    assert "pulseboard_ingest_accepted_total" in text and "pulseboard_connections" in text
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    # promtool exits 1 for lint warnings too; only "error" lines or an unparsable body matter here.
    problems = [line for line in (checked.stdout + checked.stderr).splitlines() if "error" in line.lower()]
    assert not problems, checked.stdout + checked.stderr
    assert checked.returncode in (0, 1), checked.stderr


@RUN_ONCE
def test_log_format_json_writes_one_object_per_line(tmp_path) -> None:
    env = project_env(tmp_path, LOG_FORMAT="json", LOG_LEVEL="INFO")
    code = (
        "import django, logging; django.setup(); "
        "log = logging.getLogger('dashboard.test'); "
        "log.info('hello %s', 'world', extra={'samples': 3})\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    log.exception('boom')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert lines[0]["message"] == "hello world" and lines[0]["level"] == "INFO" and lines[0]["samples"] == 3
    assert lines[0]["logger"] == "dashboard.test" and lines[0]["time"].endswith("Z")
    assert "ZeroDivisionError" in lines[1]["exc"]


@RUN_ONCE
def test_a_bad_log_format_is_refused_at_start(tmp_path) -> None:
    env = project_env(tmp_path, LOG_FORMAT="xml")
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "LOG_FORMAT" in done.stderr


def scrape(url: str, token: str) -> str:
    response = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200, response.text[:500]
    return response.text


def sample_value(text: str, name: str) -> float:
    """Return the value of an unlabelled sample in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def promtool_errors(text: str) -> list[str]:
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode in (0, 1), checked.stderr
    return [line for line in (checked.stdout + checked.stderr).splitlines() if "error" in line.lower()]


def wait_for(check, timeout: float, what: str):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@RUN_ONCE
@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("promtool") is None and os.environ.get("CI") != "true",
    reason="needs promtool (apt install prometheus)",
)
def test_two_workers_sharing_a_multiprocess_dir_each_answer_the_sum_of_both(tmp_path) -> None:
    import asyncio

    import websockets

    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = project_env(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), METRICS_TOKEN="scrape-secret-123")
    token, session = prepare_database(env)
    first, second = Server(env).start(), Server(env).start()
    try:
        sent = {first.url: 3, second.url: 5}
        for url, batches in sent.items():
            for index in range(batches):
                body = {
                    "precision": "us",
                    "samples": [{"source": "mp.probe", "metric": "m", "ts": now_us() + index, "value": index}],
                }
                answer = httpx.post(
                    url + "/api/v1/ingest", json=body, headers={"Authorization": f"Token {token}"}, timeout=10
                )
                assert answer.status_code == 200, answer.text
        texts = [scrape(server.url, "scrape-secret-123") for server in (first, second) for _ in range(2)]
        accepted = [sample_value(text, "pulseboard_ingest_accepted_total") for text in texts]
        print(f"[multiprocess /metrics] accepted per scrape: {accepted} (sent 3 to one worker, 5 to the other)")
        assert accepted == [8.0] * 4
        assert all(text.count("# TYPE pulseboard_ingest_accepted_total counter") <= 1 for text in texts)
        assert "pulseboard_write_batch_seconds_bucket" in texts[0]
        assert not promtool_errors(texts[0]), texts[0][-2000:]

        async def open_sockets() -> None:
            # One live socket on each worker: the gauge is the sum over live workers.
            headers = {"Cookie": f"sessionid={session}"}
            a = await websockets.connect(first.ws_url, additional_headers={**headers, "Origin": first.url})
            b = await websockets.connect(second.ws_url, additional_headers={**headers, "Origin": second.url})
            await a.recv(), await b.recv()  # hello
            both = await asyncio.to_thread(
                wait_for,
                lambda: sample_value(scrape(first.url, "scrape-secret-123"), "pulseboard_connections") == 2,
                10,
                "both workers' connections in one scrape",
            )
            assert both
            second.kill()  # a worker dies without a goodbye: its live gauge must leave the sum
            await asyncio.to_thread(
                wait_for,
                lambda: sample_value(scrape(first.url, "scrape-secret-123"), "pulseboard_connections") == 1,
                10,
                "the dead worker's connections to leave the sum",
            )
            await a.close()

        asyncio.run(open_sockets())
        after = scrape(first.url, "scrape-secret-123")
        # The dead worker's counters stay in the sum: totals never go back.
        assert sample_value(after, "pulseboard_ingest_accepted_total") == 8.0
    finally:
        first.stop()
        second.stop()


def test_a_dead_workers_live_gauge_files_are_removed_and_a_live_ones_kept(tmp_path, monkeypatch) -> None:
    from dashboard import stats

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    monkeypatch.setattr(stats, "MULTIPROC_DIR", str(tmp_path))
    for name in (f"gauge_livesum_{dead.pid}.db", f"gauge_livesum_{os.getpid()}.db", f"counter_{dead.pid}.db"):
        (tmp_path / name).write_bytes(b"")
    stats._forget_dead_processes()
    left = sorted(p.name for p in tmp_path.iterdir())
    # The dead worker's gauges leave the sum; its counters stay in the totals.
    assert left == sorted([f"counter_{dead.pid}.db", f"gauge_livesum_{os.getpid()}.db"])
