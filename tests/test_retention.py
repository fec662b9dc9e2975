"""Retention: per-tier defaults, per-metric overrides, dropped partitions, the prune command and the loop."""

from __future__ import annotations

import asyncio
import io

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from dashboard import partitions, retention, storage
from dashboard.models import HourRollup, Metric, MinuteRollup, Sample, TenMinuteRollup
from dashboard.timeutil import US
from dashboard.validation import Reading
from tests.conftest import JUST_AFTER_MIDNIGHT, JUST_BEFORE_MIDNIGHT, Clock

# The clock fixture's own instant (PULSEBOARD_TEST_CLOCK or noon) and the two
# sides of midnight UTC, where raw cutoffs rounded to the day move by a day.
AROUND_MIDNIGHT = pytest.mark.parametrize(
    "clock",
    [None, JUST_AFTER_MIDNIGHT, JUST_BEFORE_MIDNIGHT],
    ids=["default-clock", "after-midnight", "before-midnight"],
    indirect=True,
)

DAY_US = 86_400 * US


def store(key: str, *ages_us: int, now: int) -> list[int]:
    """Store one reading of metric `key` at each age before now and return their timestamps."""
    source, name = key.split(".", 1)
    stamps = [now - age for age in ages_us]
    storage.store([Reading(source, name, ts, 1.0) for ts in stamps])
    return stamps


