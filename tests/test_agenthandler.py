"""The agent endpoints' ASGI handler: Django's views and errors, without middleware, signals or a thread per request."""

from __future__ import annotations

import json
import threading

import pytest
from channels.testing import HttpCommunicator

from dashboard.models import Sample
from dashboard.timeutil import now_us
from monitor.asgi import application

# The writer commits on its own thread and connection: the rows must really be committed.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clock")]


def post(path: str, body: dict, secret: str, host: bytes = b"localhost") -> HttpCommunicator:
    return HttpCommunicator(
        application,
        "POST",
        path,
        body=json.dumps(body).encode(),
        headers=[
            (b"host", host),
            (b"authorization", f"Token {secret}".encode()),
            (b"content-type", b"application/json"),
        ],
    )


def batch(ts: int, n: int = 1) -> dict:
    return {
        "source": "agent.host",
        "precision": "us",
        "samples": [{"metric": "cpu", "ts": ts + i, "value": i} for i in range(n)],
    }


async def test_an_ingest_through_the_asgi_stack_is_stored_before_the_answer(agent_token) -> None:
    _, secret = agent_token
    ts = now_us()
    response = await post("/api/v1/ingest", batch(ts, 3), secret).get_response()
    assert response["status"] == 200, response["body"]
    assert json.loads(response["body"])["accepted"] == 3
    assert await Sample.objects.filter(ts__gte=ts).acount() == 3


async def test_requests_do_not_start_a_thread_each(agent_token, monkeypatch) -> None:
    """Django's ASGIHandler starts a thread per request (ThreadSensitiveContext); on the live path each hop waited."""
    _, secret = agent_token
    ts = now_us()
    assert (await post("/api/v1/ingest", batch(ts), secret).get_response())["status"] == 200  # writer, token cache
    started: list[str] = []
    original = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        original(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    for i in range(1, 21):
        assert (await post("/api/v1/ingest", batch(ts + 10 * i), secret).get_response())["status"] == 200
    assert len(started) <= 1, started


async def test_a_host_outside_allowed_hosts_is_refused(agent_token) -> None:
    _, secret = agent_token
    response = await post("/api/v1/ingest", batch(now_us()), secret, host=b"evil.example").get_response()
    assert response["status"] == 400


async def test_an_unknown_token_gets_a_json_error_that_says_what_to_do(db) -> None:
    response = await post("/api/v1/ingest", batch(now_us()), "pbt_nope").get_response()
    assert response["status"] == 401
    error = json.loads(response["body"])["error"]
    assert "admin" in error["message"]
