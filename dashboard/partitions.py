"""Daily partitions of dashboard_sample on PostgreSQL.

The raw table is partitioned by RANGE (ts) into one table per UTC day plus a
DEFAULT partition (migration 0002), so retention drops whole days instead of
deleting millions of rows, and a chart's time range prunes to a few days.
Partitions are created ahead of time by the retention loop and by `manage.py
prune`; a reading whose day has no partition yet lands in the DEFAULT
partition, so nothing is ever refused, and is moved into its day's partition
when that partition is created. On SQLite none of this applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection, transaction

from dashboard.timeutil import US, now_us

PARENT = "dashboard_sample"
DEFAULT_PARTITION = "dashboard_sample_default"
DAY_US = 86_400 * US
# Created this many days ahead: the writer accepts readings only minutes into
# the future, so a week survives a week-long outage of the retention loop.
DAYS_AHEAD = 7
# DDL on a partition locks the whole table; give up rather than stall every
# reader and the writer behind a long chart query (the next pass retries).
DDL_LOCK_TIMEOUT = "5s"
# Arbitrary constant that serialises partition DDL between processes.
ADVISORY_LOCK_KEY = 0x5075_6C73_6550  # "PulseP"
_BOUND_RE = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")


@dataclass(frozen=True, slots=True)
class Partition:
    """One daily partition and its half-open [start, end) range in µs."""

    name: str
    start: int
    end: int


def is_partitioned() -> bool:
    """Return whether dashboard_sample is a partitioned table (PostgreSQL after migration 0002)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [PARENT])
        row = cursor.fetchone()
    return bool(row) and row[0] == "p"


def day_start(ts_us: int) -> int:
    """Return the start of the UTC day containing ts_us."""
    return ts_us - ts_us % DAY_US


def partition_name(start_us: int) -> str:
    """Return the name of the partition of the day starting at start_us, e.g. dashboard_sample_p20261126."""
    return f"{PARENT}_p{datetime.fromtimestamp(start_us / US, tz=UTC):%Y%m%d}"


def list_partitions() -> list[Partition]:
    """Return the daily partitions, oldest first (the DEFAULT partition is not listed)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [PARENT],
        )
        rows = cursor.fetchall()
    found = []
    for name, bound in rows:
        match = _BOUND_RE.search(bound or "")
        if match:
            found.append(Partition(name, int(match.group(1)), int(match.group(2))))
    return sorted(found, key=lambda p: p.start)


def ensure_partitions(start_us: int | None = None, end_us: int | None = None) -> list[str]:
    """Create the missing daily partitions covering [start_us, end_us) and return their names.

    Defaults to the window the writer may receive: from the oldest accepted
    reading (PULSEBOARD MAX_AGE_S) to DAYS_AHEAD days from now.
    """
    if not is_partitioned():
        return []
    now = now_us()
    if start_us is None:
        start_us = now - settings.PULSEBOARD["MAX_AGE_S"] * US
    if end_us is None:
        end_us = now + DAYS_AHEAD * DAY_US
    existing = {p.start for p in list_partitions()}
    created = []
    day = day_start(start_us)
    while day < end_us:
        if day not in existing:
            _create_partition(day)
            created.append(partition_name(day))
        day += DAY_US
    return created


def _create_partition(start: int) -> None:
    name, end = partition_name(start), start + DAY_US
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_KEY])
        cursor.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        cursor.execute("SELECT to_regclass(%s)", [name])
        if cursor.fetchone()[0] is not None:
            return  # another process made it while we waited for the lock
        # Hold inserts into DEFAULT until commit: a row of this day committed there between the check
        # (or the move) below and the CREATE/ATTACH, which re-scan DEFAULT, would fail the pass every
        # time under steady ingest. A waiting insert is then re-routed or refused and retried by the
        # writer; nothing is lost either way. DEFAULT rarely takes rows, so it rarely waits.
        cursor.execute(f"LOCK TABLE {DEFAULT_PARTITION} IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute(f"SELECT 1 FROM {DEFAULT_PARTITION} WHERE ts >= %s AND ts < %s LIMIT 1", [start, end])
        if cursor.fetchone() is None:
            cursor.execute(f"CREATE TABLE {name} PARTITION OF {PARENT} FOR VALUES FROM ({start:d}) TO ({end:d})")
            return
        # Rows of this day already sit in DEFAULT; attaching would fail, so move them first.
        cursor.execute(f"CREATE TABLE {name} (LIKE {PARENT})")
        cursor.execute(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE ts >= %s AND ts < %s "
            "RETURNING id, metric_id, ts, value) "
            f"INSERT INTO {name} (id, metric_id, ts, value) SELECT id, metric_id, ts, value FROM moved",
            [start, end],
        )
        cursor.execute(f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES FROM ({start:d}) TO ({end:d})")


def drop_partition(partition: Partition) -> None:
    """Drop one daily partition with all its rows."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_KEY])
        cursor.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        cursor.execute(f"DROP TABLE IF EXISTS {partition.name}")
