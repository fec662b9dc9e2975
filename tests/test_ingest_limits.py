"""The documented ingest limits are the real ones, on both endpoints, compressed or not, answered in JSON.

Requests go through monitor.asgi's application (the agent handler a real
server uses) and through Django's own handler (what the test client and a
deployment without the agent handler use): both answer the same.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
import zlib
from collections.abc import Iterator

import httpx
import pytest
from django.test import AsyncClient

from dashboard import ratelimit
from dashboard.models import Sample
from dashboard.timeutil import now_us
from monitor.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)
MIB = 1024 * 1024
LONG_SOURCE = "iot." + "s" * 115  # a long key: a 10,000-sample body is about 2.9 MB, over Django's 2.5 MiB
LONG_METRIC = "m" * 80


@pytest.fixture(autouse=True)
def _no_rate_limit(settings) -> Iterator[None]:
    settings.PULSEBOARD = {**settings.PULSEBOARD, "RATE_LIMIT_PER_S": 0.0}
    ratelimit.reset()
    yield
    ratelimit.reset()


def long_key_body(count: int, start_ts: int) -> bytes:
    samples = [{"source": LONG_SOURCE, "metric": LONG_METRIC, "ts": start_ts + i, "value": 1.5} for i in range(count)]
    return json.dumps({"precision": "us", "samples": samples}).encode()


async def post(path: str, secret: str, body: bytes, **headers: str) -> httpx.Response:
    """POST through the real ASGI application (the agent handler), as a server would receive it."""
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        return await client.post(path, content=body, headers={"Authorization": f"Token {secret}", **headers})


async def post_django(path: str, secret: str, body: bytes, **headers: str):
    """POST through Django's own handler and middleware (the test client)."""
    return await AsyncClient().post(
        path, body, content_type="application/json", headers={"Authorization": f"Token {secret}", **headers}
    )


def assert_json_error(response, status: int, code: str, *words: str) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    for word in words:
        assert word in error["message"], error["message"]
    return error


@pytest.fixture
def no_error_logs(caplog) -> Iterator[None]:
    with caplog.at_level(logging.WARNING):
        yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_a_valid_2_9_mb_batch_of_10000_samples_is_stored_not_refused(agent_token, no_error_logs) -> None:
    secret = agent_token[1]
    body = long_key_body(10_000, now_us() - 20_000)
    assert 2.5 * MIB < len(body) < 5 * MIB  # over Django's DATA_UPLOAD_MAX_MEMORY_SIZE, under the documented limit
    response = await post("/api/v1/ingest", secret, body, **{"Content-Type": "application/json"})
    assert response.status_code == 200, response.text[:300]
    assert response.json()["accepted"] == 10_000
    response = await post_django("/api/v1/ingest", secret, body)
    assert response.status_code == 200, response.content[:300]
    assert response.json()["duplicates"] == 10_000
    assert await Sample.objects.filter(metric__key=f"{LONG_SOURCE}.{LONG_METRIC}").acount() == 10_000


@pytest.mark.parametrize("path", ["/api/v1/ingest", "/api/v2/write"])
async def test_a_body_over_the_limit_is_a_json_413_naming_the_limit(agent_token, no_error_logs, path: str) -> None:
    body = b" " * (5 * MIB + 1)
    for send in (post, post_django):
        response = await send(path, agent_token[1], body)
        assert_json_error(response, 413, "payload_too_large", "5242880 bytes", "PULSEBOARD_MAX_BODY_BYTES")


@pytest.mark.parametrize("path", ["/api/v1/ingest", "/api/v2/write"])
async def test_a_body_at_the_limit_is_read(agent_token, no_error_logs, path: str) -> None:
    ts = now_us()
    if path == "/api/v1/ingest":
        text = json.dumps({"source": "iot.edge", "precision": "us", "samples": [{"metric": "t", "ts": ts, "value": 1}]})
    else:
        text = f"t,source=iot.edge v=1 {ts * 1000}\n"
    body = text.encode() + b" " * (5 * MIB - len(text))
    assert len(body) == 5 * MIB
    response = await post(path, agent_token[1], body)
    assert response.status_code in (200, 204), response.text[:300]


