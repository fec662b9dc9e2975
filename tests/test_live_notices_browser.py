"""The server's stale notice in a real browser: a panel whose source went silent says so in words, then live again.

Same server set-up and browser as tests/test_browser.py (its fixtures); the
source's expected interval is made 1 s so three missed intervals take 3 s.
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.test_browser import HOST, Site, browser, host_samples, now_us, page, shot, site  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.sqlite_only]


@pytest.fixture
def quick_host(site: Site) -> None:  # noqa: F811
    """The host's recent readings, and an expected interval of 1 s (set before the browser signs in and subscribes)."""
    site.ingest(host_samples(60))
    with sqlite3.connect(site.server.env["SQLITE_PATH"], timeout=30) as db:
        db.execute("UPDATE dashboard_source SET expected_interval_s = 1 WHERE slug = ?", (f"host.{HOST}",))


def test_a_panel_of_a_silent_source_says_so_and_goes_live_when_it_sends_again(site: Site, quick_host, page) -> None:  # noqa: F811
    page.goto(site.server.url + "/d/host/?range=5m")
    panel = page.locator(".panel", has_text="CPU total")
    status = panel.locator(".panel-status[data-state=stale]", has_text="source silent since")
    status.wait_for(timeout=15_000)
    print(f"panel status: {status.text_content()!r}")
    shot(page, "panel-source-silent")
    site.ingest([{"source": f"host.{HOST}", "metric": "cpu.total", "ts": now_us(), "value": 42.5, "unit": "%"}])
    panel.locator(".panel-status[data-state=live]").wait_for(timeout=10_000)
