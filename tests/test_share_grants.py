"""Issue #12 item 11: nobody widens a share link beyond their own rights.

An editor may only add panel patterns within the sources the editor may
read (layout API and admin), and a share link serves only what its creator
may read at the time of use: page, series endpoint and live socket.
"""

from __future__ import annotations

import json
import time

import pytest
from asgiref.sync import sync_to_async
from django.contrib.admin.sites import site as admin_site
from django.contrib.auth.models import Group
from django.test import Client, RequestFactory

from dashboard import actions, storage
from dashboard.live import client as live_client
from dashboard.models import Dashboard, Panel, ShareLink, Source
from dashboard.permissions import can_match_under, literal_prefix
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading
from tests.test_permissions import body_text, data_keys, frames_until, socket, subscribe_and_collect

pytestmark = pytest.mark.django_db
TRANSACTIONAL = pytest.mark.django_db(transaction=True)


@pytest.fixture
def vault(viewer) -> Group:
    """The vault group: bob (viewer) is in it; charlie (stranger) is not."""
    group = Group.objects.create(name="vault")
    viewer.groups.add(group)
    return group


@pytest.fixture
def metrics(vault: Group) -> None:
    """A public lab sensor, and secret.vault (gold, silver) readable only by the vault group."""
    now = now_us()
    readings = [Reading("lab.sensor-01", "temperature", now - i * 10 * US, 20.0 + i) for i in range(5)]
    readings += [
        Reading("secret.vault", name, now - i * 10 * US, 1000.0 + i) for name in ("gold", "silver") for i in range(5)
    ]
    storage.store(readings)
    Source.objects.get(slug="secret.vault").viewer_groups.add(vault)


@pytest.fixture
def board(stranger, metrics) -> Dashboard:
    """A dashboard charlie (no vault access) owns and so may edit."""
    board = Dashboard.objects.create(title="Lobby", slug="lobby", owner=stranger)
    Panel.objects.create(dashboard=board, title="Lab", metrics=["lab.sensor-01.temperature"])
    return board


def post_layout(client: Client, slug: str, panels: list[dict]):
    return client.post(
        f"/api/v1/dashboards/{slug}/layout", json.dumps({"panels": panels}), content_type="application/json"
    )


def current_panels(board: Dashboard) -> list[dict]:
    return [
        {"id": p.id, "title": p.title, "metrics": p.metrics, "x": p.x, "y": p.y, "w": p.w, "h": p.h}
        for p in board.panels.all()
    ]


# --- The glob automaton ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "prefix", "expected"),
    [
        ("secret.*", "secret.vault.", True),
        ("secret.vault.gold", "secret.vault.", True),
        ("secret.vault", "secret.vault.", False),  # the source slug alone is no key of it
        ("lab.*", "lab.sensor-01.", True),
        ("lab.sensor-01.*", "lab.", True),
        ("lab.sensor-01.*", "labx.", False),
        ("*", "anything.", True),
        ("s?cret.*", "secret.vault.", True),
        ("[rs]ecret.*", "secret.vault.", True),
        ("[!s]ecret.*", "secret.vault.", False),
        ("lab.*.temperature", "lab.secret.", True),
        ("lab.sensor-0[1-3].*", "lab.sensor-04.", False),
        ("lab.sensor-0[1-3].*", "lab.sensor-02.", True),
        ("lab.[oops", "lab.[oops.", False),
    ],
)
def test_the_glob_automaton_knows_which_sources_a_pattern_can_reach(pattern: str, prefix: str, expected: bool) -> None:
    assert can_match_under(pattern, prefix) is expected


def test_the_literal_prefix_stops_at_the_first_wildcard() -> None:
    assert literal_prefix("lab.sensor-01.*") == "lab.sensor-01."
    assert literal_prefix("lab.?x") == "lab."
    assert literal_prefix("[ab].c") == ""
    assert literal_prefix("plain.key") == "plain.key"


# --- Layout API ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "secret.*",  # the attack of the issue
        "secret.vault.gold",
        "secret.vault.*",
        "s*",  # would match secret.vault through a glob
        "*",
        "[a-z]*.temperature",  # could match secret.vault.<anything>.temperature
    ],
)
def test_an_editor_cannot_add_a_pattern_beyond_the_sources_the_editor_may_read(
    client: Client, stranger, board: Dashboard, pattern: str
) -> None:
    client.force_login(stranger)
    panels = [*current_panels(board), {"title": "Gold", "metrics": ["lab.sensor-01.temperature", pattern], "y": 4}]
    response = post_layout(client, "lobby", panels)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "pattern_not_allowed"
    assert error["field"] == "panels[1].metrics[1]"
    assert "'Gold'" in error["message"] and repr(pattern) in error["message"]
    assert list(board.panels.values_list("title", flat=True)) == ["Lab"]  # nothing saved


