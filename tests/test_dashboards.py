"""Dashboard pages and their JSON endpoints: who may see, edit, acknowledge and silence, and what is saved."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client

from dashboard import storage
from dashboard.models import AlertInstance, AlertRule, Dashboard, Metric, Panel, Source, UserPreference
from dashboard.timeutil import now_us
from dashboard.validation import Reading

pytestmark = pytest.mark.django_db


@pytest.fixture
def board(owner) -> Dashboard:
    board = Dashboard.objects.create(title="Servers", slug="servers", owner=owner)
    Panel.objects.create(
        dashboard=board, title="CPU", kind="timeseries", metrics=["host.*.cpu.total"], x=0, y=0, w=6, h=4
    )
    return board


@pytest.fixture
def metrics() -> dict[str, Metric]:
    open_source = Source.objects.create(slug="host.web-01", name="web-01")
    secret_source = Source.objects.create(slug="host.vault", name="vault")
    secret_source.viewer_groups.add(Group.objects.create(name="security"))
    return {
        "open": Metric.objects.create(source=open_source, name="cpu.total", key="host.web-01.cpu.total", unit="%"),
        "secret": Metric.objects.create(source=secret_source, name="cpu.total", key="host.vault.cpu.total", unit="%"),
    }


def signed_in(user, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def post(client: Client, url: str, body: dict):
    return client.post(url, json.dumps(body), content_type="application/json")


def layout(*panels: dict) -> dict:
    return {"panels": list(panels)}


PANEL = {
    "title": "Load",
    "kind": "stat",
    "metrics": ["host.web-01.load.1m"],
    "options": {"unit": ""},
    "x": 0,
    "y": 4,
    "w": 3,
    "h": 2,
}


def config_of(response) -> dict:
    html = response.content.decode()
    start = html.index('id="dashboard-config" type="application/json">') + len(
        'id="dashboard-config" type="application/json">'
    )
    return json.loads(html[start : html.index("</script>", start)])


def test_the_list_shows_only_dashboards_the_user_may_view(board, viewer, stranger) -> None:
    private = Dashboard.objects.create(title="Payroll", slug="payroll")
    group = Group.objects.create(name="finance")
    private.viewer_groups.add(group)
    viewer.groups.add(group)
    assert b"Payroll" in signed_in(viewer).get("/d/").content
    page = signed_in(stranger).get("/d/")
    assert b"Servers" in page.content and b"Payroll" not in page.content
    assert signed_in(stranger).get("/d/payroll/").status_code == 404


def test_a_signed_out_visitor_is_sent_to_the_login_page(board) -> None:
    response = Client().get("/d/servers/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_page_resolves_globs_only_to_metrics_the_viewer_may_read(board, metrics, stranger, owner) -> None:
    keys = [s["key"] for s in config_of(signed_in(stranger).get("/d/servers/"))["panels"][0]["series"]]
    assert keys == ["host.web-01.cpu.total"]
    keys = [s["key"] for s in config_of(signed_in(owner).get("/d/servers/"))["panels"][0]["series"]]
    assert keys == ["host.vault.cpu.total", "host.web-01.cpu.total"]


def test_the_page_tells_the_script_whether_the_user_may_edit(board, owner, viewer) -> None:
    assert config_of(signed_in(owner).get("/d/servers/"))["can_edit"] is True
    page = signed_in(viewer).get("/d/servers/")
    assert config_of(page)["can_edit"] is False
    assert b'id="edit-toggle"' not in page.content


def test_the_owner_adds_moves_and_removes_panels(board, owner, metrics) -> None:
    existing = board.panels.get()
    moved = {
        "id": existing.id,
        "title": "CPU now",
        "kind": "timeseries",
        "metrics": ["host.*.cpu.total"],
        "x": 6,
        "y": 0,
        "w": 6,
        "h": 5,
    }
    response = post(signed_in(owner), "/api/v1/dashboards/servers/layout", layout(moved, PANEL))
    assert response.status_code == 200, response.content
    panels = list(board.panels.order_by("y"))
    assert [(p.id == existing.id, p.title, p.x, p.w, p.h) for p in panels] == [
        (True, "CPU now", 6, 6, 5),
        (False, "Load", 0, 3, 2),
    ]
    assert response.json()["panels"][0]["series"][0]["key"] == "host.vault.cpu.total"
    response = post(signed_in(owner), "/api/v1/dashboards/servers/layout", layout(PANEL))
    assert response.status_code == 200
    assert list(board.panels.values_list("title", flat=True)) == ["Load"]


def test_a_member_of_an_editor_group_may_save(board, viewer) -> None:
    # Someone who is not staff may only add keys of sources they may read (tests/test_share_grants.py).
    storage.store([Reading("host.web-01", "load.1m", now_us(), 0.5)])
    editors = Group.objects.create(name="sre")
    board.editor_groups.add(editors)
    viewer.groups.add(editors)
    assert post(signed_in(viewer), "/api/v1/dashboards/servers/layout", layout(PANEL)).status_code == 200


def test_a_viewer_without_edit_rights_cannot_save_and_nothing_changes(board, viewer) -> None:
    response = post(signed_in(viewer), "/api/v1/dashboards/servers/layout", layout(PANEL))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert list(board.panels.values_list("title", flat=True)) == ["CPU"]


def test_a_dashboard_the_user_may_not_view_is_not_found_when_saving(board, stranger) -> None:
    board.viewer_groups.add(Group.objects.create(name="ops"))
    assert post(signed_in(stranger), "/api/v1/dashboards/servers/layout", layout(PANEL)).status_code == 404


def test_saving_needs_a_session_and_the_csrf_token(board, owner) -> None:
    assert post(Client(), "/api/v1/dashboards/servers/layout", layout(PANEL)).status_code == 401
    client = signed_in(owner, csrf=True)
    assert post(client, "/api/v1/dashboards/servers/layout", layout(PANEL)).status_code == 403
    client.get("/d/servers/")  # sets the csrftoken cookie, as the page does
    token = client.cookies["csrftoken"].value
    response = client.post(
        "/api/v1/dashboards/servers/layout",
        json.dumps(layout(PANEL)),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "pie"}, "kind"),
        ({"metrics": []}, "metrics"),
        ({"metrics": "host.*"}, "metrics"),
        ({"title": ""}, "title"),
        ({"w": 13}, "w"),
        ({"x": 10, "w": 6}, "x"),
        ({"options": {"script": "alert(1)"}}, "options"),
    ],
)
def test_a_bad_panel_is_refused_with_the_field_named(board, owner, change: dict, field: str) -> None:
    response = post(signed_in(owner), "/api/v1/dashboards/servers/layout", layout({**PANEL, **change}))
    assert response.status_code == 400
    assert response.json()["error"]["field"].startswith(f"panels[0].{field}")
    assert list(board.panels.values_list("title", flat=True)) == ["CPU"]


def test_a_bad_panel_is_named_by_its_index_in_the_layout(board, owner) -> None:
    second = {**PANEL, "title": "Broken", "x": 6, "metrics": "host.*"}
    response = post(signed_in(owner), "/api/v1/dashboards/servers/layout", layout(PANEL, second))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("bad_request", "panels[1].metrics")
    assert "list of 1-20 metric keys or globs" in error["message"]


def test_overlapping_panels_are_refused_and_nothing_changes(board, owner) -> None:
    on_top = {**PANEL, "title": "On top", "x": 1, "y": 5}
    response = post(signed_in(owner), "/api/v1/dashboards/servers/layout", layout(PANEL, on_top))
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "panels[1].y"
    assert "overlaps panel 'Load'" in response.json()["error"]["message"]
    assert list(board.panels.values_list("title", flat=True)) == ["CPU"]
    side_by_side = {**PANEL, "title": "Beside", "x": 3}
    assert post(signed_in(owner), "/api/v1/dashboards/servers/layout", layout(PANEL, side_by_side)).status_code == 200


def admin_panel_form(board: Dashboard, *panels: dict) -> dict:
    """The admin change form's POST data for a dashboard with these (new) panels."""
    data = {
        "title": board.title,
        "slug": board.slug,
        "description": "",
        "created_0": "2026-12-01",
        "created_1": "00:00:00",
        "panels-TOTAL_FORMS": str(len(panels)),
        "panels-INITIAL_FORMS": "0",
        "panels-MIN_NUM_FORMS": "0",
        "panels-MAX_NUM_FORMS": "1000",
    }
    for i, spec in enumerate(panels):
        for name in ("title", "kind", "x", "y", "w", "h"):
            data[f"panels-{i}-{name}"] = str(spec[name])
        data[f"panels-{i}-metrics"] = json.dumps(spec["metrics"])
        data[f"panels-{i}-options"] = json.dumps(spec.get("options", {}))
    return data


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", password="root-pass-123")


