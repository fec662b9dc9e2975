"""One writer per process: group commit of ingested readings, then publish.

While one batch is being written the next accumulates, so a lone reading is
written at once and heavy load makes big batches. Writes run on dedicated
threads, each with its own database connection: one on SQLite, which writes
one transaction at a time, and two on PostgreSQL, so that one batch's COPY
runs while the batch before it folds its rollups and commits (the writer is
the serial chain of ingest; with one thread the database and the thread
took turns). Results go back to the event loop in the order the batches
were taken, whatever order they commit in; live publishing follows the
commit, so nothing shown live is missing from history.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import queue
import threading
import time
from dataclasses import dataclass, field
from itertools import islice

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone

from collectors.retry import Schedule
from dashboard import background, events, loops, stats, storage
from dashboard.exceptions import StorageUnavailable
from dashboard.validation import Reading

log = logging.getLogger(__name__)

# 0.05, 0.25, 1 s; then the callers get 503.
RETRY_DELAYS_S = tuple(Schedule(0.05, factor=5, max_s=1.0).delays(attempts=3))
_STOP = object()  # tells the writer thread to finish


@dataclass
class Bookkeeping:
    """Counters an ingest call adds in the same transaction as its samples.

    Counting here, on the writer's connection, instead of in the request
    keeps a per-request UPDATE from queueing behind the writer's lock (on
    SQLite it did, adding tens of milliseconds to every ingest), and a counter
    can never disagree with what was stored.
    """

    token_id: int | None = None
    rejected: int = 0  # readings refused before storage
    rejected_by_source: dict[str, int] = field(default_factory=dict)


@dataclass
class _Job:
    readings: list[Reading]
    future: asyncio.Future
    bookkeeping: Bookkeeping | None = None
    prepared: storage.Prepared | None = None  # storage.prepare(readings), made before the writer took it
    queued_at: float = field(default_factory=time.perf_counter)  # for pulseboard_write_wait_seconds


def _store_on_writer_thread(jobs: list[_Job]) -> storage.StoredBatch:
    # The writer keeps its one connection across batches. close_old_connections()
    # here closed it after every batch (CONN_MAX_AGE is 0 for request threads),
    # so each commit paid for a new connection; a broken one is closed below
    # and the retry reconnects.
    try:
        with transaction.atomic():
            readings = [r for job in jobs for r in job.readings]
            batch = storage.store(readings, prepared=_prepared(jobs))
            _count(jobs, batch)
        return batch
    except DatabaseError:
        # Drop a broken connection so the retry opens a fresh one, and what was worked out from the cache
        # with it: the retry resolves every metric again.
        connection.close()
        storage.clear_cache()
        for job in jobs:
            job.prepared = None
        raise


def _prepared(jobs: list[_Job]) -> storage.Prepared | None:
    """Return the jobs' prepared batches as one, preparing here any job that came without; None to let store() work."""
    if all(job.prepared is None for job in jobs):
        return None  # small jobs, as agents and devices post them: store() is as quick as prepare()
    parts = []
    for job in jobs:
        part = job.prepared or storage.prepare(job.readings)
        if part is None:
            return None
        parts.append(part)
    return storage.combine(parts)


def _count(jobs: list[_Job], batch: storage.StoredBatch) -> None:
    """Add each job's accepted and rejected readings to its token and sources; mark the token used."""
    from dashboard.models import AgentToken, Source

    tokens: dict[int, list[int]] = {}
    sources: dict[str, int] = {}
    offset = 0
    for job in jobs:
        outcomes = batch.outcomes[offset : offset + len(job.readings)]
        offset += len(job.readings)
        if job.bookkeeping is None:
            continue
        # list.count runs in C: a Python loop over the outcomes was ~0.2 µs a reading of the writer's
        # transaction (its row locks held, the GIL taken from the event loop), and refusals are rare.
        new = outcomes.count("new")
        refused = []
        if new + outcomes.count("duplicate") != len(outcomes):
            refused = [r.source for r, o in zip(job.readings, outcomes, strict=True) if not isinstance(o, str)]
        for slug in refused:
            sources[slug] = sources.get(slug, 0) + 1
        for slug, count in job.bookkeeping.rejected_by_source.items():
            sources[slug] = sources.get(slug, 0) + count
        if job.bookkeeping.token_id is not None:
            counts = tokens.setdefault(job.bookkeeping.token_id, [0, 0])
            counts[0] += new
            counts[1] += job.bookkeeping.rejected + len(refused)
    for slug, count in sources.items():
        Source.objects.filter(slug=slug).update(samples_rejected=F("samples_rejected") + count)
    if not tokens:
        return
    # One ready-made statement: the ORM's update() compiled it anew for every commit, ~200 µs of the
    # writer's Python (and of the GIL the event loop waits for) against ~25 µs.
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        for token_id, (accepted, rejected) in tokens.items():
            cursor.execute(_token_update_sql(AgentToken), [accepted, rejected, now, token_id])


