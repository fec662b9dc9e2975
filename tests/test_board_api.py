"""The dashboards JSON API (dashboard/pages/dashboards.py): create, rename, duplicate, delete, export, import, variables."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard import layout, panels
from dashboard.models import Dashboard, Metric, Panel, Source

pytestmark = pytest.mark.django_db


def grant(user, *codenames: str):
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="dashboard", codename__in=codenames))
    return type(user).objects.get(pk=user.pk)  # a fresh instance: the permission cache is per instance


def client_of(user, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def send(client: Client, method: str, url: str, body=None):
    data = json.dumps(body) if body is not None else ""
    return getattr(client, method)(url, data, content_type="application/json")


@pytest.fixture
def sensors() -> dict[str, Metric]:
    out = {}
    for slug in ("iot.boiler-1", "iot.boiler-2"):
        source = Source.objects.create(slug=slug, name=slug)
        out[slug] = Metric.objects.create(source=source, name="temperature", key=f"{slug}.temperature", unit="°C")
    vault = Source.objects.create(slug="iot.vault", name="vault")
    vault.viewer_groups.add(Group.objects.create(name="security"))
    out["iot.vault"] = Metric.objects.create(source=vault, name="temperature", key="iot.vault.temperature")
    return out


@pytest.fixture
def board(owner) -> Dashboard:
    board = Dashboard.objects.create(
        title="Boilers", slug="boilers", owner=owner, variables=[{"name": "device", "glob": "iot.*"}]
    )
    Panel.objects.create(
        dashboard=board,
        title="Temperature",
        metrics=["iot.$device.temperature"],
        options={"unit": "°C", "thresholds": [{"value": 80, "color": "#f3616d"}]},
        x=0,
        y=0,
        w=6,
        h=4,
    )
    return board


def assert_error(response, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    if field is not None:
        assert error["field"] == field


# --- create -------------------------------------------------------------------------


def test_a_user_without_the_add_permission_may_not_create_a_dashboard(viewer) -> None:
    response = send(client_of(viewer), "post", "/api/v1/dashboards", {"title": "Mine"})
    assert_error(response, 403, "forbidden")
    assert not Dashboard.objects.exists()


def test_a_dashboard_created_in_the_page_gets_its_creator_as_owner(viewer) -> None:
    viewer = grant(viewer, "add_dashboard")
    response = send(client_of(viewer), "post", "/api/v1/dashboards", {"title": "Boiler room"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["slug"] == "boiler-room" and body["url"] == "/d/boiler-room/"
    assert body["owner"] == "bob" and body["can_rename"] and body["can_delete"]
    assert Dashboard.objects.get(slug="boiler-room").owner == viewer


def test_a_second_board_of_the_same_title_gets_its_own_slug_and_a_taken_slug_is_refused(owner) -> None:
    client = client_of(owner)
    assert send(client, "post", "/api/v1/dashboards", {"title": "Ops"}).json()["slug"] == "ops"
    assert send(client, "post", "/api/v1/dashboards", {"title": "Ops"}).json()["slug"] == "ops-2"
    assert_error(send(client, "post", "/api/v1/dashboards", {"title": "X", "slug": "ops"}), 400, "bad_request", "slug")
    assert_error(send(client, "post", "/api/v1/dashboards", {"title": "  "}), 400, "bad_request", "title")


def test_the_list_page_offers_new_dashboard_only_to_who_may_add(owner, viewer) -> None:
    assert b'id="new-board"' in client_of(owner).get("/d/").content
    assert b'id="new-board"' not in client_of(viewer).get("/d/").content


def test_writes_need_the_csrf_token(owner, board) -> None:
    client = client_of(owner, csrf=True)
    assert client.patch("/api/v1/dashboards/boilers", "{}", content_type="application/json").status_code == 403
    assert Dashboard.objects.get(slug="boilers").title == "Boilers"


# --- rename, duplicate, delete ------------------------------------------------------


def test_an_editor_renames_a_board_and_a_viewer_may_not(owner, viewer, board) -> None:
    assert_error(send(client_of(viewer), "patch", "/api/v1/dashboards/boilers", {"title": "Mine"}), 403, "forbidden")
    response = send(client_of(owner), "patch", "/api/v1/dashboards/boilers", {"title": "Boiler room"})
    assert response.status_code == 200 and response.json()["title"] == "Boiler room"
    assert Dashboard.objects.get(slug="boilers").title == "Boiler room"
    assert_error(send(client_of(owner), "patch", "/api/v1/dashboards/boilers", {"title": ""}), 400, "bad_request")


def test_a_board_the_user_may_not_view_is_not_found(stranger, board) -> None:
    board.viewer_groups.add(Group.objects.create(name="ops"))
    assert_error(send(client_of(stranger), "patch", "/api/v1/dashboards/boilers", {"title": "x"}), 404, "not_found")
    assert_error(client_of(stranger).delete("/api/v1/dashboards/boilers"), 404, "not_found")


def test_a_duplicate_copies_panels_variables_and_groups_and_belongs_to_the_copier(owner, viewer, board) -> None:
    group = Group.objects.create(name="ops")
    board.viewer_groups.add(group)
    viewer.groups.add(group)
    viewer = grant(viewer, "add_dashboard")
    response = send(client_of(viewer), "post", "/api/v1/dashboards/boilers/duplicate", {})
    assert response.status_code == 201, response.content
    copy = Dashboard.objects.get(slug=response.json()["slug"])
    assert copy.title == "Boilers (copy)" and copy.owner == viewer
    assert copy.variables == board.variables
    assert list(copy.viewer_groups.all()) == [group]  # never shown to more people than the original
    assert [(p.title, p.metrics, p.options) for p in copy.panels.all()] == [
        (p.title, p.metrics, p.options) for p in board.panels.all()
    ]


def test_delete_takes_the_owner_or_the_delete_permission(owner, viewer, board) -> None:
    editors = Group.objects.create(name="editors")
    board.editor_groups.add(editors)
    viewer.groups.add(editors)
    assert_error(client_of(viewer).delete("/api/v1/dashboards/boilers"), 403, "forbidden")
    assert Dashboard.objects.filter(slug="boilers").exists()
    viewer = grant(viewer, "delete_dashboard")
    response = client_of(viewer).delete("/api/v1/dashboards/boilers")
    assert response.status_code == 200 and response.json() == {"deleted": "boilers"}
    assert not Dashboard.objects.filter(slug="boilers").exists()
    assert not Panel.objects.exists()


def test_the_owner_deletes_their_own_board(owner, board) -> None:
    assert client_of(owner).delete("/api/v1/dashboards/boilers").status_code == 200


# --- export and import --------------------------------------------------------------


def test_export_then_import_gives_the_same_board(owner, board) -> None:
    response = client_of(owner).get("/api/v1/dashboards/boilers/export")
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="boilers.json"'
    exported = json.loads(response.content)
    assert exported["variables"] == [{"name": "device", "glob": "iot.*"}]
    assert client_of(owner).delete("/api/v1/dashboards/boilers").status_code == 200
    response = send(client_of(owner), "post", "/api/v1/dashboards/import", exported)
    assert response.status_code == 201, response.content
    again = Dashboard.objects.get(slug="boilers")
    assert again.owner == owner
    assert panels.export_board(again) == exported


def test_an_import_is_checked_whole_and_a_refusal_names_the_panel_field(owner, board) -> None:
    exported = panels.export_board(board)
    exported["slug"] = "other"
    exported["panels"].append({**exported["panels"][0], "y": 4, "metrics": "iot.*"})
    response = send(client_of(owner), "post", "/api/v1/dashboards/import", exported)
    assert_error(response, 400, "bad_request", "panels[1].metrics")
    assert not Dashboard.objects.filter(slug="other").exists()


def test_an_import_over_an_existing_slug_needs_replace_and_edit_rights(owner, viewer, board) -> None:
    exported = panels.export_board(board)
    exported["title"] = "Replaced"
    assert_error(send(client_of(owner), "post", "/api/v1/dashboards/import", exported), 400, "bad_request", "slug")
    viewer = grant(viewer, "add_dashboard")
    response = send(client_of(viewer), "post", "/api/v1/dashboards/import?replace=1", exported)
    assert_error(response, 403, "forbidden")
    response = send(client_of(owner), "post", "/api/v1/dashboards/import?replace=1", exported)
    assert response.status_code == 200 and Dashboard.objects.get(slug="boilers").title == "Replaced"


def test_an_import_naming_an_undeclared_variable_is_refused(owner, board) -> None:
    exported = panels.export_board(board)
    exported["slug"] = "other"
    exported["variables"] = []
    assert_error(send(client_of(owner), "post", "/api/v1/dashboards/import", exported), 400, "bad_request")
    assert send(client_of(owner), "post", "/api/v1/dashboards/import", exported).json()["error"]["field"] == (
        "panels[0].metrics"
    )


# --- variables ----------------------------------------------------------------------


def keys_of(config: dict) -> list[str]:
    return [s["key"] for s in config["panels"][0]["series"]]


def test_a_variable_lists_the_sources_the_reader_may_read_and_all_is_the_glob(viewer, board, sensors) -> None:
    config = panels.dashboard_config(board, viewer)
    (var,) = config["variables"]
    assert var["values"] == ["boiler-1", "boiler-2"]  # not the vault: bob may not read it
    assert var["current"] == "All" and var["pattern"] == "*"
    assert keys_of(config) == ["iot.boiler-1.temperature", "iot.boiler-2.temperature"]
    assert config["panels"][0]["metrics"] == ["iot.$device.temperature"]  # the editor keeps the pattern


def test_a_chosen_value_narrows_the_panels_and_an_unreadable_one_is_all(viewer, board, sensors) -> None:
    assert keys_of(panels.dashboard_config(board, viewer, {"device": "boiler-2"})) == ["iot.boiler-2.temperature"]
    config = panels.dashboard_config(board, viewer, {"device": "vault"})
    assert config["variables"][0]["current"] == "All"
    assert "iot.vault.temperature" not in keys_of(config)


def test_the_page_takes_the_choice_from_the_url(viewer, board, sensors) -> None:
    response = client_of(viewer).get("/d/boilers/?var-device=boiler-1&range=24h")
    config = json.loads(
        response.content.decode().split('id="dashboard-config" type="application/json">')[1].split("<")[0]
    )
    assert config["variables"][0]["current"] == "boiler-1"
    assert keys_of(config) == ["iot.boiler-1.temperature"]


def test_a_share_link_expands_variables_within_its_own_grant(owner, viewer, board, sensors) -> None:
    from dashboard.models import ShareLink

    link, secret = ShareLink.issue(board, "wall", created_by=viewer)
    config = panels.share_config(board, link.principal(), secret, {"device": "boiler-1"})
    assert keys_of(config) == ["iot.boiler-1.temperature"]
    # All, through the link of a creator who may not read the vault: the vault stays out.
    config = panels.share_config(board, link.principal(), secret)
    assert keys_of(config) == ["iot.boiler-1.temperature", "iot.boiler-2.temperature"]
    assert config["variables"][0]["values"] == ["boiler-1", "boiler-2"]
    response = Client().get(f"/share/{secret}/?var-device=boiler-2")
    assert b"iot.boiler-2.temperature" in response.content and b"iot.boiler-1.temperature" not in response.content


def test_the_layout_api_saves_variables_and_refuses_an_undeclared_one(owner, board, sensors) -> None:
    panel = {**panels.export_board(board)["panels"][0], "metrics": ["iot.$room.temperature"]}
    response = send(client_of(owner), "post", "/api/v1/dashboards/boilers/layout", {"panels": [panel]})
    assert_error(response, 400, "bad_request", "panels[0].metrics")
    assert "$room" in response.json()["error"]["message"]
    body = {"panels": [panel], "variables": [{"name": "room", "glob": "iot.*", "label": "Room"}]}
    response = send(client_of(owner), "post", "/api/v1/dashboards/boilers/layout", body)
    assert response.status_code == 200, response.content
    assert Dashboard.objects.get(slug="boilers").variables == [{"name": "room", "glob": "iot.*", "label": "Room"}]
    assert response.json()["variables"][0]["values"] == ["boiler-1", "boiler-2", "vault"]  # alice is staff


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ([{"name": "1x", "glob": "iot.*"}], "variables[0].name"),
        ([{"name": "d", "glob": "iot.boiler"}], "variables[0].glob"),
        ([{"name": "d", "glob": "iot.*"}, {"name": "d", "glob": "host.*"}], "variables[1].name"),
        ([{"name": "d", "glob": "iot.*", "extra": 1}], "variables[0].extra"),
        ("iot.*", "variables"),
    ],
)
def test_bad_variables_are_refused_naming_the_field(variables, field: str) -> None:
    with pytest.raises(layout.LayoutError) as caught:
        layout.check_variables(variables)
    assert caught.value.field == field


# --- the panel options of the editor ------------------------------------------------


def test_the_editor_options_pass_the_one_schema() -> None:
    spec = {
        "title": "T",
        "metrics": ["iot.*.temperature"],
        "options": {
            "unit": "°C",
            "decimals": 1,
            "min": 0,
            "max": 100,
            "thresholds": [{"value": 80, "color": "#f3616d"}],
            "colors": ["#ff0000", "#00ff00"],
            "legend": {"show": False, "values": ["latest", "max"]},
        },
    }
    checked = layout.check_panel(spec)
    assert layout.as_fields(checked)["options"] == spec["options"]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"min": 10, "max": 5}, "panels[0].options.min"),
        ({"legend": {"values": ["latest", "latest"]}}, "panels[0].options.legend.values"),
        ({"legend": {"values": ["median"]}}, "panels[0].options.legend.values[0]"),
        ({"colors": "red"}, "panels[0].options.colors"),
        ({"decimals": 11}, "panels[0].options.decimals"),
    ],
)
def test_bad_panel_options_are_refused_naming_the_field(options: dict, field: str) -> None:
    with pytest.raises(layout.LayoutError) as caught:
        layout.check_panel({"title": "T", "metrics": ["a.b"], "options": options})
    assert caught.value.field == field


def test_the_admin_refuses_bad_variables_naming_the_field(owner, board) -> None:
    from dashboard.admin import DashboardForm

    data = {
        "title": "Boilers",
        "slug": "boilers-2",
        "created": "2026-01-01 00:00:00",
        "variables": '[{"name": "d", "glob": "iot"}]',
    }
    form = DashboardForm(data=data)
    assert not form.is_valid()
    assert "variables[0].glob" in form.errors["variables"][0]
    form = DashboardForm(data={**data, "variables": '[{"name": "d", "glob": "iot.*"}]'})
    assert form.is_valid(), form.errors


@pytest.mark.parametrize("chosen", [["boiler-1"], "boiler-1", 7, {"device": ["x"]}, {"device": None}])
def test_a_hostile_choice_in_a_layout_post_is_all_not_an_error(owner, board, sensors, chosen) -> None:
    panel = panels.export_board(board)["panels"][0]
    response = send(
        client_of(owner), "post", "/api/v1/dashboards/boilers/layout", {"panels": [panel], "chosen": chosen}
    )
    assert response.status_code == 200, response.content
    assert response.json()["variables"][0]["current"] == "All"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
BOARD_KEYS = ["slug", "title", "panels", "variables", "description", "pulseboard_dashboard"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.dictionaries(st.sampled_from(BOARD_KEYS), JSON, max_size=6)
    | st.fixed_dictionaries(
        {"slug": st.just("fuzz"), "title": st.just("F"), "panels": st.lists(JSON, max_size=3), "variables": JSON}
    )
)
def test_a_hostile_board_file_is_refused_in_the_one_error_shape_and_writes_nothing(owner, data) -> None:
    response = send(client_of(owner), "post", "/api/v1/dashboards/import", data)
    assert response.status_code < 500, response.content
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"code", "message"}
        assert not Dashboard.objects.filter(slug=data.get("slug") if isinstance(data.get("slug"), str) else "").exists()
    else:
        Dashboard.objects.filter(slug=response.json()["slug"]).delete()


@settings(max_examples=200, deadline=None)
@given(variables=JSON)
def test_hostile_variables_raise_only_layout_errors(variables) -> None:
    try:
        checked = layout.check_variables(variables)
    except layout.LayoutError as exc:
        assert exc.field.startswith("variables")
    else:
        assert all(v.all_value() for v in checked)


def test_an_editor_may_not_reach_a_restricted_source_through_a_variable(viewer, board, sensors) -> None:
    editors = Group.objects.create(name="editors")
    board.editor_groups.add(editors)
    viewer.groups.add(editors)
    spec = {"title": "Vault", "metrics": ["iot.$room.humidity"], "x": 0, "y": 4}
    body = {
        "panels": [*panels.export_board(board)["panels"], spec],
        "variables": [*board.variables, {"name": "room", "glob": "iot.*"}],
    }
    response = send(client_of(viewer), "post", "/api/v1/dashboards/boilers/layout", body)
    assert_error(response, 403, "pattern_not_allowed", "panels[1].metrics[0]")
    # Moving the panel someone with more rights made (iot.$device.temperature over iot.*) is still allowed.
    moved = {**panels.export_board(board)["panels"][0], "x": 6}
    response = send(client_of(viewer), "post", "/api/v1/dashboards/boilers/layout", {"panels": [moved]})
    assert response.status_code == 200, response.content


def test_an_import_may_not_reach_a_restricted_source(viewer, sensors) -> None:
    viewer = grant(viewer, "add_dashboard")
    data = {
        "slug": "sneaky",
        "title": "Sneaky",
        "variables": [{"name": "d", "glob": "iot.*"}],
        "panels": [{"title": "All", "metrics": ["iot.$d.temperature"]}],
    }
    response = send(client_of(viewer), "post", "/api/v1/dashboards/import", data)
    assert_error(response, 403, "pattern_not_allowed", "panels[0].metrics[0]")
    assert not Dashboard.objects.filter(slug="sneaky").exists()
    data["variables"][0]["glob"] = "iot.boiler-*"
    assert send(client_of(viewer), "post", "/api/v1/dashboards/import", data).status_code == 201