def test_the_admin_refuses_a_panel_whose_metrics_are_a_bare_string(superuser) -> None:
    board = Dashboard.objects.create(title="Servers", slug="servers", owner=superuser)
    client = signed_in(superuser)
    response = client.post(
        f"/admin/dashboard/dashboard/{board.pk}/change/", admin_panel_form(board, {**PANEL, "metrics": "host.*"})
    )
    assert response.status_code == 200, "the form is shown again, not saved"
    errors = response.context["inline_admin_formsets"][0].formset.forms[0].errors
    assert list(errors) == ["metrics"]
    assert "list of 1-20 metric keys or globs" in errors["metrics"][0]
    assert not board.panels.exists()
    ok = client.post(f"/admin/dashboard/dashboard/{board.pk}/change/", admin_panel_form(board, PANEL))
    assert ok.status_code == 302
    assert board.panels.get().metrics == PANEL["metrics"]


def test_the_admin_refuses_overlapping_panels_on_the_later_one(superuser) -> None:
    board = Dashboard.objects.create(title="Servers", slug="servers", owner=superuser)
    form = admin_panel_form(board, PANEL, {**PANEL, "title": "On top", "x": 2})
    response = signed_in(superuser).post(f"/admin/dashboard/dashboard/{board.pk}/change/", form)
    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][0].formset.forms[1].errors
    assert "overlaps panel 'Load'" in errors["y"][0]
    assert not board.panels.exists()