def raw_ages(key: str, now: int) -> list[int]:
    """Return the ages in whole days of the raw samples left for a metric, oldest first."""
    return sorted(
        ((now - ts) // DAY_US for ts in Sample.objects.filter(metric__key=key).values_list("ts", flat=True)),
        reverse=True,
    )


@pytest.mark.django_db
@AROUND_MIDNIGHT
def test_it_deletes_raw_samples_past_retention_and_keeps_their_rollups(clock: Clock) -> None:
    now = clock.now
    old, recent = store("web-01.cpu", 10 * DAY_US, 3600 * US, now=now)
    report = retention.prune(now=now)
    assert raw_ages("web-01.cpu", now) == [0]
    assert report.deleted["raw"] == 1
    assert MinuteRollup.objects.filter(bucket__lte=old, bucket__gt=old - 60 * US).count() == 1
    assert HourRollup.objects.filter(bucket__lte=old, bucket__gt=old - 3600 * US).count() == 1


@pytest.mark.django_db
@AROUND_MIDNIGHT
def test_it_honours_longer_and_shorter_per_metric_overrides(clock: Clock) -> None:
    now = clock.now
    for key in ("web-01.cpu", "web-01.audit", "web-01.noise"):
        store(key, 20 * DAY_US, 3 * DAY_US, 3600 * US, now=now)
    Metric.objects.filter(key="web-01.audit").update(raw_retention_days=30)
    Metric.objects.filter(key="web-01.noise").update(raw_retention_days=1)
    retention.prune(now=now)
    assert raw_ages("web-01.audit", now) == [20, 3, 0]
    assert raw_ages("web-01.cpu", now) == [3, 0]
    assert raw_ages("web-01.noise", now) == [0]


@pytest.mark.django_db
def test_it_forgets_rollups_past_their_own_tier_retention(clock: Clock) -> None:
    now = clock.now
    store("web-01.cpu", 100 * DAY_US, 500 * DAY_US, 6 * 365 * DAY_US, now=now)
    store("web-01.disk", 100 * DAY_US, 500 * DAY_US, now=now)
    Metric.objects.filter(key="web-01.disk").update(minute_retention_days=365, ten_minute_retention_days=730)
    report = retention.prune(now=now)
    assert MinuteRollup.objects.filter(metric__key="web-01.cpu").count() == 0
    assert MinuteRollup.objects.filter(metric__key="web-01.disk").count() == 1
    assert [
        (now - b) // DAY_US
        for b in TenMinuteRollup.objects.filter(metric__key="web-01.cpu").values_list("bucket", flat=True)
    ] == [100]
    assert TenMinuteRollup.objects.filter(metric__key="web-01.disk").count() == 2
    assert sorted(
        (now - b) // DAY_US
        for b in HourRollup.objects.filter(metric__key="web-01.cpu").values_list("bucket", flat=True)
    ) == [100, 500]
    assert (report.deleted["1m"], report.deleted["10m"], report.deleted["1h"]) == (4, 2, 1)


@pytest.mark.django_db
def test_a_dry_run_reports_what_would_go_and_changes_nothing(clock: Clock) -> None:
    now = clock.now
    store("web-01.cpu", 10 * DAY_US, 100 * DAY_US, 3600 * US, now=now)
    store("web-01.cpu", 400 * DAY_US, now=now)
    tiers = (Sample, MinuteRollup, TenMinuteRollup, HourRollup)
    before = [model.objects.count() for model in tiers]
    report = retention.prune(now=now, dry_run=True)
    assert report.deleted == {"raw": 3, "1m": 2, "10m": 1, "1h": 0}
    assert [model.objects.count() for model in tiers] == before
    assert report.created_partitions == []


@pytest.mark.django_db
def test_the_prune_command_prints_its_progress_and_a_summary(clock: Clock) -> None:
    store("web-01.cpu", 10 * DAY_US, 3600 * US, now=clock.now)
    out = io.StringIO()
    call_command("prune", "--dry-run", stdout=out)
    assert "would delete 1 raw rows older than 7 d" in out.getvalue()
    assert "Would delete rows: raw 1" in out.getvalue()
    out = io.StringIO()
    call_command("prune", stdout=out)
    assert "deleted 1 raw rows older than 7 d" in out.getvalue()
    assert Sample.objects.count() == 1


@pytest.mark.django_db(transaction=True)
async def test_the_retention_loop_prunes_in_the_background(clock: Clock) -> None:
    now = clock.now
    await sync_to_async(store)("web-01.cpu", 10 * DAY_US, 60 * US, now=now)
    task = asyncio.create_task(retention.retention_loop(interval_s=3600))
    try:
        for _ in range(600):  # polls for up to 60 s on a loaded machine; normally done at once
            if await Sample.objects.acount() == 1:
                break
            await asyncio.sleep(0.1)
        assert await Sample.objects.acount() == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- partitions on PostgreSQL -------------------------------------------------


def relation_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM pg_class WHERE relname = %s", [name])
        return cursor.fetchone()[0] == 1


def check_deferred_constraints() -> None:
    """Run the FK checks a commit would run: a partition with pending trigger events cannot be dropped."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def child_partitions() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'dashboard_sample'::regclass"
        )
        return {row[0] for row in cursor.fetchall()}


def days_of(start_us: int, end_us: int) -> list[str]:
    """Return the names of the daily partitions that [start_us, end_us) overlaps."""
    return [partitions.partition_name(day) for day in range(partitions.day_start(start_us), end_us, DAY_US)]


@pytest.mark.postgres
@pytest.mark.django_db
@AROUND_MIDNIGHT
def test_it_drops_old_daily_partitions_and_keeps_the_rollups_of_their_days(clock: Clock) -> None:
    now = clock.now
    partitions.ensure_partitions(now - 12 * DAY_US, now - 9 * DAY_US)
    old_days = days_of(now - 12 * DAY_US, now - 9 * DAY_US)
    assert len(old_days) >= 3
    stamps = store("web-01.cpu", 12 * DAY_US, 11 * DAY_US, 10 * DAY_US, 3600 * US, now=now)
    assert set(old_days) <= child_partitions()
    minutes_before = MinuteRollup.objects.count()
    check_deferred_constraints()
    report = retention.prune(now=now)
    assert set(old_days) <= set(report.dropped_partitions)
    for name in old_days:
        assert not relation_exists(name), f"{name} was emptied, not dropped"
    assert not set(old_days) & child_partitions()
    assert partitions.DEFAULT_PARTITION in child_partitions()
    assert raw_ages("web-01.cpu", now) == [0]
    assert MinuteRollup.objects.count() == minutes_before
    assert MinuteRollup.objects.filter(bucket__lte=stamps[0]).exists()


@pytest.mark.postgres
@pytest.mark.django_db
@AROUND_MIDNIGHT
def test_it_keeps_a_partition_a_longer_override_still_needs_and_empties_it_of_the_rest(clock: Clock) -> None:
    now = clock.now
    partitions.ensure_partitions(now - 10 * DAY_US, now - 10 * DAY_US + 1)
    (old_day,) = days_of(now - 10 * DAY_US, now - 10 * DAY_US + 1)
    store("web-01.cpu", 10 * DAY_US, now=now)
    store("web-01.audit", 10 * DAY_US, now=now)
    Metric.objects.filter(key="web-01.audit").update(raw_retention_days=30)
    check_deferred_constraints()
    report = retention.prune(now=now)
    assert old_day not in report.dropped_partitions
    assert relation_exists(old_day)
    assert raw_ages("web-01.audit", now) == [10]
    assert raw_ages("web-01.cpu", now) == []


def writable_days(now: int) -> set[str]:
    """Return the partitions of every day a reading may be written to at `now`, and DAYS_AHEAD days on."""
    oldest = now - settings.PULSEBOARD["MAX_AGE_S"] * US
    return set(days_of(oldest, now + partitions.DAYS_AHEAD * DAY_US))


@pytest.mark.postgres
@pytest.mark.django_db
@AROUND_MIDNIGHT
def test_it_creates_the_partitions_of_the_coming_days(clock: Clock) -> None:
    now = clock.now
    report = retention.prune(now=now)
    assert partitions.partition_name(partitions.day_start(now)) in child_partitions()
    assert writable_days(now) <= child_partitions()
    assert set(report.created_partitions) <= writable_days(now)


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_pass_for_another_instant_creates_the_partitions_around_that_instant(clock: Clock) -> None:
    later = clock.now + 30 * DAY_US
    report = retention.prune(now=later)
    assert writable_days(later) <= child_partitions()
    # Not the days around the process clock: a pass is about the instant it is given.
    assert set(report.created_partitions) <= writable_days(later)
    assert partitions.partition_name(partitions.day_start(clock.now)) not in report.created_partitions
