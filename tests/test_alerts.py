"""Alert rules on the stream end to end: states stored, no-data, races between processes, notifications, operator actions.

The state machine alone, without a database: tests/test_alert_machine.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.core import mail

from dashboard import actions, events
from dashboard.alerts import cache, screen, transports
from dashboard.models import AlertEvent, AlertInstance, AlertRule, Metric, NotificationDelivery
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clock")]
KEY = "iot.sensor-01.temperature"


@pytest.fixture(autouse=True)
def _fresh_alert_cache(settings) -> Iterator[None]:
    settings.PULSEBOARD = {**settings.PULSEBOARD, "NOTIFY_BACKOFF_S": 0.05, "NOTIFY_ATTEMPTS": 3}
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    cache.clear_cache()
    yield
    cache.clear_cache()


def temp(value: float, ts: int) -> Reading:
    return Reading("iot.sensor-01", "temperature", ts, value, "°C", "gauge", "device")


async def feed(*points: tuple[float, float]) -> None:
    """Ingest (value, seconds after a base time) temperature readings, one batch each."""
    base = now_us() - 120 * US
    for value, offset_s in points:
        await actions.ingest([temp(value, base + int(offset_s * US))])


async def states() -> list[tuple[str, str]]:
    return [(e.from_state, e.to_state) async for e in AlertEvent.objects.order_by("at", "id")]


async def make_rule(**fields) -> AlertRule:
    defaults = {"name": "Hot", "metric_pattern": "iot.*.temperature", "condition": "above", "threshold": 30.0}
    return await AlertRule.objects.acreate(**{**defaults, **fields})


async def test_a_breach_held_for_the_duration_goes_pending_then_firing_then_resolved() -> None:
    await make_rule(for_s=10)
    await feed((25, 0), (31, 1), (32, 6), (33, 11), (24, 12))
    assert await states() == [("ok", "pending"), ("pending", "firing"), ("firing", "resolved")]
    inst = await AlertInstance.objects.aget()
    assert inst.state == "resolved" and inst.last_value == 24


async def test_a_breach_shorter_than_the_duration_returns_to_ok_without_firing() -> None:
    await make_rule(for_s=10)
    await feed((31, 0), (32, 5), (20, 6))
    assert await states() == [("ok", "pending"), ("pending", "ok")]


async def test_a_rule_without_duration_fires_on_the_first_breaching_sample() -> None:
    await make_rule(for_s=0)
    await feed((31, 0), (35, 1))
    assert await states() == [("ok", "firing")]


@pytest.mark.parametrize(
    ("rule", "values", "fires"),
    [
        ({"condition": "below", "threshold": 10.0}, [12, 9], True),
        ({"condition": "below", "threshold": 10.0}, [12, 11], False),
        ({"condition": "outside", "threshold": 10.0, "threshold_high": 30.0}, [20, 31], True),
        ({"condition": "outside", "threshold": 10.0, "threshold_high": 30.0}, [20, 9], True),
        ({"condition": "outside", "threshold": 10.0, "threshold_high": 30.0}, [20, 29], False),
        ({"condition": "rate", "threshold": 2.0}, [20, 25], True),  # 5 per second
        ({"condition": "rate", "threshold": 2.0}, [20, 21], False),
    ],
)
async def test_each_condition_fires_only_when_it_holds(rule: dict, values: list[float], fires: bool) -> None:
    await make_rule(**rule)
    await feed(*[(v, i) for i, v in enumerate(values)])
    assert (("ok", "firing") in await states()) is fires


async def test_a_silent_metric_goes_to_nodata_and_recovers_when_data_returns() -> None:
    await make_rule(nodata_s=30)
    await feed((20, 0))
    changes = await actions.check_nodata(now_us() + 60 * US)
    assert [c.event.state for c in changes] == ["nodata"]
    assert await actions.check_nodata(now_us() + 70 * US) == []  # already nodata: nothing stored twice
    await actions.ingest([temp(21, now_us())])
    assert await states() == [("ok", "nodata"), ("nodata", "resolved")]


async def test_a_second_process_that_lost_the_race_stores_nothing_twice() -> None:
    await make_rule()
    await feed((20, 0))
    # Another process fires the alert behind this process's back.
    await AlertInstance.objects.filter(state="ok").aupdate(state="firing")
    await feed((35, 1))
    assert await AlertEvent.objects.acount() == 0
    assert (await AlertInstance.objects.aget()).state == "firing"
    await feed((20, 2))
    assert await states() == [("firing", "resolved")]


async def test_a_change_is_published_to_every_server_process() -> None:
    await make_rule()
    layer = get_channel_layer()
    channel = await layer.new_channel("test.")
    await layer.group_add(events.ALERTS_GROUP, channel)
    await feed((35, 0))
    message = await asyncio.wait_for(layer.receive(channel), 2)
    event = events.parse(message)
    assert isinstance(event, events.AlertState)
    assert (event.metric, event.state, event.previous, event.value) == (KEY, "firing", "ok", 35)
    assert event.instance and "above 30" in event.message


class Receiver(BaseHTTPRequestHandler):
    """A webhook endpoint on loopback that fails the first `fail` requests."""

    received: list[tuple[float, dict]] = []
    fail = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Receiver.fail > 0:
            Receiver.fail -= 1
            self.send_response(503)
        else:
            Receiver.received.append((time.monotonic(), body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.received = []
    Receiver.fail = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


async def test_a_firing_alert_is_posted_to_the_webhook_after_retries_and_each_attempt_is_recorded(
    receiver: str,
) -> None:
    Receiver.fail = 2
    await make_rule(webhook_url=receiver)
    await feed((35, 0))
    await transports.drain()
    delivery = await NotificationDelivery.objects.aget()
    assert (delivery.status, delivery.attempts, delivery.channel) == ("sent", 3, "webhook")
    assert [body["state"] for _, body in Receiver.received] == ["firing"]
    assert Receiver.received[0][1]["metric"] == KEY


async def test_an_unreachable_webhook_is_recorded_as_failed_after_every_attempt() -> None:
    await make_rule(webhook_url="http://127.0.0.1:9/nothing-listens-here")
    await feed((35, 0))
    await transports.drain()
    delivery = await NotificationDelivery.objects.aget()
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert "attempt 3" in delivery.last_error


async def test_firing_and_resolving_send_an_email_each() -> None:
    await make_rule(email_to="ops@example.com\noncall@example.com")
    await feed((35, 0), (20, 1))
    await transports.drain()
    assert sorted(m.to[0] for m in mail.outbox) == [
        "oncall@example.com",
        "oncall@example.com",
        "ops@example.com",
        "ops@example.com",
    ]
    assert any("firing" in m.subject for m in mail.outbox) and any("resolved" in m.subject for m in mail.outbox)


async def test_a_silenced_alert_changes_state_but_notifies_nobody() -> None:
    rule = await make_rule(email_to="ops@example.com")
    await feed((20, 0))
    inst = await AlertInstance.objects.aget(rule=rule)
    event = await actions.silence_alert(inst, 3600)
    assert event.silenced_until > now_us()
    await feed((35, 1))
    await transports.drain()
    assert await states() == [("ok", "firing")]
    assert mail.outbox == [] and await NotificationDelivery.objects.acount() == 0


async def test_a_disabled_rule_is_not_evaluated() -> None:
    await make_rule(enabled=False)
    await feed((35, 0))
    assert await AlertEvent.objects.acount() == 0


def test_only_staff_who_may_read_the_metric_operate_alerts(owner, viewer) -> None:
    rule = AlertRule.objects.create(name="Hot", metric_pattern=KEY, threshold=30)
    from dashboard.models import Source

    source = Source.objects.create(slug="iot.sensor-01", name="sensor")
    metric = Metric.objects.create(source=source, name="temperature", key=KEY)
    inst = AlertInstance.objects.create(rule=rule, metric=metric, state="firing")
    assert screen.can_operate(owner, inst)
    assert not screen.can_operate(viewer, inst)


async def test_a_live_viewer_hears_alerts_only_on_sources_they_may_read(viewer) -> None:
    from channels.testing import WebsocketCommunicator
    from django.contrib.auth.models import Group

    from dashboard.live.websocket import LiveConsumer
    from dashboard.models import Source

    await make_rule(metric_pattern="*.temperature")
    await feed((20, 0))
    await actions.ingest([Reading("vault.sensor", "temperature", now_us() - 60 * US, 20, "°C")])
    vault = await Source.objects.aget(slug="vault.sensor")
    await sync_to_async(vault.viewer_groups.add)(await Group.objects.acreate(name="security"))
    communicator = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
    communicator.scope["user"] = viewer
    assert (await communicator.connect())[0]
    assert json.loads(await communicator.receive_from())["type"] == "hello"
    await actions.ingest([Reading("vault.sensor", "temperature", now_us(), 99, "°C")])
    await feed((35, 100))
    frame = json.loads(await communicator.receive_from(5))
    assert (frame["type"], frame["metric"]) == ("alert", KEY), "the vault's alert never reaches this viewer"
    assert await communicator.receive_nothing(0.3)
    await communicator.disconnect()


async def test_a_notification_left_pending_by_a_stopped_process_is_sent_by_another() -> None:
    from datetime import timedelta

    from django.utils import timezone

    rule = await make_rule(email_to="ops@example.com")
    await feed((20, 0))
    inst = await AlertInstance.objects.select_related("metric").aget(rule=rule)
    event = await AlertEvent.objects.acreate(
        rule=rule, metric=inst.metric, from_state="ok", to_state="firing", value=35
    )
    old = timezone.now() - timedelta(seconds=transports.stale_after_s() + 1)
    stale = await NotificationDelivery.objects.acreate(
        event=event, channel="email", target="ops@example.com", created=old
    )
    fresh = await NotificationDelivery.objects.acreate(event=event, channel="email", target="new@example.com")
    assert await transports.retry_stale_deliveries() == [stale.id]
    assert await transports.retry_stale_deliveries() == [], "claimed once"
    await transports.drain()
    assert [m.to for m in mail.outbox] == [["ops@example.com"]]
    assert (await NotificationDelivery.objects.aget(pk=stale.id)).status == "sent"
    assert (await NotificationDelivery.objects.aget(pk=fresh.id)).status == "pending"


async def test_stale_rules_serve_while_they_reload_in_the_background_and_a_change_here_applies_at_once() -> None:
    """The writer evaluates rules after every commit; a reload there was a latency spike every 5 s."""
    rule = await make_rule(threshold=30.0)
    assert [r.threshold for r in await cache.ensure_rules()] == [30.0]
    # Another process's admin edits the rule (no signal here), and the cache goes stale.
    await AlertRule.objects.filter(pk=rule.pk).aupdate(threshold=40.0)
    cache._cache.loaded_at -= cache.RULES_REFRESH_S + 1
    assert [r.threshold for r in await cache.ensure_rules()] == [30.0]  # served at once, not awaited
    await transports.drain()
    assert [r.threshold for r in await cache.ensure_rules()] == [40.0]  # the reload is in
    rule.threshold = 50.0
    await rule.asave()  # a change made in this process: the next evaluation loads it first
    assert [r.threshold for r in await cache.ensure_rules()] == [50.0]


# --- Rules switched off: their alerts end, notify and reach open pages --------------


@pytest.fixture
def admin_client(django_user_model):
    from django.test import Client

    user = django_user_model.objects.create_superuser("root", password="root-pass-123")
    client = Client()
    client.force_login(user)
    return client


async def open_live_socket():
    from channels.testing import WebsocketCommunicator
    from django.contrib.auth import get_user_model

    from dashboard.live.websocket import LiveConsumer

    communicator = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
    communicator.scope["user"] = await get_user_model().objects.aget(username="root")
    assert (await communicator.connect())[0]
    assert json.loads(await communicator.receive_from())["type"] == "hello"
    return communicator


async def next_alert_frame(communicator) -> dict:
    while True:
        frame = json.loads(await communicator.receive_from(5))
        if frame["type"] == "alert":
            return frame


def rule_form(rule: AlertRule, **changes) -> dict:
    """The admin change form of a rule as the browser posts it (the instances inline is read-only)."""
    count = AlertInstance.objects.filter(rule=rule).count()
    data = {
        "name": rule.name,
        "metric_pattern": rule.metric_pattern,
        "condition": rule.condition,
        "threshold": rule.threshold,
        "threshold_high": "",
        "for_s": rule.for_s,
        "nodata_s": rule.nodata_s,
        "severity": rule.severity,
        "webhook_url": rule.webhook_url,
        "email_to": rule.email_to,
        "created_0": rule.created.strftime("%Y-%m-%d"),
        "created_1": rule.created.strftime("%H:%M:%S"),
        "instances-TOTAL_FORMS": count,
        "instances-INITIAL_FORMS": count,
        "instances-MIN_NUM_FORMS": 0,
        "instances-MAX_NUM_FORMS": 1000,
    }
    for index, inst in enumerate(AlertInstance.objects.filter(rule=rule).order_by("pk")):
        data[f"instances-{index}-id"] = inst.pk
        data[f"instances-{index}-rule"] = rule.pk
    if rule.enabled:
        data["enabled"] = "on"
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


async def firing_rule(receiver: str) -> AlertRule:
    rule = await make_rule(webhook_url=receiver)
    await feed((35, 0))
    await transports.drain()
    assert [body["state"] for _, body in Receiver.received] == ["firing"]
    return rule


async def test_disabling_a_firing_rule_in_the_admin_resolves_notifies_and_tells_open_pages(
    receiver: str, admin_client
) -> None:
    rule = await firing_rule(receiver)
    communicator = await open_live_socket()
    try:
        data = await sync_to_async(rule_form)(rule)
        del data["enabled"]
        response = await sync_to_async(admin_client.post)(f"/admin/dashboard/alertrule/{rule.pk}/change/", data)
        assert response.status_code == 302, response.content.decode()[:3000]
        frame = await next_alert_frame(communicator)
        assert (frame["metric"], frame["state"], frame["previous"]) == (KEY, "resolved", "firing")
        assert "rule disabled" in frame["message"]
    finally:
        await communicator.disconnect()
    await transports.drain()
    assert (await AlertInstance.objects.aget()).state == "resolved"
    assert await states() == [("ok", "firing"), ("firing", "resolved")]
    last = await AlertEvent.objects.order_by("-at", "-id").afirst()
    assert "rule disabled" in last.message
    assert [body["state"] for _, body in Receiver.received] == ["firing", "resolved"]
    assert "rule disabled" in Receiver.received[-1][1]["message"]
    assert (await NotificationDelivery.objects.filter(event=last).aget()).status == "sent"
    # The stream no longer fires it, here or in a process that has not yet seen the change.
    await feed((40, 1))
    assert (await AlertInstance.objects.aget()).state == "resolved"


async def test_deleting_a_firing_rule_in_the_admin_resolves_notifies_and_tells_open_pages(
    receiver: str, admin_client
) -> None:
    rule = await firing_rule(receiver)
    communicator = await open_live_socket()
    try:
        response = await sync_to_async(admin_client.post)(
            f"/admin/dashboard/alertrule/{rule.pk}/delete/", {"post": "yes"}
        )
        assert response.status_code == 302, response.content.decode()[:3000]
        frame = await next_alert_frame(communicator)
        assert (frame["metric"], frame["state"], frame["previous"]) == (KEY, "resolved", "firing")
        assert "rule deleted" in frame["message"]
    finally:
        await communicator.disconnect()
    await transports.drain()
    assert not await AlertRule.objects.aexists() and not await AlertInstance.objects.aexists()
    assert [body["state"] for _, body in Receiver.received] == ["firing", "resolved"]
    assert "rule deleted" in Receiver.received[-1][1]["message"]


def test_disabling_a_rule_from_a_script_notifies_before_it_returns(receiver: str) -> None:
    from asgiref.sync import async_to_sync

    rule = async_to_sync(firing_rule)(receiver)
    rule.enabled = False
    rule.save()  # no server loop here: the notification is sent before save() returns
    assert AlertInstance.objects.get().state == "resolved"
    assert [body["state"] for _, body in Receiver.received] == ["firing", "resolved"]


async def test_a_rule_disabled_without_signals_is_resolved_by_the_periodic_sweep(receiver: str) -> None:
    rule = await firing_rule(receiver)
    await AlertRule.objects.filter(pk=rule.pk).aupdate(enabled=False)  # QuerySet.update sends no signal
    changes = await actions.retire_disabled_rules()
    await transports.drain()
    assert [c.event.state for c in changes] == ["resolved"]
    assert (await AlertInstance.objects.aget()).state == "resolved"
    assert [body["state"] for _, body in Receiver.received] == ["firing", "resolved"]
    assert await actions.retire_disabled_rules() == []


async def test_a_process_that_has_not_seen_the_rule_disabled_yet_does_not_fire_it() -> None:
    rule = await make_rule()
    await feed((20, 0))
    # Disabled in another process: this one's cached rules still hold it for up to RULES_REFRESH_S.
    await AlertRule.objects.filter(pk=rule.pk).aupdate(enabled=False)
    assert [r.id for r in await cache.ensure_rules()] == [rule.pk]
    await feed((35, 1))
    assert await AlertEvent.objects.acount() == 0
    assert (await AlertInstance.objects.aget()).state == "ok"


async def test_the_admin_action_disabling_several_rules_resolves_their_alerts(receiver: str, admin_client) -> None:
    rule = await firing_rule(receiver)
    other = await make_rule(name="Cold", condition="below", threshold=0.0)
    response = await sync_to_async(admin_client.post)(
        "/admin/dashboard/alertrule/",
        {"action": "disable_rules", "_selected_action": [rule.pk, other.pk], "index": 0},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    await transports.drain()
    assert not await AlertRule.objects.filter(enabled=True).aexists()
    assert (await AlertInstance.objects.aget(rule=rule)).state == "resolved"
    assert [body["state"] for _, body in Receiver.received] == ["firing", "resolved"]
