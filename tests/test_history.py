"""History: tier choice, bucketing, the series API (JSON and CSV), permissions and the query plans."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client

from dashboard import history, partitions, storage
from dashboard.exceptions import BadRequest
from dashboard.models import Metric, Source
from dashboard.rollups import HOUR_US, MINUTE_US, TEN_MINUTE_US
from dashboard.timeutil import US
from dashboard.validation import Reading
from tests.conftest import JUST_AFTER_MIDNIGHT, Clock

# The clock fixture's own instant (PULSEBOARD_TEST_CLOCK or noon), and one whose
# last hour and last day cross midnight UTC on purpose.
AT_DEFAULT_AND_AFTER_MIDNIGHT = pytest.mark.parametrize(
    "clock", [None, JUST_AFTER_MIDNIGHT], ids=["default-clock", "after-midnight"], indirect=True
)

DAY_US = 86_400 * US
NOW = 1_795_651_200_000_000  # 2026-11-26 00:00:00 UTC


def store_series(
    key: str, start: int, end: int, interval_us: int, value=lambda i, ts: float(i % 7)
) -> list[tuple[int, float]]:
    """Store one reading every interval_us in [start, end) and return the (ts, value) pairs."""
    source, name = key.split(".", 1)
    rows = [(ts, value(i, ts)) for i, ts in enumerate(range(start, end, interval_us))]
    for chunk in range(0, len(rows), 10_000):
        storage.store([Reading(source, name, ts, v) for ts, v in rows[chunk : chunk + 10_000]])
    return rows


def expected_buckets(rows: list[tuple[int, float]], origin: int, to: int, step: int) -> dict[int, dict[str, Any]]:
    """Bucket (ts, value) rows the slow obvious way, to check what SQL returned."""
    buckets: dict[int, list[tuple[int, float]]] = {}
    for ts, v in rows:
        if origin <= ts < to:
            buckets.setdefault(origin + (ts - origin) // step * step, []).append((ts, v))
    out = {}
    for t, items in buckets.items():
        items.sort()
        values = [v for _, v in items]
        out[t] = {
            "min": min(values),
            "max": max(values),
            "avg": sum(values) / len(values),
            "count": len(values),
            "open": items[0][1],
            "close": items[-1][1],
        }
    return out


def as_buckets(series: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {
        t: {k: series[k][i] for k in ("min", "max", "avg", "count", "open", "close")} for i, t in enumerate(series["t"])
    }


def assert_same_buckets(got: dict[int, dict[str, Any]], want: dict[int, dict[str, Any]]) -> None:
    assert got.keys() == want.keys()
    for t, bucket in want.items():
        assert got[t]["avg"] == pytest.approx(bucket["avg"])
        assert {k: v for k, v in got[t].items() if k != "avg"} == {k: v for k, v in bucket.items() if k != "avg"}


def get_series(client: Client, **params: Any):
    return client.get("/api/v1/series", params)


def csv_body(response) -> str:
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return asyncio.run(collect()).decode()


# --- parsing and tier choice (no database) ------------------------------------


def test_it_reads_times_as_microseconds_iso_8601_now_or_relative() -> None:
    assert history.parse_time("1795651200000000", NOW, "from") == NOW
    assert history.parse_time("2026-11-26T00:00:00Z", NOW, "from") == NOW
    assert history.parse_time("2026-11-26T01:00:00.000005+01:00", NOW, "from") == NOW + 5
    assert history.parse_time("2026-11-26T00:00:00", NOW, "from") == NOW
    assert history.parse_time("now", NOW, "to") == NOW
    assert history.parse_time("-24h", NOW, "from") == NOW - DAY_US
    assert history.parse_time("now-30m", NOW, "from") == NOW - 30 * 60 * US
    assert history.parse_time("-1.5d", NOW, "from") == NOW - 36 * 3600 * US
    assert history.parse_time("+5m", NOW, "to") == NOW + 5 * 60 * US


@pytest.mark.parametrize("bad", ["yesterday", "-24x", "2026-13-01", ""])
def test_it_refuses_a_time_it_cannot_read_naming_the_field(bad: str) -> None:
    with pytest.raises(BadRequest) as caught:
        history.parse_time(bad, NOW, "from")
    assert caught.value.field == "from"


@pytest.mark.parametrize(
    ("span_us", "tier"),
    [
        (3600 * US, "raw"),
        (DAY_US, "1m"),
        (1000 * TEN_MINUTE_US - 1, "1m"),
        (1000 * TEN_MINUTE_US, "10m"),
        (30 * DAY_US, "10m"),
        (1000 * HOUR_US - 1, "10m"),
        (1000 * HOUR_US, "1h"),
        (365 * DAY_US, "1h"),
    ],
)
def test_it_picks_the_coarsest_tier_that_still_gives_the_requested_points(span_us: int, tier: str) -> None:
    metric = Metric(key="a.b")
    assert history.choose_tier([metric], NOW - span_us, NOW, 1000, NOW)[0] == tier


def test_it_skips_a_tier_that_retention_has_already_emptied() -> None:
    metric = Metric(key="a.b")
    month_ago, half_year_ago, two_years_ago = NOW - 30 * DAY_US, NOW - 180 * DAY_US, NOW - 730 * DAY_US
    assert history.choose_tier([metric], month_ago, month_ago + 3600 * US, 1000, NOW)[0] == "1m"
    assert history.choose_tier([metric], half_year_ago, half_year_ago + 3600 * US, 1000, NOW)[0] == "10m"
    assert history.choose_tier([metric], two_years_ago, two_years_ago + 3600 * US, 1000, NOW)[0] == "1h"
    keeps_raw = Metric(key="a.c", raw_retention_days=60)
    assert history.choose_tier([keeps_raw], month_ago, month_ago + 3600 * US, 1000, NOW)[0] == "raw"
    keeps_ten_minutes = Metric(key="a.d", ten_minute_retention_days=1000)
    assert history.choose_tier([keeps_ten_minutes], two_years_ago, two_years_ago + DAY_US, 1000, NOW)[0] == "10m"
    # One metric of the request that has pruned the tier already sends all of them to a coarser one.
    assert history.choose_tier([keeps_ten_minutes, metric], two_years_ago, two_years_ago + DAY_US, 1000, NOW)[0] == "1h"


def test_it_aligns_rollup_buckets_to_the_tier_and_never_exceeds_the_points() -> None:
    origin, step = history.grid(NOW + 17 * US, NOW + 30 * DAY_US, 1000, MINUTE_US)
    assert origin == NOW
    assert step % MINUTE_US == 0
    assert (NOW + 30 * DAY_US - 1 - origin) // step < 1000


# --- querying ---------------------------------------------------------------


@pytest.mark.django_db
@AT_DEFAULT_AND_AFTER_MIDNIGHT
@pytest.mark.parametrize(
    ("span_us", "points", "tier"),
    [(3600 * US, 100, "raw"), (6 * 3600 * US, 50, "1m"), (6 * 3600 * US, 20, "10m"), (6 * 3600 * US, 4, "1h")],
)
def test_it_returns_at_most_n_buckets_with_min_max_avg_open_and_close(
    clock: Clock, span_us: int, points: int, tier: str
) -> None:
    now = clock.now
    partitions.ensure_partitions()  # as the retention loop would have, around the moved clock
    start = now - span_us - 7 * MINUTE_US
    rows = store_series("web-01.cpu", start, now, 10 * US, lambda i, ts: float((i * 37) % 101))
    metric = Metric.objects.get(key="web-01.cpu")
    result = history.load([metric], now - span_us, now, points, now=now).as_dict()
    assert result["tier"] == tier
    series = result["series"][0]
    assert 0 < len(series["t"]) <= points
    assert series["t"] == sorted(series["t"])
    want = expected_buckets(rows, result["from"], result["to"], result["step_us"])
    assert_same_buckets(as_buckets(series), want)


@pytest.mark.django_db
def test_it_keeps_a_spike_visible_in_a_year_chart(clock: Clock) -> None:
    now = clock.now
    start = now - 365 * DAY_US
    spike_ts = start + 200 * DAY_US + 7 * MINUTE_US + 30 * US
    store_series("iot.pump.pressure", start, now, 30 * MINUTE_US, lambda i, ts: 1.0)
    storage.store([Reading("iot.pump", "pressure", spike_ts, 250.0)])
    metric = Metric.objects.get(key="iot.pump.pressure")
    result = history.load([metric], start, now, 1000, now=now)
    series = result.series[0]
    assert result.tier == "1h"
    assert len(series.t) <= 1000
    spikes = [i for i, high in enumerate(series.max) if high == 250.0]
    assert len(spikes) == 1
    i = spikes[0]
    assert series.t[i] <= spike_ts < series.t[i] + result.step_us
    assert set(series.max[:i] + series.max[i + 1 :]) == {1.0}
    assert set(series.min) == {1.0}


@pytest.mark.django_db
@AT_DEFAULT_AND_AFTER_MIDNIGHT
def test_it_counts_late_samples_in_the_bucket_they_belong_to(clock: Clock) -> None:
    now = clock.now
    start = now - 6 * 3600 * US
    rows = store_series("web-01.cpu", start, now, 60 * US)
    late = [(start + 30 * US, 99.0), (start + 3 * 3600 * US + 5 * US, -5.0)]
    storage.store([Reading("web-01", "cpu", ts, v) for ts, v in late])
    metric = Metric.objects.get(key="web-01.cpu")
    result = history.load([metric], start, now, 60, now=now).as_dict()
    assert result["tier"] == "1m"
    want = expected_buckets(rows + late, result["from"], result["to"], result["step_us"])
    assert_same_buckets(as_buckets(result["series"][0]), want)


# --- the API ----------------------------------------------------------------


@pytest.fixture
def restricted(db, clock: Clock) -> Iterator[Metric]:
    """A metric of a source only the 'finance' group may read, with an hour of data."""
    now = clock.now
    store_series("trading.pnl", now - 3600 * US, now, 10 * US)
    source = Source.objects.get(slug="trading")
    source.viewer_groups.add(Group.objects.create(name="finance"))
    yield Metric.objects.get(key="trading.pnl")


@pytest.fixture
def public(db, clock: Clock) -> Metric:
    """A metric every signed-in user may read, with two hours of data."""
    now = clock.now
    store_series("web-01.cpu", now - 2 * 3600 * US, now, 10 * US)
    return Metric.objects.get(key="web-01.cpu")


@pytest.mark.django_db
def test_the_series_api_answers_compact_columnar_json(client: Client, viewer, public: Metric, clock: Clock) -> None:
    client.force_login(viewer)
    now = clock.now
    to = now - now % MINUTE_US
    response = get_series(client, metric="web-01.cpu", **{"from": to - 3600 * US, "to": to, "points": 30})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"from", "to", "step_us", "tier", "series"}
    assert body["tier"] == "1m"
    assert body["step_us"] == 2 * MINUTE_US
    (series,) = body["series"]
    assert set(series) == {"key", "unit", "t", "min", "max", "avg", "count", "open", "close"}
    assert series["key"] == "web-01.cpu"
    assert series["t"] == [to - 3600 * US + i * 2 * MINUTE_US for i in range(30)]
    assert sum(series["count"]) == 360
    assert all(len(series[k]) == len(series["t"]) for k in ("min", "max", "avg", "count", "open", "close"))


@pytest.mark.django_db
def test_the_series_api_returns_several_metrics_in_the_order_asked(client: Client, owner, public, restricted) -> None:
    client.force_login(owner)
    response = client.get("/api/v1/series?metric=trading.pnl&metric=web-01.cpu&from=-30m&points=10")
    assert [s["key"] for s in response.json()["series"]] == ["trading.pnl", "web-01.cpu"]


@pytest.mark.django_db
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume")
def test_the_series_api_streams_csv_rows(client: Client, viewer, public: Metric, clock: Clock) -> None:
    client.force_login(viewer)
    now = clock.now
    response = get_series(client, metric="web-01.cpu", format="csv", points=5, **{"from": now - 3600 * US, "to": now})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    lines = csv_body(response).splitlines()
    assert lines[0] == "key,time_iso,min,max,avg,count"
    # 3 buckets of 20 minutes when the hour starts on a 10-minute boundary (noon), else 4.
    assert 3 <= len(lines) - 1 <= 5
    key, time_iso, low, high, avg, count = lines[1].split(",")
    assert key == "web-01.cpu" and time_iso.endswith("Z")
    assert float(low) <= float(avg) <= float(high) and int(count) > 0
    json_body = get_series(client, metric="web-01.cpu", points=5, **{"from": now - 3600 * US, "to": now}).json()
    assert [int(line.split(",")[5]) for line in lines[1:]] == json_body["series"][0]["count"]


@pytest.mark.django_db
def test_a_viewer_cannot_read_a_metric_restricted_to_another_group(client: Client, viewer, restricted: Metric) -> None:
    client.force_login(viewer)
    response = get_series(client, metric="trading.pnl")
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "metric"
    unknown = get_series(client, metric="trading.nothing")
    assert unknown.json()["error"]["message"].replace("nothing", "pnl") == response.json()["error"]["message"]


@pytest.mark.django_db
def test_a_member_of_the_granted_group_can_read_the_restricted_metric(
    client: Client, viewer, restricted: Metric
) -> None:
    viewer.groups.add(Group.objects.get(name="finance"))
    client.force_login(viewer)
    response = get_series(client, metric="trading.pnl", **{"from": "-10m"})
    assert response.status_code == 200
    assert sum(response.json()["series"][0]["count"]) > 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "metric"),
        ({"metric": "web-01.missing"}, "metric"),
        ({"metric": "web-01.cpu", "from": "last tuesday"}, "from"),
        ({"metric": "web-01.cpu", "from": "now", "to": "-1h"}, "to"),
        ({"metric": "web-01.cpu", "points": "0"}, "points"),
        ({"metric": "web-01.cpu", "points": "many"}, "points"),
        ({"metric": "web-01.cpu", "points": str(history.MAX_POINTS + 1)}, "points"),
        ({"metric": "web-01.cpu", "format": "xml"}, "format"),
    ],
)
def test_the_series_api_refuses_a_bad_request_naming_the_field(
    client: Client, viewer, public: Metric, params: dict[str, str], field: str
) -> None:
    client.force_login(viewer)
    response = get_series(client, **params)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == field


@pytest.mark.django_db
def test_the_series_api_asks_anonymous_users_to_sign_in(client: Client, public: Metric) -> None:
    response = get_series(client, metric="web-01.cpu")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


# --- query plans on PostgreSQL ------------------------------------------------


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def explain(sql: str, params: list) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        raw = cursor.fetchone()[0]
    document = json.loads(raw) if isinstance(raw, str) else raw
    return list(plan_nodes(document[0]["Plan"]))


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("clock", "tier", "span_us"),
    [
        pytest.param(None, "1m", DAY_US, id="1m-day"),
        pytest.param(None, "10m", 30 * DAY_US, id="10m-month"),
        pytest.param(None, "1h", 365 * DAY_US, id="1h-year"),
        pytest.param(None, "raw", 3600 * US, id="raw-hour"),
        pytest.param(JUST_AFTER_MIDNIGHT, "raw", 3600 * US, id="raw-hour-across-midnight"),
        pytest.param(JUST_AFTER_MIDNIGHT, "1m", DAY_US, id="1m-day-across-midnight"),
    ],
    indirect=["clock"],
)
def test_a_chart_query_of_one_metric_uses_an_index_of_its_tier_table_only(
    clock: Clock, tier: str, span_us: int
) -> None:
    source = Source.objects.create(slug="fleet", name="fleet")
    metrics = Metric.objects.bulk_create([Metric(source=source, name=f"m{i}", key=f"fleet.m{i}") for i in range(20)])
    now = clock.now
    # 20 metrics with 10 days of minutes, 60 days of 10 minutes, 2 years of hours,
    # or minutely samples over every whole UTC day that the last day touches:
    # enough rows that a sequential scan is not the cheapest plan. Each daily
    # partition a raw window overlaps holds 28,800 rows wherever midnight falls
    # in the window (a day that has only begun holds a few rows, and there a
    # sequential scan is the right plan: issue #17).
    first_day, end_day = partitions.day_start(now - DAY_US), partitions.day_start(now) + DAY_US
    with connection.cursor() as cursor:
        if tier == "raw":
            partitions.ensure_partitions(first_day, end_day)
            cursor.execute(
                "INSERT INTO dashboard_sample (metric_id, ts, value) SELECT m.id, t, 1 FROM dashboard_metric m, "
                "generate_series(%s::bigint, %s::bigint, %s::bigint) AS t WHERE m.source_id = %s",
                [first_day, end_day - 1, 60 * US, source.id],
            )
        else:
            table, width, count = {
                "1m": ("dashboard_minuterollup", MINUTE_US, 14_400),
                "10m": ("dashboard_tenminuterollup", TEN_MINUTE_US, 8_640),
                "1h": ("dashboard_hourrollup", HOUR_US, 17_520),
            }[tier]
            cursor.execute(
                f'INSERT INTO {table} (metric_id, bucket, "min", "max", "sum", "count", "first", first_ts, "last", last_ts) '
                "SELECT m.id, b, 1, 2, 3, 2, 1, b, 2, b + 1 FROM dashboard_metric m, "
                "generate_series(%s::bigint - %s::bigint * %s::bigint, %s::bigint, %s::bigint) AS b WHERE m.source_id = %s",
                [now - now % width, count, width, now, width, source.id],
            )
        cursor.execute(
            "ANALYZE dashboard_minuterollup, dashboard_tenminuterollup, dashboard_hourrollup, dashboard_sample"
        )
    metric = metrics[7]
    name, width, table, column = history.choose_tier([metric], now - span_us, now, 1000, now)
    assert name == tier
    origin, step = history.grid(now - span_us, now, 1000, width)
    nodes = explain(*history.series_query(table, column, tier == "raw", metric.id, origin, step, now))
    relations = {n["Relation Name"] for n in nodes if "Relation Name" in n}
    if tier == "raw":
        # Partition pruning: exactly the days [origin, now) overlaps, never DEFAULT.
        overlapped = {partitions.partition_name(day) for day in range(partitions.day_start(origin), now, DAY_US)}
        assert relations == overlapped
        assert partitions.DEFAULT_PARTITION not in relations
        assert len(relations) == (2 if partitions.day_start(origin) < partitions.day_start(now - 1) else 1)
    else:
        assert relations == {table}
    scans = [n for n in nodes if "Relation Name" in n]
    assert all(n["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan") for n in scans), [
        (n["Node Type"], n["Relation Name"]) for n in scans
    ]
    index_names = {n["Index Name"] for n in nodes if "Index Name" in n}
    assert index_names and all("metric" in name and ("ts" in name or "bucket" in name) for name in index_names)
