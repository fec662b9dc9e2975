"""Chart query latency over 1 h, 1 d, 30 d and 1 y at 1,000 points, tiered vs. naive.

Builds a PostgreSQL database with 100 metrics: one ("bench.target") with a
year of 10-second samples (3,153,600 rows), the other 99 with a day of
10-second samples each, so every table holds more than the metric asked for.
Raw rows go in with COPY into the daily partitions; rollups are computed in
SQL with the same definition the writer maintains (min, max, sum, count,
first/last by time). Then, for each range, it times:

- tiered: dashboard.history.load(), the query behind GET /api/v1/series
  (coarsest tier with >= 1,000 buckets, SQL bucketing, Python assembly);
- api: the same through the Django view (ASGI, session auth, JSON
  encoding) with Django's in-process AsyncClient;
- naive: bucketing every raw sample of the range in SQL (min, max, avg,
  count; 3 runs beyond a day).

    python bench/history.py [--runs 50]

Needs PostgreSQL at --pg; creates database pulseboard_bench_history and keeps it
(pass --reuse to skip the data generation on a second run). With --reuse the
database is first migrated, so a data set made before a new rollup tier
existed gets that tier (filled by its migration, or here from the raw rows).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "pulseboard_bench_history"
US = 1_000_000
DAY_US = 86_400 * US
INTERVAL_US = 10 * US
OTHER_METRICS = 99
POINTS = 1000
COPY_CHUNK = 500_000  # rows per COPY transaction
RANGES = (("1 h", 3600 * US), ("1 d", DAY_US), ("30 d", 30 * DAY_US), ("1 y", 365 * DAY_US))
ROLLUPS = (
    ("dashboard_minuterollup", 60 * US),
    ("dashboard_tenminuterollup", 600 * US),
    ("dashboard_hourrollup", 3600 * US),
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def fill_rollup(conn: psycopg.Connection, table: str, width: int) -> None:
    """Compute one rollup tier from the raw rows in SQL, with the definition the writer maintains.

    Rows go in in (metric, bucket) order, as migration 0003 fills a new tier,
    so every tier has the same physical layout and the ranges compare fairly.
    """
    conn.execute(
        f'INSERT INTO {table} (metric_id, bucket, "min", "max", "sum", "count", "first", first_ts, "last", last_ts) '
        f"SELECT metric_id, ts - ts % {width}, MIN(value), MAX(value), SUM(value), COUNT(*), "
        "(array_agg(value ORDER BY ts))[1], MIN(ts), (array_agg(value ORDER BY ts DESC))[1], MAX(ts) "
        "FROM dashboard_sample GROUP BY 1, 2 ORDER BY 1, 2"
    )
    conn.commit()


def database_exists(pg_url: str) -> bool:
    with psycopg.connect(f"{pg_url}/postgres", autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone() is not None


def migrate(pg_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": f"{pg_url}/{DB_NAME}", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)


def complete_tiers(pg_url: str, target_id: int) -> None:
    """Give a reused data set every tier the code now has: refill a tier that holds fewer rows than the raw data implies."""
    with psycopg.connect(f"{pg_url}/{DB_NAME}") as conn:
        (raw_rows,) = conn.execute("SELECT COUNT(*) FROM dashboard_sample WHERE metric_id = %s", [target_id]).fetchone()
        for table, width in ROLLUPS:
            (have,) = conn.execute(
                f"SELECT COALESCE(SUM(count), 0) FROM {table} WHERE metric_id = %s", [target_id]
            ).fetchone()
            if have == raw_rows:
                continue
            started = time.perf_counter()
            conn.execute(f"DELETE FROM {table}")
            fill_rollup(conn, table, width)
            conn.autocommit = True
            conn.execute(f"VACUUM ANALYZE {table}")
            conn.autocommit = False
            print(f"  {table} recomputed from raw rows in {time.perf_counter() - started:.0f} s", flush=True)


def generate(pg_url: str, now: int) -> None:
    """Create the database, migrate it and load the data set with COPY and SQL rollups."""
    with psycopg.connect(f"{pg_url}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    migrate(pg_url)

    from dashboard import partitions
    from dashboard.models import Metric, Source

    started = time.perf_counter()
    year_start = now - 365 * DAY_US
    partitions.ensure_partitions(year_start, now + partitions.DAYS_AHEAD * DAY_US)
    source = Source.objects.create(slug="bench", name="bench")
    target = Metric.objects.create(source=source, name="target", key="bench.target", unit="°C")
    others = Metric.objects.bulk_create(
        [Metric(source=source, name=f"other{i:02d}", key=f"bench.other{i:02d}") for i in range(OTHER_METRICS)]
    )
    last_ts = now - now % INTERVAL_US

    def target_rows():
        for i, ts in enumerate(range(year_start - year_start % INTERVAL_US, last_ts + 1, INTERVAL_US)):
            # A daily cycle with a little deterministic wobble.
            yield (target.id, ts, 20 + 5 * math.sin(ts / DAY_US * 2 * math.pi) + (i * 7919 % 100) / 100)

    def other_rows():
        for metric in others:
            for ts in range(last_ts - DAY_US, last_ts + 1, INTERVAL_US):
                yield (metric.id, ts, float(ts // INTERVAL_US % 50))

    with psycopg.connect(f"{pg_url}/{DB_NAME}") as conn:
        for rows in (target_rows(), other_rows()):
            done = False
            while not done:
                # Commits every COPY_CHUNK rows: the deferred FK checks of one
                # transaction are queued in memory.
                with conn.cursor() as cur:
                    with cur.copy("COPY dashboard_sample (metric_id, ts, value) FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(["int8", "int8", "float8"])
                        for n, row in enumerate(rows, 1):
                            copy.write_row(row)
                            if n == COPY_CHUNK:
                                break
                        else:
                            done = True
                conn.commit()
        print(f"  raw rows loaded with COPY in {time.perf_counter() - started:.0f} s", flush=True)
        for table, width in ROLLUPS:
            fill_rollup(conn, table, width)
        print(f"  rollups computed in SQL; {time.perf_counter() - started:.0f} s so far", flush=True)
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    print(f"  data set ready in {time.perf_counter() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs", type=int, default=50, help="timed runs per range (naive: a fifth, and 3 beyond a day)"
    )
    parser.add_argument(
        "--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL (no database)"
    )
    parser.add_argument("--reuse", action="store_true", help="reuse the data set of a previous run")
    args = parser.parse_args()
    pg_url = args.pg.rstrip("/")

    os.environ["DATABASE_URL"] = f"{pg_url}/{DB_NAME}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "monitor.settings")
    os.environ["DEBUG"] = "0"  # no query log
    os.environ.setdefault("SECRET_KEY", "x" * 50)
    os.environ["LOG_LEVEL"] = "WARNING"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import AsyncClient

    from dashboard import history
    from dashboard.models import Metric

    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    if args.reuse and not database_exists(pg_url):
        print(f"  --reuse: no database {DB_NAME} yet, generating it", flush=True)
        args.reuse = False
    if args.reuse:
        migrate(pg_url)
    else:
        generate(pg_url, time.time_ns() // 1000)
    target = Metric.objects.get(key="bench.target")
    if args.reuse:
        complete_tiers(pg_url, target.id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT MAX(ts) FROM dashboard_sample WHERE metric_id = %s", [target.id])
        now = cursor.fetchone()[0] + 1
        cursor.execute("SELECT COUNT(*) FROM dashboard_sample WHERE metric_id = %s", [target.id])
        print(f"  bench.target has {cursor.fetchone()[0]:,} raw rows", flush=True)
    user, _ = User.objects.get_or_create(username="bench", defaults={"is_staff": True})
    # The ASGI path the server runs (async view, session, JSON), in-process.
    loop = asyncio.new_event_loop()
    client = AsyncClient()
    loop.run_until_complete(client.aforce_login(user))

    def tiered(span: int) -> None:
        history.load([target], now - span, now, POINTS, now=now)

    def api(span: int) -> None:
        response = loop.run_until_complete(
            client.get("/api/v1/series", {"metric": "bench.target", "from": now - span, "to": now, "points": POINTS})
        )
        assert response.status_code == 200, response.content[:200]

    def naive(span: int) -> None:
        # What one writes without tiers: bucket every raw row of the range
        # (min, max, avg, count only, which flatters it: no open/close).
        origin, step = history.grid(now - span, now, POINTS, 1)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT (ts - %s) / %s AS k, MIN(value), MAX(value), AVG(value), COUNT(*) FROM dashboard_sample "
                "WHERE metric_id = %s AND ts >= %s AND ts < %s GROUP BY 1 ORDER BY 1",
                [origin, step, target.id, origin, now],
            )
            cursor.fetchall()

    rows = []
    for label, span in RANGES:
        result = history.load([target], now - span, now, POINTS, now=now)
        timings: dict[str, list[float]] = {}
        for name, fn, runs in (
            ("tiered", tiered, args.runs),
            ("api", api, args.runs),
            ("naive", naive, max(3, args.runs // 5) if span <= DAY_US else 3),
        ):
            fn(span)  # warm caches and plans
            timings[name] = []
            for _ in range(runs):
                started = time.perf_counter()
                fn(span)
                timings[name].append((time.perf_counter() - started) * 1000)
        rows.append((label, result.tier, len(result.series[0].t), sum(result.series[0].count), timings))
        print(
            f"  {label:5s} tier {result.tier:3s}: tiered p50 {statistics.median(timings['tiered']):7.1f} ms, "
            f"api p50 {statistics.median(timings['api']):7.1f} ms, naive p50 {statistics.median(timings['naive']):8.1f} ms",
            flush=True,
        )

    base = percentile(rows[0][4]["tiered"], 0.99)
    print(
        "\n| Range | Tier | Buckets | Samples covered | history.load p50 / p99 | API p50 / p99 | Naive raw p50 / p99 | p99 vs. 1 h |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, tier, buckets, covered, t in rows:
        cells = [f"{statistics.median(t[k]):.1f} / {percentile(t[k], 0.99):.1f} ms" for k in ("tiered", "api", "naive")]
        ratio = percentile(t["tiered"], 0.99) / base
        print(f"| {label} | {tier} | {buckets:,} | {covered:,} | {' | '.join(cells)} | {ratio:.1f}× |")


if __name__ == "__main__":
    main()