def test_an_editor_can_add_patterns_within_readable_sources(client: Client, stranger, board: Dashboard) -> None:
    client.force_login(stranger)
    panels = [
        *current_panels(board),
        {"title": "All lab", "metrics": ["lab.sensor-01.*", "lab.sensor-01.hum?dity"], "y": 4},
    ]
    response = post_layout(client, "lobby", panels)
    assert response.status_code == 200, response.content
    assert board.panels.count() == 2


@pytest.mark.parametrize(
    "pattern",
    [
        "lab.*.temperature",  # a fleet glob: sources created later are read with each reader's own rights
        "nothing-yet.*",  # a source created later, even restricted, is filtered by the link's creator's rights
    ],
)
def test_an_editor_can_add_a_glob_across_readable_sources(
    client: Client, stranger, board: Dashboard, pattern: str
) -> None:
    client.force_login(stranger)
    panels = [*current_panels(board), {"title": "Fleet", "metrics": [pattern], "y": 4}]
    response = post_layout(client, "lobby", panels)
    assert response.status_code == 200, response.content


def test_a_pattern_is_refused_when_a_restricted_source_shares_its_prefix(
    client: Client, stranger, board: Dashboard, vault: Group
) -> None:
    """Source slugs may hold dots: lab.sensor-01.* also reaches a source lab.sensor-01.vault."""
    storage.store([Reading("lab.sensor-01.vault", "key", now_us(), 1.0)])
    Source.objects.get(slug="lab.sensor-01.vault").viewer_groups.add(vault)
    client.force_login(stranger)
    response = post_layout(
        client, "lobby", [*current_panels(board), {"title": "All lab", "metrics": ["lab.sensor-01.*"]}]
    )
    assert response.status_code == 403
    assert "lab.sensor-01.vault" in response.json()["error"]["message"]


def test_an_editor_may_move_a_panel_whose_pattern_someone_with_more_rights_added(
    client: Client, stranger, board: Dashboard
) -> None:
    Panel.objects.create(dashboard=board, title="Gold (staff)", metrics=["secret.*"], y=4)
    client.force_login(stranger)
    panels = current_panels(board)
    panels[1]["x"] = 6
    response = post_layout(client, "lobby", panels)
    assert response.status_code == 200, response.content
    assert Panel.objects.get(title="Gold (staff)").x == 6
    # The editor still sees none of it on the page configuration.
    gold = next(p for p in response.json()["panels"] if p["title"] == "Gold (staff)")
    assert gold["series"] == []


def test_staff_may_save_any_pattern(client: Client, owner, board: Dashboard) -> None:
    client.force_login(owner)
    response = post_layout(client, "lobby", [*current_panels(board), {"title": "Everything", "metrics": ["*"], "y": 4}])
    assert response.status_code == 200


def test_a_member_of_the_group_may_add_that_sources_keys(
    client: Client, viewer, board: Dashboard, vault: Group
) -> None:
    board.editor_groups.add(vault)
    client.force_login(viewer)
    response = post_layout(
        client, "lobby", [*current_panels(board), {"title": "Gold", "metrics": ["secret.vault.*"], "y": 4}]
    )
    assert response.status_code == 200, response.content


# --- Admin --------------------------------------------------------------------------------


def admin_panel_formset(user, board: Dashboard, rows: list[dict]):
    """Bind the admin's panel inline formset of a dashboard to posted rows, as the change view does."""
    from dashboard.admin import PanelInline

    request = RequestFactory().post(f"/admin/dashboard/dashboard/{board.pk}/change/")
    request.user = user
    inline = PanelInline(Dashboard, admin_site)
    formset_class = inline.get_formset(request, board)
    data = {
        "panels-TOTAL_FORMS": str(len(rows)),
        "panels-INITIAL_FORMS": "0",
        "panels-MIN_NUM_FORMS": "0",
        "panels-MAX_NUM_FORMS": "1000",
    }
    for i, row in enumerate(rows):
        for name, value in {"kind": "timeseries", "options": "{}", "x": 0, "y": 0, "w": 6, "h": 4, **row}.items():
            data[f"panels-{i}-{name}"] = value if isinstance(value, (str, int)) else json.dumps(value)
        data[f"panels-{i}-dashboard"] = board.pk
    return formset_class(data, instance=board, prefix="panels")


