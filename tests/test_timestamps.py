"""Timestamps are scaled to µs with integers, rounded down, the same way on the JSON and line protocol endpoints.

Before, JSON `precision=ns` went through a float: 90 of 500 random nanosecond
timestamps came out 1 µs off, so the same instant sent both ways was stored twice.
"""

from __future__ import annotations

import json
import random

import pytest
from django.test import AsyncClient
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard.api import parse_json_batch
from dashboard.lineprotocol import parse_body
from dashboard.models import Sample
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading, scale_ts

NOW = now_us()
NS_PER = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
# Instants within the accepted window (7 days back, 300 s ahead), in nanoseconds.
instants_ns = st.integers(min_value=(NOW - 86_400 * US) * 1000, max_value=(NOW + 60 * US) * 1000)


def via_json(ts: int | float, precision: str) -> int:
    body = {"source": "ts.check", "precision": precision, "samples": [{"metric": "v", "ts": ts, "value": 1.0}]}
    (item,) = parse_json_batch(json.dumps(body).encode())
    assert isinstance(item, Reading), item
    return item.ts


def via_line_protocol(ts: int, precision: str) -> int:
    (item,) = parse_body(f"v,source=ts.check v=1 {ts}".encode(), precision, NOW).items
    assert isinstance(item, Reading), item
    return item.ts


@pytest.mark.sqlite_only  # parsers only
@settings(max_examples=500, deadline=None)
@given(instant=instants_ns, precision=st.sampled_from(list(NS_PER)))
def test_json_and_line_protocol_store_the_same_microsecond_for_the_same_instant(instant: int, precision: str) -> None:
    ts = instant // NS_PER[precision]  # the instant as the sender writes it in that precision
    expected = ts * NS_PER[precision] // 1000  # exact, rounded down
    assert via_json(ts, precision) == expected
    assert via_line_protocol(ts, precision) == expected


@pytest.mark.sqlite_only
def test_the_rounding_rule_is_floor_on_both_endpoints_and_for_fractions() -> None:
    # 1,999 ns is 1 µs (not 2); a float in ms is taken at its exact value and rounded down too.
    base_ns = NOW * 1000
    assert via_json(base_ns + 1_999, "ns") == via_line_protocol(base_ns + 1_999, "ns") == NOW + 1
    assert via_json(NOW / 1000, "ms") == scale_ts(NOW / 1000, "ms")
    assert (
        scale_ts(1.5, "ms") == 1500
        and scale_ts(0.0015, "ms") == 1
        and scale_ts(1_764_133_200.0000019, "s") == 1_764_133_200_000_001
    )
    # An ISO 8601 string is exact to the µs as well (not through datetime.timestamp(), a float).
    from datetime import UTC, datetime

    iso = datetime.fromtimestamp(NOW // US, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{NOW % US:06d}Z"
    assert via_json(iso, "ms") == NOW
    # Before the epoch, floor goes toward the past: -1,500 ns is -2 µs, not -1.
    assert scale_ts(-1_500, "ns") == -2 and scale_ts(-0.5, "us") == -1


@pytest.mark.django_db(transaction=True)
async def test_the_same_nanosecond_instants_sent_both_ways_are_stored_once(agent_token) -> None:
    rng = random.Random(12)
    instants = sorted({(NOW - rng.randrange(3_600 * US)) * 1000 + rng.randrange(1000) for _ in range(500)})
    headers = {"Authorization": f"Token {agent_token[1]}"}
    body = {
        "source": "ts-both",
        "precision": "ns",
        "samples": [{"metric": "v.v", "ts": ts, "value": 1.0} for ts in instants],
    }
    first = await AsyncClient().post("/api/v1/ingest", body, content_type="application/json", headers=headers)
    assert first.status_code == 200 and first.json()["accepted"] == len(instants), first.content[:300]
    lines = "\n".join(f"v,source=ts-both v=1 {ts}" for ts in instants)  # the same key: ts-both.v.v
    second = await AsyncClient().post("/api/v2/write?precision=ns", lines, content_type="text/plain", headers=headers)
    assert second.status_code == 204, second.content[:300]
    stored = [t async for t in Sample.objects.filter(metric__key="ts-both.v.v").values_list("ts", flat=True)]
    assert sorted(stored) == [ts // 1000 for ts in instants]  # each instant once: the second post was all duplicates
