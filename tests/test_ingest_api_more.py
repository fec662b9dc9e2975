"""POST /api/v1/ingest and /api/v2/write: rate limits per token, the timestamp window, idempotent retries."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from dashboard import ratelimit
from dashboard.exceptions import RateLimited
from dashboard.models import AgentToken, Sample
from dashboard.timeutil import US, now_us

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clock")]


@pytest.fixture(autouse=True)
def _fresh_buckets() -> Iterator[None]:
    ratelimit.reset()
    yield
    ratelimit.reset()


@pytest.fixture
def limited(settings) -> None:
    settings.PULSEBOARD = {
        **settings.PULSEBOARD,
        "RATE_LIMIT_PER_S": 2.0,
        "RATE_LIMIT_BURST": 3,
    }


@pytest.fixture
def nearly_no_refill(settings) -> None:
    """A burst of 3 and then one request per 100 s, so slow CI machines cannot refill between requests."""
    settings.PULSEBOARD = {**settings.PULSEBOARD, "RATE_LIMIT_PER_S": 0.01, "RATE_LIMIT_BURST": 3}


def batch(ts_ms: int, value: float = 1.0, metric: str = "temperature") -> dict:
    return {
        "source": "iot.api-test",
        "samples": [{"metric": metric, "ts": ts_ms, "value": value}],
    }


async def post_json(secret: str, body: dict) -> tuple[int, dict, dict[str, str]]:
    response = await AsyncClient().post(
        "/api/v1/ingest",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}"},
    )
    return response.status_code, response.json(), dict(response.headers)


def test_a_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = ratelimit.TokenBucket(rate=2.0, burst=3.0, tokens=3.0, updated=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0  # half a second refills one request at 2/s
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_check_rate_raises_with_the_wait_and_is_per_token(limited: None) -> None:
    for _ in range(3):
        ratelimit.check_rate(1, now=100.0)
    with pytest.raises(RateLimited) as refused:
        ratelimit.check_rate(1, now=100.0)
    assert refused.value.retry_after_s == pytest.approx(0.5)
    assert "2 requests/s" in refused.value.message
    ratelimit.check_rate(2, now=100.0)  # another token has its own bucket
    ratelimit.check_rate(1, now=100.5)


def test_a_rate_of_zero_turns_limiting_off(settings) -> None:
    settings.PULSEBOARD = {
        **settings.PULSEBOARD,
        "RATE_LIMIT_PER_S": 0.0,
        "RATE_LIMIT_BURST": 1,
    }
    for _ in range(100):
        ratelimit.check_rate(1, now=0.0)


async def test_the_json_api_answers_429_with_retry_after_past_the_limit(
    nearly_no_refill: None,
) -> None:
    _, secret = await asyncio.to_thread(AgentToken.issue, "fast agent")
    _, other = await asyncio.to_thread(AgentToken.issue, "other agent")
    ts = now_us() // 1000
    statuses = [(await post_json(secret, batch(ts + i)))[0] for i in range(3)]
    assert statuses == [200, 200, 200]
    status, body, headers = await post_json(secret, batch(ts + 10))
    assert status == 429
    assert body["error"]["code"] == "rate_limited"
    assert int(headers["Retry-After"]) >= 1
    assert (await post_json(other, batch(ts + 11)))[0] == 200


async def test_the_line_protocol_endpoint_shares_the_token_limit(nearly_no_refill: None) -> None:
    _, secret = await asyncio.to_thread(AgentToken.issue, "telegraf")
    client = AsyncClient()
    statuses = []
    for i in range(4):
        response = await client.post(
            "/api/v2/write?precision=us",
            f"m,host=rl v=1 {now_us() + i}",
            content_type="text/plain",
            headers={"Authorization": f"Token {secret}"},
        )
        statuses.append(response.status_code)
    assert statuses == [204, 204, 204, 429]
    assert response.json()["error"]["code"] == "rate_limited"
    assert "Retry-After" in response.headers


@pytest.mark.parametrize(
    ("offset_s", "words"),
    [
        (-8 * 86400, "older than the 604800 s accepted window"),
        (301, "more than 300 s in the future"),
    ],
)
async def test_it_rejects_samples_outside_the_time_window_with_the_reason(
    agent_token: tuple[AgentToken, str], offset_s: int, words: str
) -> None:
    now_ms = now_us() // 1000
    body = {
        "source": "iot.api-test",
        "samples": [
            {"metric": "temperature", "ts": now_ms, "value": 1.0},
            {"metric": "temperature", "ts": now_ms + offset_s * 1000, "value": 2.0},
        ],
    }
    status, payload, _ = await post_json(agent_token[1], body)
    assert status == 200
    assert payload["accepted"] == 1
    [rejected] = payload["rejected"]
    assert (rejected["index"], rejected["field"], rejected["code"]) == (
        1,
        "ts",
        "invalid_reading",
    )
    assert words in rejected["reason"]


async def test_a_sample_four_minutes_ahead_is_still_accepted(
    agent_token: tuple[AgentToken, str],
) -> None:
    status, payload, _ = await post_json(agent_token[1], batch(now_us() // 1000 + 240_000))
    assert (status, payload["accepted"]) == (200, 1)


async def test_the_line_protocol_endpoint_rejects_old_and_future_lines_by_number(
    agent_token: tuple[AgentToken, str],
) -> None:
    now = now_us()
    body = f"m,host=win v=1 {now}\nm,host=win v=2 {now - 8 * 86400 * US}\nm,host=win v=3 {now + 600 * US}\n"
    response = await AsyncClient().post(
        "/api/v2/write?precision=us",
        body,
        content_type="text/plain",
        headers={"Authorization": f"Token {agent_token[1]}"},
    )
    assert response.status_code == 400
    payload = response.json()
    assert payload["accepted"] == 1
    assert [(r["line"], r["field"]) for r in payload["rejected"]] == [
        (2, "ts"),
        (3, "ts"),
    ]
    assert "older than" in payload["rejected"][0]["reason"]
    assert "in the future" in payload["rejected"][1]["reason"]


async def test_posting_the_same_batch_twice_stores_each_sample_once_and_says_duplicates(
    agent_token: tuple[AgentToken, str],
) -> None:
    ts = now_us() // 1000
    body = {
        "source": "iot.api-test",
        "samples": [{"metric": "temperature", "ts": ts - i, "value": float(i)} for i in range(50)],
    }
    first = await post_json(agent_token[1], body)
    second = await post_json(agent_token[1], body)
    assert (first[0], first[1]["accepted"], first[1]["duplicates"]) == (200, 50, 0)
    assert (
        second[0],
        second[1]["accepted"],
        second[1]["duplicates"],
        second[1]["rejected"],
    ) == (200, 0, 50, [])
    assert await Sample.objects.filter(metric__key="iot.api-test.temperature").acount() == 50


async def test_a_retried_batch_with_new_samples_stores_only_the_new_ones(
    agent_token: tuple[AgentToken, str],
) -> None:
    ts = now_us() // 1000
    await post_json(agent_token[1], batch(ts, 1.0))
    body = {
        "source": "iot.api-test",
        "samples": [
            {"metric": "temperature", "ts": ts, "value": 1.0},
            {"metric": "temperature", "ts": ts + 1, "value": 2.0},
        ],
    }
    _, payload, _ = await post_json(agent_token[1], body)
    assert (payload["accepted"], payload["duplicates"]) == (1, 1)


async def test_a_source_slug_too_long_for_its_column_is_refused_alone(agent_token: tuple[AgentToken, str]) -> None:
    """On PostgreSQL such a slug used to fail the whole group commit with a 503, forever retried by agents."""
    ts = now_us() // 1000
    body = {
        "samples": [
            {"source": "s" * 121, "metric": "m", "ts": ts, "value": 1.0},
            {"source": "iot.api-test", "metric": "m", "ts": ts, "value": 2.0, "labels": {"name": "n" * 201}},
            {"source": "iot.api-test", "metric": "m", "ts": ts, "value": 3.0},
        ]
    }
    status, payload, _ = await post_json(agent_token[1], body)
    assert status == 200
    assert payload["accepted"] == 1
    assert [(r["index"], r["field"]) for r in payload["rejected"]] == [(0, "source"), (1, "labels")]
    assert "longer than 120" in payload["rejected"][0]["reason"]


def test_a_token_is_read_from_the_database_once_then_from_the_process_cache() -> None:
    """The ingest round trip is live latency: a known token costs no query; a revocation still applies at once."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    token, secret = AgentToken.issue("cached")
    ts_ms = now_us() // 1000
    client = Client(headers={"Authorization": f"Token {secret}"})

    def post(ts: int):
        with CaptureQueriesContext(connection) as queries:
            response = client.post("/api/v1/ingest", batch(ts), content_type="application/json")
        return response, sum('FROM "dashboard_agenttoken"' in q["sql"] for q in queries)

    first, lookups = post(ts_ms)
    assert (first.status_code, lookups) == (200, 1)
    second, lookups = post(ts_ms + 1)
    assert (second.status_code, lookups) == (200, 0)

    token.revoked_at = token.created  # saved through the model, as the admin form does
    token.save()
    refused, _ = post(ts_ms + 2)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]["message"]