def test_the_admin_refuses_a_panel_pattern_beyond_the_saving_users_sources(stranger, board: Dashboard) -> None:
    """The admin's own permission check comes first: charlie gets the editor role's add/change panel rights."""
    from django.core.management import call_command

    call_command("setuproles", "--grant", "editor", "charlie")
    stranger = type(stranger).objects.get(pk=stranger.pk)  # fresh permission cache
    formset = admin_panel_formset(stranger, board, [{"title": "Gold", "metrics": json.dumps(["secret.*"])}])
    assert not formset.is_valid()
    [message] = formset.non_form_errors()
    assert "'Gold'" in message and "'secret.*'" in message


def test_the_admin_takes_the_same_panel_from_staff(owner, board: Dashboard) -> None:
    formset = admin_panel_formset(owner, board, [{"title": "Gold", "metrics": json.dumps(["secret.*"])}])
    assert formset.is_valid(), formset.errors


# --- Share links: the creator's rights at the time of use ------------------------------------


@pytest.fixture
def vault_link(viewer, metrics) -> tuple[ShareLink, str]:
    """A link made by bob (vault member, not staff) of a board showing the lab sensor and secret.vault.*."""
    board = Dashboard.objects.create(title="Vault board", slug="vault-board")
    Panel.objects.create(dashboard=board, title="Lab", metrics=["lab.sensor-01.temperature"])
    Panel.objects.create(dashboard=board, title="Gold", metrics=["secret.vault.*"], y=4)
    return ShareLink.issue(board, "vault screen", created_by=viewer)


def page_series(client: Client, secret: str) -> set[str]:
    response = client.get(f"/share/{secret}/")
    assert response.status_code == 200
    return {s["key"] for p in response.context["config"]["panels"] for s in p["series"]}


def test_a_share_link_grants_what_its_creator_reads(client: Client, vault_link) -> None:
    link, secret = vault_link
    assert page_series(client, secret) == {"lab.sensor-01.temperature", "secret.vault.gold", "secret.vault.silver"}
    assert client.get(f"/share/{secret}/series", {"metric": "secret.vault.gold"}).status_code == 200


def test_removing_the_creator_from_the_group_narrows_the_page_and_series_at_once(
    client: Client, viewer, vault: Group, vault_link
) -> None:
    link, secret = vault_link
    viewer.groups.remove(vault)
    assert page_series(client, secret) == {"lab.sensor-01.temperature"}
    assert client.get(f"/share/{secret}/series", {"metric": "secret.vault.gold"}).status_code == 400
    ok = client.get(f"/share/{secret}/series", {"metric": "lab.sensor-01.temperature", "format": "csv"})
    assert ok.status_code == 200 and "lab.sensor-01.temperature" in body_text(ok)


@pytest.mark.parametrize("how", ["deactivated", "deleted"])
def test_a_deactivated_or_deleted_creator_disables_the_link(client: Client, viewer, vault_link, how: str) -> None:
    link, secret = vault_link
    if how == "deactivated":
        viewer.is_active = False
        viewer.save()
    else:
        viewer.delete()
    assert ShareLink.find(secret) is None
    assert client.get(f"/share/{secret}/").status_code == 404
    assert client.get(f"/share/{secret}/series", {"metric": "lab.sensor-01.temperature"}).status_code == 401


def test_the_issue_attack_an_editor_cannot_widen_a_staff_made_link(client: Client, owner, stranger, board) -> None:
    """charlie edits a board alice (staff) shared: secret.* is refused, so the link never serves the vault."""
    link, secret = ShareLink.issue(board, "lobby", created_by=owner)
    client.force_login(stranger)
    response = post_layout(client, "lobby", [*current_panels(board), {"title": "Gold", "metrics": ["secret.*"]}])
    assert response.status_code == 403
    kiosk = Client()
    assert kiosk.get(f"/share/{secret}/series", {"metric": "secret.vault.gold"}).status_code == 400
    assert "secret.vault" not in json.dumps(kiosk.get(f"/share/{secret}/").context["config"]["panels"])


async def next_frame(ws, kinds: set[str], deadline_s: float) -> dict:
    """Return the next frame of one of the given types, skipping others (heartbeats, data)."""
    end = time.monotonic() + deadline_s
    while True:
        frame = json.loads(await ws.receive_from(max(0.1, end - time.monotonic())))
        if frame["type"] in kinds:
            return frame


