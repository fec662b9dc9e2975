"""Chart history: at most N buckets per metric over any range, from the cheapest tier that has them.

A chart is a few hundred to a few thousand pixels wide, so it never needs more
points than that, whatever the range. The query picks the coarsest stored
tier that still yields at least N buckets over the range (1-hour rollups,
then 10-minute, then 1-minute rollups, then raw samples), so a year costs about as much as an
hour; a tier whose retention no longer covers the start of the range is
skipped for a coarser one. Buckets are computed in SQL with integer
arithmetic on µs, `(ts - origin) / step`, which behaves the same on SQLite and
PostgreSQL. Each bucket keeps min and max, so a one-sample spike in a year of
flat data still shows as a bucket's max; avg is sum / count, and open/close
(first/last) serve candlesticks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db import connection, transaction
from django.http import QueryDict

from dashboard.exceptions import BadRequest
from dashboard.models import Metric
from dashboard.rollups import HOUR_US, MINUTE_US, TEN_MINUTE_US
from dashboard.timeutil import US, now_us

DEFAULT_POINTS = 1000  # a full-width chart on a laptop screen
MAX_POINTS = 10_000  # beyond any screen; bounds response size and query time
MAX_SERIES = 50  # metrics per request
QUERY_WORK_MEM = "32MB"  # per chart query on PostgreSQL; the default 4 MB spills a month of minutes to disk
DAY_US = 86_400 * US
RELATIVE_RE = re.compile(r"^(?:now)?\s*([+-])\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d|w|y)$")
UNIT_US = {"us": 1, "ms": 1000, "s": US, "m": 60 * US, "h": 3600 * US, "d": DAY_US, "w": 7 * DAY_US, "y": 365 * DAY_US}
# (name, bucket width µs, table, time column, retention setting, Metric override), coarsest first.
TIERS = (
    ("1h", HOUR_US, "dashboard_hourrollup", "bucket", "RETENTION_HOUR_DAYS", "hour_retention_days"),
    (
        "10m",
        TEN_MINUTE_US,
        "dashboard_tenminuterollup",
        "bucket",
        "RETENTION_TEN_MINUTE_DAYS",
        "ten_minute_retention_days",
    ),
    ("1m", MINUTE_US, "dashboard_minuterollup", "bucket", "RETENTION_MINUTE_DAYS", "minute_retention_days"),
    ("raw", 1, "dashboard_sample", "ts", "RETENTION_RAW_DAYS", "raw_retention_days"),
)


@dataclass
class Series:
    """The buckets of one metric, as columns; t is each bucket's start in µs."""

    key: str
    unit: str
    t: list[int] = field(default_factory=list)
    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)
    avg: list[float] = field(default_factory=list)
    count: list[int] = field(default_factory=list)
    open: list[float] = field(default_factory=list)
    close: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "key": self.key,
            "unit": self.unit,
            "t": self.t,
            "min": self.min,
            "max": self.max,
            "avg": self.avg,
            "count": self.count,
            "open": self.open,
            "close": self.close,
        }


@dataclass
class History:
    """The answer to one series request: bucket k of every series starts at from_us + k * step_us."""

    from_us: int
    to_us: int
    step_us: int
    tier: str
    series: list[Series]

    def as_dict(self) -> dict:
        return {
            "from": self.from_us,
            "to": self.to_us,
            "step_us": self.step_us,
            "tier": self.tier,
            "series": [s.as_dict() for s in self.series],
        }


def parse_time(value: str, now: int, field_name: str) -> int:
    """Return µs since the epoch for an integer of µs, an ISO 8601 time, 'now', or a relative time like '-24h'."""
    text = value.strip()
    if text == "now":
        return now
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    match = RELATIVE_RE.match(text)
    if match:
        sign, amount, unit = match.groups()
        offset = int(float(amount) * UNIT_US[unit])
        return now - offset if sign == "-" else now + offset
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"{field_name}={value[:60]!r} is not a time: use µs since the epoch, ISO 8601 "
            "(2026-11-26T05:00:00Z), 'now' or a relative time like '-24h'",
            field=field_name,
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp()) * US + parsed.microsecond


