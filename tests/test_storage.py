"""Storage: COPY/INSERT of samples, rollups kept in the same transaction, daily partitions on PostgreSQL."""

from __future__ import annotations

import importlib

import pytest
from django.db import connection

from dashboard import actions, partitions, storage
from dashboard.models import HourRollup, MinuteRollup, Sample, TenMinuteRollup
from dashboard.rollups import HOUR_US, MINUTE_US, TEN_MINUTE_US
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading
from tests.conftest import JUST_AFTER_MIDNIGHT, JUST_BEFORE_MIDNIGHT, Clock

pytestmark = pytest.mark.usefixtures("clock")


@pytest.fixture(params=["one statement", "COPY"], autouse=True)
def postgres_write_path(request, monkeypatch) -> str:
    """Run every test here through both of PostgreSQL's write paths: a few rows in one statement, more by COPY."""
    monkeypatch.setattr(storage, "FEW_ROWS", storage.FEW_ROWS if request.param == "one statement" else 0)
    return request.param


@pytest.fixture(params=["worked out by store", "prepared"], autouse=True)
def keys_worked_out(request, monkeypatch) -> str:
    """Run every test here with each batch's keys worked out by store(), and by prepare() beforehand.

    The second is what the parsing thread does for a big body (api.parse_off_loop): every outcome,
    row and rollup must be the same either way, duplicates and repeats included.
    """
    if request.param == "prepared":
        plain = storage.store

        def store(readings: list[Reading], prepared: storage.Prepared | None = None) -> storage.StoredBatch:
            return plain(readings, prepared or storage.prepare(readings))

        monkeypatch.setattr(storage, "store", store)
    return request.param


HOUR_START = 1_795_600_800_000_000  # 2026-11-25 08:00:00 UTC, a whole hour


def reading(value: float, ts: int, metric: str = "cpu", source: str = "web-01") -> Reading:
    return Reading(source, metric, ts, value)


def minute(metric_key: str, bucket: int) -> MinuteRollup:
    return MinuteRollup.objects.get(metric__key=metric_key, bucket=bucket)


def rollup_tuple(row: MinuteRollup | TenMinuteRollup | HourRollup) -> tuple:
    return (row.min, row.max, row.sum, row.count, row.first, row.first_ts, row.last, row.last_ts)


@pytest.mark.django_db
def test_it_folds_new_samples_into_minute_ten_minute_and_hour_rollups() -> None:
    readings = [reading(float(v), HOUR_START + i * 20 * US) for i, v in enumerate([5, 1, 9, 3, 4, 6])]
    storage.store(readings)
    assert rollup_tuple(minute("web-01.cpu", HOUR_START)) == (1, 9, 15, 3, 5, HOUR_START, 9, HOUR_START + 40 * US)
    assert rollup_tuple(minute("web-01.cpu", HOUR_START + MINUTE_US)) == (
        3, 6, 13, 3, 3, HOUR_START + 60 * US, 6, HOUR_START + 100 * US,
    )  # fmt: skip
    hour = HourRollup.objects.get(bucket=HOUR_START)
    assert rollup_tuple(hour) == (1, 9, 28, 6, 5, HOUR_START, 6, HOUR_START + 100 * US)
    assert rollup_tuple(TenMinuteRollup.objects.get(bucket=HOUR_START)) == rollup_tuple(hour)
    storage.store([reading(-1.0, HOUR_START + TEN_MINUTE_US + 5 * US)])
    assert rollup_tuple(TenMinuteRollup.objects.get(bucket=HOUR_START + TEN_MINUTE_US)) == (
        -1, -1, -1, 1, -1, HOUR_START + TEN_MINUTE_US + 5 * US, -1, HOUR_START + TEN_MINUTE_US + 5 * US,
    )  # fmt: skip
    assert HourRollup.objects.get(bucket=HOUR_START).count == 7


@pytest.mark.django_db
def test_it_does_not_count_a_retried_batch_twice_in_the_rollups() -> None:
    readings = [reading(float(i), HOUR_START + i * US) for i in range(10)]
    first = storage.store(readings)
    again = storage.store(readings + [reading(100.0, HOUR_START + 30 * US)])
    assert first.outcomes == ["new"] * 10
    assert again.outcomes == ["duplicate"] * 10 + ["new"]
    assert [(ref.key, ts, value) for ref, ts, value in again.inserted] == [("web-01.cpu", HOUR_START + 30 * US, 100.0)]
    row = minute("web-01.cpu", HOUR_START)
    assert (row.count, row.sum, row.max) == (11, 145.0, 100.0)
    assert Sample.objects.count() == 11