def test_a_broken_panel_in_the_database_reaches_the_page_as_an_error_and_the_others_intact(board, owner) -> None:
    Panel.objects.create(dashboard=board, title="Bad", kind="timeseries", metrics="host.*", x=6, y=0, w=6, h=4)
    panels = config_of(signed_in(owner).get("/d/servers/"))["panels"]
    by_title = {p["title"]: p for p in panels}
    assert by_title["Bad"]["kind"] == "broken" and by_title["Bad"]["error"].startswith("metrics: ")
    assert by_title["Bad"]["series"] == [] and (by_title["Bad"]["x"], by_title["Bad"]["w"]) == (6, 6)
    assert by_title["CPU"]["kind"] == "timeseries" and "error" not in by_title["CPU"]


def test_the_page_tells_each_series_its_sources_expected_interval(board, owner, metrics) -> None:
    Source.objects.filter(slug="host.web-01").update(expected_interval_s=2.0)
    series = config_of(signed_in(owner).get("/d/servers/"))["panels"][0]["series"]
    assert {s["key"]: s["interval_s"] for s in series} == {"host.vault.cpu.total": 10.0, "host.web-01.cpu.total": 2.0}


def test_the_demo_dashboards_pass_the_layout_schema(db) -> None:
    call_command("demodashboards", "--host", "web-01", stdout=__import__("io").StringIO())
    from dashboard import layout

    for board in Dashboard.objects.all():
        specs = list(board.panels.values("title", "kind", "metrics", "options", "x", "y", "w", "h"))
        layout.check_layout(specs)