def parse_points(value: str | None) -> int:
    """Return the requested number of buckets, DEFAULT_POINTS when absent."""
    if value is None or value == "":
        return DEFAULT_POINTS
    try:
        points = int(value)
    except ValueError:
        raise BadRequest(f"points={value[:20]!r} is not a whole number", field="points") from None
    if not 1 <= points <= MAX_POINTS:
        raise BadRequest(f"points must be between 1 and {MAX_POINTS}", field="points")
    return points


def _retention_days(metric: Metric, setting: str, override: str) -> int:
    days = getattr(metric, override)
    return days if days is not None else settings.PULSEBOARD[setting]


def choose_tier(metrics: list[Metric], from_us: int, to_us: int, points: int, now: int) -> tuple[str, int, str, str]:
    """Return (name, width µs, table, time column) of the coarsest tier with at least `points` buckets in range.

    A finer tier that some requested metric has already pruned at from_us is passed
    over for the next coarser one that still holds it.
    """
    span = to_us - from_us
    best = next(i for i, tier in enumerate(TIERS) if tier[1] == 1 or span // tier[1] >= points)
    for name, width, table, column, setting, override in reversed(TIERS[: best + 1]):
        kept_from = now - min((_retention_days(m, setting, override) for m in metrics), default=0) * DAY_US
        if from_us >= kept_from:
            return name, width, table, column
    # Every tier is pruned at from_us: the coarsest one at least has what is left.
    name, width, table, column, _, _ = TIERS[0]
    return name, width, table, column


def grid(from_us: int, to_us: int, points: int, width: int) -> tuple[int, int]:
    """Return (origin, step) so that buckets origin + k * step, k < points, cover [from_us, to_us).

    For rollup tiers the origin and step are whole multiples of the tier's
    width, so every stored bucket falls into exactly one chart bucket.
    """
    origin = from_us - from_us % width
    per_bucket = -(-(to_us - origin) // (points * width))  # ceiling division
    return origin, max(1, per_bucket) * width


def _bucket_columns(raw: bool) -> tuple[str, str, str]:
    """Return (min/max/sum/count aggregates, open column, close column) for raw rows or rollup rows."""
    if raw:
        return "MIN(value) AS mn, MAX(value) AS mx, SUM(value) AS s, COUNT(*) AS c", "value", "value"
    stats = 'MIN("min") AS mn, MAX("max") AS mx, SUM("sum") AS s, CAST(SUM("count") AS BIGINT) AS c'
    return stats, '"first"', '"last"'


def _series_sql(table: str, column: str, raw: bool) -> str:
    in_range = f"{column} >= %s AND {column} < %s"
    stats, first, last = _bucket_columns(raw)
    # SQLite (PostgreSQL: _series_sql_postgresql). One pass aggregates each
    # chart bucket and notes its first and last row; open and close are then
    # read by their unique (metric, time) key: two index probes per bucket, as
    # correlated subqueries so that no estimate can turn them into joins over
    # the whole range.
    open_sql = f"(SELECT f.{first} FROM {table} f WHERE f.metric_id = %s AND f.{column} = g.t0 AND f.{in_range})"
    close_sql = f"(SELECT l.{last} FROM {table} l WHERE l.metric_id = %s AND l.{column} = g.t1 AND l.{in_range})"
    if raw:
        # A raw bucket often holds one sample, which is its own open and close.
        open_sql = f"CASE WHEN g.c = 1 THEN g.mn ELSE {open_sql} END"
        close_sql = f"CASE WHEN g.c = 1 THEN g.mn ELSE {close_sql} END"
    return (
        f"WITH g AS (SELECT ({column} - CAST(%s AS BIGINT)) / CAST(%s AS BIGINT) AS k, {stats}, "
        f"MIN({column}) AS t0, MAX({column}) AS t1 FROM {table} "
        f"WHERE metric_id = %s AND {in_range} GROUP BY 1) "
        f"SELECT g.k, g.mn, g.mx, g.s, g.c, {open_sql}, {close_sql} FROM g ORDER BY g.k"
    )


def _series_sql_postgresql(table: str, column: str, raw: bool) -> str:
    stats, first, last = _bucket_columns(raw)
    # Open and close in the same pass: the smallest [time, first] pair of a
    # bucket holds the open, the largest [time, last] pair the close. Times
    # are unique per metric and exact in float8 (µs stay below 2^53 until
    # 2255), so no other pair can tie. This costs less than the two index
    # probes per bucket of the portable query (a 30-day chart has 865
    # buckets) and less than ordered aggregates, which sort each bucket.
    return (
        f"SELECT ({column} - CAST(%s AS BIGINT)) / CAST(%s AS BIGINT) AS k, {stats}, "
        f"(MIN(ARRAY[CAST({column} AS float8), {first}]))[2], (MAX(ARRAY[CAST({column} AS float8), {last}]))[2] "
        f"FROM {table} WHERE metric_id = %s AND {column} >= %s AND {column} < %s GROUP BY 1 ORDER BY 1"
    )


def series_query(
    table: str, column: str, raw: bool, metric_id: int, origin: int, step: int, to_us: int
) -> tuple[str, list]:
    """Return the SQL and parameters that bucket one metric's rows of a tier (also used by EXPLAIN tests)."""
    if connection.vendor == "postgresql":
        return _series_sql_postgresql(table, column, raw), [origin, step, metric_id, origin, to_us]
    params = [origin, step, metric_id, origin, to_us, metric_id, origin, to_us, metric_id, origin, to_us]
    return _series_sql(table, column, raw), params


def load(metrics: list[Metric], from_us: int, to_us: int, points: int, *, now: int | None = None) -> History:
    """Return at most `points` buckets per metric over [from_us, to_us) from the best tier."""
    if to_us <= from_us:
        raise BadRequest("'to' must be later than 'from'", field="to")
    now = now_us() if now is None else now
    tier, width, table, column = choose_tier(metrics, from_us, to_us, points, now)
    origin, step = grid(from_us, to_us, points, width)
    history = History(origin, to_us, step, tier, [])
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # A month of minute rollups is costed above jit_above_cost, and
            # compiling it takes longer than running it; and aggregating its
            # 43,200 rows should never spill to disk.
            cursor.execute(f"SET LOCAL jit = off; SET LOCAL work_mem = '{QUERY_WORK_MEM}'")
        for metric in metrics:
            out = Series(metric.key, metric.unit)
            sql, params = series_query(table, column, tier == "raw", metric.id, origin, step, to_us)
            cursor.execute(sql, params)
            for k, mn, mx, s, c, first, last in cursor.fetchall():
                out.t.append(origin + int(k) * step)
                out.min.append(mn)
                out.max.append(mx)
                out.avg.append(s / c)
                out.count.append(int(c))
                out.open.append(first)
                out.close.append(last)
            history.series.append(out)
    return history


def csv_lines(history: History) -> Iterator[str]:
    """Yield the CSV rendering of a history, one line per bucket: key,time_iso,min,max,avg,count."""
    yield "key,time_iso,min,max,avg,count\n"
    for s in history.series:
        for i, t in enumerate(s.t):
            time_iso = datetime.fromtimestamp(t // US, tz=UTC).replace(microsecond=t % US).isoformat()
            yield f"{s.key},{time_iso.replace('+00:00', 'Z')},{s.min[i]!r},{s.max[i]!r},{s.avg[i]!r},{s.count[i]}\n"


def load_for_user(user: AbstractBaseUser | AnonymousUser, params: QueryDict) -> History:
    """Return the history a series request asks for, reading only metrics the user may see.

    `params` is the request's query dict: metric (repeatable), from, to, points.
    A metric that does not exist and one the user may not read get the same
    answer, so keys of others' metrics cannot be probed.
    """
    keys = [k for k in params.getlist("metric") if k]
    if not keys:
        raise BadRequest("name at least one metric: ?metric=<key>", field="metric")
    if len(keys) > MAX_SERIES:
        raise BadRequest(f"at most {MAX_SERIES} metrics per request", field="metric")
    now = now_us()
    from_us = parse_time(params.get("from") or "-1h", now, "from")
    to_us = parse_time(params.get("to") or "now", now, "to")
    points = parse_points(params.get("points"))
    found = {m.key: m for m in Metric.objects.visible_to(user).filter(key__in=keys)}
    for key in keys:
        if key not in found:
            raise BadRequest(f"metric {key[:200]!r} does not exist or you may not read it", field="metric")
    ordered = list(dict.fromkeys(keys))
    return load([found[k] for k in ordered], from_us, to_us, points, now=now)