@pytest.mark.parametrize("path", ["/api/v1/ingest", "/api/v2/write"])
async def test_a_gzip_bomb_is_refused_with_413_without_inflating_it(agent_token, no_error_logs, path: str) -> None:
    # 256 MiB of zeros in about 250 KB; the server inflates at most the limit plus one byte of it.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * MIB
    bomb = b"".join(compressor.compress(chunk) for _ in range(256)) + compressor.flush()
    started = time.monotonic()
    response = await post(path, agent_token[1], bomb, **{"Content-Encoding": "gzip"})
    print(f"\n{len(bomb)} bytes of gzip (256 MiB inflated) refused in {time.monotonic() - started:.3f} s")
    assert_json_error(response, 413, "payload_too_large", "once unzipped", "PULSEBOARD_MAX_BODY_BYTES")


async def test_gzip_is_read_member_by_member_and_a_cut_body_is_refused(agent_token, no_error_logs) -> None:
    ts = now_us()
    lines = [f"t,source=gz v={i} {(ts + i) * 1000}\n".encode() for i in range(2)]
    two_members = gzip.compress(lines[0]) + gzip.compress(lines[1])
    response = await post("/api/v2/write", agent_token[1], two_members, **{"Content-Encoding": "gzip"})
    assert response.status_code == 204, response.text
    assert await Sample.objects.filter(metric__key="gz.t.v").acount() == 2
    cut = gzip.compress(b"t,source=gz v=9\n" * 1000)[:-20]
    response = await post("/api/v2/write", agent_token[1], cut, **{"Content-Encoding": "gzip"})
    assert_json_error(response, 400, "bad_request", "cut short")
    response = await post("/api/v1/ingest", agent_token[1], b"{}", **{"Content-Encoding": "br"})
    assert_json_error(response, 400, "bad_request", "not supported")


async def test_too_many_line_protocol_fields_is_413_before_the_rest_is_parsed(settings, agent_token) -> None:
    settings.PULSEBOARD = {**settings.PULSEBOARD, "MAX_SAMPLES_PER_REQUEST": 10}
    body = "".join(f"t,source=many v={i}\n" for i in range(1000)).encode()
    response = await post("/api/v2/write", agent_token[1], body)
    assert_json_error(response, 413, "payload_too_large", "PULSEBOARD_MAX_SAMPLES_PER_REQUEST")
    assert await Sample.objects.filter(metric__key="many.t.v").acount() == 0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"source": "iot.x", "samples": [{"metric": "t\xff", "ts": 1, "value": 1}]}', "UTF-8"),
        (b"\xed\xa0\x80", "UTF-8"),  # an encoded lone surrogate is not UTF-8
        (b"[" * 5000, "nested"),
        (b'{"samples": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
        (b'{"samples": [' + b"9" * 5000 + b"]}", "JSON"),
    ],
)
async def test_inputs_that_crashed_the_json_endpoint_are_a_400(agent_token, no_error_logs, body, words) -> None:
    for send in (post, post_django):
        response = await send("/api/v1/ingest", agent_token[1], body)
        assert_json_error(response, 400, "bad_request", words)


async def test_a_lone_surrogate_in_a_label_or_unit_is_refused_alone(agent_token, no_error_logs) -> None:
    ts = now_us()
    body = (
        '{"source": "iot.sur", "precision": "us", "samples": ['
        f'{{"metric": "a", "ts": {ts}, "value": 1, "labels": {{"room": "\\ud800"}}}},'
        f'{{"metric": "b", "ts": {ts}, "value": 1, "unit": "\\udfff"}},'
        f'{{"metric": "c", "ts": {ts}, "value": 1, "unit": "\\ud83d\\ude00"}}]}}'
    ).encode()
    response = await post("/api/v1/ingest", agent_token[1], body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == 1
    assert [(r["index"], r["field"]) for r in answer["rejected"]] == [(0, "labels"), (1, "unit")]