async def test_a_big_batch_is_parsed_off_the_event_loop_and_reports_each_refused_sample_by_index(
    agent_token: tuple[AgentToken, str],
) -> None:
    from dashboard import api

    ts = now_us() // 1000
    samples: list[dict] = [{"metric": f"m{i % 20}", "ts": ts - i, "value": float(i)} for i in range(3000)]
    samples[10]["value"] = "hot"
    samples[2500]["ts"] = ts + 3_600_000
    samples.append(dict(samples[0]))  # a repeat within the batch
    body = {"source": "iot.api-test", "samples": samples}
    assert len(str(body)) > api.PARSE_ON_LOOP_MAX_BYTES
    status, payload, _ = await post_json(agent_token[1], body)
    assert status == 200
    assert (payload["accepted"], payload["duplicates"]) == (2998, 1)
    assert [(r["index"], r["field"]) for r in payload["rejected"]] == [(10, "value"), (2500, "ts")]
    assert await Sample.objects.acount() == 2998


async def test_a_big_batch_writing_one_source_out_of_scope_is_refused_whole() -> None:
    _, secret = await sync_to_async(AgentToken.issue)("fleet", "iot.*")
    ts = now_us() // 1000
    samples = [{"source": "iot.a", "metric": "m", "ts": ts - i, "value": 1.0} for i in range(2000)]
    samples[1500]["source"] = "billing.a"
    status, payload, _ = await post_json(secret, {"samples": samples})
    assert status == 403
    assert payload["error"]["field"] == "source" and "billing.a" in payload["error"]["message"]
    assert await Sample.objects.acount() == 0


