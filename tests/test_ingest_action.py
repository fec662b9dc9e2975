from __future__ import annotations

import math

import pytest
from django.utils import timezone

from dashboard import actions
from dashboard.models import Metric, Sample, Source
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clock")]


def reading(
    metric: str = "temperature", value: object = 21.5, ts: int | None = None, source: str = "iot.sensor-01"
) -> Reading:
    return Reading(source, metric, now_us() if ts is None else ts, value, "°C", "gauge", "device")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        ({"value": math.nan}, "value", "finite"),
        ({"value": math.inf}, "value", "finite"),
        ({"value": -math.inf}, "value", "finite"),
        ({"value": "21.5"}, "value", "must be a number"),
        ({"value": True}, "value", "must be a number"),
        ({"ts_from_now": -30 * 86400 * US}, "ts", "older than"),
        ({"ts_from_now": 3600 * US}, "ts", "in the future"),
        ({"metric": "bad key!"}, "metric", "not valid"),
        ({"metric": "x" * 201}, "metric", "not valid"),
        ({"source": ".hidden"}, "source", "not valid"),
    ],
)
async def test_it_rejects_a_bad_reading_and_keeps_its_neighbours(bad: dict, field: str, words: str) -> None:
    # Built when the test runs, not at collection: the accepted window moves with the clock.
    changes = dict(bad)
    ts = now_us() + changes.pop("ts_from_now", 0)
    bad = reading(**changes, ts=ts)
    good_before = reading("humidity", 40.0)
    good_after = reading("battery", 99.0)
    result = await actions.ingest([good_before, bad, good_after])
    assert result.accepted == 2
    assert [(r.index, r.field) for r in result.rejected] == [(1, field)]
    assert words in result.rejected[0].reason
    assert await Sample.objects.acount() == 2


async def test_it_stores_a_repeated_batch_once_and_counts_duplicates() -> None:
    ts = now_us()
    batch = [reading("temperature", 20.0, ts), reading("humidity", 50.0, ts)]
    first = await actions.ingest(batch)
    second = await actions.ingest([reading("temperature", 20.0, ts), reading("humidity", 50.0, ts)])
    assert (first.accepted, first.duplicates) == (2, 0)
    assert (second.accepted, second.duplicates) == (0, 2)
    assert await Sample.objects.acount() == 2


async def test_it_creates_unknown_sources_and_metrics_with_their_units() -> None:
    await actions.ingest([reading("temperature", 20.0)])
    metric = await Metric.objects.select_related("source").aget(key="iot.sensor-01.temperature")
    assert (metric.unit, metric.source.kind, metric.last_value) == ("°C", Source.Kind.DEVICE, 20.0)


async def test_it_refuses_unknown_metrics_when_the_policy_says_so(settings) -> None:
    settings.PULSEBOARD = {**settings.PULSEBOARD, "UNKNOWN_METRICS": "refuse"}
    result = await actions.ingest([reading("temperature", 20.0)])
    assert result.accepted == 0
    assert result.rejected[0].code == "unknown_metric"
    assert await Metric.objects.acount() == 0


async def test_it_counts_rejections_on_the_source() -> None:
    await actions.ingest([reading("temperature", 20.0)])
    await actions.ingest([reading("temperature", math.nan), reading("temperature", "x")])
    source = await Source.objects.aget(slug="iot.sensor-01")
    assert (source.samples_accepted, source.samples_rejected) == (1, 2)


async def test_the_writer_counts_what_it_refuses_beside_new_and_duplicate_readings(settings, agent_token) -> None:
    # The writer counts outcomes with list.count and lists refusals only when some are neither new nor duplicate.
    token, _ = agent_token
    ts = now_us()
    await actions.ingest([reading("temperature", 20.0, ts - US)])
    settings.PULSEBOARD = {**settings.PULSEBOARD, "UNKNOWN_METRICS": "refuse"}
    result = await actions.ingest(
        [reading("temperature", 21.0, ts), reading("temperature", 20.0, ts - US), reading("humidity", 50.0, ts)],
        token=token,
    )
    assert (result.accepted, result.duplicates, [r.index for r in result.rejected]) == (1, 1, [2])
    await token.arefresh_from_db()
    assert (token.samples_accepted, token.samples_rejected) == (1, 1)
    source = await Source.objects.aget(slug="iot.sensor-01")
    assert (source.samples_accepted, source.samples_rejected) == (2, 1)


async def test_it_keeps_the_newest_value_on_the_metric_when_a_late_sample_arrives() -> None:
    ts = now_us()
    await actions.ingest([reading("temperature", 22.0, ts)])
    await actions.ingest([reading("temperature", 10.0, ts - 60 * US)])
    metric = await Metric.objects.aget(key="iot.sensor-01.temperature")
    assert (metric.last_ts, metric.last_value) == (ts, 22.0)


async def test_it_counts_a_tokens_readings_and_marks_it_used_in_the_same_commit(agent_token) -> None:
    token, _ = agent_token
    assert token.last_used is None
    await actions.ingest([reading("temperature", 20.0), reading("humidity", math.nan)], token=token)
    await token.arefresh_from_db()
    assert (token.samples_accepted, token.samples_rejected) == (1, 1)
    assert token.last_used is not None and abs((timezone.now() - token.last_used).total_seconds()) < 60


async def test_the_writer_thread_commits_without_waiting_for_a_busy_event_loop() -> None:
    """A long fan-out pass holds the loop; a queued batch is committed meanwhile, not after it."""
    import asyncio
    import threading
    import time

    from django.db import connection

    from dashboard.writer import Writer

    await actions.ingest([reading(ts=now_us() - 1000)])  # the writer and its metric exist
    ts = now_us()
    pending = asyncio.ensure_future(Writer.get().write([reading(ts=ts)]))
    await asyncio.sleep(0)  # the job is queued
    time.sleep(0.5)  # the loop is busy: no turn for anything on it
    counted: list[int] = []

    def count() -> None:
        counted.append(Sample.objects.filter(ts=ts).count())
        connection.close()

    reader = threading.Thread(target=count)
    reader.start()
    reader.join()
    assert counted == [1]
    assert await pending == ["new"]


async def test_a_checked_batch_names_each_reading_the_writer_refuses_by_its_position(settings) -> None:
    """The common batch (all Readings, checked by a parser) is counted without a loop; refusals keep their index."""
    ts = now_us()
    await actions.ingest([reading("temperature", 20.0, ts)])
    settings.PULSEBOARD = {**settings.PULSEBOARD, "UNKNOWN_METRICS": "refuse"}
    items = [
        reading("humidity", 40.0, ts),
        reading("temperature", 20.0, ts),  # stored already
        reading("temperature", 21.0, ts + 1_000_000),
        reading("pressure", 1.0, ts),
    ]
    result = await actions.ingest(items, checked=True)
    assert (result.accepted, result.duplicates) == (1, 1)
    assert [(r.index, r.code) for r in result.rejected] == [(0, "unknown_metric"), (3, "unknown_metric")]
