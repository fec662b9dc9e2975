"""Minute, 10-minute and hour rollups, kept up to date from the rows each write inserts.

Charts over days or years read these tables instead of raw samples. They are
maintained incrementally in the writer's transaction: the new rows of a batch
are pre-aggregated per (metric, bucket), in SQL within the insert's statement
on PostgreSQL (upsert_ctes) and in Python on SQLite (apply), and merged into
the stored buckets by upsert. Only rows that were actually inserted are
counted, so a retried batch (all duplicates) changes nothing, and a late
sample merges into its old bucket: min/max widen, sum/count add, and
first/last move only when the new sample is earlier/later than the stored
ones. Raw rows are never re-scanned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db.backends.utils import CursorWrapper

from dashboard.models import HourRollup, MinuteRollup, Rollup, TenMinuteRollup
from dashboard.timeutil import US

MINUTE_US = MinuteRollup.BUCKET_S * US
TEN_MINUTE_US = TenMinuteRollup.BUCKET_S * US
HOUR_US = HourRollup.BUCKET_S * US
# (model, bucket width in µs, API name), finest first.
TIERS: tuple[tuple[type[Rollup], int, str], ...] = (
    (MinuteRollup, MINUTE_US, "1m"),
    (TenMinuteRollup, TEN_MINUTE_US, "10m"),
    (HourRollup, HOUR_US, "1h"),
)
UPSERT_CHUNK = 2000  # buckets per statement: 20,000 parameters, under SQLite's 32,766

# One bucket while aggregating: [min, max, sum, count, first, first_ts, last, last_ts].
Bucket = list[Any]
COLUMNS = ("metric_id", "bucket", "min", "max", "sum", "count", "first", "first_ts", "last", "last_ts")


def aggregate(rows: Iterable[tuple[int, int, float]], width_us: int) -> dict[tuple[int, int], Bucket]:
    """Return the buckets of (metric id, ts µs, value) rows for one tier, keyed by (metric id, bucket start)."""
    buckets: dict[tuple[int, int], Bucket] = {}
    for metric_id, ts, value in rows:
        key = (metric_id, ts - ts % width_us)
        b = buckets.get(key)
        if b is None:
            buckets[key] = [value, value, value, 1, value, ts, value, ts]
            continue
        if value < b[0]:
            b[0] = value
        if value > b[1]:
            b[1] = value
        b[2] += value
        b[3] += 1
        if ts < b[5]:
            b[4], b[5] = value, ts
        if ts > b[7]:
            b[6], b[7] = value, ts
    return buckets


def coarsen(buckets: dict[tuple[int, int], Bucket], width_us: int) -> dict[tuple[int, int], Bucket]:
    """Return the buckets of a coarser tier, built from a finer tier's buckets rather than from the rows again."""
    out: dict[tuple[int, int], Bucket] = {}
    for (metric_id, start), fine in buckets.items():
        _fold(out, (metric_id, start - start % width_us), fine)
    return out


def combine(parts: list[dict[tuple[int, int], Bucket]]) -> dict[tuple[int, int], Bucket]:
    """Return one tier's buckets of several disjoint sets of rows, each already aggregated (storage.combine)."""
    out: dict[tuple[int, int], Bucket] = {}
    for buckets in parts:
        for key, b in buckets.items():
            _fold(out, key, b)
    return out


def _fold(out: dict[tuple[int, int], Bucket], key: tuple[int, int], fine: Bucket) -> None:
    """Merge bucket `fine` into out[key] (a copy of it when out has none): the merge ON CONFLICT does in SQL."""
    b = out.get(key)
    if b is None:
        out[key] = list(fine)
        return
    if fine[0] < b[0]:
        b[0] = fine[0]
    if fine[1] > b[1]:
        b[1] = fine[1]
    b[2] += fine[2]
    b[3] += fine[3]
    if fine[5] < b[5]:
        b[4], b[5] = fine[4], fine[5]
    if fine[7] > b[7]:
        b[6], b[7] = fine[6], fine[7]


