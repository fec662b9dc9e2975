"""What the hub asks the database to check its live delivery against: the database is the truth.

A hub follows each publisher's sequence numbers, but a publisher that dies
(SIGKILL) with batches committed and not yet handed to the layer leaves a gap
nobody sees. So each hub keeps a ledger per subscribed metric of the samples
it delivered (the recent ones, LEDGER_S of sample time) and periodically
compares it with what is stored: one grouped count per hub for all its
metrics, over the (metric, ts) unique index, in buckets of BUCKET_US; only
buckets whose counts differ are read back, and the samples missing from the
ledger are delivered. These run on the hub's own database thread, never on
the thread ingest and subscriptions share.
"""

from __future__ import annotations

from django.db import close_old_connections, connection

BUCKET_US = 10_000_000  # 10 s of sample time per counted bucket: ~6 rows per metric for a 60 s ledger


def in_db_thread(fn, *args):
    """Run a query function on the hub's database thread, then close its connection.

    A check every few seconds does not need to hold a connection between
    checks, and one broken by an outage must not fail every later check.
    """
    close_old_connections()
    try:
        return fn(*args)
    finally:
        try:
            connection.close()
        except Exception:
            pass


def metric_facts(metric_ids: list[int], floor: int) -> dict[int, tuple[float, int, list[int]]]:
    """Return, per metric id: its source's expected interval (s), its newest stored ts, and its stored ts above `floor`."""
    out: dict[int, tuple[float, int, list[int]]] = {}
    if not metric_ids:
        return out
    marks = ",".join(["%s"] * len(metric_ids))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT m.id, s.expected_interval_s FROM dashboard_metric m JOIN dashboard_source s ON s.id = m.source_id "
            f"WHERE m.id IN ({marks})",
            metric_ids,
        )
        intervals = dict(cursor.fetchall())
        newest: dict[int, int] = {}
        for metric_id in metric_ids:  # one index probe each; only when a hub starts following a metric
            cursor.execute("SELECT max(ts) FROM dashboard_sample WHERE metric_id = %s", [metric_id])
            newest[metric_id] = cursor.fetchone()[0] or 0
        cursor.execute(
            f"SELECT metric_id, ts FROM dashboard_sample WHERE metric_id IN ({marks}) AND ts > %s", [*metric_ids, floor]
        )
        recent: dict[int, list[int]] = {}
        for metric_id, ts in cursor.fetchall():
            recent.setdefault(metric_id, []).append(ts)
    for metric_id in metric_ids:
        out[metric_id] = (float(intervals.get(metric_id, 10.0)), newest[metric_id], recent.get(metric_id, []))
    return out


def expected_intervals(metric_ids: list[int]) -> dict[int, float]:
    """Return each metric's source's expected interval (s): operators change it, so hubs re-read it now and then."""
    if not metric_ids:
        return {}
    marks = ",".join(["%s"] * len(metric_ids))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT m.id, s.expected_interval_s FROM dashboard_metric m JOIN dashboard_source s ON s.id = m.source_id "
            f"WHERE m.id IN ({marks})",
            metric_ids,
        )
        return {metric_id: float(interval) for metric_id, interval in cursor.fetchall()}


def bucket_counts(metric_ids: list[int], floor: int) -> dict[tuple[int, int], int]:
    """Return {(metric id, bucket): stored samples} for samples above `floor`: the hub's one check query."""
    if not metric_ids:
        return {}
    marks = ",".join(["%s"] * len(metric_ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT metric_id, ts / {BUCKET_US}, count(*) FROM dashboard_sample "
            f"WHERE metric_id IN ({marks}) AND ts > %s GROUP BY metric_id, ts / {BUCKET_US}",
            [*metric_ids, floor],
        )
        return {(metric_id, int(bucket)): count for metric_id, bucket, count in cursor.fetchall()}


def bucket_samples(buckets: list[tuple[int, int]], floor: int) -> dict[int, list[tuple[int, float]]]:
    """Return the stored samples of these (metric id, bucket) pairs above `floor`, per metric id, in ts order."""
    out: dict[int, list[tuple[int, float]]] = {}
    if not buckets:
        return out
    clauses = " OR ".join(["(metric_id = %s AND ts >= %s AND ts < %s)"] * len(buckets))
    params: list[int] = []
    for metric_id, bucket in buckets:
        params += [metric_id, max(bucket * BUCKET_US, floor + 1), (bucket + 1) * BUCKET_US]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT metric_id, ts, value FROM dashboard_sample WHERE {clauses} ORDER BY metric_id, ts", params
        )
        for metric_id, ts, value in cursor.fetchall():
            out.setdefault(metric_id, []).append((ts, value))
    return out
