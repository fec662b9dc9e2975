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

    def slow_first(readings: list[Reading]) -> storage.StoredBatch:
        if readings[0].metric == "slow":
            first_taken.set()
            time.sleep(0.5)  # the second batch, on the other thread, commits meanwhile
        batch = stored(readings)
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
