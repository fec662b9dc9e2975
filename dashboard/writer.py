"""One writer per process: group commit of ingested readings, then publish.

While one batch is being written the next accumulates, so a lone reading is
written at once and heavy load makes big batches. Writes run on one dedicated
thread (one database connection, no lock contention between writers of the
same process); live publishing follows the commit, so nothing shown live is
missing from history.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone

from dashboard import alerts, background, events, stats, storage
from dashboard.exceptions import StorageUnavailable
from dashboard.validation import Reading

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (0.05, 0.25, 1.0)  # then the callers get 503 and retry themselves


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


def _store_on_writer_thread(jobs: list[_Job]) -> storage.StoredBatch:
    # The writer keeps its one connection across batches. close_old_connections()
    # here closed it after every batch (CONN_MAX_AGE is 0 for request threads),
    # so each commit paid for a new connection; a broken one is closed below
    # and the retry reconnects.
    try:
        with transaction.atomic():
            batch = storage.store([r for job in jobs for r in job.readings])
            _count(jobs, batch)
        return batch
    except DatabaseError:
        # Drop a broken connection so the retry opens a fresh one.
        connection.close()
        storage.clear_cache()
        raise


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
        refused = [r.source for r, outcome in zip(job.readings, outcomes, strict=True) if not isinstance(outcome, str)]
        for slug in refused:
            sources[slug] = sources.get(slug, 0) + 1
        for slug, count in job.bookkeeping.rejected_by_source.items():
            sources[slug] = sources.get(slug, 0) + count
        if job.bookkeeping.token_id is not None:
            counts = tokens.setdefault(job.bookkeeping.token_id, [0, 0])
            counts[0] += sum(1 for outcome in outcomes if outcome == "new")
            counts[1] += job.bookkeeping.rejected + len(refused)
    for slug, count in sources.items():
        Source.objects.filter(slug=slug).update(samples_rejected=F("samples_rejected") + count)
    now = timezone.now()
    for token_id, (accepted, rejected) in tokens.items():
        AgentToken.objects.filter(pk=token_id).update(
            samples_accepted=F("samples_accepted") + accepted,
            samples_rejected=F("samples_rejected") + rejected,
            last_used=now,
        )


def _close_connection() -> None:
    try:
        connection.close()
    except DatabaseError:
        pass  # the test runner may share the main thread's in-memory SQLite connection


class Writer:
    """Accept readings from any coroutine of this process and commit them in groups."""

    _instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Writer] = weakref.WeakKeyDictionary()

    @classmethod
    def get(cls) -> Writer:
        """Return the writer of the running event loop, starting it on first use."""
        loop = asyncio.get_running_loop()
        writer = cls._instances.get(loop)
        if writer is None:
            writer = cls._instances[loop] = cls(loop)
            background.ensure_started()
        return writer

    @classmethod
    def close_all(cls) -> None:
        """Stop every writer and close its database connection (tests, shutdown)."""
        for writer in list(cls._instances.values()):
            writer.close()
        cls._instances.clear()

    def close(self) -> None:
        """Stop the writer task and release its thread and connection."""
        if not self._loop.is_closed():
            self._task.cancel()
        self._executor.submit(_close_connection).result()
        self._executor.shutdown(wait=True)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[_Job] = []
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pulseboard-writer")
        self._task = loop.create_task(self._run(), name="pulseboard-writer")

    async def write(self, readings: list[Reading], bookkeeping: Bookkeeping | None = None) -> list[str | Exception]:
        """Store readings and return, per reading, "new", "duplicate" or the error that refused it."""
        if not readings and bookkeeping is None:
            return []
        future = self._loop.create_future()
        self._pending.append(_Job(readings, future, bookkeeping))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        cap = settings.PULSEBOARD["WRITE_BATCH_MAX"]
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                jobs, size = [], 0
                while self._pending and (not jobs or size + len(self._pending[0].readings) <= cap):
                    job = self._pending.pop(0)
                    jobs.append(job)
                    size += len(job.readings)
                await self._commit(jobs)

    async def _commit(self, jobs: list[_Job]) -> None:
        readings = [r for job in jobs for r in job.readings]
        started = time.perf_counter()
        batch = None
        for attempt, delay in enumerate((*RETRY_DELAYS_S, None)):
            try:
                batch = await self._loop.run_in_executor(self._executor, _store_on_writer_thread, jobs)
                break
            except DatabaseError as exc:
                if delay is None:
                    stats.WRITE_FAILURES.inc()
                    log.error("write of %d readings failed after %d attempts: %s", len(readings), attempt + 1, exc)
                    error = StorageUnavailable(f"the database is unavailable ({exc.__class__.__name__}); retry later")
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(error)
                    return
                stats.WRITE_RETRIES.inc()
                log.warning("write of %d readings failed (%s); retrying in %.2f s", len(readings), exc, delay)
                await asyncio.sleep(delay)
            except Exception as exc:  # a bug, not an outage: fail these callers, keep the writer alive
                log.exception("write of %d readings failed", len(readings))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                return
        stats.WRITE_BATCH_SECONDS.observe(time.perf_counter() - started)
        stats.WRITE_BATCH_SIZE.observe(len(readings))
        publish_inserted(batch)
        # Alerting (#6): evaluate rules on the committed rows; a failure must never cost the writers.
        try:
            await alerts.evaluate(batch.inserted)
        except Exception:
            log.exception("alert evaluation of %d rows failed", len(batch.inserted))
        offset = 0
        for job in jobs:
            outcomes = batch.outcomes[offset : offset + len(job.readings)]
            offset += len(job.readings)
            if not job.future.done():
                job.future.set_result(outcomes)


def publish_inserted(batch: storage.StoredBatch) -> None:
    """Publish one sample.batch event per source for the rows this batch added."""
    by_source: dict[int, dict[str, list[list]]] = {}
    for ref, ts, value in batch.inserted:
        series = by_source.setdefault(ref.source_id, {}).setdefault(ref.key, [[], []])
        series[0].append(ts)
        series[1].append(value)
    for source_id, series in by_source.items():
        for ts_list, values in series.values():
            if any(ts_list[i] > ts_list[i + 1] for i in range(len(ts_list) - 1)):
                order = sorted(range(len(ts_list)), key=ts_list.__getitem__)
                ts_list[:] = [ts_list[i] for i in order]
                values[:] = [values[i] for i in order]
        # This process's viewers get it now; other processes' through the layer, in order (events.Outbox).
        events.publish_soon(events.source_group(source_id), events.SampleBatch(source=source_id, series=series))
