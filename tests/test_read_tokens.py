"""Read tokens: scripts read exactly what their user may read, over every read path, and never write."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import AsyncClient, Client

from dashboard import storage
from dashboard.models import Dashboard, ReadToken, Source
from dashboard.routing import websocket_urlpatterns
from dashboard.testing import manage, project_env, running_server
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading
from tests.test_history import csv_body

pytestmark = pytest.mark.django_db
TRANSACTIONAL = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data(viewer) -> Group:
    """Two sources: lab (everyone reads it) and vault (only the ops group); bob (viewer) is in ops."""
    ops = Group.objects.create(name="ops")
    viewer.groups.add(ops)
    now = now_us()
    storage.store([Reading("lab.sensor-01", "temperature", now - i * 10 * US, 20.0 + i) for i in range(10)])
    storage.store([Reading("vault.db-01", "cpu", now - i * 10 * US, float(i)) for i in range(10)])
    Source.objects.get(slug="vault.db-01").viewer_groups.add(ops)
    return ops


def bearer(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def series_keys(client: Client, secret: str, metric: str) -> tuple[int, list[str]]:
    response = client.get("/api/v1/series", {"metric": metric, "from": "-1h", "to": "now"}, **bearer(secret))
    body = response.json()
    return response.status_code, [s["key"] for s in body.get("series", [])]


def test_a_token_reads_what_its_user_may_read_and_nothing_else(data, viewer, stranger) -> None:
    _, bobs = ReadToken.issue(viewer, "bob's script")
    _, charlies = ReadToken.issue(stranger, "charlie's script")
    client = Client()

    assert series_keys(client, bobs, "vault.db-01.cpu") == (200, ["vault.db-01.cpu"])
    assert series_keys(client, charlies, "lab.sensor-01.temperature") == (200, ["lab.sensor-01.temperature"])
    status, _ = series_keys(client, charlies, "vault.db-01.cpu")
    assert status == 400  # the same answer as for an unknown key, so keys cannot be probed

    listed = client.get("/api/v1/metrics", **bearer(charlies)).json()["metrics"]
    assert [m["key"] for m in listed] == ["lab.sensor-01.temperature"]
    csv = client.get(
        "/api/v1/series", {"metric": "vault.db-01.cpu", "from": "-1h", "to": "now", "format": "csv"}, **bearer(bobs)
    )
    assert csv.status_code == 200 and "vault.db-01.cpu," in csv_body(csv)


def test_a_token_narrowed_to_source_patterns_reads_only_those_sources(data, viewer) -> None:
    _, secret = ReadToken.issue(viewer, "lab only", "lab.*")
    client = Client()
    listed = client.get("/api/v1/metrics", **bearer(secret)).json()["metrics"]
    assert [m["key"] for m in listed] == ["lab.sensor-01.temperature"]
    assert series_keys(client, secret, "vault.db-01.cpu")[0] == 400


def test_a_staff_users_token_reads_everything_but_cannot_operate(data, owner) -> None:
    _, secret = ReadToken.issue(owner, "staff script")
    client = Client()
    listed = client.get("/api/v1/metrics", **bearer(secret)).json()["metrics"]
    assert {m["key"] for m in listed} == {"lab.sensor-01.temperature", "vault.db-01.cpu"}
    refused = client.post("/api/v1/alerts/1/ack", **bearer(secret))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "read_only_token"


def test_a_revoked_token_or_a_deactivated_user_is_refused_at_once(data, viewer) -> None:
    token, secret = ReadToken.issue(viewer, "soon revoked")
    client = Client()
    assert client.get("/api/v1/metrics", **bearer(secret)).status_code == 200
    call_command("readtoken", "revoke", token.lookup)
    refused = client.get("/api/v1/metrics", **bearer(secret))
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "not_authenticated"
    assert refused["WWW-Authenticate"].startswith("Bearer")

    _, other = ReadToken.issue(viewer, "user leaves")
    viewer.is_active = False
    viewer.save()
    assert client.get("/api/v1/metrics", **bearer(other)).status_code == 401


def test_a_bad_token_is_refused_even_with_a_signed_in_session(data, viewer) -> None:
    client = Client()
    client.force_login(viewer)
    assert client.get("/api/v1/metrics").status_code == 200
    refused = client.get("/api/v1/metrics", **bearer("pbr_nosuchtoken_0000"))
    assert refused.status_code == 401


def test_agent_tokens_cannot_read_and_read_tokens_cannot_write(data, viewer, agent_token) -> None:
    _, agent_secret = agent_token
    _, read_secret = ReadToken.issue(viewer, "reader")
    client = Client()
    refused = client.get("/api/v1/metrics", **bearer(agent_secret))
    assert refused.status_code == 401
    assert "agent tokens only write" in refused.json()["error"]["message"]

    body = json.dumps({"source": "lab.sensor-01", "samples": [{"metric": "x", "ts": now_us(), "value": 1}]})
    ingest = client.post("/api/v1/ingest", body, content_type="application/json", **bearer(read_secret))
    assert (ingest.status_code, ingest.json()["error"]["code"]) == (403, "read_only_token")
    write = client.post("/api/v2/write", b"m v=1", content_type="text/plain", **bearer(read_secret))
    assert (write.status_code, write.json()["error"]["code"]) == (403, "read_only_token")
    board = Dashboard.objects.create(title="Lab", slug="lab", owner=viewer)
    layout = client.post(
        f"/api/v1/dashboards/{board.slug}/layout", "{}", content_type="application/json", **bearer(read_secret)
    )
    assert layout.status_code == 403
    assert layout.json()["error"]["code"] == "read_only_token"
    preferences = client.post("/api/v1/preferences", "{}", content_type="application/json", **bearer(read_secret))
    assert preferences.status_code == 403


def test_the_management_command_creates_lists_and_revokes(data, viewer, capsys) -> None:
    call_command("readtoken", "create", "bob", "cli token", "--sources", "lab.*,iot.*")
    out = capsys.readouterr().out
    secret = re.search(r"(pbr_\S+)", out).group(1)
    token = ReadToken.objects.get(name="cli token")
    assert token.patterns() == ["lab.*", "iot.*"]
    assert secret not in token.secret_hash and ReadToken.find(secret) == token
    call_command("readtoken", "list", "--user", "bob")
    assert token.lookup in capsys.readouterr().out
    call_command("readtoken", "revoke", token.lookup)
    assert ReadToken.find(secret) is None


@TRANSACTIONAL
async def test_the_websocket_handshake_takes_a_read_token_in_the_authorization_header(data, viewer, stranger) -> None:
    from asgiref.sync import sync_to_async

    _, secret = await sync_to_async(ReadToken.issue)(stranger, "socket script")
    ws = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), "/ws/live/", headers=[(b"authorization", f"Bearer {secret}".encode())]
    )
    connected, _ = await ws.connect()
    assert connected
    assert json.loads(await ws.receive_from(5))["type"] == "hello"
    await ws.send_to(text_data=json.dumps({"type": "subscribe", "id": 1, "metrics": ["*"], "history_s": 600}))
    subscribed = None
    while subscribed is None:
        frame = json.loads(await ws.receive_from(5))
        if frame["type"] == "subscribed":
            subscribed = frame
    assert [m["key"] for m in subscribed["metrics"]] == ["lab.sensor-01.temperature"]
    await ws.disconnect()

    bad = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), "/ws/live/", headers=[(b"authorization", b"Bearer pbr_revoked_00")]
    )
    await bad.connect()
    frames = []
    while True:
        output = await bad.receive_output(5)
        if output["type"] == "websocket.close":
            assert output["code"] == 4001
            break
        if output["type"] == "websocket.send":
            frames.append(json.loads(output["text"]))
    assert frames[-1]["code"] == "not_authenticated"


@TRANSACTIONAL
async def test_the_sse_stream_takes_a_read_token(data, viewer) -> None:
    from asgiref.sync import sync_to_async

    _, secret = await sync_to_async(ReadToken.issue)(viewer, "sse script")
    response = await AsyncClient().get(
        "/api/v1/stream", {"metrics": "vault.*", "history_s": "600"}, headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 200, response.content
    seen = ""
    async for chunk in response.streaming_content:
        seen += chunk.decode() if isinstance(chunk, bytes) else chunk
        if '"type":"data"' in seen:
            break
    await response.streaming_content.aclose()  # the browser goes away: the stream releases its subscription
    assert "vault.db-01.cpu" in seen


def doc_examples() -> tuple[list[str], list[str]]:
    """Return the sh and python code blocks of docs/reading.md's Examples section, as written."""
    text = (ROOT / "docs" / "reading.md").read_text()
    examples = text.split("## Examples", 1)[1]
    return (
        re.findall(r"```sh\n(.*?)```", examples, re.S),
        re.findall(r"```python\n(.*?)```", examples, re.S),
    )