@pytest.mark.django_db
def test_it_does_not_count_a_duplicate_within_one_batch() -> None:
    batch = storage.store([reading(1.0, HOUR_START), reading(2.0, HOUR_START)])
    assert batch.outcomes == ["new", "duplicate"]
    assert (minute("web-01.cpu", HOUR_START).count, minute("web-01.cpu", HOUR_START).sum) == (1, 1.0)


@pytest.mark.django_db
def test_it_moves_first_and_min_when_a_late_sample_is_older_than_the_bucket_start_seen() -> None:
    storage.store([reading(10.0, HOUR_START + 30 * US), reading(12.0, HOUR_START + 40 * US)])
    storage.store([reading(2.0, HOUR_START + 5 * US)])  # late: arrives after newer samples of its minute
    row = minute("web-01.cpu", HOUR_START)
    assert rollup_tuple(row) == (2.0, 12.0, 24.0, 3, 2.0, HOUR_START + 5 * US, 12.0, HOUR_START + 40 * US)
    assert HourRollup.objects.get(bucket=HOUR_START).first == 2.0
    assert TenMinuteRollup.objects.get(bucket=HOUR_START).first == 2.0


@pytest.mark.django_db
def test_it_moves_last_and_max_when_a_sample_is_newer() -> None:
    storage.store([reading(10.0, HOUR_START + 30 * US)])
    storage.store([reading(50.0, HOUR_START + 50 * US), reading(1.0, HOUR_START + 10 * US)])
    row = minute("web-01.cpu", HOUR_START)
    assert (row.first, row.last, row.min, row.max, row.count) == (1.0, 50.0, 1.0, 50.0, 3)


@pytest.mark.django_db
def test_first_and_last_tell_samples_one_microsecond_apart() -> None:
    # PostgreSQL picks first and last by comparing [ts, value] as float8 arrays (rollups._at_extreme):
    # at today's µs timestamps a float8 still tells neighbours apart, and the value never decides.
    storage.store([reading(1.0, HOUR_START + 2), reading(9.0, HOUR_START + 1), reading(5.0, HOUR_START + 3)])
    for row in (minute("web-01.cpu", HOUR_START), HourRollup.objects.get(bucket=HOUR_START)):
        assert (row.first, row.first_ts, row.last, row.last_ts) == (9.0, HOUR_START + 1, 5.0, HOUR_START + 3)


@pytest.mark.django_db
def test_it_keeps_rollups_of_each_metric_apart() -> None:
    storage.store([reading(1.0, HOUR_START, "cpu"), reading(7.0, HOUR_START, "load")])
    assert minute("web-01.cpu", HOUR_START).max == 1.0
    assert minute("web-01.load", HOUR_START).max == 7.0


@pytest.mark.django_db(transaction=True)
async def test_it_keeps_rollups_for_samples_ingested_through_the_writer() -> None:
    ts = now_us() - 2 * MINUTE_US
    first = await actions.ingest([reading(3.0, ts), reading(4.0, ts + US)])
    second = await actions.ingest([reading(3.0, ts), reading(4.0, ts + US)])
    assert (first.accepted, second.duplicates) == (2, 2)
    row = await MinuteRollup.objects.aget(bucket=ts - ts % MINUTE_US)
    assert (row.count, row.sum) == (2, 7.0)
    hour = await HourRollup.objects.aget(bucket=ts - ts % HOUR_US)
    assert hour.count == 2
    assert (await TenMinuteRollup.objects.aget(bucket=ts - ts % TEN_MINUTE_US)).count == 2


@pytest.mark.postgres
@pytest.mark.django_db
def test_it_stages_rows_with_copy_on_postgresql_and_a_second_store_in_one_transaction_folds_only_its_own(
    monkeypatch,
) -> None:
    monkeypatch.setattr(storage, "FEW_ROWS", 0)
    storage.store([reading(1.0, HOUR_START)])
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [f"pg_temp.{storage.STAGE_TABLE}"])
        assert cursor.fetchone()[0] is not None
    storage.store([reading(2.0, HOUR_START + US)])  # the staged row of the first store is not folded again
    assert (minute("web-01.cpu", HOUR_START).count, minute("web-01.cpu", HOUR_START).sum) == (2, 3.0)


