"""The admin reads well: plural names, distinct filter titles, rows that say what they are (#13 item 9)."""

from __future__ import annotations

import pytest
from django.test import Client

from dashboard import storage
from dashboard.models import AlertEvent, AlertRule, Metric, NotificationDelivery
from dashboard.timeutil import now_us
from dashboard.validation import Reading

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(django_user_model) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", password="root-pass-123"))
    return client


def test_the_index_names_deliveries_in_plural(staff_client: Client) -> None:
    page = staff_client.get("/admin/").content.decode()
    assert "Notification deliveries" in page and "deliverys" not in page


def test_the_metric_list_has_distinct_filter_titles(staff_client: Client) -> None:
    storage.store([Reading("lab.sensor-01", "temperature", now_us(), 20.0)])
    page = staff_client.get("/admin/dashboard/metric/").content.decode()
    assert "By metric kind" in page and "By source kind" in page


def test_a_delivery_row_says_what_was_sent_where_and_how_it_went(staff_client: Client) -> None:
    storage.store([Reading("lab.sensor-01", "temperature", now_us(), 20.0)])
    metric = Metric.objects.get(key="lab.sensor-01.temperature")
    rule = AlertRule.objects.create(name="Hot lab", metric_pattern=metric.key, condition="above", threshold=30)
    event = AlertEvent.objects.create(rule=rule, metric=metric, from_state="pending", to_state="firing", value=31.0)
    NotificationDelivery.objects.create(
        event=event, channel="webhook", target="https://ops.example/hook", status="sent", attempts=1
    )
    page = staff_client.get("/admin/dashboard/notificationdelivery/").content.decode()
    assert "Hot lab: pending → firing at" in page
    assert "webhook to https://ops.example/hook: sent after 1 attempt(s)" in str(NotificationDelivery.objects.get())
