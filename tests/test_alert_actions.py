"""Alert actions (dashboard/actions.py) publish each change exactly once, after it is committed; views never publish."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, transaction

from dashboard import actions, events
from dashboard.alerts import cache, transports
from dashboard.models import AlertInstance, AlertRule, Metric, Source

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent
KEY = "iot.sensor-01.temperature"
# The modules that may publish: the actions, the writer (live samples) and events itself.
PUBLISHERS = {"dashboard/actions.py", "dashboard/writer.py", "dashboard/events.py"}


@pytest.fixture
def published(monkeypatch) -> list[tuple[str, str, bool]]:
    """Record (group, state, whether the database connection was inside a transaction) for each publish."""
    seen: list[tuple[str, str, bool]] = []

    async def record(group: str, event: events.Event) -> bool:
        in_transaction = await sync_to_async(lambda: connection.in_atomic_block)()
        seen.append((group, event.state, in_transaction))
        return True

    monkeypatch.setattr(events, "publish", record)
    cache.clear_cache()
    yield seen
    cache.clear_cache()


def firing_instance(**rule_fields) -> AlertInstance:
    rule = AlertRule.objects.create(name="Hot", metric_pattern=KEY, threshold=30, **rule_fields)
    source = Source.objects.create(slug="iot.sensor-01", name="sensor")
    metric = Metric.objects.create(source=source, name="temperature", key=KEY)
    return AlertInstance.objects.create(rule=rule, metric=metric, state="firing", last_value=35)


def test_disabling_a_rule_publishes_its_resolution_once_and_only_after_commit(published) -> None:
    inst = firing_instance()
    with transaction.atomic():
        inst.rule.enabled = False
        inst.rule.save()
        assert published == [], "published before the commit: a rollback would leave pages showing a lie"
    assert published == [(events.ALERTS_GROUP, "resolved", False)]
    assert AlertInstance.objects.get().state == "resolved"


def test_a_rolled_back_rule_change_publishes_nothing(published) -> None:
    inst = firing_instance()
    with pytest.raises(RuntimeError), transaction.atomic():
        inst.rule.enabled = False
        inst.rule.save()
        raise RuntimeError("the request failed after the save")
    assert published == []
    assert AlertInstance.objects.get().state == "firing"


async def test_acknowledging_publishes_once_after_the_change_is_stored(published, owner) -> None:
    inst = await sync_to_async(firing_instance)()
    event = await actions.acknowledge_alert(inst, owner)
    assert event.acknowledged_by == "alice"
    assert published == [(events.ALERTS_GROUP, "firing", False)]
    assert (await AlertInstance.objects.aget()).acknowledged_by_id == owner.pk


async def test_silencing_publishes_once_after_the_change_is_stored(published) -> None:
    inst = await sync_to_async(firing_instance)()
    event = await actions.silence_alert(inst, 600)
    assert event.silenced_until > 0
    assert published == [(events.ALERTS_GROUP, "firing", False)]


async def test_the_no_data_check_publishes_each_change_once(published) -> None:
    inst = await sync_to_async(firing_instance)(nodata_s=30)
    await AlertInstance.objects.filter(pk=inst.pk).aupdate(state="ok")
    changes = await actions.check_nodata()
    await transports.drain()
    assert [c.event.state for c in changes] == ["nodata"]
    assert published == [(events.ALERTS_GROUP, "nodata", False)]
    assert await actions.check_nodata() == [] and len(published) == 1


def test_no_view_or_alerts_module_publishes() -> None:
    """Only the actions change state and publish (Zulip's send_event_on_commit rule); views call them."""
    offenders = []
    for path in sorted((ROOT / "dashboard").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name in PUBLISHERS:
            continue
        if re.search(r"\bpublish(_soon)?\(|\bgroup_send\(", path.read_text(encoding="utf-8")):
            offenders.append(name)
    # Live delivery (dashboard/live*, fanout) forwards what was published; it never publishes itself.
    offenders = [n for n in offenders if not re.match(r"dashboard/(live|fanout|sse|consumers)", n)]
    assert not offenders, f"publish from dashboard/actions.py instead: {offenders}"