def test_the_time_zone_is_remembered_per_user_and_shown_to_the_page(viewer) -> None:
    client = signed_in(viewer)
    assert b'data-timezone="browser"' in client.get("/d/").content
    assert post(client, "/api/v1/preferences", {"timezone": "Asia/Tokyo"}).json() == {"timezone": "Asia/Tokyo"}
    assert UserPreference.objects.get(user=viewer).timezone == "Asia/Tokyo"
    assert b'data-timezone="Asia/Tokyo"' in client.get("/d/").content
    response = post(client, "/api/v1/preferences", {"timezone": "Mars/Olympus"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "timezone"


def test_kiosk_mode_marks_the_page_for_a_wall_screen(board, viewer) -> None:
    assert b"kiosk" in signed_in(viewer).get("/d/servers/?kiosk=1").content.split(b"<body", 1)[1][:120]


@pytest.fixture
def firing(metrics) -> AlertInstance:
    rule = AlertRule.objects.create(name="Hot CPU", metric_pattern="host.*.cpu.total", threshold=90)
    return AlertInstance.objects.create(rule=rule, metric=metrics["open"], state="firing", last_value=97)


def test_operators_acknowledge_and_silence_an_alert(firing, owner) -> None:
    client = signed_in(owner)
    response = client.post(f"/api/v1/alerts/{firing.id}/ack")
    assert response.status_code == 200 and response.json()["acknowledged_by"] == "alice"
    response = post(client, f"/api/v1/alerts/{firing.id}/silence", {"duration_s": 3600})
    assert response.status_code == 200 and response.json()["silenced_until"] > 0
    firing.refresh_from_db()
    assert firing.acknowledged_by == owner and firing.silenced_until is not None
    assert post(client, f"/api/v1/alerts/{firing.id}/silence", {"duration_s": -5}).status_code == 400


def test_a_viewer_cannot_acknowledge_or_silence(firing, viewer) -> None:
    client = signed_in(viewer)
    assert client.post(f"/api/v1/alerts/{firing.id}/ack").status_code == 403
    assert post(client, f"/api/v1/alerts/{firing.id}/silence", {"duration_s": 60}).status_code == 403
    firing.refresh_from_db()
    assert firing.acknowledged_by is None and firing.silenced_until is None


def test_an_alert_on_a_metric_the_user_may_not_read_is_not_found(metrics, owner, stranger) -> None:
    rule = AlertRule.objects.create(name="Vault", metric_pattern="host.vault.*", threshold=1)
    hidden = AlertInstance.objects.create(rule=rule, metric=metrics["secret"], state="firing")
    # An operator by permission (not staff, who see everything) who may not read the vault.
    from django.contrib.auth.models import Permission

    stranger.user_permissions.add(Permission.objects.get(codename="change_alertinstance"))
    assert signed_in(stranger).post(f"/api/v1/alerts/{hidden.id}/ack").status_code == 404
    assert signed_in(owner).post("/api/v1/alerts/999999/ack").status_code == 404


def test_the_banner_endpoint_lists_active_alerts_the_user_may_read(firing, metrics, stranger) -> None:
    rule = AlertRule.objects.create(name="Vault", metric_pattern="host.vault.*", threshold=1)
    AlertInstance.objects.create(rule=rule, metric=metrics["secret"], state="firing")
    AlertInstance.objects.create(rule=firing.rule, metric=metrics["secret"], state="ok")
    alerts = signed_in(stranger).get("/api/v1/alerts").json()["alerts"]
    assert [(a["metric"], a["state"], a["type"]) for a in alerts] == [("host.web-01.cpu.total", "firing", "alert")]
    assert Client().get("/api/v1/alerts").status_code == 401


def test_demodashboards_is_idempotent() -> None:
    call_command("demodashboards", host="web-01")
    counts = (Dashboard.objects.count(), Panel.objects.count(), AlertRule.objects.count())
    Panel.objects.filter(title="CPU").update(w=12)  # an operator's edit survives a second run
    call_command("demodashboards", host="web-01")
    assert (Dashboard.objects.count(), Panel.objects.count(), AlertRule.objects.count()) == counts
    assert counts[0] == 4 and set(Panel.objects.values_list("kind", flat=True)) == {
        "timeseries",
        "stat",
        "table",
        "candlestick",
    }
    assert Panel.objects.get(title="CPU").w == 12
    assert any("host.web-01.cpu.total" in m for m in Panel.objects.values_list("metrics", flat=True))


def test_a_dashboard_exported_and_imported_elsewhere_is_the_same_board(tmp_path, owner) -> None:
    import io

    call_command("demodashboards", "--host", "web-01", stdout=io.StringIO())
    board = Dashboard.objects.get(slug="iot-fleet")
    before = list(board.panels.values("title", "kind", "metrics", "options", "x", "y", "w", "h"))
    path = tmp_path / "iot.json"
    call_command("exportdashboard", "iot-fleet", "--output", str(path), stdout=io.StringIO())
    exported = json.loads(path.read_text())
    assert exported["pulseboard_dashboard"] == 1 and "id" not in exported["panels"][0]
    board.delete()  # another installation: the board does not exist there
    out = io.StringIO()
    call_command("importdashboard", str(path), stdout=out)
    assert "Created dashboard 'iot-fleet' with 6 panels" in out.getvalue()
    again = Dashboard.objects.get(slug="iot-fleet")
    assert list(again.panels.values("title", "kind", "metrics", "options", "x", "y", "w", "h")) == before
    assert again.title == exported["title"]


def test_an_import_over_an_existing_slug_needs_replace_and_a_bad_file_changes_nothing(tmp_path, board) -> None:
    import io

    from django.core.management.base import CommandError

    path = tmp_path / "servers.json"
    call_command("exportdashboard", "servers", "--output", str(path), stdout=io.StringIO())
    with pytest.raises(CommandError, match="exists; import with replace"):
        call_command("importdashboard", str(path))
    data = json.loads(path.read_text())
    data["title"] = "Servers (from git)"
    data["panels"].append({**PANEL, "metrics": "host.*"})
    path.write_text(json.dumps(data))
    with pytest.raises(CommandError, match=r"panels\[1\]\.metrics: .*list of 1-20 metric keys"):
        call_command("importdashboard", str(path), "--replace")
    assert Dashboard.objects.get(slug="servers").title == "Servers"
    data["panels"][1]["metrics"] = ["host.*.load.1m"]
    path.write_text(json.dumps(data))
    call_command("importdashboard", str(path), "--replace", stdout=io.StringIO())
    board.refresh_from_db()
    assert board.title == "Servers (from git)" and board.owner is not None, "the owner stays"
    assert list(board.panels.order_by("y").values_list("title", flat=True)) == ["CPU", "Load"]


def test_a_dashboard_created_in_the_admin_belongs_to_its_creator(superuser) -> None:
    data = admin_panel_form(Dashboard(title="Lab", slug="lab"), PANEL)
    response = signed_in(superuser).post("/admin/dashboard/dashboard/add/", data)
    assert response.status_code == 302, response.content[:2000]
    board = Dashboard.objects.get(slug="lab")
    assert board.owner == superuser and board.panels.get().title == "Load"
