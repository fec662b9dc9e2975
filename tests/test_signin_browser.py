"""Signed-in pages across server restarts in a real browser (Debian's Chromium driven by Playwright).

`make run` runs `ensureadmin` at every start. With an unchanged ADMIN_PASSWORD
the open page must stay signed in and come back to WebSocket soon after the
server answers again; with its session gone it must go to the sign-in page
and come back to itself afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from dashboard.testing import Server, manage, project_env

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.sqlite_only]

ADMIN, ADMIN_PASSWORD = "admin", "admin-pass-123"
PAGE = "/?view=all&since=1h"  # a query string the sign-in page must bring back


def wait_until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    from tests.test_browser import require_browser

    require_browser()
    env = project_env(tmp_path, ADMIN_USERNAME=ADMIN, ADMIN_PASSWORD=ADMIN_PASSWORD, LOG_LEVEL="WARNING")
    manage(env, "migrate", "--noinput")
    manage(env, "ensureadmin")
    token_file = tmp_path / "token"
    manage(env, "issuetoken", "browser", "--output", str(token_file))
    server = Server(env).start()
    server.token = token_file.read_text().strip()
    ingest(server)
    try:
        yield server
    finally:
        server.stop()


def ingest(server: Server) -> None:
    body = {
        "precision": "us",
        "samples": [{"source": "web-01", "metric": "cpu", "ts": time.time_ns() // 1000, "value": 1}],
    }
    answer = httpx.post(server.url + "/api/v1/ingest", json=body, headers={"Authorization": f"Token {server.token}"})
    assert answer.status_code == 200, answer.text


def restart(server: Server, *, before_start: Callable[[], None] = lambda: None, page=None) -> None:
    """Stop the server, wait until the page has fallen back to Server-Sent Events, run `make run`'s set-up, start it."""
    server.stop()
    if page is not None:
        wait_until(lambda: transport(page) == "sse", 30, "the page to fall back to Server-Sent Events")
    before_start()
    manage(server.env, "ensureadmin")  # what `make run` (manage.py serve) does at every start
    server.start()


def transport(page) -> tuple[str, str]:
    return page.eval_on_selector("#conn-state", "el => el.dataset.transport")


def state(page) -> str:
    return page.eval_on_selector("#conn-state", "el => el.dataset.state")


@pytest.fixture
def page(server: Server):
    from playwright.sync_api import sync_playwright

    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context()
        page = context.new_page()
        page.goto(server.url + "/accounts/login/")
        page.fill("input[name=username]", ADMIN)
        page.fill("input[name=password]", ADMIN_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(server.url + "/")
        page.goto(server.url + PAGE)
        wait_until(lambda: state(page) == "live" and transport(page) == "websocket", 20, "the page to go live")
        yield page
        browser.close()


def test_a_restart_with_the_same_admin_password_keeps_the_page_signed_in_and_back_on_websocket(
    server: Server, page
) -> None:
    restart(server, page=page)
    answered = time.monotonic()
    wait_until(lambda: state(page) == "live" and transport(page) == "websocket", 40, "the page back on WebSocket")
    print(f"[restart] back on WebSocket {time.monotonic() - answered:.1f} s after the server answered again")
    assert urlparse(page.url).path == "/", f"the page left for {page.url}"
    ingest(server)  # and the session still works for the API the page uses
    assert page.evaluate("fetch('/api/v1/alerts').then(r => r.status)") == 200


def test_a_page_whose_session_was_deleted_goes_to_sign_in_and_comes_back_to_itself(server: Server, page) -> None:
    delete_sessions = lambda: manage(  # noqa: E731
        server.env, "shell", "-c", "from django.contrib.sessions.models import Session; Session.objects.all().delete()"
    )
    restart(server, before_start=delete_sessions, page=page)
    page.wait_for_url("**/accounts/login/**", timeout=40_000)
    query = parse_qs(urlparse(page.url).query)
    assert query["next"] == [PAGE], page.url
    page.fill("input[name=username]", ADMIN)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + PAGE)
    wait_until(lambda: state(page) == "live", 20, "the page to go live again")