@pytest.mark.parametrize("fmt", ["json", "line protocol"])
async def test_a_big_batch_of_known_metrics_is_keyed_on_the_parsing_thread_and_stored_and_rolled_up_exactly(
    agent_token: tuple[AgentToken, str], monkeypatch, fmt: str
) -> None:
    import threading

    from dashboard import storage
    from dashboard.models import MinuteRollup

    prepared_on: list[str] = []
    prepare = storage.prepare

    def spy(readings):
        found = prepare(readings)
        prepared_on.append(threading.current_thread().name if found is not None else "")
        return found

    monkeypatch.setattr("dashboard.actions.prepare_rows", spy)
    minute = now_us() // 60_000_000 * 60_000_000 - 60_000_000  # the whole minute before this one

    async def post(offsets: range) -> int:
        rows = [(f"m{i % 10}", minute + i * 1000, float(i)) for i in offsets]
        if fmt == "json":
            body = {
                "source": "bigfleet",
                "precision": "us",
                "samples": [{"metric": m, "ts": t, "value": v} for m, t, v in rows],
            }
            status, payload, _ = await post_json(agent_token[1], body)
            return status
        lines = "".join(f"{m},source=bigfleet value={v} {t}\n" for m, t, v in rows)
        response = await AsyncClient().post(
            "/api/v2/write?precision=us",
            lines,
            content_type="text/plain",
            headers={"Authorization": f"Token {agent_token[1]}"},
        )
        return response.status_code

    assert await post(range(0, 2000)) in (200, 204)  # creates the metrics: the writer keys this one itself
    assert await post(range(1000, 3000)) in (200, 204)  # half stored already: the prepared buckets are redone
    assert await post(range(3000, 5000)) in (200, 204)
    assert prepared_on[0] == "" and all(name.startswith("pulseboard-parse") for name in prepared_on[1:])
    assert await Sample.objects.acount() == 5000
    rollups = [
        r
        async for r in MinuteRollup.objects.filter(metric__key="bigfleet.m3" if fmt == "json" else "bigfleet.m3.value")
    ]
    assert [(r.count, r.sum, r.first, r.last) for r in rollups] == [(500, float(sum(range(3, 5000, 10))), 3.0, 4993.0)]
