"""How a batch of validated readings lands in the tables.

Sources and metrics are resolved through a per-process cache. On PostgreSQL
the rows are streamed with COPY into dashboard_sample (in a savepoint) and
into a per-connection temporary staging table, from which one statement
folds them into the rollup tiers, the metrics' latest values and the
sources' counters in SQL; a COPY cannot skip duplicates, so when it fails
on a stored key the staged rows go in with ON CONFLICT DO NOTHING instead
and only the inserted ones are folded in (insert_by_copy). A batch of a
few rows (an agent's usual post) skips the staging table: one INSERT ...
VALUES ... ON CONFLICT DO NOTHING statement inserts it and folds the new
rows (insert_few). On SQLite they
go in as plain multi-row INSERTs, and only when one fails on a stored key
as INSERT ... ON CONFLICT DO NOTHING RETURNING; the rollups are aggregated
in Python.
A big batch usually comes with its keys worked out already (prepare, on
the parsing thread), so the writer's transaction, ingest's one serial
chain, runs little Python besides its SQL.
Either way a retried batch stores nothing twice and the caller learns exactly
which rows are new (only those are published live and counted in the
rollups, in the same transaction: see dashboard/rollups.py).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from dashboard import keyindex, rollups
from dashboard.exceptions import UnknownMetric
from dashboard.models import Metric, Source
from dashboard.validation import Reading

log = logging.getLogger(__name__)

# Rows per INSERT statement on SQLite: 30,000 parameters, under SQLite's default limit of 32,766. Each
# statement hands the GIL over twice (prepare and step) and waits to take it back from the parsing thread
# and the event loop: under line-protocol load the writer's INSERTs took 0.82 s of wall time in batches of
# 3,000 rows and 0.60 s in batches of 10,000 for the same 400,000 rows (bench/results/2026-12-06-1620-ingest.md).
INSERT_CHUNK = 10_000
# ... cut into statements of few distinct sizes: sqlite3 keeps each distinct SQL text it ran compiled, up to
# 128 of them per connection, and a compiled INSERT holds ~270 B a row (128 sizes of ~10,000 rows: 346 MB of
# RSS). Whole thousands of rows, then the rest: at most two statements per chunk, and at most ~47 MB cached.
STATEMENT_GRAIN = 1000
LATEST_CHUNK = 5000  # metrics per "latest value" UPDATE: 15,000 parameters
# PostgreSQL: a batch of at most this many rows goes in with one INSERT ... VALUES statement (insert_few)
# instead of the staging table and two COPYs, whose set-up (the temporary table's TRUNCATE, two COPY
# exchanges) costs more than a few rows: an agent's usual post of 10 samples took 4.1-4.8 ms a commit that
# way and 2.6-3.2 ms in one statement; at 100 rows the two were equal, at 500 COPY was faster (2026-12-06,
# bench/results/2026-12-06-1334-ingest.md).
FEW_ROWS = 32
# Temporary, so invisible to other sessions and never WAL-logged; its rows
# are deleted at commit, and the table itself lives as long as the connection.
STAGE_TABLE = "pulseboard_sample_stage"
# PostgreSQL's binary COPY format: a signature, flags and header extension
# length, then per row the field count and each field's length and bytes
# (int8, int8, float8, big-endian), then -1 as the end marker.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_ROW = struct.Struct(">hiqiqid")
COPY_TRAILER = struct.pack(">h", -1)


@dataclass(slots=True, frozen=True)
class MetricRef:
    id: int
    source_id: int
    key: str


@dataclass
class StoredBatch:
    """What one store() call did: the new rows (for publishing) and per-reading outcomes."""

    # (metric ref, ts, value) of rows that were not there before, in input order.
    inserted: list[tuple[MetricRef, int, float]] = field(default_factory=list)
    # For each input reading: "new", "duplicate" or an UnknownMetric error.
    outcomes: list[str | UnknownMetric] = field(default_factory=list)


_metric_cache: dict[str, MetricRef] = {}
_metric_by_id: dict[int, MetricRef] = {}  # the same refs by id: rollup buckets name metrics by id


def clear_cache() -> None:
    """Forget cached metric ids (after deletes in the admin, and between tests)."""
    _metric_cache.clear()
    _metric_by_id.clear()


def resolve_metric(reading: Reading, create: bool) -> MetricRef:
    """Return the metric for a reading, creating its source and metric when the policy allows."""
    ref = _metric_cache.get(reading.key)
    if ref is not None:
        return ref
    metric = Metric.objects.filter(key=reading.key).only("id", "source_id", "key").first()
    if metric is None:
        if not create:
            raise UnknownMetric(
                f"metric {reading.key!r} does not exist and PULSEBOARD_UNKNOWN_METRICS=refuse; "
                "create it in the admin first",
                field="metric",
            )
        metric = _create_metric(reading)
    ref = MetricRef(metric.id, metric.source_id, metric.key)
    _metric_by_id[ref.id] = ref
    _metric_cache[reading.key] = ref
    return ref


def _create_metric(reading: Reading) -> Metric:
    # Two tries: another writer (a process, or this one's other thread) may create the source or the
    # metric between our read and our write; the second try finds what it made.
    for attempt in range(2):
        try:
            with transaction.atomic():
                source, _ = Source.objects.get_or_create(
                    slug=reading.source,
                    defaults={
                        "name": reading.labels.get("name", reading.source),
                        "kind": reading.source_kind or Source.Kind.OTHER,
                        "labels": reading.labels,
                    },
                )
                metric, created = Metric.objects.get_or_create(
                    key=reading.key,
                    defaults={
                        "source": source,
                        "name": reading.metric,
                        "unit": reading.unit,
                        "kind": reading.kind or Metric.Kind.GAUGE,
                    },
                )
                if created:
                    # Live globs of this process take it in as soon as the batch commits, before its samples are published.
                    keyindex.note_created(metric, source.slug)
                return metric
        except IntegrityError:
            metric = Metric.objects.filter(key=reading.key).first()
            if metric is not None or attempt:
                return metric or Metric.objects.get(key=reading.key)
    raise AssertionError("unreachable")


@dataclass(slots=True)
class Prepared:
    """A batch's keys and rows, worked out from the metric cache before the writer takes it (prepare).

    The writer's transaction is ingest's one serial chain: on SQLite, under
    line-protocol load, the writer was busy the whole run while the parsing
    thread and the event loop were idle more than half of it, and a sixth of
    its time was this Python (a key per reading, then the minute buckets).
    Worked out on the parsing thread, right after the parse, it overlaps the
    writer's SQL of the batch before instead of queueing behind it.
    """

    # Per reading, its (metric id, ts).
    keys: list[tuple[int, int]]
    # (metric id, ts) -> (ref, value) of the first reading of each key, in input order.
    rows: dict[tuple[int, int], tuple[MetricRef, float]]
    # SQLite: the rows as (metric id, ts, value), and their minute buckets (rollups.aggregate); PostgreSQL
    # folds its rollups in SQL and leaves both empty.
    triples: list[tuple[int, int, float]]
    minute: dict[tuple[int, int], rollups.Bucket]


def prepare(readings: list[Reading]) -> Prepared | None:
    """Return a batch's keys and rows, or None when a metric is not in this process's cache.

    Any thread may call it: it reads the cache and writes nothing. A metric
    that is not cached (new, or refused by the UNKNOWN_METRICS policy) is
    left to store(), on the writer's connection, which creates or refuses it.
    """
    keyed = _keyed(readings, None)
    if keyed is None:
        return None
    keys, rows = keyed
    if connection.vendor == "postgresql":
        return Prepared(keys, rows, [], {})
    triples = [(m, t, v) for (m, t), (_, v) in rows.items()]
    return Prepared(keys, rows, triples, rollups.aggregate(triples, rollups.MINUTE_US))


def _keyed(
    readings: list[Reading], resolve: Callable[[Reading], MetricRef] | None
) -> tuple[list, dict[tuple[int, int], tuple[MetricRef, float]]] | None:
    """Return (per reading its (metric id, ts) or the UnknownMetric that refused it, the first row of each key).

    A metric that is not cached is resolved by `resolve`; without one, the
    answer is None. This loop runs for every reading of the batch, hence
    the inlined cache lookup.
    """
    keys: list[tuple[int, int] | UnknownMetric] = []
    # (metric id, ts) -> (ref, value) of the first reading of each key, in input order.
    rows: dict[tuple[int, int], tuple[MetricRef, float]] = {}
    cached = _metric_cache.get
    for reading in readings:
        ref = cached(f"{reading.source}.{reading.metric}")
        if ref is None:
            if resolve is None:
                return None
            try:
                ref = resolve(reading)
            except UnknownMetric as exc:
                keys.append(exc)
                continue
        key = (ref.id, reading.ts)
        keys.append(key)
        if key not in rows:
            rows[key] = (ref, reading.value)
    return keys, rows


def combine(parts: list[Prepared]) -> Prepared | None:
    """Return the batches of one commit as one, or None when two of them hold the same key (store() sorts it out)."""
    if len(parts) == 1:
        return parts[0]
    rows = dict(parts[0].rows)  # a copy: a retried commit combines the same parts again
    for part in parts[1:]:
        if not rows.keys().isdisjoint(part.rows):
            return None
        rows.update(part.rows)
    return Prepared(
        list(chain.from_iterable(part.keys for part in parts)),
        rows,
        list(chain.from_iterable(part.triples for part in parts)),
        rollups.combine([part.minute for part in parts]),
    )


def store(readings: list[Reading], prepared: Prepared | None = None) -> StoredBatch:
    """Store readings in one transaction and report which were new, duplicate or refused.

    `prepared` is prepare(readings), when the caller has it.
    """
    create = settings.PULSEBOARD["UNKNOWN_METRICS"] == "create"
    batch = StoredBatch()
    triples: list[tuple[int, int, float]] = []  # SQLite: the rows as (metric id, ts, value)
    minute: dict[tuple[int, int], rollups.Bucket] | None = None
    keys: list[tuple[int, int] | UnknownMetric]
    if prepared is not None:
        keys, rows, triples, minute = prepared.keys, prepared.rows, prepared.triples, prepared.minute  # type: ignore[assignment]
    else:
        keys, rows = _keyed(readings, lambda reading: resolve_metric(reading, create))  # type: ignore[misc]

    # Keys that were stored before this batch (a retry, a replay): usually none.
    old: set[tuple[int, int]] = set()
    # No savepoint inside a caller's transaction (the writer's): nothing here
    # catches an error, so the caller rolls back the whole batch anyway, and a
    # savepoint cost two more round trips per batch.
    with transaction.atomic(savepoint=False):
        with connection.cursor() as cursor:
            if rows:
                if connection.vendor == "postgresql":
                    # Rollups, latest values and source counters are folded in by the same statement, in SQL.
                    old = insert_few(cursor, rows) if len(rows) <= FEW_ROWS else insert_by_copy(cursor, rows)
                else:
                    # (metric id, ts, value) once: the INSERTs' parameters and the rollups' input.
                    if not triples:
                        triples = [(m, t, v) for (m, t), (_, v) in rows.items()]
                    old = _insert_by_values(cursor, triples)
            if old:
                batch.inserted = [(ref, key[1], value) for key, (ref, value) in rows.items() if key not in old]
            else:
                batch.inserted = [(ref, key[1], value) for key, (ref, value) in rows.items()]
            if connection.vendor != "postgresql" and batch.inserted:
                if old:  # the prepared buckets counted rows that were already stored
                    new, minute = [row for row in triples if (row[0], row[1]) not in old], None
                else:
                    new = triples
                update_latest_from_buckets(rollups.apply(cursor, connection.vendor, new, minute))

    # The first reading of each new key is "new"; repeats and old keys are duplicates.
    if len(keys) == len(rows):  # no repeats and no refusals: no need to track what was seen
        batch.outcomes = ["duplicate" if key in old else "new" for key in keys] if old else ["new"] * len(keys)
        return batch
    seen = old
    for key in keys:
        if type(key) is not tuple:
            batch.outcomes.append(key)
        elif key in seen:
            batch.outcomes.append("duplicate")
        else:
            seen.add(key)
            batch.outcomes.append("new")
    return batch


def _insert_by_values(cursor: CursorWrapper, triples: list[tuple[int, int, float]]) -> set[tuple[int, int]]:
    """Insert rows with multi-row VALUES statements and return the (metric id, ts) keys that were already there.

    SQLite. Plain INSERTs first: almost every batch is all new, and one
    that is not fails on the unique (metric_id, ts). SQLite then backs out
    that one statement and keeps the transaction and the statements before
    it (its ABORT rule), so those rows are all new, and the rest goes in
    again with ON CONFLICT DO NOTHING RETURNING, which tells the new rows.
    No savepoint around them: it cost two more statements per batch, each
    a wait for the GIL. The plain statements go straight to sqlite3 with ?
    placeholders: Django's wrapper rewrote the 30,000 placeholders of each
    one. (The RETURNING statement hands back each row, and each row took
    the GIL back from the parsing thread, so it is only the fallback.)
    """
    raw = cursor.cursor
    stored = 0  # rows of the statements that went in whole
    try:
        with connection.wrap_database_errors:
            for start, end in statement_bounds(len(triples)):
                chunk = triples[start:end]
                sqlite3_execute(raw, _plain_insert_sql(len(chunk)), list(chain.from_iterable(chunk)))
                stored = end
        return set()
    except IntegrityError:
        pass  # a stored key (a retry, a replay): find which
    return _insert_returning(cursor, triples[stored:])


def statement_bounds(rows: int) -> list[tuple[int, int]]:
    """Return (start, end) of each INSERT statement for `rows` rows: INSERT_CHUNK at most, whole STATEMENT_GRAINs, then the rest."""
    bounds = []
    for start in range(0, rows, INSERT_CHUNK):
        end = min(start + INSERT_CHUNK, rows)
        whole = start + (end - start) // STATEMENT_GRAIN * STATEMENT_GRAIN
        if start < whole < end:
            bounds.append((start, whole))
            start = whole
        bounds.append((start, end))
    return bounds


@functools.lru_cache(maxsize=16)
def _plain_insert_sql(rows: int) -> str:
    """Return SQLite's plain INSERT of `rows` rows; the few sizes seen most (a full chunk, the usual batches) are kept."""
    return "INSERT INTO dashboard_sample (metric_id, ts, value) VALUES " + ",".join(["(?,?,?)"] * rows)


