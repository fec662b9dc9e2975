"""Production settings pass `check --deploy`; the socket's origin check, auth and limits close with their documented codes."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import websockets
from channels.testing import WebsocketCommunicator

from dashboard.live import protocol
from dashboard.live.websocket import LiveConsumer
from dashboard.testing import ROOT, project_env, running_server
from monitor.asgi import application

pytestmark = pytest.mark.django_db
# Only socket tests need real transactions (the consumer reads on another thread); they say so themselves.
TRANSACTIONAL = pytest.mark.django_db(transaction=True)
# Subprocesses with their own settings and database: the PostgreSQL pass would only repeat them.
RUN_ONCE = pytest.mark.sqlite_only
DOCS = (ROOT / "docs" / "protocol.md").read_text()


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return project_env(
        tmp_path,
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
        TLS="1",
        ALLOWED_HOSTS="example.com,www.example.com",
        CSRF_TRUSTED_ORIGINS="https://example.com",
        **extra,
    )


def run_python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@RUN_ONCE
def test_check_deploy_is_clean_with_production_settings(tmp_path) -> None:
    done = run_python(production_env(tmp_path), "manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


@RUN_ONCE
def test_tls_makes_cookies_secure_and_sends_hsts(tmp_path) -> None:
    code = (
        "import django; django.setup()\n"
        "from django.conf import settings as s\n"
        "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS > 0, s.SECURE_SSL_REDIRECT)\n"
        "from django.test import Client\n"
        "r = Client(SERVER_NAME='example.com').get('/healthz', secure=True)\n"
        "print(r.status_code, r.headers.get('Strict-Transport-Security'))\n"
        "print(Client(SERVER_NAME='example.com').get('/accounts/login/').status_code)\n"
    )
    done = run_python(production_env(tmp_path), "-c", code)
    assert done.returncode == 0, done.stderr
    flags, hsts, plain = done.stdout.splitlines()
    assert flags == "True True True True"
    assert hsts.startswith("200 max-age=31536000; includeSubDomains")
    assert plain == "301"  # plain HTTP is redirected, health checks are not


@RUN_ONCE
def test_without_tls_cookies_are_not_marked_secure(tmp_path) -> None:
    code = "import django; django.setup()\nfrom django.conf import settings as s\nprint(s.SESSION_COOKIE_SECURE, s.SECURE_HSTS_SECONDS)"
    done = run_python(project_env(tmp_path), "-c", code)
    assert done.stdout.split() == ["False", "0"]


@RUN_ONCE
def test_production_settings_refuse_a_missing_secret_key(tmp_path) -> None:
    env = production_env(tmp_path)
    del env["SECRET_KEY"]
    done = run_python(env, "manage.py", "check")
    assert done.returncode != 0 and "SECRET_KEY must be set" in done.stderr


# --- Origin and session ---------------------------------------------------------


SAME_ORIGIN = [(b"host", b"localhost"), (b"origin", b"http://localhost")]


@pytest.mark.parametrize(
    ("host", "origin", "accepted"),
    [
        ("localhost", "http://localhost", True),
        ("localhost:80", "http://localhost", True),  # the default port, written or not
        ("127.0.0.1:8000", "http://127.0.0.1:8000", True),
        ("[::1]:8000", "http://[::1]:8000", True),
        ("127.0.0.1:8000", "http://127.0.0.1:9999", False),  # the issue: another port of the same host
        ("127.0.0.1:8000", "http://127.0.0.1", False),
        ("127.0.0.1:8000", "https://127.0.0.1:8000", False),  # another scheme
        ("127.0.0.1:8000", "http://localhost:8000", False),  # another host name, though allowed too
        ("evil.example", "http://evil.example", False),  # a Host outside ALLOWED_HOSTS (DNS rebinding)
        ("localhost", "http://evil.example", False),
        ("localhost", "https://localhost.evil.example", False),
        ("localhost", "null", False),
        ("localhost", "http://localhost:99999", False),
        ("localhost", "http://localhost/path", False),
        ("", "http://localhost", False),
        ("localhost", None, False),
    ],
)
@TRANSACTIONAL
async def test_the_socket_accepts_only_its_own_origin_by_scheme_host_and_port(
    viewer, host: str, origin: str | None, accepted: bool
) -> None:
    headers = [(b"host", host.encode())] if host else []
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    communicator = WebsocketCommunicator(application, "/ws/live/", headers=headers)
    connected, code = await communicator.connect()
    assert connected is accepted, (host, origin, code)
    if not accepted:
        assert code == 1008
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        ("https://pulse.example.com", True),
        ("https://pulse.example.com:443", True),
        ("https://pulse.example.com:8443", False),
        ("http://pulse.example.com", False),
        ("https://a.example.org", True),  # listed as https://*.example.org
        ("https://example.org", True),
        ("https://a.example.org:8443", False),
        ("https://notexample.org", False),
    ],
)
@TRANSACTIONAL
async def test_csrf_trusted_origins_are_served_origins_with_their_scheme_and_port(
    settings, viewer, origin: str, accepted: bool
) -> None:
    """Behind a proxy that rewrites Host, CSRF_TRUSTED_ORIGINS names the public origin."""
    settings.CSRF_TRUSTED_ORIGINS = ["https://pulse.example.com", "https://*.example.org"]
    headers = [(b"host", b"127.0.0.1:8000"), (b"origin", origin.encode())]
    communicator = WebsocketCommunicator(application, "/ws/live/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected is accepted, origin
    await communicator.disconnect()


@pytest.mark.parametrize(("origin", "accepted"), [("https://localhost:8443", True), ("http://localhost:8443", False)])
@TRANSACTIONAL
async def test_under_tls_the_sockets_own_origin_is_https(settings, viewer, origin: str, accepted: bool) -> None:
    """Daphne's own TLS endpoint puts no scheme in a WebSocket scope: TLS=1 says it is https."""
    settings.TLS = True
    headers = [(b"host", b"localhost:8443"), (b"origin", origin.encode())]
    communicator = WebsocketCommunicator(application, "/ws/live/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected is accepted, origin
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("forwarded_proto", "origin", "accepted"),
    [
        ("https", "https://pulse.example.com", True),
        ("https", "http://pulse.example.com", False),
        ("http", "http://pulse.example.com", True),
    ],
)
@TRANSACTIONAL
async def test_behind_a_tls_proxy_the_forwarded_scheme_is_the_sockets_scheme(
    settings, viewer, forwarded_proto: str, origin: str, accepted: bool
) -> None:
    settings.ALLOWED_HOSTS = ["pulse.example.com"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    headers = [
        (b"host", b"pulse.example.com"),
        (b"x-forwarded-proto", forwarded_proto.encode()),
        (b"origin", origin.encode()),
    ]
    communicator = WebsocketCommunicator(application, "/ws/live/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected is accepted, (forwarded_proto, origin)
    await communicator.disconnect()


@TRANSACTIONAL
async def test_a_socket_without_a_session_cookie_is_closed_with_4001() -> None:
    communicator = WebsocketCommunicator(application, "/ws/live/", headers=SAME_ORIGIN)
    connected, _ = await communicator.connect()
    assert connected
    assert json.loads(await communicator.receive_from())["code"] == "not_authenticated"
    assert await communicator.receive_output() == {"type": "websocket.close", "code": 4001}


@TRANSACTIONAL
async def test_a_forged_session_cookie_is_treated_as_signed_out() -> None:
    headers = [*SAME_ORIGIN, (b"cookie", b"sessionid=" + secrets.token_hex(16).encode())]
    communicator = WebsocketCommunicator(application, "/ws/live/", headers=headers)
    await communicator.connect()
    assert json.loads(await communicator.receive_from())["code"] == "not_authenticated"
    assert await communicator.receive_output() == {"type": "websocket.close", "code": 4001}


async def session_socket(user) -> WebsocketCommunicator:
    """A socket through the production ASGI stack, carrying the session cookie of a user signed in over HTTP."""
    from asgiref.sync import sync_to_async
    from django.test import Client

    client = Client()
    await sync_to_async(client.force_login)(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}; csrftoken=x".encode()
    headers = [*SAME_ORIGIN, (b"cookie", cookie)]
    return WebsocketCommunicator(application, "/ws/live/", headers=headers)


@TRANSACTIONAL
async def test_a_socket_with_a_session_cookie_is_greeted_as_that_user(viewer) -> None:
    communicator = await session_socket(viewer)
    connected, _ = await communicator.connect()
    assert connected
    assert json.loads(await communicator.receive_from())["type"] == "hello"
    await communicator.disconnect()


@TRANSACTIONAL
async def test_a_session_from_before_a_password_change_is_treated_as_signed_out(viewer) -> None:
    from asgiref.sync import sync_to_async

    communicator = await session_socket(viewer)
    viewer.set_password("a-new-pass-456")
    await sync_to_async(viewer.save)()
    await communicator.connect()
    assert json.loads(await communicator.receive_from())["code"] == "not_authenticated"
    assert await communicator.receive_output() == {"type": "websocket.close", "code": 4001}


# --- Limits ------------------------------------------------------------------------


async def open_socket(user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(LiveConsumer.as_asgi(), "/ws/live/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    assert json.loads(await communicator.receive_from())["type"] == "hello"
    return communicator


async def next_frame(ws: WebsocketCommunicator, kind: str) -> dict:
    while True:
        frame = json.loads(await ws.receive_from(5))
        if frame["type"] == kind:
            return frame


@TRANSACTIONAL
async def test_a_message_over_the_size_limit_closes_with_4009(viewer) -> None:
    ws = await open_socket(viewer)
    await ws.send_to(text_data=json.dumps({"type": "ping", "pad": "x" * protocol.MAX_MESSAGE_BYTES}))
    assert (await next_frame(ws, "error"))["code"] == "message_too_big"
    assert await ws.receive_output() == {"type": "websocket.close", "code": 4009}
    assert "| 4009 |" in DOCS and "`message_too_big`" in DOCS


@TRANSACTIONAL
async def test_a_message_at_the_size_limit_is_accepted(viewer) -> None:
    ws = await open_socket(viewer)
    message = json.dumps({"type": "ping", "id": 1, "pad": ""})
    message = message.replace('"pad": ""', '"pad": "' + "x" * (protocol.MAX_MESSAGE_BYTES - len(message)) + '"')
    assert len(message) == protocol.MAX_MESSAGE_BYTES
    await ws.send_to(text_data=message)
    assert (await next_frame(ws, "pong"))["id"] == 1
    await ws.disconnect()


@TRANSACTIONAL
async def test_more_subscriptions_than_the_limit_are_refused_with_an_error_frame(viewer, monkeypatch) -> None:
    from dashboard import storage
    from dashboard.timeutil import now_us
    from dashboard.validation import Reading

    monkeypatch.setattr(protocol, "MAX_SUBSCRIPTIONS", 5)
    await storage_async(storage.store, [Reading("lim.host", f"m{i}", now_us(), 1.0) for i in range(8)])
    ws = await open_socket(viewer)
    await ws.send_json_to(
        {"type": "subscribe", "id": 1, "metrics": [f"lim.host.m{i}" for i in range(4)], "history_s": 0}
    )
    assert len((await next_frame(ws, "subscribed"))["metrics"]) == 4
    await ws.send_json_to({"type": "subscribe", "id": 2, "metrics": ["lim.host.*"], "history_s": 0})
    error = await next_frame(ws, "error")
    assert (error["code"], error["id"]) == ("too_many_subscriptions", 2)
    # The connection stays usable and keeps what it had.
    await ws.send_json_to({"type": "ping", "id": 3})
    assert (await next_frame(ws, "pong"))["id"] == 3
    await ws.disconnect()
    assert "`too_many_subscriptions`" in DOCS


async def storage_async(fn, *args):
    from asgiref.sync import sync_to_async

    return await sync_to_async(fn)(*args)


@TRANSACTIONAL
async def test_a_burst_over_the_message_rate_gets_rate_limited_then_closed_with_4029(viewer) -> None:
    ws = await open_socket(viewer)
    sent = 0
    codes: list[str] = []
    closed = None
    # Send much faster than MAX_MESSAGES_PER_S: the burst allowance, then errors, then the close.
    for sent in range(1, 4 * protocol.MESSAGE_BURST):
        await ws.send_json_to({"type": "ping", "id": sent})
    while closed is None:
        output = await ws.receive_output(5)
        if output["type"] == "websocket.close":
            closed = output["code"]
        else:
            frame = json.loads(output["text"])
            codes.append(frame.get("code") or frame["type"])
    assert closed == 4029
    # The bucket refills while the burst is processed, so a slow machine answers a few more.
    assert protocol.MESSAGE_BURST <= codes.count("pong") < 2 * protocol.MESSAGE_BURST
    assert codes.count("rate_limited") >= 1
    assert "| 4029 |" in DOCS and "`rate_limited`" in DOCS


@TRANSACTIONAL
async def test_a_client_within_the_message_rate_is_never_limited(viewer) -> None:
    import asyncio

    ws = await open_socket(viewer)
    for i in range(30):
        await ws.send_json_to({"type": "ping", "id": i})
        assert (await next_frame(ws, "pong"))["id"] == i
        await asyncio.sleep(1.2 / protocol.MAX_MESSAGES_PER_S)
    await ws.disconnect()


@RUN_ONCE
@pytest.mark.slow
async def test_a_cross_site_page_cannot_open_the_socket_on_a_real_server(tmp_path) -> None:

    with running_server(project_env(tmp_path)) as server:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(server.ws_url, origin="http://attacker.example"):
                pass
        assert refused.value.response.status_code == 403
        # Another port of the same host is another origin (any local dev server could be the attacker).
        other_port = server.url.rsplit(":", 1)[0] + ":9999"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(server.ws_url, origin=other_port):
                pass
        assert refused.value.response.status_code == 403
        # The same host is accepted (and then asked to sign in).
        async with websockets.connect(server.ws_url, origin=server.url) as ws:
            assert json.loads(await ws.recv())["code"] == "not_authenticated"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 4001


# --- Health endpoints ------------------------------------------------------------------

LEAKY = 'connection to server at "10.9.8.7", port 6543 failed: Connection refused'


@pytest.fixture
def database_down(monkeypatch) -> None:
    """The readiness probe's database round trip fails with a driver message naming host and port."""
    from django.db import OperationalError

    from dashboard.pages import health

    def refuse() -> None:
        raise OperationalError(LEAKY)

    monkeypatch.setattr(health, "_database_ready", refuse)
    health._ready_logged.clear()


@TRANSACTIONAL
async def test_readyz_tells_anonymous_callers_only_which_check_failed(database_down, caplog) -> None:
    from django.test import AsyncClient

    response = await AsyncClient().get("/readyz")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert response.json() == {"status": "unavailable", "database": "unavailable", "channel_layer": "ok"}
    assert "10.9.8.7" not in response.content.decode()
    # The operator finds the reason in the log, once, not at every probe.
    await AsyncClient().get("/readyz")
    logged = [r.getMessage() for r in caplog.records if r.name == "dashboard.pages.health"]
    assert len([m for m in logged if "10.9.8.7" in m]) == 1, logged


@TRANSACTIONAL
async def test_readyz_gives_staff_and_metrics_scrapers_the_reason(database_down, owner, viewer, settings) -> None:
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    staff = AsyncClient()
    await sync_to_async(staff.force_login)(owner)
    assert "10.9.8.7" in (await staff.get("/readyz")).json()["database"]
    settings.METRICS_TOKEN = "scrape-token-123"
    scraper = await AsyncClient().get("/readyz", headers={"Authorization": "Bearer scrape-token-123"})
    assert "10.9.8.7" in scraper.json()["database"]
    signed_in = AsyncClient()
    await sync_to_async(signed_in.force_login)(viewer)
    assert (await signed_in.get("/readyz")).json()["database"] == "unavailable"


# --- Content-Security-Policy ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/d/", "/accounts/login/", "/admin/", "/admin/login/", "/healthz"])
def test_every_page_carries_a_content_security_policy_without_inline_script(client, owner, path: str) -> None:
    from django.conf import settings

    if "login" not in path:
        client.force_login(owner)
    response = client.get(path)
    assert response.status_code == 200
    policy = response["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["img-src"] == "'self' data:"
    assert directives["connect-src"] == "'self' ws://testserver wss://testserver"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert "unsafe" not in policy
    assert settings.CONTENT_SECURITY_POLICY


def test_templates_have_no_inline_script_style_or_event_handler() -> None:
    """What the policy forbids, the templates must not need: a script with a body runs only as JSON data."""
    import re

    for template in (ROOT / "templates").rglob("*.html"):
        text = template.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag, f"{template}: inline script {tag}"
        assert not re.search(r"\sstyle\s*=", text), f"{template}: inline style attribute"
        assert not re.search(r"\son[a-z]+\s*=", text), f"{template}: event-handler attribute"
        assert "<style" not in text, f"{template}: inline <style>"
        assert "javascript:" not in text, f"{template}: javascript: URL"
