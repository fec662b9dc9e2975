"""An operator's journey on the alerts screen, in Debian's Chromium against a real Daphne with the real Redis.

Write a rule in the page (the typo refused with a suggestion first), feed the
metric through the real ingest API, watch the rule go pending -> firing,
acknowledge it from the list, disable it and see it resolved, all without a
reload. The end state is saved to artifacts/journeys/alerts.png.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from dashboard.testing import ROOT, Server, manage, project_env, running_server
from tests.conftest import reachable

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
JOURNEYS = ROOT / "artifacts" / "journeys"
REDIS_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/0")
PASSWORD = "rules-pass-123"
KEY = "iot.plant-01.temperature"


@dataclass
class Site:
    server: Server
    http: httpx.Client

    def sample(self, value: float, ts: int) -> None:
        reading = {"source": "iot.plant-01", "source_kind": "device", "metric": "temperature", "unit": "°C"}
        response = self.http.post(
            "/api/v1/ingest", json={"precision": "us", "samples": [{**reading, "ts": ts, "value": value}]}
        )
        assert response.status_code == 200 and response.json()["accepted"] == 1, response.text[:500]


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    if CHROMIUM is None:
        pytest.skip("needs Debian's Chromium: apt-get install chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("needs Playwright: pip install -r requirements-dev.txt (never `playwright install`)")
    if not reachable(REDIS_URL, 6379):
        pytest.skip(f"needs Redis at {REDIS_URL}: start it with `redis-server` or set REDIS_TEST_URL")
    tmp = tmp_path_factory.mktemp("alert-journey")
    env = project_env(tmp, REDIS_URL=REDIS_URL, CHANNEL_LAYER_PREFIX=f"aj{uuid.uuid4().hex[:8]}")
    with running_server(env) as server:
        # An operator who may write rules (the AlertRule permissions) and acknowledge (change alert instance).
        manage(
            env,
            "shell",
            "-c",
            "from django.contrib.auth.models import Permission, User; "
            f"u = User.objects.create_user('ops', password='{PASSWORD}'); "
            "u.user_permissions.add(*Permission.objects.filter(codename__in=["
            "'add_alertrule', 'change_alertrule', 'delete_alertrule', 'change_alertinstance']))",
        )
        token_file = tmp / "token"
        manage(env, "issuetoken", "alert journey", "--output", str(token_file))
        http = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Token {token_file.read_text().strip()}"}, timeout=10
        )
        yield Site(server, http)
        http.close()


@pytest.fixture
def page(site: Site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
        page = context.new_page()
        page.goto(site.server.url + "/accounts/login/")
        page.fill("input[name=username]", "ops")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(site.server.url + "/")
        yield page
        browser.close()


def test_an_operator_writes_a_rule_watches_it_fire_acknowledges_and_disables_it(site: Site, page) -> None:
    start = now_us()
    site.sample(21.0, start - 20_000_000)  # the metric exists and is normal
    page.click("nav >> text=Alerts")
    page.wait_for_url(site.server.url + "/alerts/")
    page.locator("#conn-state[data-state=live]").wait_for(timeout=10_000)
    page.evaluate("() => { window.sameDocument = true; }")  # gone if anything reloads the page

    # Write the rule, with the typo first: the preview and the save both say so and suggest the key.
    page.click("#new-rule")
    page.get_by_label("Name").fill("Plant too warm")
    page.get_by_label("Metric key or glob").fill("iot.*.temprature")
    page.locator("#rule-preview .preview-none").wait_for(timeout=5_000)
    assert page.locator("#rule-preview button.suggestion").first.inner_text() == "iot.*.temperature"
    page.get_by_label("Threshold", exact=True).fill("30")
    page.get_by_label("Holds for (s) before firing").fill("5")
    page.get_by_label("Severity").select_option("critical")
    page.click("#rule-save")
    error = page.locator("#rule-error")
    error.locator("button.suggestion").first.wait_for(timeout=5_000)
    assert "matches no metric you may read" in error.inner_text()
    assert page.get_by_label("Metric key or glob").get_attribute("aria-invalid") == "true"
    error.locator("button.suggestion", has_text="iot.*.temperature").click()
    page.locator("#rule-preview .preview-count", has_text="Matches 1 metric").wait_for(timeout=5_000)
    assert page.locator("#rule-preview li code").inner_text() == KEY
    page.click("#rule-save")
    card = page.locator(".rule-card", has_text="Plant too warm")
    card.locator(".rule-state", has_text="ok").wait_for(timeout=5_000)
    assert "above 30 °C for 5 s" in card.locator(".rule-condition").inner_text()
    assert page.locator("#rule-editor").is_hidden()

    # The metric breaches: pending at once, firing when a sample 5 s later still breaches.
    breach_ts = now_us() - 6_000_000
    site.sample(34.5, breach_ts)
    card.locator(".rule-state", has_text="pending").wait_for(timeout=10_000)
    row = card.locator(f"tr.instance[data-metric='{KEY}']")
    assert row.locator(".state").inner_text() == "pending"
    assert row.locator(".value").inner_text() == "34.50 °C"
    assert int(row.locator(".since").get_attribute("data-since")) == breach_ts
    site.sample(35.25, now_us())
    card.locator(".rule-state", has_text="firing").wait_for(timeout=10_000)
    assert row.locator(".state").inner_text() == "firing" and row.locator(".value").inner_text() == "35.25 °C"
    since = row.locator(".since").get_attribute("data-since")
    shown_since = row.locator(".since").inner_text()
    assert len(shown_since) == 8 and shown_since[2] == ":" and int(shown_since[:2]) < 24  # HH:MM:SS, 24-hour clock
    page.locator("#alert-announcer", has_text="Plant too warm is now firing").wait_for(timeout=5_000)

    # Acknowledge from the list: who did it shows, "since" stays.
    row.locator("button.ack").click()
    row.locator(".ack-by", has_text="acknowledged by ops").wait_for(timeout=5_000)
    assert row.locator(".since").get_attribute("data-since") == since
    assert row.locator(".since").inner_text() == shown_since

    # History shows the values that crossed, newest first.
    card.locator("button.history-toggle").click()
    history = card.locator(".rule-history tbody tr")
    history.first.wait_for(timeout=5_000)
    assert [history.nth(i).locator(".value").inner_text() for i in range(2)] == ["35.25 °C", "34.50 °C"]

    # Disable it: the alert is resolved on the page, no reload.
    card.locator("button.toggle-rule").click()
    card.locator(".rule-state", has_text="disabled").wait_for(timeout=5_000)
    card.locator("tr.instance").wait_for(state="detached", timeout=10_000)
    card.locator(".rule-history tbody tr", has_text="resolved").first.wait_for(timeout=10_000)
    assert "rule disabled" in card.locator(".rule-history tbody tr").first.inner_text()
    assert page.evaluate("() => window.sameDocument") is True
    JOURNEYS.mkdir(parents=True, exist_ok=True)
    path = JOURNEYS / "alerts.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot {path}")

    # On a phone: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    card.locator("button.edit-rule").click()
    lefts = page.evaluate(
        "() => [...document.querySelectorAll('#rule-form .field')].map((f) => Math.round(f.getBoundingClientRect().left))"
    )
    assert len(set(lefts)) == 1, f"the editor's fields are not in one column: {lefts}"
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(JOURNEYS / "alerts-phone.png"), full_page=True)
