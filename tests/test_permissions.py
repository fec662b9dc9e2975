"""Roles and per-object permissions where data leaves the server: socket, history API, CSV export, share links."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from dashboard import storage
from dashboard.live.client import SHARE_RECHECK_S
from dashboard.models import Dashboard, Metric, Panel, ShareLink, Source
from dashboard.routing import websocket_urlpatterns
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clock")]
# Only socket tests need real transactions (the consumer reads on another thread); they say so themselves.
TRANSACTIONAL = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ops(viewer) -> Group:
    """The ops group; bob (viewer) is in it, charlie (stranger) is not."""
    group = Group.objects.create(name="ops")
    viewer.groups.add(group)
    return group


@pytest.fixture
def secret_metric(ops: Group) -> Metric:
    """A metric of a source restricted to ops, with a few minutes of samples."""
    now = now_us()
    storage.store([Reading("vault.db-01", "cpu", now - i * 10 * US, float(i)) for i in range(10)])
    source = Source.objects.get(slug="vault.db-01")
    source.viewer_groups.add(ops)
    return Metric.objects.get(key="vault.db-01.cpu")


@pytest.fixture
def public_metric() -> Metric:
    now = now_us()
    storage.store([Reading("lab.sensor-01", "temperature", now - i * 10 * US, 20.0 + i) for i in range(10)])
    storage.store([Reading("lab.sensor-01", "humidity", now - i * 10 * US, 40.0 + i) for i in range(10)])
    return Metric.objects.get(key="lab.sensor-01.temperature")


@pytest.fixture
def shared(owner, public_metric: Metric, secret_metric: Metric) -> Iterator[tuple[ShareLink, str]]:
    """A dashboard with one panel on the temperature, shared by link (made by alice, staff); the vault metric is on no panel."""
    board = Dashboard.objects.create(title="Lab", slug="lab")
    Panel.objects.create(dashboard=board, title="Temperature", metrics=["lab.*.temperature"])
    yield ShareLink.issue(board, "lobby screen", created_by=owner)


async def socket(path: str, user=None) -> WebsocketCommunicator:
    from django.contrib.auth.models import AnonymousUser

    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    communicator.scope["user"] = user or AnonymousUser()
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def frames_until(ws: WebsocketCommunicator, kind: str, wait_s: float = 5) -> list[dict]:
    """Return every frame up to and including the first of the given type."""
    seen = []
    while True:
        frame = json.loads(await ws.receive_from(wait_s))
        seen.append(frame)
        if frame["type"] == kind:
            return seen


async def subscribe_and_collect(ws: WebsocketCommunicator, patterns: list[str]) -> list[dict]:
    """Subscribe, then collect frames until a ping round trip proves the server has sent everything."""
    await ws.send_json_to({"type": "subscribe", "id": 1, "metrics": patterns, "history_s": 600})
    await ws.send_json_to({"type": "ping", "id": 2})
    return await frames_until(ws, "pong")


def body_text(response) -> str:
    """Return a JSON or a streamed (async) CSV body as text."""
    if not response.streaming:
        return response.content.decode()

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return asyncio.run(collect()).decode()


def data_keys(frames: list[dict]) -> set[str]:
    return {b["k"] for f in frames if f["type"] == "data" for b in f["batches"]}


# --- Roles ----------------------------------------------------------------------


def test_setuproles_creates_the_three_role_groups_idempotently(viewer) -> None:
    call_command("setuproles")
    call_command("setuproles", "--grant", "viewer", "bob")
    groups = {g.name: g for g in Group.objects.filter(name__in=["viewer", "editor", "admin"])}
    assert set(groups) == {"viewer", "editor", "admin"}
    viewer_perms = set(groups["viewer"].permissions.values_list("codename", flat=True))
    editor_perms = set(groups["editor"].permissions.values_list("codename", flat=True))
    admin_perms = set(groups["admin"].permissions.values_list("codename", flat=True))
    assert "view_dashboard" in viewer_perms and "change_dashboard" not in viewer_perms
    assert viewer_perms < editor_perms < admin_perms
    assert {"change_dashboard", "add_panel", "change_alertrule"} <= editor_perms
    assert {"add_agenttoken", "add_sharelink", "change_user"} <= admin_perms
    viewer.refresh_from_db()
    assert viewer.has_perm("dashboard.view_dashboard") and not viewer.has_perm("dashboard.change_dashboard")


def test_granting_admin_makes_the_user_staff(stranger) -> None:
    call_command("setuproles", "--grant", "admin", "charlie")
    stranger.refresh_from_db()
    assert stranger.is_staff and stranger.groups.filter(name="admin").exists()


def test_dashboard_visibility_and_editing_follow_the_object_groups(viewer, stranger, ops: Group) -> None:
    board = Dashboard.objects.create(title="Ops", slug="ops")
    board.viewer_groups.add(ops)
    board.editor_groups.add(ops)
    assert list(Dashboard.objects.visible_to(viewer)) == [board]
    assert list(Dashboard.objects.visible_to(stranger)) == []
    assert board.can_edit(viewer) and not board.can_edit(stranger)


# --- Socket ---------------------------------------------------------------------


@TRANSACTIONAL
async def test_a_viewer_outside_the_group_gets_no_data_of_a_restricted_metric_over_the_socket(
    stranger, secret_metric: Metric
) -> None:
    ws = await socket("/ws/live/", stranger)
    await frames_until(ws, "hello")
    frames = await subscribe_and_collect(ws, ["vault.db-01.cpu", "vault.*", "*"])
    errors = [f for f in frames if f["type"] == "error"]
    # One error frame per reason, naming every pattern refused for it (docs/protocol.md).
    assert [(e["code"], e["metrics"][:2]) for e in errors] == [("forbidden", ["vault.db-01.cpu", "vault.*"])]
    subscribed = next(f for f in frames if f["type"] == "subscribed")
    assert "vault.db-01.cpu" not in {m["key"] for m in subscribed["metrics"]}
    assert not any(k.startswith("vault.") for k in data_keys(frames))
    # Live samples of the restricted source do not reach the socket either.
    from dashboard import actions

    await actions.ingest([Reading("vault.db-01", "cpu", now_us(), 99.0)])
    assert await ws.receive_nothing(0.5)
    await ws.disconnect()


@TRANSACTIONAL
async def test_one_publication_of_several_sources_reaches_each_viewer_only_through_sources_it_may_read(
    viewer, stranger, secret_metric: Metric, public_metric: Metric, monkeypatch
) -> None:
    """A commit of several sources is one channel-layer message (issue #18 item 5); routing stays per source."""
    from channels.layers import get_channel_layer

    from dashboard import actions, events

    member, outsider = await socket("/ws/live/", viewer), await socket("/ws/live/", stranger)
    for ws in (member, outsider):
        await frames_until(ws, "hello")
        await subscribe_and_collect(ws, ["vault.*", "lab.*"])
    layer = get_channel_layer()
    sent: list[str] = []
    group_send = layer.group_send

    async def counting(group: str, message: dict) -> None:
        sent.append(group)
        await group_send(group, message)

    monkeypatch.setattr(layer, "group_send", counting)
    ts = now_us()
    await actions.ingest(
        [
            Reading("vault.db-01", "cpu", ts, 99.0),
            Reading("lab.sensor-01", "temperature", ts, 21.0),
            Reading("lab.sensor-01", "humidity", ts, 41.0),
        ]
    )
    await events.drain()
    assert sent == [events.SAMPLES_GROUP]

    async def live_keys(ws: WebsocketCommunicator, want: int) -> dict[str, list[int]]:
        got: dict[str, list[int]] = {}
        while sum(len(t) for t in got.values()) < want:
            frame = json.loads(await ws.receive_from(5))
            for batch in frame.get("batches", []) if frame["type"] == "data" else []:
                got.setdefault(batch["k"], []).extend(t for t in batch["t"] if t >= ts)
        return got

    assert await live_keys(member, 3) == {
        "vault.db-01.cpu": [ts],
        "lab.sensor-01.temperature": [ts],
        "lab.sensor-01.humidity": [ts],
    }
    assert await live_keys(outsider, 2) == {"lab.sensor-01.temperature": [ts], "lab.sensor-01.humidity": [ts]}
    assert await outsider.receive_nothing(0.5)  # nor later: the restricted source never reaches it
    await member.disconnect()
    await outsider.disconnect()


@TRANSACTIONAL
async def test_a_member_of_the_granted_group_gets_the_restricted_metric_over_the_socket(viewer, secret_metric) -> None:
    ws = await socket("/ws/live/", viewer)
    await frames_until(ws, "hello")
    frames = await subscribe_and_collect(ws, ["vault.db-01.cpu"])
    assert data_keys(frames) == {"vault.db-01.cpu"}
    await ws.disconnect()


# --- History and export -----------------------------------------------------------


@pytest.mark.parametrize("output", ["json", "csv"])
def test_a_viewer_outside_the_group_gets_nothing_from_history_or_export(
    client: Client, stranger, secret_metric: Metric, output: str
) -> None:
    client.force_login(stranger)
    response = client.get("/api/v1/series", {"metric": "vault.db-01.cpu", "from": "-1h", "format": output})
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["field"] == "metric"
    assert "vault" not in json.dumps({k: v for k, v in body.items() if k != "error"})
    # Asking for it together with a readable metric must not leak it either.
    response = client.get(
        "/api/v1/series", {"metric": ["lab.sensor-01.temperature", "vault.db-01.cpu"], "format": output}
    )
    assert response.status_code == 400


@pytest.mark.parametrize("output", ["json", "csv"])
def test_a_member_of_the_granted_group_reads_history_and_export(
    client: Client, viewer, secret_metric, output: str
) -> None:
    client.force_login(viewer)
    response = client.get("/api/v1/series", {"metric": "vault.db-01.cpu", "from": "-1h", "format": output})
    assert response.status_code == 200
    text = body_text(response)
    assert "vault.db-01.cpu" in text


def test_a_session_cookie_alone_cannot_ingest(client: Client, owner) -> None:
    client.force_login(owner)
    body = {"samples": [{"source": "x.y", "metric": "m", "ts": now_us() // 1000, "value": 1}]}
    response = client.post("/api/v1/ingest", json.dumps(body), content_type="application/json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert client.post("/api/v2/write", b"m,host=a v=1", content_type="text/plain").status_code == 401
    assert not Metric.objects.filter(key="x.y.m").exists()


# --- Share links -------------------------------------------------------------------


def test_a_share_link_secret_is_stored_only_as_a_hash(shared) -> None:
    link, secret = shared
    assert secret.startswith("pbs_") and secret not in (link.secret_hash, link.lookup)
    assert ShareLink.find(secret) == link
    assert ShareLink.find(secret[:-1] + ("x" if secret[-1] != "x" else "y")) is None
    assert ShareLink.find("pb_" + secret[4:]) is None


def test_the_share_page_needs_no_sign_in_and_names_the_share_socket(client: Client, shared) -> None:
    link, secret = shared
    response = client.get(f"/share/{secret}/")
    assert response.status_code == 200
    assert response["Referrer-Policy"] == "no-referrer"
    page = response.content.decode()
    assert f"/ws/share/{secret}/" in page and "Temperature" in page
    assert "vault" not in page


def test_a_revoked_or_unknown_share_link_shows_nothing(client: Client, shared) -> None:
    link, secret = shared
    assert client.get("/share/pbs_nope_nope/").status_code == 404
    link.revoked_at = timezone.now()
    link.save()
    assert client.get(f"/share/{secret}/").status_code == 404
    assert client.get(f"/share/{secret}/series", {"metric": "lab.sensor-01.temperature"}).status_code == 401


@TRANSACTIONAL
async def test_a_share_socket_streams_only_the_metrics_of_the_dashboards_panels(shared) -> None:
    link, secret = shared
    ws = await socket(f"/ws/share/{secret}/")
    await frames_until(ws, "hello")
    frames = await subscribe_and_collect(
        ws, ["lab.sensor-01.temperature", "lab.sensor-01.humidity", "vault.db-01.cpu", "*"]
    )
    errors = {(m, f["code"]) for f in frames if f["type"] == "error" for m in f["metrics"]}
    assert errors == {("lab.sensor-01.humidity", "forbidden"), ("vault.db-01.cpu", "forbidden")}
    assert data_keys(frames) == {"lab.sensor-01.temperature"}
    await ws.disconnect()


@TRANSACTIONAL
async def test_a_share_socket_ignores_the_signed_in_user_behind_it(owner, shared) -> None:
    """Even a staff session in the same browser gets no more than the link grants through the share socket."""
    link, secret = shared
    ws = await socket(f"/ws/share/{secret}/", owner)
    await frames_until(ws, "hello")
    frames = await subscribe_and_collect(ws, ["vault.db-01.cpu"])
    assert not data_keys(frames)
    await ws.disconnect()


@TRANSACTIONAL
async def test_a_revoked_share_socket_is_refused_with_4001(shared) -> None:
    link, secret = shared
    link.revoked_at = timezone.now()
    await link.asave()
    ws = await socket(f"/ws/share/{secret}/")
    error = json.loads(await ws.receive_from())
    assert error["code"] == "not_authenticated"
    assert await ws.receive_output() == {"type": "websocket.close", "code": 4001}


@TRANSACTIONAL
async def test_revoking_a_link_stops_new_subscriptions_and_closes_an_open_socket(shared) -> None:
    link, secret = shared
    ws = await socket(f"/ws/share/{secret}/")
    await frames_until(ws, "hello")
    frames = await subscribe_and_collect(ws, ["lab.sensor-01.temperature"])
    assert data_keys(frames) == {"lab.sensor-01.temperature"}
    # A queryset update sends no signal: the socket finds out by its periodic re-check.
    await ShareLink.objects.filter(pk=link.pk).aupdate(revoked_at=timezone.now())
    frames = await subscribe_and_collect(ws, ["lab.sensor-01.temperature"])
    assert not data_keys(frames)
    assert [f["code"] for f in frames if f["type"] == "error"] == ["forbidden"]
    error = json.loads(await ws.receive_from(SHARE_RECHECK_S + 5))
    assert error["type"] == "error" and error["code"] == "not_authenticated"
    assert await ws.receive_output(5) == {"type": "websocket.close", "code": 4001}
    await ws.disconnect()


@pytest.mark.parametrize("output", ["json", "csv"])
def test_share_history_reads_panel_metrics_and_nothing_else(client: Client, shared, output: str) -> None:
    link, secret = shared
    ok = client.get(f"/share/{secret}/series", {"metric": "lab.sensor-01.temperature", "format": output})
    assert ok.status_code == 200
    text = body_text(ok)
    assert "lab.sensor-01.temperature" in text
    for other in ("lab.sensor-01.humidity", "vault.db-01.cpu"):
        refused = client.get(f"/share/{secret}/series", {"metric": other, "format": output})
        assert refused.status_code == 400, other


# --- Dashboard pages and APIs --------------------------------------------------------


@pytest.fixture
def ops_board(ops: Group, secret_metric: Metric) -> Dashboard:
    """A dashboard restricted to ops, on the restricted metric."""
    board = Dashboard.objects.create(title="Vault", slug="vault")
    board.viewer_groups.add(ops)
    Panel.objects.create(dashboard=board, title="DB CPU", metrics=["vault.db-01.cpu"])
    return board


def test_a_viewer_outside_the_group_cannot_see_a_restricted_dashboard_page(client: Client, stranger, ops_board) -> None:
    client.force_login(stranger)
    assert client.get("/d/vault/").status_code == 404
    listing = client.get("/d/")
    assert listing.status_code == 200 and b"Vault" not in listing.content
    layout = client.post("/api/v1/dashboards/vault/layout", json.dumps({"panels": []}), content_type="application/json")
    assert layout.status_code == 404
    assert Panel.objects.filter(dashboard=ops_board).count() == 1


def test_a_member_sees_the_dashboard_but_edits_only_with_editor_rights(client: Client, viewer, ops_board) -> None:
    client.force_login(viewer)
    assert client.get("/d/vault/").status_code == 200
    layout = client.post("/api/v1/dashboards/vault/layout", json.dumps({"panels": []}), content_type="application/json")
    assert layout.status_code == 403
    assert Panel.objects.filter(dashboard=ops_board).count() == 1


def test_dashboard_pages_ask_anonymous_users_to_sign_in(client: Client, ops_board) -> None:
    assert client.get("/d/vault/").status_code == 302


def test_the_admin_shows_a_new_share_links_url_once_and_stores_only_a_hash(client: Client, django_user_model) -> None:
    import re

    admin = django_user_model.objects.create_superuser("root", password="root-pass-123")
    board = Dashboard.objects.create(title="Lobby", slug="lobby")
    client.force_login(admin)
    response = client.post(
        "/admin/dashboard/sharelink/add/", {"dashboard": board.pk, "label": "lobby screen"}, follow=True
    )
    assert response.status_code == 200
    url = re.search(r"<code id='share-link-url'>([^<]+)</code>", response.content.decode()).group(1)
    secret = url.rstrip("/").rsplit("/", 1)[1]
    link = ShareLink.objects.get()
    assert link.label == "lobby screen" and secret not in (link.secret_hash, link.lookup)
    assert link.created_by == admin  # the link grants no more than this user may read
    assert ShareLink.find(secret) == link
    assert secret not in client.get(f"/admin/dashboard/sharelink/{link.pk}/change/").content.decode()
    client.post(
        "/admin/dashboard/sharelink/",
        {"action": "revoke", "_selected_action": [link.pk]},
        follow=True,
    )
    assert ShareLink.find(secret) is None