def _upsert_sql(table: str, vendor: str, n_rows: int) -> str:
    values = ",".join(["(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"] * n_rows)
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    return f"INSERT INTO {table} ({cols}) VALUES {values} {_on_conflict_sql(table, vendor)}"


def _on_conflict_sql(table: str, vendor: str) -> str:
    """Return the ON CONFLICT clause that merges a bucket into the stored one."""
    # Quoted names: min/max/sum/count/first/last are function names or keywords.
    least, greatest = ("LEAST", "GREATEST") if vendor == "postgresql" else ("MIN", "MAX")
    t = table
    return (
        'ON CONFLICT ("metric_id", "bucket") DO UPDATE SET '
        f'"min" = {least}({t}."min", excluded."min"), '
        f'"max" = {greatest}({t}."max", excluded."max"), '
        f'"sum" = {t}."sum" + excluded."sum", '
        f'"count" = {t}."count" + excluded."count", '
        f'"first" = CASE WHEN excluded."first_ts" < {t}."first_ts" THEN excluded."first" ELSE {t}."first" END, '
        f'"first_ts" = {least}({t}."first_ts", excluded."first_ts"), '
        f'"last" = CASE WHEN excluded."last_ts" > {t}."last_ts" THEN excluded."last" ELSE {t}."last" END, '
        f'"last_ts" = {greatest}({t}."last_ts", excluded."last_ts")'
    )


def merge(cursor: CursorWrapper, vendor: str, table: str, buckets: dict[tuple[int, int], Bucket]) -> None:
    """Merge pre-aggregated buckets into a rollup table."""
    # Sorted so that concurrent writers lock bucket rows in the same order (no deadlocks).
    items = sorted(buckets.items())
    for start in range(0, len(items), UPSERT_CHUNK):
        chunk = items[start : start + UPSERT_CHUNK]
        params: list[Any] = []
        for (metric_id, bucket), b in chunk:
            params += [metric_id, bucket, *b]
        cursor.execute(_upsert_sql(table, vendor, len(chunk)), params)


def _floor_sql(column: str, width_us: int) -> str:
    # Rounds down for negative times too, like Python's % in aggregate(): SQL's % truncates toward zero.
    return f"({column} - ((({column}) % {width_us:d}) + {width_us:d}) % {width_us:d})"


def _at_extreme(aggregate: str, ts: str, value: str) -> str:
    """Return SQL for the value at the group's MIN or MAX ts: the first or last sample of a bucket.

    PostgreSQL compares arrays element by element, so the smallest
    [ts, value] pair holds the earliest sample's value, and no two pairs of a
    group tie on ts (a metric's (metric_id, ts) is unique, and so is each
    bucket's first_ts and last_ts). One MIN over two-element arrays cost
    about half of `(array_agg(value ORDER BY ts))[1]`, which sorted each
    group again and built an array of all its values (a 5,000-sample batch's
    minute tier: 2.1 against 3.5 ms). ts goes in as float8, exact below
    2**53 µs (the year 2255), and no check admits a time near that.
    """
    return f"({aggregate}(ARRAY[{ts}::float8, {value}]))[2]"