def _token_update_sql(model: type) -> str:
    """Return the UPDATE adding to an agent token's counters and marking it used, for this connection's database."""
    qn = connection.ops.quote_name
    return (
        f"UPDATE {qn(model._meta.db_table)} SET {qn('samples_accepted')} = {qn('samples_accepted')} + %s, "
        f"{qn('samples_rejected')} = {qn('samples_rejected')} + %s, {qn('last_used')} = %s WHERE {qn('id')} = %s"
    )


def writer_threads() -> int:
    """Return how many writer threads a process runs: PULSEBOARD_WRITER_THREADS, or by database when 0."""
    configured = settings.PULSEBOARD["WRITER_THREADS"]
    if configured:
        return configured
    return 2 if connection.vendor == "postgresql" else 1


def _close_connection() -> None:
    try:
        connection.close()
    except DatabaseError:
        pass  # the test runner may share the main thread's in-memory SQLite connection


class Writer:
    """Accept readings from any coroutine of this process and commit them in groups."""

    @classmethod
    def get(cls) -> Writer:
        """Return the writer of the running event loop, starting it on first use."""
        return loops.service(Writer, cls._first)

    @classmethod
    def _first(cls) -> Writer:
        background.ensure_started()
        return cls(asyncio.get_running_loop())

    @classmethod
    def close_all(cls) -> None:
        """Stop every writer and close its database connection (tests, shutdown)."""
        for _loop, writer in loops.instances(Writer):
            writer.close()
        loops.forget(Writer)

    def runs_on_this_thread(self) -> bool:
        """Return whether the calling thread is one of this writer's database threads."""
        return threading.current_thread() in self._threads

    def close(self) -> None:
        """Stop the writer threads once they have written what they took, and close their connections."""
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=30)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._answering: asyncio.Task | None = None  # the last batch's alerts-then-answer step
        # Batches are numbered as they are taken (under _taking) and handed back in that order (_order).
        self._taking = threading.Lock()
        self._carried: _Job | object | None = None  # taken from the queue but over the batch cap: next batch
        self._taken = 0
        self._order = threading.Condition()
        self._handed = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"pulseboard-writer-{i}", daemon=True)
            for i in range(writer_threads())
        ]
        for thread in self._threads:
            thread.start()

    async def write(
        self,
        readings: list[Reading],
        bookkeeping: Bookkeeping | None = None,
        prepared: storage.Prepared | None = None,
    ) -> list[str | Exception]:
        """Store readings and return, per reading, "new", "duplicate" or the error that refused it.

        `prepared` is storage.prepare(readings), made off the event loop by a caller that parsed a big batch there.
        """
        if not readings and bookkeeping is None:
            return []
        future = self._loop.create_future()
        self._jobs.put(_Job(readings, future, bookkeeping, prepared))
        return await future

    # --- On the writer thread ---------------------------------------------------
    def _work(self) -> None:
        """Take what is waiting (up to WRITE_BATCH_MAX readings), commit it, hand it back in turn; repeat.

        The thread takes the next jobs itself as soon as a commit is done.
        When the event loop handed them over (run_in_executor), each commit
        also waited for the loop's turn twice, and with 1,000 viewers that
        turn took 4-12 ms: at 100 ingest requests a second the commits fell
        behind and requests queued for 30-50 ms (bench/README.md, Fan-out).
        """
        while True:
            taken = self._take()
            if taken is None:
                break
            jobs, number = taken
            outcome = self._store(jobs)
            if not self._hand_over(number, jobs, outcome):
                break  # the loop is closed: nobody waits for an answer
        _close_connection()

    def _take(self) -> tuple[list[_Job], int] | None:
        """Take the next batch and its number, or None when told to stop."""
        cap = settings.PULSEBOARD["WRITE_BATCH_MAX"]
        with self._taking:  # one thread at a time, so that numbers follow the queue's order
            job, self._carried = self._carried or self._jobs.get(), None
            if job is _STOP:
                return None
            jobs, size = [job], len(job.readings)
            while True:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP or size + len(more.readings) > cap:
                    self._carried = more
                    break
                jobs.append(more)
                size += len(more.readings)
            number, self._taken = self._taken, self._taken + 1
        started = time.perf_counter()
        for job in jobs:
            stats.WRITE_WAIT_SECONDS.observe(started - job.queued_at)
        return jobs, number

    def _hand_over(self, number: int, jobs: list[_Job], outcome: storage.StoredBatch | Exception) -> bool:
        """Give a batch's outcome to the event loop after every batch taken before it; False if the loop is closed."""
        with self._order:
            while self._handed != number:
                self._order.wait()
            try:
                self._loop.call_soon_threadsafe(self._committed, jobs, outcome)
                return True
            except RuntimeError:
                return False
            finally:
                self._handed += 1
                self._order.notify_all()

    def _store(self, jobs: list[_Job]) -> storage.StoredBatch | Exception:
        """Commit the jobs' readings, retrying database errors; return the batch or the error for the callers."""
        readings = sum(len(job.readings) for job in jobs)
        started = time.perf_counter()
        for attempt, delay in enumerate((*RETRY_DELAYS_S, None)):
            try:
                batch = _store_on_writer_thread(jobs)
            except DatabaseError as exc:
                if delay is None:
                    stats.WRITE_FAILURES.inc()
                    log.error("write of %d readings failed after %d attempts: %s", readings, attempt + 1, exc)
                    return StorageUnavailable(f"the database is unavailable ({exc.__class__.__name__}); retry later")
                stats.WRITE_RETRIES.inc()
                log.warning("write of %d readings failed (%s); retrying in %.2f s", readings, exc, delay)
                time.sleep(delay)
            except Exception as exc:  # a bug, not an outage: fail these callers, keep the writer alive
                log.exception("write of %d readings failed", readings)
                return exc
            else:
                stats.WRITE_BATCH_SECONDS.observe(time.perf_counter() - started)
                stats.WRITE_BATCH_SIZE.observe(readings)
                return batch
        raise AssertionError("unreachable")

    # --- Back on the event loop, in commit order ----------------------------------
    def _committed(self, jobs: list[_Job], outcome: storage.StoredBatch | Exception) -> None:
        if isinstance(outcome, Exception):
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(outcome)
            return
        publish_inserted(outcome)  # at once and in commit order: live viewers do not wait for alerting
        # Alerts are evaluated batch after batch (a rule's state depends on the order), then the callers answered.
        self._answering = self._loop.create_task(self._answer(self._answering, jobs, outcome))

    async def _answer(self, previous: asyncio.Task | None, jobs: list[_Job], batch: storage.StoredBatch) -> None:
        if previous is not None:
            await previous
        # Alerting (#6): evaluate rules on the committed rows; a failure must never cost the writers.
        # Imported here: dashboard.actions imports this module (its ingest action writes through it).
        from dashboard import actions

        try:
            await actions.evaluate_alerts(batch.inserted)
        except Exception:
            log.exception("alert evaluation of %d rows failed", len(batch.inserted))
        offset = 0
        for job in jobs:
            outcomes = batch.outcomes[offset : offset + len(job.readings)]
            offset += len(job.readings)
            if not job.future.done():
                job.future.set_result(outcomes)


def publish_inserted(batch: storage.StoredBatch) -> None:
    """Publish the rows this batch added as one sample.batch event, whatever their sources.

    One publication per commit: a multi-device agent request used to be one
    per device, each crossing the channel layer and fanned out to every
    viewer on its own (issue #18 item 5).
    """
    if not batch.inserted:
        return
    series: dict[str, list[list]] = {}
    sources: dict[str, int] = {}
    for ref, ts, value in batch.inserted:
        entry = series.get(ref.key)
        if entry is None:
            entry = series[ref.key] = [[], []]
            sources[ref.key] = ref.source_id
        entry[0].append(ts)
        entry[1].append(value)
    for ts_list, values in series.values():
        # Pairwise in C (map over two iterators): a generator of index lookups cost ~0.1 µs a sample on the loop.
        if any(map(operator.gt, ts_list, islice(ts_list, 1, None))):
            order = sorted(range(len(ts_list)), key=ts_list.__getitem__)
            ts_list[:] = [ts_list[i] for i in order]
            values[:] = [values[i] for i in order]
    # This process's viewers get it now; other processes' through the layer, in order (events.Outbox).
    events.publish_soon(events.SAMPLES_GROUP, events.SampleBatch(series=series, sources=sources))