def _insert_returning(cursor: CursorWrapper, triples: list[tuple[int, int, float]]) -> set[tuple[int, int]]:
    """Insert rows, skipping stored keys, and return the keys that were already there."""
    new: set[tuple[int, int]] = set()
    for start in range(0, len(triples), INSERT_CHUNK):
        chunk = triples[start : start + INSERT_CHUNK]
        values_sql = ",".join(["(%s,%s,%s)"] * len(chunk))
        cursor.execute(
            f"INSERT INTO dashboard_sample (metric_id, ts, value) VALUES {values_sql} "
            "ON CONFLICT (metric_id, ts) DO NOTHING RETURNING metric_id, ts",
            list(chain.from_iterable(chunk)),
        )
        new.update((int(m), int(t)) for m, t in cursor.fetchall())
    return {(m, t) for m, t, _ in triples} - new


def insert_by_copy(cursor: CursorWrapper, rows: dict[tuple[int, int], tuple[MetricRef, float]]) -> set[tuple[int, int]]:
    """COPY rows into dashboard_sample and the staging table, fold the new ones into the rollups.

    PostgreSQL only. Return the keys that were already stored (almost always
    none). The rows are COPYed straight into dashboard_sample, in a
    savepoint: COPY writes whole pages at once where INSERT ... SELECT ... ON
    CONFLICT writes (and WAL-logs) row by row, and a COPY that succeeds
    proves every row new. One that fails on the unique (metric_id, ts)
    (a retry, a replay) is rolled back and the staged rows go in with ON
    CONFLICT DO NOTHING instead. The statement that folds the new rows into
    the rollups also updates the metrics' latest values and the sources'
    counters. bench/ingest.py times this on its own, as the database's
    share of an ingest.
    """
    # One round trip (no parameters: psycopg sends both statements at once). Emptied here rather than by
    # DELETE ... RETURNING in the folding statement, which marked every staged row deleted one by one; ON
    # COMMIT empties it too, but a caller's outer transaction may store twice before committing.
    cursor.execute(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE_TABLE} "
        "(metric_id bigint NOT NULL, ts bigint NOT NULL, value double precision NOT NULL) ON COMMIT DELETE ROWS; "
        f"TRUNCATE {STAGE_TABLE}"
    )
    # One buffer in PostgreSQL's binary COPY format instead of a write_row() call per row.
    data = (
        COPY_HEADER + b"".join([COPY_ROW.pack(3, 8, m, 8, t, 8, v) for (m, t), (_, v) in rows.items()]) + COPY_TRAILER
    )
    _copy(cursor, STAGE_TABLE, data)
    try:
        with transaction.atomic():
            _copy(cursor, "dashboard_sample", data)
    except IntegrityError:
        return _insert_new_and_fold(cursor, f"SELECT metric_id, ts, value FROM {STAGE_TABLE}", [])
    # Every staged row is new: fold them into the rollups.
    cursor.execute(
        f"WITH new_rows AS (SELECT metric_id, ts, value FROM {STAGE_TABLE}), "
        f"{rollups.upsert_ctes('new_rows', timezone.now())} SELECT 1"
    )
    return set()