@TRANSACTIONAL
async def test_removing_the_creator_from_the_group_narrows_an_open_share_socket(
    viewer, vault: Group, vault_link, monkeypatch
) -> None:
    # Only the change's own signal can narrow the socket within this test's deadlines, not the periodic re-check.
    monkeypatch.setattr(live_client, "SHARE_RECHECK_S", 600.0)
    link, secret = vault_link
    ws = await socket(f"/ws/share/{secret}/")
    await frames_until(ws, "hello")
    frames = await subscribe_and_collect(ws, ["lab.sensor-01.temperature", "secret.vault.*"])
    assert data_keys(frames) == {"lab.sensor-01.temperature", "secret.vault.gold", "secret.vault.silver"}

    started = time.monotonic()
    await sync_to_async(viewer.groups.remove)(vault)
    dropped = await next_frame(ws, {"unsubscribed"}, 10)
    print(f"socket narrowed {time.monotonic() - started:.3f} s after the group change")
    assert sorted(dropped["metrics"]) == ["secret.vault.gold", "secret.vault.silver"]

    # Live samples of the vault no longer reach the kiosk; the lab sensor's still do.
    await actions.ingest(
        [Reading("secret.vault", "gold", now_us(), 2000.0), Reading("lab.sensor-01", "temperature", now_us(), 30.0)]
    )
    await ws.send_json_to({"type": "ping", "id": 9})
    seen: set[str] = set()
    ponged = False
    end = time.monotonic() + 5
    while not (ponged and "lab.sensor-01.temperature" in seen) and time.monotonic() < end:
        frame = json.loads(await ws.receive_from(5))
        if frame["type"] == "data":
            seen |= {b["k"] for b in frame["batches"]}
        ponged = ponged or frame["type"] == "pong"
    assert seen == {"lab.sensor-01.temperature"}
    # And re-subscribing is refused.
    frames = await subscribe_and_collect(ws, ["secret.vault.gold"])
    assert [f["code"] for f in frames if f["type"] == "error"] == ["forbidden"]
    assert not data_keys(frames)
    await ws.disconnect()


@TRANSACTIONAL
async def test_deactivating_the_creator_closes_an_open_share_socket(viewer, vault_link) -> None:
    link, secret = vault_link
    ws = await socket(f"/ws/share/{secret}/")
    await frames_until(ws, "hello")
    await subscribe_and_collect(ws, ["lab.sensor-01.temperature"])
    viewer.is_active = False
    await viewer.asave()
    error = await next_frame(ws, {"error"}, 10)
    assert error["code"] == "not_authenticated"
    assert await ws.receive_output(5) == {"type": "websocket.close", "code": 4001}
    await ws.disconnect()


def test_a_link_made_before_creators_were_recorded_gets_the_oldest_superuser(django_user_model, metrics) -> None:
    from importlib import import_module

    from django.apps import apps

    migration = import_module("dashboard.migrations.0006_sharelink_created_by")
    root = django_user_model.objects.create_superuser("root", password="root-pass-123")
    board = Dashboard.objects.create(title="Old", slug="old")
    link, secret = ShareLink.issue(board, created_by=None)
    assert ShareLink.find(secret) is None  # without a creator it grants nothing
    migration.creator_for_existing_links(apps, None)
    link.refresh_from_db()
    assert link.created_by == root and ShareLink.find(secret) == link


@TRANSACTIONAL
async def test_revoking_a_link_in_the_admin_closes_its_open_socket_at_once(
    client, django_user_model, vault_link, monkeypatch
) -> None:
    monkeypatch.setattr(live_client, "SHARE_RECHECK_S", 600.0)
    link, secret = vault_link
    root = await django_user_model.objects.acreate(username="root", is_staff=True, is_superuser=True)
    ws = await socket(f"/ws/share/{secret}/")
    await frames_until(ws, "hello")
    await sync_to_async(client.force_login)(root)
    response = await sync_to_async(client.post)(
        "/admin/dashboard/sharelink/", {"action": "revoke", "_selected_action": [link.pk]}
    )
    assert response.status_code == 302
    error = await next_frame(ws, {"error"}, 10)
    assert error["code"] == "not_authenticated"
    assert await ws.receive_output(5) == {"type": "websocket.close", "code": 4001}
    await ws.disconnect()