@pytest.mark.postgres
@pytest.mark.django_db
def test_it_copies_new_rows_straight_in_and_takes_the_on_conflict_path_only_when_a_key_is_stored(monkeypatch) -> None:
    monkeypatch.setattr(storage, "FEW_ROWS", 0)
    statements: list[str] = []

    def record(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        fresh = storage.store([reading(1.0, HOUR_START), reading(2.0, HOUR_START + US)])
        assert not any("ON CONFLICT (metric_id, ts)" in sql for sql in statements)
        mixed = storage.store([reading(1.0, HOUR_START), reading(3.0, HOUR_START + 2 * US)])
        assert any("ON CONFLICT (metric_id, ts)" in sql for sql in statements)
    assert (fresh.outcomes, mixed.outcomes) == (["new", "new"], ["duplicate", "new"])
    # The failed COPY was rolled back to its savepoint: nothing of it is left, the transaction goes on.
    assert sorted(Sample.objects.values_list("ts", "value")) == [
        (HOUR_START, 1.0), (HOUR_START + US, 2.0), (HOUR_START + 2 * US, 3.0),
    ]  # fmt: skip
    # Three rows in the bucket, not five: the second store, in the same transaction, folded only its own.
    assert (minute("web-01.cpu", HOUR_START).count, minute("web-01.cpu", HOUR_START).sum) == (3, 6.0)


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_few_rows_go_in_with_one_statement_and_no_staging_table(monkeypatch) -> None:
    monkeypatch.setattr(storage, "FEW_ROWS", 32)
    storage.store([reading(0.0, HOUR_START - MINUTE_US)])  # creates the metric first
    statements: list[str] = []

    def record(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        mixed = storage.store([reading(1.0, HOUR_START), reading(0.0, HOUR_START - MINUTE_US)])
    assert mixed.outcomes == ["new", "duplicate"]
    assert len(statements) == 1 and storage.STAGE_TABLE not in statements[0], statements
    assert rollup_tuple(minute("web-01.cpu", HOUR_START)) == (1.0, 1.0, 1.0, 1, 1.0, HOUR_START, 1.0, HOUR_START)
    assert Sample.objects.count() == 2


def partition_of(metric_key: str, ts: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT s.tableoid::regclass::text FROM dashboard_sample s JOIN dashboard_metric m ON m.id = s.metric_id "
            "WHERE m.key = %s AND s.ts = %s",
            [metric_key, ts],
        )
        return cursor.fetchone()[0]


@pytest.mark.postgres
@pytest.mark.django_db
def test_samples_are_indexed_by_metric_and_time_and_by_a_brin_on_id_only() -> None:
    storage.store([reading(1.0, now_us())])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indexrelid::regclass::text, am.amname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam "
            "WHERE i.indrelid = 'dashboard_sample'::regclass ORDER BY 1"
        )
        indexes = cursor.fetchall()
    assert [(am, definition.split(" USING ")[1]) for _, am, definition in indexes] == [
        ("brin", "brin (id)"),
        ("btree", "btree (metric_id, ts)"),
    ]
    sample = Sample.objects.get()
    assert Sample.objects.get(pk=sample.pk).value == 1.0  # the admin's lookup by id


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize(
    "clock", [None, JUST_AFTER_MIDNIGHT, JUST_BEFORE_MIDNIGHT], ids=["default", "00:05", "23:59:30"], indirect=True
)
def test_it_puts_todays_samples_in_todays_partition(clock: Clock) -> None:
    partitions.ensure_partitions()  # what the migration and the retention loop do
    ts = clock.now
    storage.store([reading(1.0, ts)])
    assert partition_of("web-01.cpu", ts) == partitions.partition_name(partitions.day_start(ts))


@pytest.mark.postgres
@pytest.mark.django_db
def test_it_never_refuses_a_sample_without_partition_and_moves_it_when_the_day_gets_one() -> None:
    long_ago = now_us() - 400 * partitions.DAY_US
    storage.store([reading(1.0, long_ago), reading(2.0, long_ago + US)])
    assert partition_of("web-01.cpu", long_ago) == partitions.DEFAULT_PARTITION
    created = partitions.ensure_partitions(long_ago, long_ago + 1)
    assert created == [partitions.partition_name(partitions.day_start(long_ago))]
    assert partition_of("web-01.cpu", long_ago) == created[0]
    assert Sample.objects.count() == 2
    assert storage.store([reading(1.0, long_ago)]).outcomes == ["duplicate"]


@pytest.mark.django_db
def test_it_keeps_the_newest_value_of_each_metric_when_a_late_sample_arrives() -> None:
    from dashboard.models import Metric, Source

    storage.store([reading(5.0, HOUR_START + 10 * US), reading(6.0, HOUR_START + 20 * US, "load")])
    storage.store([reading(1.0, HOUR_START), reading(7.0, HOUR_START + 30 * US, "load")])
    assert Metric.objects.get(key="web-01.cpu").last_value == 5.0
    assert (Metric.objects.get(key="web-01.load").last_ts, Metric.objects.get(key="web-01.load").last_value) == (
        HOUR_START + 30 * US,
        7.0,
    )
    assert Source.objects.get(slug="web-01").samples_accepted == 4


@pytest.mark.django_db
def test_the_ten_minute_migration_fills_the_new_tier_from_minute_rollups_then_from_hours() -> None:
    backfill = importlib.import_module("dashboard.migrations.0003_tenminuterollup").backfill
    old_hour = HOUR_START - 200 * 86_400 * US  # only its hour rollup is left, as after minute retention
    storage.store([reading(float(v), HOUR_START + i * 100 * US) for i, v in enumerate([5, 1, 9, 3, 4, 6, 8, 2])])
    storage.store([reading(7.0, old_hour + 20 * MINUTE_US), reading(3.0, old_hour + 40 * MINUTE_US)])
    MinuteRollup.objects.filter(bucket__lt=HOUR_START).delete()
    kept = {row.bucket: rollup_tuple(row) for row in TenMinuteRollup.objects.filter(bucket__gte=HOUR_START)}
    TenMinuteRollup.objects.all().delete()

    class Editor:
        def execute(self, sql: str) -> None:
            with connection.cursor() as cursor:
                cursor.execute(sql)

    backfill(None, Editor())
    assert {row.bucket: rollup_tuple(row) for row in TenMinuteRollup.objects.filter(bucket__gte=HOUR_START)} == kept
    (old,) = TenMinuteRollup.objects.filter(bucket__lt=HOUR_START)
    assert old.bucket == old_hour
    assert rollup_tuple(old) == (3.0, 7.0, 10.0, 2, 7.0, old_hour + 20 * MINUTE_US, 3.0, old_hour + 40 * MINUTE_US)


@pytest.mark.django_db
def test_deleting_a_metric_deletes_its_samples_and_rollups_without_a_database_foreign_key() -> None:
    from dashboard.models import Metric

    storage.store([reading(1.0, HOUR_START), reading(2.0, HOUR_START, "load")])
    Metric.objects.get(key="web-01.cpu").delete()
    storage.clear_cache()  # as the admin does
    assert list(Sample.objects.values_list("metric__key", flat=True)) == ["web-01.load"]
    assert MinuteRollup.objects.count() == TenMinuteRollup.objects.count() == HourRollup.objects.count() == 1


@pytest.mark.django_db(transaction=True)  # the foreign keys are checked at a real commit
def test_a_writer_with_a_deleted_metric_cached_fails_at_the_rollup_foreign_key_and_not_silently() -> None:
    from django.db import DatabaseError

    from dashboard.models import Metric

    storage.store([reading(1.0, HOUR_START)])
    Metric.objects.get(key="web-01.cpu").delete()  # the cache still holds its id
    with pytest.raises(DatabaseError):
        storage.store([reading(2.0, HOUR_START + MINUTE_US)])
    assert Sample.objects.count() == 0
    storage.clear_cache()  # as the writer does after a database error
    assert storage.store([reading(2.0, HOUR_START + MINUTE_US)]).outcomes == ["new"]


def test_coarser_rollup_tiers_built_from_minute_buckets_equal_those_built_from_the_rows() -> None:
    import random

    from dashboard import rollups

    rng = random.Random(7)
    rows = [(rng.randrange(3), HOUR_START + rng.randrange(-3 * 3600, 3 * 3600) * US, rng.random()) for _ in range(2000)]
    minute = rollups.aggregate(rows, rollups.MINUTE_US)
    for width in (rollups.TEN_MINUTE_US, rollups.HOUR_US):
        # Sums added in another order may differ in the last bit.
        assert rollups.coarsen(minute, width) == {
            key: pytest.approx(bucket) for key, bucket in rollups.aggregate(rows, width).items()
        }


@pytest.mark.django_db
def test_a_batch_with_one_stored_key_stores_the_others_once_and_keeps_the_rollups_and_latest_value_exact() -> None:
    from dashboard.models import Metric, Source

    storage.store([reading(5.0, HOUR_START + 30 * US)])
    result = storage.store(
        [reading(1.0, HOUR_START), reading(5.0, HOUR_START + 30 * US), reading(9.0, HOUR_START + 90 * US)]
    )
    assert result.outcomes == ["new", "duplicate", "new"]
    assert Sample.objects.count() == 3
    first, second = MinuteRollup.objects.order_by("bucket")
    assert (first.count, first.sum, first.first, first.last) == (2, 6.0, 1.0, 5.0)
    assert (second.count, second.sum) == (1, 9.0)
    assert Metric.objects.get(key="web-01.cpu").last_value == 9.0
    assert Source.objects.get(slug="web-01").samples_accepted == 3


@pytest.mark.django_db
def test_prepare_leaves_a_batch_with_a_metric_it_has_not_cached_to_store() -> None:
    readings = [reading(1.0, HOUR_START), reading(2.0, HOUR_START + US, metric="new-one")]
    assert storage.prepare(readings) is None  # nothing cached yet: store() creates both metrics
    storage.store(readings)
    prepared = storage.prepare([reading(3.0, HOUR_START + 2 * US), reading(3.0, HOUR_START + 2 * US)])
    cpu = storage.resolve_metric(reading(0.0, 0), create=False).id
    assert prepared is not None
    assert prepared.keys == [(cpu, HOUR_START + 2 * US)] * 2  # one key per reading, repeats included
    assert list(prepared.rows) == [(cpu, HOUR_START + 2 * US)]  # one row per key


@pytest.mark.django_db
def test_combining_prepared_batches_gives_what_preparing_them_as_one_gives_unless_two_share_a_key() -> None:
    from dashboard import rollups

    storage.store([reading(0.0, HOUR_START - US), reading(0.0, HOUR_START - US, metric="mem")])  # cache both
    first = [reading(float(i), HOUR_START + i * 7 * US, metric="cpu" if i % 3 else "mem") for i in range(40)]
    second = [reading(float(i), HOUR_START + i * 11 * US + 3, metric="cpu" if i % 2 else "mem") for i in range(40)]
    parts = [storage.prepare(first), storage.prepare(second)]
    whole, combined = storage.prepare(first + second), storage.combine(parts)
    assert (combined.keys, combined.rows, combined.triples) == (whole.keys, whole.rows, whole.triples)
    if connection.vendor != "postgresql":  # PostgreSQL folds its rollups in SQL, from the rows
        assert combined.minute == {k: pytest.approx(b) for k, b in rollups.aggregate(whole.triples, MINUTE_US).items()}
    assert storage.combine(parts) is not None  # combining copies: the parts can be combined again (a retry)
    assert storage.combine([parts[0], storage.prepare(first[5:6])]) is None  # a shared key: store() sorts it out


@pytest.mark.django_db
def test_a_stored_key_in_a_later_insert_statement_keeps_the_statements_before_it_and_stores_the_rest(
    monkeypatch,
) -> None:
    monkeypatch.setattr(storage, "INSERT_CHUNK", 3)  # SQLite: 3 rows a statement, so the 8th row is in the third
    monkeypatch.setattr(storage, "STATEMENT_GRAIN", 1)
    storage.store([reading(7.0, HOUR_START + 7 * US)])
    result = storage.store([reading(float(i), HOUR_START + i * US) for i in range(10)])
    assert result.outcomes == ["new"] * 7 + ["duplicate"] + ["new"] * 2
    assert sorted(Sample.objects.values_list("value", flat=True)) == [float(i) for i in range(10)]
    row = minute("web-01.cpu", HOUR_START)
    assert (row.count, row.sum, row.first, row.last) == (10, 45.0, 0.0, 9.0)


def test_sqlite_inserts_go_in_statements_of_few_distinct_sizes() -> None:
    """sqlite3 keeps up to 128 compiled statements per connection, one per distinct SQL text, each ~270 B a row."""
    sizes: set[int] = set()
    for rows in (*range(1, 3001), 9_999, 10_000, 10_001, 12_345, 25_000, 31_999):
        bounds = storage.statement_bounds(rows)
        assert [b for _, b in bounds][-1] == rows and all(a < b for a, b in bounds)
        assert all(bounds[i][1] == bounds[i + 1][0] for i in range(len(bounds) - 1))  # contiguous, in order
        assert len(bounds) <= 2 * -(-rows // storage.INSERT_CHUNK)  # at most two statements per chunk
        sizes |= {b - a for a, b in bounds if b - a >= storage.STATEMENT_GRAIN}
    assert sizes <= set(range(storage.STATEMENT_GRAIN, storage.INSERT_CHUNK + 1, storage.STATEMENT_GRAIN))
