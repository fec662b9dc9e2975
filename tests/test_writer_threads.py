"""The writer's threads: batches taken in turn are handed back in turn, whatever order they commit in."""

from __future__ import annotations

import threading
import time

import pytest

from dashboard import storage, writer
from dashboard.models import Metric, Sample
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clock")]


def test_postgresql_gets_two_writer_threads_and_sqlite_one(settings) -> None:
    from django.db import connection

    settings.PULSEBOARD = {**settings.PULSEBOARD, "WRITER_THREADS": 0}
    assert writer.writer_threads() == (2 if connection.vendor == "postgresql" else 1)
    settings.PULSEBOARD = {**settings.PULSEBOARD, "WRITER_THREADS": 3}
    assert writer.writer_threads() == 3


async def test_a_batch_that_commits_first_is_still_answered_after_the_one_taken_before_it(
    settings, monkeypatch
) -> None:
    import asyncio

    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite takes its write lock at BEGIN, so its transactions commit in turn")
    settings.PULSEBOARD = {**settings.PULSEBOARD, "WRITER_THREADS": 2}
    first_taken = threading.Event()
    stored = storage.store
    commits: list[str] = []

    def slow_first(readings: list[Reading], prepared: storage.Prepared | None = None) -> storage.StoredBatch:
        if readings[0].metric == "slow":
            first_taken.set()
            time.sleep(0.5)  # the second batch, on the other thread, commits meanwhile
        batch = stored(readings, prepared)
        commits.append(readings[0].metric)
        return batch

    monkeypatch.setattr(storage, "store", slow_first)
    answered: list[str] = []
    published: list[str] = []
    monkeypatch.setattr(
        writer, "publish_inserted", lambda batch: published.extend(ref.key for ref, _, _ in batch.inserted)
    )

    async def write(metric: str) -> None:
        await writer.Writer.get().write([Reading("lab", metric, now_us() - US, 1.0)])
        answered.append(metric)

    slow = asyncio.ensure_future(write("slow"))
    await asyncio.get_running_loop().run_in_executor(None, first_taken.wait, 5)
    await asyncio.gather(slow, write("fast"))
    assert commits == ["fast", "slow"]
    assert published == ["lab.slow", "lab.fast"]
    assert answered == ["slow", "fast"]
    assert await Sample.objects.acount() == 2
    assert await Metric.objects.filter(key__in=["lab.slow", "lab.fast"]).acount() == 2
    writer.Writer.close_all()


def test_a_commit_of_prepared_and_plain_jobs_is_keyed_as_one_and_a_failed_commit_forgets_the_keys(monkeypatch) -> None:
    from django.db import DatabaseError

    ts = now_us() - 60 * US
    storage.store([Reading("lab", "a", ts, 0.0), Reading("lab", "b", ts, 0.0)])  # both metrics cached
    first = [Reading("lab", "a", ts + i, float(i)) for i in range(1, 50)]
    second = [Reading("lab", "b", ts + i, float(i)) for i in range(1, 50)]
    jobs = [writer._Job(first, None, prepared=storage.prepare(first)), writer._Job(second, None)]
    assert writer._prepared(jobs).keys == storage.prepare(first + second).keys  # the plain job keyed on the writer
    assert writer._prepared([writer._Job(first, None), writer._Job(second, None)]) is None  # small posts: store() keys

    def down(readings, prepared=None):
        raise DatabaseError("connection lost")

    monkeypatch.setattr(storage, "store", down)
    with pytest.raises(DatabaseError):
        writer._store_on_writer_thread(jobs)
    assert [job.prepared for job in jobs] == [None, None]  # the retry keys every reading again, from the database