def insert_few(cursor: CursorWrapper, rows: dict[tuple[int, int], tuple[MetricRef, float]]) -> set[tuple[int, int]]:
    """Insert a few rows and fold the new ones into the rollups in one statement; return the keys already stored.

    PostgreSQL, for batches of at most FEW_ROWS rows: the rows travel as
    the statement's parameters, so no staging table and no COPY.
    """
    values = ",".join(["(%s,%s,%s)"] * len(rows))
    return _insert_new_and_fold(
        cursor,
        f"SELECT column1::bigint, column2::bigint, column3::float8 FROM (VALUES {values}) AS v",
        [x for (m, t), (_, v) in rows.items() for x in (m, t, v)],
    )


def _insert_new_and_fold(cursor: CursorWrapper, staged_sql: str, params: list) -> set[tuple[int, int]]:
    """Insert the rows `staged_sql` selects, skipping stored keys, fold exactly the new ones; return the others.

    One statement, one round trip: insert what is new, fold those rows into
    every rollup tier (with the latest values and source counters), and
    report the staged keys that were not inserted.
    """
    # psycopg reads % as a placeholder in a statement with parameters (a list, even empty): the fold's
    # modulo operators are doubled.
    fold = rollups.upsert_ctes("new_rows", timezone.now()).replace("%", "%%")
    cursor.execute(
        f"WITH staged (metric_id, ts, value) AS ({staged_sql}), "
        "new_rows AS (INSERT INTO dashboard_sample (metric_id, ts, value) SELECT metric_id, ts, value FROM staged "
        "ON CONFLICT (metric_id, ts) DO NOTHING RETURNING metric_id, ts, value), "
        f"{fold} "
        "SELECT metric_id, ts FROM staged EXCEPT ALL SELECT metric_id, ts FROM new_rows",
        params,
    )
    return {(int(m), int(t)) for m, t in cursor.fetchall()}


