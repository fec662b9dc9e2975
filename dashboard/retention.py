"""Retention: forget raw samples and rollups once they are older than their tier keeps them.

Each tier has a site default (settings.PULSEBOARD RETENTION_RAW_DAYS,
RETENTION_MINUTE_DAYS, RETENTION_TEN_MINUTE_DAYS, RETENTION_HOUR_DAYS) that a metric may override
(Metric.raw_retention_days etc.). Metrics are grouped by their effective
days, and each group's old rows go in small batched DELETEs so the writer is
never blocked for long.

On PostgreSQL the raw table is partitioned by day (dashboard/partitions.py):
a whole day is DROPped once every metric's raw retention has passed it, which
costs nothing however many rows it held. Days still needed by a metric with a
longer override are kept, and the other metrics' rows in them are deleted in
batches. Raw cutoffs there are rounded down to midnight UTC, so raw rows live
between N and N+1 days instead of being deleted an hour at a time.

`manage.py prune` runs one pass; each server process runs retention_loop()
(dashboard/background.py) every PULSEBOARD_RETENTION_INTERVAL_S (an hour by
default). With several workers on PostgreSQL only the one holding a session
advisory lock (the leader) runs the pass, so each interval sees one pass, not
one per worker; when the leader dies its connection closes, the lock is freed
and another worker takes over at its next interval. On SQLite the server is one
process and simply runs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction

from dashboard import partitions
from dashboard.models import Metric
from dashboard.timeutil import US, now_us

log = logging.getLogger(__name__)

DAY_US = 86_400 * US
PRUNE_INTERVAL_S = 3600  # cutoffs move by an hour; more often would mostly find nothing
RETRY_AFTER_ERROR_S = 300  # a failed pass (database down) is retried sooner than the next hour
DELETE_BATCH = 5000  # rows per DELETE: short transactions, so the writer never waits long
# Session advisory lock held by the one worker that runs retention (partitions.py uses another key).
LEADER_LOCK_KEY = 0x5075_6C73_6552  # "PulseR"
CLOSE_WAIT_S = 5.0  # on cancel, how long to wait for a pass in progress before leaving its thread behind


@dataclass(frozen=True, slots=True)
class Tier:
    """One stored resolution and where its retention comes from."""

    name: str
    table: str
    time_column: str
    metric_field: str  # per-metric override on Metric
    setting: str  # site default in settings.PULSEBOARD


TIERS = (
    Tier("raw", "dashboard_sample", "ts", "raw_retention_days", "RETENTION_RAW_DAYS"),
    Tier("1m", "dashboard_minuterollup", "bucket", "minute_retention_days", "RETENTION_MINUTE_DAYS"),
    Tier("10m", "dashboard_tenminuterollup", "bucket", "ten_minute_retention_days", "RETENTION_TEN_MINUTE_DAYS"),
    Tier("1h", "dashboard_hourrollup", "bucket", "hour_retention_days", "RETENTION_HOUR_DAYS"),
)


@dataclass
class PruneReport:
    """What one pass removed (or, in a dry run, would remove)."""

    dry_run: bool = False
    created_partitions: list[str] = field(default_factory=list)
    dropped_partitions: list[str] = field(default_factory=list)
    # Rows deleted per tier; rows of dropped partitions are included (estimated, but counted in a dry run).
    deleted: dict[str, int] = field(default_factory=lambda: {t.name: 0 for t in TIERS})


Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    log.debug("%s", message)


def retention_groups(tier: Tier) -> tuple[int, dict[int, list[int]]]:
    """Return the tier's default days and, per overriding number of days, the metric ids with that override."""
    default = settings.PULSEBOARD[tier.setting]
    overrides: dict[int, list[int]] = {}
    rows = Metric.objects.filter(**{f"{tier.metric_field}__isnull": False}).values_list("id", tier.metric_field)
    for metric_id, days in rows:
        overrides.setdefault(days, []).append(metric_id)
    return default, overrides