def upsert_ctes(new_rows: str, seen_at: datetime | None = None) -> str:
    """Return WITH-clause items that fold the rows of CTE `new_rows` (metric_id, ts, value) into every tier.

    PostgreSQL only: each tier is aggregated in SQL, the finest from the new
    rows and each coarser one from the tier below it (a few hundred buckets,
    not thousands of rows), and merged with the same ON CONFLICT clause as
    merge(). Buckets are fed in (metric, bucket) order so that concurrent
    writers lock them in the same order. The caller appends these to a WITH
    that defines `new_rows`; data-modifying CTEs always run to completion.

    With `seen_at`, the same statement also keeps each metric's latest
    value and each source's last-seen time and accepted count
    (storage.update_latest's job), from the minute buckets rather than the
    rows: one round trip per batch instead of three, and no Python loop
    over the rows.
    """
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    parts = []
    source = None
    for i, (model, width_us, _) in enumerate(TIERS):
        agg = f"pulseboard_agg{i}"
        if source is None:
            parts.append(
                f"{agg} AS (SELECT metric_id, {_floor_sql('ts', width_us)} AS bucket, "
                'MIN(value) AS "min", MAX(value) AS "max", SUM(value) AS "sum", COUNT(*) AS "count", '
                f'{_at_extreme("MIN", "ts", "value")} AS "first", MIN(ts) AS first_ts, '
                f'{_at_extreme("MAX", "ts", "value")} AS "last", MAX(ts) AS last_ts '
                f"FROM {new_rows} GROUP BY 1, 2)"
            )
        else:
            parts.append(
                f"{agg} AS (SELECT metric_id, {_floor_sql('bucket', width_us)} AS bucket, "
                'MIN("min") AS "min", MAX("max") AS "max", SUM("sum") AS "sum", SUM("count") AS "count", '
                f'{_at_extreme("MIN", "first_ts", "first")} AS "first", MIN(first_ts) AS first_ts, '
                f'{_at_extreme("MAX", "last_ts", "last")} AS "last", MAX(last_ts) AS last_ts '
                f"FROM {source} GROUP BY 1, 2)"
            )
        table = model._meta.db_table
        parts.append(
            f"pulseboard_up{i} AS (INSERT INTO {table} ({cols}) SELECT {cols} FROM {agg} "
            f"ORDER BY metric_id, bucket {_on_conflict_sql(table, 'postgresql')})"
        )
        source = agg
    if seen_at is not None:
        parts.append(latest_ctes("pulseboard_agg0", seen_at))
    return ", ".join(parts)


def latest_ctes(minute_buckets: str, seen_at: datetime) -> str:
    """Return WITH-clause items that update metrics' latest values and sources' counters from minute buckets.

    PostgreSQL only. A metric's latest value moves only forward (a late
    sample never replaces a newer one); `seen_at` is the writer's clock, as a
    literal because the statement's % operators take no parameters.
    """
    seen = seen_at.isoformat()
    if not re.fullmatch(r"[0-9T:.+-]+", seen):  # a datetime's isoformat; never text from a request
        raise ValueError(f"unexpected timestamp {seen!r}")
    return (
        "pulseboard_latest AS (UPDATE dashboard_metric AS m SET last_ts = l.last_ts, last_value = l.last "
        'FROM (SELECT DISTINCT ON (metric_id) metric_id, last_ts, "last" AS last '
        f"FROM {minute_buckets} ORDER BY metric_id, last_ts DESC) AS l "
        "WHERE m.id = l.metric_id AND (m.last_ts IS NULL OR m.last_ts < l.last_ts)), "
        f"pulseboard_sources AS (UPDATE dashboard_source AS s SET last_seen = '{seen}'::timestamptz, "
        "samples_accepted = s.samples_accepted + c.n "
        f'FROM (SELECT m.source_id, SUM(a."count") AS n FROM {minute_buckets} AS a '
        "JOIN dashboard_metric AS m ON m.id = a.metric_id GROUP BY m.source_id) AS c WHERE s.id = c.source_id)"
    )


def apply(
    cursor: CursorWrapper,
    vendor: str,
    rows: Iterable[tuple[int, int, float]],
    minute: dict[tuple[int, int], Bucket] | None = None,
) -> dict[tuple[int, int], Bucket]:
    """Fold newly inserted (metric id, ts, value) rows into every rollup tier; return the minute buckets.

    Only the finest tier is aggregated from the rows; each coarser one from
    the tier below it, as upsert_ctes does in SQL (one pass over the rows,
    not three). `minute`, when given, is that first aggregate of exactly
    these rows, made before the writer's transaction (storage.prepare). The
    caller takes each metric's latest value from the minute buckets it gets
    back.
    """
    finest = minute if minute is not None else aggregate(rows, TIERS[0][1])
    if not finest:
        return {}
    buckets = finest
    for i, (model, width_us, _) in enumerate(TIERS):
        if i:
            buckets = coarsen(buckets, width_us)
        merge(cursor, vendor, model._meta.db_table, buckets)
    return finest
