"""An outage logs its first failure with a traceback, then a summary line per interval, then a recovery line.

Each place that fails repeatedly during an outage is driven here with a
failing part: the publish to the channel layer, the hub's receive loop, the
no-data check.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from dashboard import actions, events, logthrottle
from dashboard.alerts import nodata
from dashboard.live.hub import Hub
from dashboard.logthrottle import FailureLog


def tracebacks(caplog, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.exc_info]


def test_a_run_of_failures_logs_one_traceback_a_summary_per_interval_and_a_recovery(caplog, monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(logthrottle.time, "monotonic", lambda: clock[0])
    log = logging.getLogger("test.throttle")
    failures = FailureLog(log, "the thing", interval_s=30)
    with caplog.at_level(logging.INFO, logger="test.throttle"):
        for _ in range(25):  # 5 s of an outage at 5 a second
            try:
                raise ConnectionError("refused")
            except ConnectionError as exc:
                failures.failure(exc)
            clock[0] += 0.2
        clock[0] += 30
        failures.failure(ConnectionError("refused"))
        failures.success()
        failures.success()  # nothing more to say
    lines = [r.getMessage() for r in caplog.records]
    print("\n".join(lines))
    assert len(lines) == 3, lines
    assert lines[0] == "the thing failed: ConnectionError: refused" and caplog.records[0].exc_info
    assert lines[1].startswith("the thing still failing: 25 more failures in the last 35 s (26 since 35 s ago)")
    assert lines[2] == "the thing recovered after 26 failures over 35.0 s"


async def test_an_outage_of_the_layer_logs_one_publish_traceback_not_one_per_batch(caplog, monkeypatch) -> None:
    layer = events.get_channel_layer()

    async def refused(group: str, message: dict) -> None:
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(layer, "group_send", refused)
    with caplog.at_level(logging.INFO, logger="dashboard.events"):
        for value in range(25):
            assert not await events.publish(
                events.SAMPLES_GROUP, events.SampleBatch({"a.b": [[value + 1], [1.0]]}, {"a.b": 9})
            )
        monkeypatch.undo()
        assert await events.publish(events.SAMPLES_GROUP, events.SampleBatch({"a.b": [[100], [1.0]]}, {"a.b": 9}))
    assert len(tracebacks(caplog, "dashboard.events")) == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "dashboard.events"]
    print("\n".join(messages))
    assert len(messages) == 2 and "recovered after 25 failures" in messages[-1]


async def test_a_failing_layer_receive_logs_one_traceback(caplog, monkeypatch) -> None:
    hub = Hub()
    await hub.ensure_started()
    for task in hub._tasks:
        task.cancel()
    calls = 0

    async def broken(channel: str) -> dict:
        nonlocal calls
        calls += 1
        if calls > 3:
            await asyncio.sleep(3600)
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(hub.layer, "receive", broken)
    monkeypatch.setattr(asyncio, "sleep", _instant_sleep)
    with caplog.at_level(logging.INFO, logger="dashboard.live.hub"):
        task = asyncio.ensure_future(hub._receive_loop())
        while calls <= 3:
            await _real_sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(tracebacks(caplog, "dashboard.live.hub")) == 1
    assert hub.degraded.keys() == {"layer"}


_real_sleep = asyncio.sleep


async def _instant_sleep(delay: float, result=None):
    return await _real_sleep(0, result)


@pytest.mark.django_db(transaction=True)
async def test_a_failing_no_data_check_logs_one_traceback_then_a_recovery(caplog, monkeypatch) -> None:
    runs = 0

    async def check() -> None:
        nonlocal runs
        runs += 1
        if runs <= 5:
            raise ConnectionError("the database is unreachable")

    monkeypatch.setattr(actions, "check_nodata", check)
    monkeypatch.setattr(nodata, "NODATA_CHECK_S", 0.0)
    with caplog.at_level(logging.INFO, logger="dashboard.alerts.nodata"):
        task = asyncio.ensure_future(nodata.nodata_loop())
        while runs < 7:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(tracebacks(caplog, "dashboard.alerts.nodata")) == 1
    assert any("recovered after 5 failures" in r.getMessage() for r in caplog.records)