def prune(*, now: int | None = None, dry_run: bool = False, progress: Progress = _quiet) -> PruneReport:
    """Remove every row past its retention in every tier, and create the partitions of the coming days."""
    now = now_us() if now is None else now
    report = PruneReport(dry_run=dry_run)
    partitioned = partitions.is_partitioned()
    if partitioned and not dry_run:
        # From the oldest day the writer accepts (but not a day this pass would drop again) to DAYS_AHEAD
        # from now: after days of downtime this catches up every missing day in one pass.
        raw = next(t for t in TIERS if t.name == "raw")
        default, overrides = retention_groups(raw)
        oldest_kept = partitions.day_start(now - max([default, *overrides]) * DAY_US)
        report.created_partitions = partitions.ensure_partitions(
            start_us=max(now - settings.PULSEBOARD["MAX_AGE_S"] * US, oldest_kept),
            end_us=now + partitions.DAYS_AHEAD * DAY_US,
        )
        for name in report.created_partitions:
            progress(f"created partition {name}")
    for tier in TIERS:
        default, overrides = retention_groups(tier)
        round_to_day = partitioned and tier.name == "raw"

        def cutoff(days: int, round_to_day: bool = round_to_day) -> int:
            edge = now - days * DAY_US
            return partitions.day_start(edge) if round_to_day else edge

        if round_to_day:
            keep_from = cutoff(max([default, *overrides]))
            for part in partitions.list_partitions():
                if part.end <= keep_from:
                    # Counting a day of rows only to drop it would cost a full scan:
                    # the planner's estimate will do, except in a dry run.
                    rows = _count(part.name, "TRUE", []) if dry_run else _estimated_rows(part.name)
                    report.dropped_partitions.append(part.name)
                    report.deleted[tier.name] += rows
                    verb = "would drop" if dry_run else "dropping"
                    progress(f"{verb} partition {part.name} ({'' if dry_run else 'about '}{rows} rows)")
                    if not dry_run:
                        partitions.drop_partition(part)
        overridden = [metric_id for ids in overrides.values() for metric_id in ids]
        groups: list[tuple[int, str, list]] = []
        if overridden:
            groups.append((default, f"metric_id NOT IN ({','.join(['%s'] * len(overridden))})", overridden))
        else:
            groups.append((default, "TRUE", []))
        for days, ids in sorted(overrides.items()):
            groups.append((days, f"metric_id IN ({','.join(['%s'] * len(ids))})", ids))
        for days, which, params in groups:
            condition = f"{tier.time_column} < %s AND {which}"
            args = [cutoff(days), *params]
            label = f"{tier.name} rows older than {days} d" + ("" if which == "TRUE" else f" ({len(params)} metrics)")
            if dry_run:
                if round_to_day:
                    # Rows of the partitions counted above as dropped are not counted twice.
                    condition += f" AND ({tier.time_column} >= %s OR tableoid = %s::regclass)"
                    args += [keep_from, partitions.DEFAULT_PARTITION]
                rows = _count(tier.table, condition, args)
                progress(f"would delete {rows} {label}")
            else:
                if round_to_day:
                    # Only the days that can hold such rows, and DEFAULT.
                    edge = cutoff(days)
                    tables = [p.name for p in partitions.list_partitions() if p.start < edge]
                    tables.append(partitions.DEFAULT_PARTITION)
                else:
                    tables = [tier.table]
                rows = sum(
                    _delete_in_batches(table, condition, args, lambda n, label=label: progress(f"deleted {n} {label}"))
                    for table in tables
                )
            report.deleted[tier.name] += rows
    return report


def _estimated_rows(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [table])
        return max(0, int(cursor.fetchone()[0]))  # -1 when never analysed


def _count(table: str, condition: str, args: list) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE {condition}", args)
        return int(cursor.fetchone()[0])


def _delete_in_batches(table: str, condition: str, args: list, progress: Callable[[int], None]) -> int:
    """Delete the rows of one table (or one partition) matching condition, DELETE_BATCH rows per transaction."""
    # Each database's own row address: a TID scan on PostgreSQL (ctid is unique
    # within one table, hence one partition at a time), rowid on SQLite. A key
    # join would let PostgreSQL hash-join the whole range for every batch.
    if connection.vendor == "postgresql":
        sql = f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {condition} LIMIT {DELETE_BATCH:d}))"
    else:
        sql = f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {condition} LIMIT {DELETE_BATCH:d})"
    total = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, args)
            deleted = cursor.rowcount
        total += deleted
        if deleted:
            progress(total)
        if deleted < DELETE_BATCH:
            return total


def _holds_leader_lock() -> bool:
    """Return whether this process runs retention now: take (or keep) the leader's session advisory lock."""
    if connection.vendor != "postgresql":
        return True  # SQLite: one server process
    with connection.cursor() as cursor:
        # A session lock is re-entrant: ask pg_locks first so the count never grows past one.
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
            "AND granted AND classid = %s AND objid = %s AND objsubid = 1)",
            [(LEADER_LOCK_KEY >> 32) & 0xFFFF_FFFF, LEADER_LOCK_KEY & 0xFFFF_FFFF],
        )
        if cursor.fetchone()[0]:
            return True
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [LEADER_LOCK_KEY])
        return bool(cursor.fetchone()[0])


def _prune_if_leader() -> PruneReport | None:
    """Run one pass if this process is the leader; runs on the loop's own thread, which keeps its connection."""
    try:
        if not connection.is_usable():
            connection.close()  # the server restarted or the link broke: the lock went with it
        if not _holds_leader_lock():
            return None
        return prune()
    except Exception:
        connection.close()  # a fresh connection (and a fresh try for the lock) next time
        raise


async def retention_loop(interval_s: float | None = None) -> None:
    """Prune now and then every interval_s seconds until cancelled; a failed pass is logged and retried.

    The database work runs on one dedicated thread whose connection is kept
    between passes: on PostgreSQL it carries the leader's session lock.
    """
    if interval_s is None:
        interval_s = settings.PULSEBOARD["RETENTION_INTERVAL_S"]
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retention")
    try:
        while True:
            delay = interval_s
            try:
                report = await loop.run_in_executor(executor, _prune_if_leader)
                if report is None:
                    log.debug("retention: another worker holds the leader lock; skipping this pass")
                else:
                    log.info(
                        "retention: created %d partitions, dropped %d partitions, deleted %s",
                        len(report.created_partitions),
                        len(report.dropped_partitions),
                        report.deleted,
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = min(interval_s, RETRY_AFTER_ERROR_S)
                log.exception("retention pass failed; retrying in %.0f s", delay)
            await asyncio.sleep(delay)
    finally:
        # Close the thread's own connection (resolved on that thread), which releases the leader lock.
        closing = loop.run_in_executor(executor, _close_connection)
        executor.shutdown(wait=False)
        await asyncio.wait({closing}, timeout=CLOSE_WAIT_S)


def _close_connection() -> None:
    connection.close()