def sqlite3_execute(raw_cursor, sql: str, params: list) -> None:
    """Run a statement with ? placeholders on the sqlite3 cursor under Django's wrapper, unconverted."""
    sqlite3.Cursor.execute(raw_cursor, sql, params)


def _copy(cursor: CursorWrapper, table: str, data: bytes) -> None:
    """COPY a binary buffer of (metric_id, ts, value) rows into a table, with Django's exception classes."""
    with connection.wrap_database_errors:
        with cursor.cursor.copy(f"COPY {table} (metric_id, ts, value) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(data)


def update_latest_from_buckets(minute: dict[tuple[int, int], rollups.Bucket]) -> None:
    """Keep each metric's newest value and each source's counters, from a batch's minute buckets (SQLite).

    A bucket holds its last sample and its number of rows already: a few
    hundred buckets to read instead of every row.
    """
    latest: dict[int, tuple[int, float]] = {}
    per_source: dict[int, int] = {}
    for (metric_id, _), b in minute.items():
        if metric_id not in latest or b[7] > latest[metric_id][0]:
            latest[metric_id] = (b[7], b[6])
        source_id = (_metric_by_id.get(metric_id) or _ref_by_id(metric_id)).source_id
        per_source[source_id] = per_source.get(source_id, 0) + b[3]
    _write_latest(latest, per_source)


def _ref_by_id(metric_id: int) -> MetricRef:
    metric = Metric.objects.only("id", "source_id", "key").get(pk=metric_id)
    ref = _metric_by_id[metric_id] = MetricRef(metric.id, metric.source_id, metric.key)
    return ref


def update_latest(inserted: list[tuple[MetricRef, int, float]]) -> None:
    """Keep each metric's newest value and each source's last-seen time and counters."""
    latest: dict[int, tuple[int, float]] = {}
    per_source: dict[int, int] = {}
    for ref, ts, value in inserted:
        if ref.id not in latest or ts > latest[ref.id][0]:
            latest[ref.id] = (ts, value)
        per_source[ref.source_id] = per_source.get(ref.source_id, 0) + 1
    _write_latest(latest, per_source)


def _write_latest(latest: dict[int, tuple[int, float]], per_source: dict[int, int]) -> None:
    """Move metrics' latest values forward and add to sources' accepted counts."""
    if not latest:
        return
    now = timezone.now()
    # Sorted so that concurrent writers lock rows in the same order (no deadlocks).
    metrics = sorted(latest.items())
    with connection.cursor() as cursor:
        # One statement per chunk instead of one per metric; VALUES columns are
        # column1..3 on both databases.
        for start in range(0, len(metrics), LATEST_CHUNK):
            chunk = metrics[start : start + LATEST_CHUNK]
            cursor.execute(
                "UPDATE dashboard_metric SET last_ts = v.column2, last_value = v.column3 "
                f"FROM (VALUES {','.join(['(%s,%s,%s)'] * len(chunk))}) AS v "
                "WHERE dashboard_metric.id = v.column1 "
                "AND (dashboard_metric.last_ts IS NULL OR dashboard_metric.last_ts < v.column2)",
                [x for metric_id, (ts, value) in chunk for x in (metric_id, ts, value)],
            )
        cursor.executemany(
            "UPDATE dashboard_source SET last_seen = %s, samples_accepted = samples_accepted + %s WHERE id = %s",
            [(now, count, source_id) for source_id, count in sorted(per_source.items())],
        )
