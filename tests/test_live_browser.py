"""connection.js in Chromium: when every WebSocket is dropped before the server's hello, the page goes on over SSE."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator

import httpx
import pytest

from dashboard.testing import Server, project_env, running_server
from tests.streams import VIEWER, VIEWER_PASSWORD, create_viewer, issue_token

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.sqlite_only]

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[tuple[Server, str]]:
    if CHROMIUM is None:
        pytest.skip("needs Debian's Chromium: apt-get install chromium")
    pytest.importorskip("playwright")
    tmp = tmp_path_factory.mktemp("live-browser")
    env = project_env(tmp)
    with running_server(env) as server:
        create_viewer(env)
        yield server, issue_token(env, tmp / "token")


def test_a_page_whose_websockets_are_dropped_falls_back_to_sse_and_goes_live(live) -> None:
    from playwright.sync_api import sync_playwright

    server, secret = live
    body = {
        "source": "br.sse",
        "precision": "us",
        "samples": [{"metric": "temp", "ts": time.time_ns() // 1000, "value": 20.5}],
    }
    response = httpx.post(server.url + "/api/v1/ingest", json=body, headers={"Authorization": f"Token {secret}"})
    assert response.status_code == 200, response.text
    dropped: list[str] = []

    def drop(ws) -> None:  # a proxy that accepts the upgrade, then cuts it: no hello ever arrives
        dropped.append(ws.url)
        ws.close()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.route_web_socket(re.compile(r".*/ws/live/.*"), drop)
            page.goto(server.url + "/accounts/login/")
            page.fill("input[name=username]", VIEWER)
            page.fill("input[name=password]", VIEWER_PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(server.url + "/")
            streams: list[str] = []
            page.on("request", lambda request: streams.append(request.url) if "/api/v1/stream" in request.url else None)
            page.goto(server.url + "/sources/br.sse/")
            page.wait_for_function(
                # A function, not an expression string: Playwright evals a string in the page, which CSP forbids.
                "() => document.getElementById('conn-state').textContent.startsWith('live (SSE fallback)')",
                timeout=30_000,
            )
            assert len(dropped) >= 3
            assert streams and "metrics=br.sse.temp" in streams[0]
        finally:
            browser.close()
