"""A fleet board follows its glob: a device created after the page opened joins the panel live (#18 item 4)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from dashboard.testing import Server, manage, project_env, running_server
from tests.test_journeys import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.sqlite_only]
PASSWORD = "fleet-pass-123"


def post(http: httpx.Client, device: str, value: float) -> None:
    body = {
        "precision": "us",
        "samples": [{"source": f"iot.{device}", "metric": "temperature", "ts": time.time_ns() // 1000, "value": value}],
    }
    response = http.post("/api/v1/ingest", json=body)
    assert response.status_code == 200, response.text


@pytest.fixture
def fleet(tmp_path) -> Iterator[tuple[Server, httpx.Client]]:
    if CHROMIUM is None:
        pytest.skip("needs Debian's Chromium: apt-get install chromium")
    pytest.importorskip("playwright.sync_api", reason="needs Playwright (never `playwright install`)")
    env = project_env(tmp_path, PULSEBOARD_BACKGROUND="0")
    with running_server(env) as server:
        manage(
            env,
            "shell",
            "-c",
            "from django.contrib.auth.models import User\n"
            "from dashboard.models import Dashboard, Panel\n"
            f"owner = User.objects.create_superuser('fleet', password='{PASSWORD}')\n"
            "board = Dashboard.objects.create(title='Fleet', slug='fleet', owner=owner)\n"
            "Panel.objects.create(dashboard=board, title='Temperatures', metrics=['iot.*.temperature'], w=12, h=4)\n",
        )
        token_file = tmp_path / "token"
        manage(env, "issuetoken", "fleet agent", "--output", str(token_file))
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Token {token_file.read_text().strip()}"}
        ) as http:
            post(http, "dev-001", 20.0)
            yield server, http


def test_a_device_created_after_the_page_opened_joins_the_fleet_panel_live(fleet) -> None:
    from playwright.sync_api import sync_playwright

    server, http = fleet
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/accounts/login/")
        page.fill("input[name=username]", "fleet")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(server.url + "/")
        page.goto(server.url + "/d/fleet/")
        page.locator("#conn-state[data-state=live]").wait_for(timeout=15_000)
        keys = "() => window.pulseboard.panels[0].keys"
        assert page.evaluate(keys) == ["iot.dev-001.temperature"]

        created = time.monotonic()
        post(http, "dev-002", 21.5)  # a new device: its source and metric are created by this sample
        page.wait_for_function(
            "() => window.pulseboard.panels[0].keys.includes('iot.dev-002.temperature')", timeout=10_000
        )
        print(f"new device on the open board {time.monotonic() - created:.2f} s after its first sample")
        for value in (22.0, 22.5):
            post(http, "dev-002", value)
            time.sleep(0.3)  # pacing the device's readings, not synchronisation
        page.wait_for_function(
            "() => (window.pulseboard.store.latest('iot.dev-002.temperature') || {}).v === 22.5", timeout=10_000
        )
        assert sorted(page.evaluate(keys)) == ["iot.dev-001.temperature", "iot.dev-002.temperature"]
        shot(page, "fleet-new-device")
        browser.close()
    assert not errors, errors
