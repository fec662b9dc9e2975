"""The key index's memory (dashboard/keyindex.py): what every connection shares instead of copying."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from dashboard import actions, events
from dashboard.keyindex import EVERYONE, NOBODY, Reader, entry_of, reader_of, shared_reader
from dashboard.timeutil import now_us
from dashboard.validation import Reading


@pytest.mark.django_db
def test_viewers_who_may_read_the_same_things_share_one_reader(owner, viewer, stranger, django_user_model) -> None:
    ops = Group.objects.create(name="ops")
    other = django_user_model.objects.create_user("dave", password="dave-pass-123")
    viewer.groups.add(ops)
    other.groups.add(ops)
    assert reader_of(viewer) is reader_of(other) is reader_of(viewer)
    assert reader_of(viewer) == Reader(groups=frozenset({ops.id}))
    assert reader_of(stranger) is not reader_of(viewer)
    assert reader_of(owner) is EVERYONE


def test_equal_readers_are_one_object_and_unequal_ones_stay_apart() -> None:
    first = shared_reader(Reader(metric_ids=frozenset(range(10_000))))
    assert shared_reader(Reader(metric_ids=frozenset(range(10_000)))) is first
    assert shared_reader(Reader(metric_ids=frozenset(range(9_999)))) is not first
    assert shared_reader(Reader(metric_ids=frozenset())) == NOBODY


def test_every_connection_holding_a_key_holds_the_index_s_one_string() -> None:
    key = "".join(["iot.", "dev-1.", "temp"])  # built at run time: not a constant the compiler interned
    entry = entry_of((1, key, 7, "temp", "°C", "gauge", "iot.dev-1"))
    again = entry_of((1, "".join(["iot.", "dev-1.", "temp"]), 7, "temp", "°C", "gauge", "iot.dev-1"))
    assert entry.key is again.key


@pytest.mark.django_db(transaction=True)
async def test_a_metric_this_process_creates_is_published_once_by_the_action_before_its_ingest_returns(
    monkeypatch,
) -> None:
    """storage -> keyindex.note_created -> actions.announce_metric: one metric.created, after the commit."""
    created: list[events.MetricCreated] = []
    publish_soon = events.publish_soon

    def record(group: str, event: events.Event) -> None:
        if group == events.METRICS_GROUP:
            created.append(event)
        publish_soon(group, event)

    monkeypatch.setattr(events, "publish_soon", record)
    await actions.ingest([Reading("iot.dev-9", "temp", now_us(), 1.0)])
    # Announced on the writer's loop before the commit's batch is handed back: by the time ingest answers.
    assert [(e.key, e.source_slug) for e in created] == [("iot.dev-9.temp", "iot.dev-9")]
    await actions.ingest([Reading("iot.dev-9", "temp", now_us(), 2.0)])
    assert len(created) == 1
