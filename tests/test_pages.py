from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from dashboard.admin import CappedCountPaginator
from dashboard.models import Metric, MinuteRollup, Sample, Source

pytestmark = pytest.mark.django_db


@pytest.fixture
def temperature() -> Metric:
    source = Source.objects.create(slug="iot.sensor-01", name="Sensor 1", kind=Source.Kind.DEVICE)
    return Metric.objects.create(
        source=source, name="temperature", key="iot.sensor-01.temperature", unit="°C", last_value=21.5
    )


def test_pages_send_strangers_to_the_login_page(client: Client) -> None:
    for url in ("/", "/sources/iot.sensor-01/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_overview_lists_sources_with_their_latest_values(client: Client, viewer, temperature: Metric) -> None:
    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert "Sensor 1" in page and 'data-key="iot.sensor-01.temperature"' in page and "21.5" in page


def test_the_source_page_configures_one_chart_per_metric(client: Client, viewer, temperature: Metric) -> None:
    client.force_login(viewer)
    page = client.get("/sources/iot.sensor-01/").content.decode()
    assert '<script id="metrics-config" type="application/json">' in page
    assert "iot.sensor-01.temperature" in page


def test_the_metrics_api_lists_only_what_the_user_may_read(client: Client, viewer, temperature: Metric) -> None:
    assert client.get("/api/v1/metrics").status_code == 401
    client.force_login(viewer)
    body = client.get("/api/v1/metrics").json()
    assert [m["key"] for m in body["metrics"]] == ["iot.sensor-01.temperature"]


def test_health_endpoints_answer(client: Client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("table", ["sample", "minuterollup"])
def test_the_sample_and_rollup_admins_never_count_the_whole_table(
    client: Client, admin_user, temperature: Metric, table: str
) -> None:
    Sample.objects.bulk_create(Sample(metric=temperature, ts=i, value=float(i)) for i in range(50))
    MinuteRollup.objects.bulk_create(
        MinuteRollup(
            metric=temperature,
            bucket=i * 60_000_000,
            min=1,
            max=1,
            sum=1,
            count=1,
            first=1,
            first_ts=0,
            last=1,
            last_ts=0,
        )
        for i in range(50)
    )
    client.force_login(admin_user)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/admin/dashboard/{table}/")
    assert response.status_code == 200
    counts = [
        q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper() and f"dashboard_{table}" in q["sql"]
    ]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts
    assert CappedCountPaginator.CAP == 10_000


def test_admin_lists_render_for_staff(client: Client, admin_user, temperature: Metric) -> None:
    client.force_login(admin_user)
    for url in (
        "/admin/dashboard/source/",
        "/admin/dashboard/metric/",
        "/admin/dashboard/agenttoken/",
        "/admin/dashboard/sample/?q=iot",
        "/admin/dashboard/minuterollup/?q=iot",
        "/admin/dashboard/tenminuterollup/",
        "/admin/dashboard/hourrollup/",
    ):
        assert client.get(url).status_code == 200, url


def test_pages_have_a_favicon_and_announce_the_connection_state(client: Client, viewer) -> None:
    from pathlib import Path

    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert 'rel="icon" href="/static/dashboard/favicon.svg"' in page
    assert 'id="conn-state"' in page and 'role="status"' in page and 'aria-live="polite"' in page
    favicon = Path(__file__).resolve().parent.parent / "dashboard" / "static" / "dashboard" / "favicon.svg"
    assert favicon.read_text().startswith("<svg")