@pytest.mark.slow  # a real server: 7 s
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl for the documented examples")
def test_the_documented_examples_work_verbatim_against_a_live_server(tmp_path) -> None:
    """Run docs/reading.md's curl and Python examples, unchanged, against a real Daphne."""
    shell, python = doc_examples()
    assert len(shell) >= 4 and len(python) == 1
    env = project_env(tmp_path, PULSEBOARD_BACKGROUND="0")
    with running_server(env) as server:
        manage(env, "ensureadmin")
        script = (
            "from dashboard import storage; from dashboard.validation import Reading; "
            "from dashboard.timeutil import now_us; "
            "storage.store([Reading('lab.sensor-01', 'temperature', now_us() - i * 10_000_000, 20.0 + i) "
            "for i in range(30)])"
        )
        manage(env, "shell", "-c", script)
        created = manage(env, "readtoken", "create", "admin", "docs example")
        secret = re.search(r"(pbr_\S+)", created).group(1)
        run_env = dict(os.environ, PULSEBOARD_URL=server.url, PULSEBOARD_TOKEN=secret)

        outputs = []
        for block in shell:
            result = subprocess.run(["bash", "-c", block], env=run_env, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (block, result.stderr)
            outputs.append(result.stdout)
        assert "lab.sensor-01.temperature" in json.dumps(json.loads(outputs[0]))
        assert json.loads(outputs[1])["series"][0]["key"] == "lab.sensor-01.temperature"
        assert outputs[2].startswith("key,time_iso,")
        assert "data: " in outputs[3] and "lab.sensor-01.temperature" in outputs[3]

        result = subprocess.run(
            [sys.executable, "-c", python[0]], env=run_env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "lab.sensor-01.temperature" in result.stdout
        assert "hello" in result.stdout and "data frame with" in result.stdout

        revoked = manage(env, "readtoken", "list")
        lookup = revoked.split("\t")[1]
        manage(env, "readtoken", "revoke", lookup)
        answer = httpx.get(f"{server.url}/api/v1/metrics", headers={"Authorization": f"Bearer {secret}"})
        assert answer.status_code == 401


def test_other_bearer_credentials_pass_through_to_their_view(settings, data) -> None:
    settings.METRICS_TOKEN = "scrape-secret-123"
    response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret-123")
    assert response.status_code == 200 and b"pulseboard_" in response.content


@TRANSACTIONAL
async def test_a_narrowed_token_subscribes_only_within_its_source_patterns(data, viewer) -> None:
    from asgiref.sync import sync_to_async

    _, secret = await sync_to_async(ReadToken.issue)(viewer, "lab only socket", "lab.*")
    ws = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), "/ws/live/", headers=[(b"authorization", f"Bearer {secret}".encode())]
    )
    connected, _ = await ws.connect()
    assert connected
    await ws.send_to(text_data=json.dumps({"type": "subscribe", "id": 1, "metrics": ["*"], "history_s": 600}))
    while (frame := json.loads(await ws.receive_from(5)))["type"] != "subscribed":
        pass
    assert [m["key"] for m in frame["metrics"]] == ["lab.sensor-01.temperature"]  # bob reads the vault, not this token
    await ws.disconnect()
