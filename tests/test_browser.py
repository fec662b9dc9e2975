"""Dashboards in a real browser: Chromium (Debian's) driven by Playwright against Daphne with the real Redis.

One server and one browser serve the module: data is ingested over the HTTP
API with an agent token, as an agent would. Screenshots land in
artifacts/screenshots/ (printed), for people to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from dashboard.testing import ROOT, Server, manage, project_env, running_server
from tests.conftest import reachable

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
HOST = "e2e-host"
PASSWORD = "operator-pass-123"
REDIS_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/0")
ALERT_LATENCY_LIMIT_S = 2.0  # the requirement; asserted with slack below, measured and printed


def require_browser() -> None:
    if CHROMIUM is None:
        pytest.skip("needs Debian's Chromium: apt-get install chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("needs Playwright: pip install -r requirements-dev.txt (never `playwright install`)")
    if not reachable(REDIS_URL, 6379):
        pytest.skip(f"needs Redis at {REDIS_URL}: start it with `redis-server` or set REDIS_TEST_URL")


class Hook(BaseHTTPRequestHandler):
    """A webhook receiver on loopback recording when each notification arrived."""

    received: list[tuple[float, dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Hook.received.append((time.monotonic(), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


class Site:
    """The running server, its agent token and helpers to feed it."""

    def __init__(self, server: Server, token: str, hook_url: str) -> None:
        self.server = server
        self.token = token
        self.hook_url = hook_url
        self.http = httpx.Client(base_url=server.url, headers={"Authorization": f"Token {token}"}, timeout=10)

    def ingest(self, samples: list[dict]) -> None:
        for i in range(0, len(samples), 5000):
            response = self.http.post("/api/v1/ingest", json={"precision": "us", "samples": samples[i : i + 5000]})
            assert response.status_code == 200, response.text[:500]


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    require_browser()
    tmp = tmp_path_factory.mktemp("browser")
    env = project_env(
        tmp,
        REDIS_URL=REDIS_URL,
        CHANNEL_LAYER_PREFIX=f"e2e{uuid.uuid4().hex[:8]}",
        PULSEBOARD_RATE_LIMIT_PER_S="1000",
        PULSEBOARD_RATE_LIMIT_BURST="2000",
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
    )
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{hook.server_port}/hook"
    with running_server(env) as server:
        manage(env, "demodashboards", "--host", HOST, "--history-days", "8")
        manage(
            env,
            "shell",
            "-c",
            "from django.contrib.auth.models import User; from dashboard.models import AlertRule; "
            f"User.objects.create_user('operator', password='{PASSWORD}', is_staff=True); "
            "AlertRule.objects.create(name='Rack 3 inlet too warm', metric_pattern='iot.sensor-03.temperature', "
            f"condition='above', threshold=28, for_s=0, severity='critical', webhook_url='{hook_url}')",
        )
        token_file = tmp / "token"
        manage(env, "issuetoken", "browser tests", "--output", str(token_file))
        yield Site(server, token_file.read_text().strip(), hook_url)
    hook.shutdown()


@pytest.fixture(scope="module")
def browser(site: Site):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {SCREENSHOTS}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, site: Site):
    context = browser.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=1, timezone_id="UTC")
    page = context.new_page()
    page.goto(site.server.url + "/accounts/login/")
    page.fill("input[name=username]", "operator")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(site.server.url + "/")
    yield page
    context.close()


def host_samples(seconds: int, end: int | None = None, step_s: float = 1.0) -> list[dict]:
    """A few minutes of this host's metrics, as the system collector would send them."""
    end = end or now_us()
    out = []
    n = int(seconds / step_s)
    for i in range(n):
        ts = end - int((n - i) * step_s * 1_000_000)
        wave = (i % 60) / 60
        base = {"source": f"host.{HOST}", "source_kind": "host", "ts": ts}
        out += [
            {**base, "metric": "cpu.total", "value": 25 + 30 * wave, "unit": "%"},
            {**base, "metric": "mem.used_pct", "value": 61.5, "unit": "%"},
            {**base, "metric": "load.1m", "value": 1.1 + wave, "unit": ""},
            {**base, "metric": "disk.used_pct", "value": 48.0, "unit": "%"},
            {**base, "metric": "net.rx_bps", "value": 120_000 + 80_000 * wave, "unit": "B/s"},
            {**base, "metric": "net.tx_bps", "value": 40_000 + 20_000 * wave, "unit": "B/s"},
        ]
        for core in range(4):
            out.append({**base, "metric": f"cpu.core{core}", "value": 20 + 10 * core + 20 * wave, "unit": "%"})
    return out


def market_samples(seconds: int, step_s: float = 0.5) -> list[dict]:
    import math
    import random

    rng = random.Random(7)
    end = now_us()
    out = []
    prices = {"btc-usd": 65000.0, "eth-usd": 3200.0, "sol-usd": 150.0}
    n = int(seconds / step_s)
    for i in range(n):
        ts = end - int((n - i) * step_s * 1_000_000)
        for symbol in prices:
            prices[symbol] *= math.exp(rng.gauss(0, 0.0012))
            p = round(prices[symbol], 2)
            base = {"source": f"market.{symbol}", "source_kind": "feed", "ts": ts, "unit": "USD", "kind": "price"}
            out += [
                {**base, "metric": "last", "value": p},
                {**base, "metric": "bid", "value": round(p * 0.9998, 2)},
                {**base, "metric": "ask", "value": round(p * 1.0002, 2)},
                {**base, "metric": "volume", "value": round(rng.uniform(0.1, 4), 3), "unit": "", "kind": "volume"},
            ]
    return out


def iot_samples(seconds: int, sensors: int = 6, step_s: float = 5.0) -> list[dict]:
    end = now_us()
    out = []
    n = int(seconds / step_s)
    for s in range(1, sensors + 1):
        for i in range(n):
            if s == 4 and n // 3 < i < n // 2:
                continue  # sensor 4 dropped out for a while: drawn as a gap
            ts = end - int((n - i) * step_s * 1_000_000)
            base = {"source": f"iot.sensor-{s:02d}", "source_kind": "device", "ts": ts}
            out += [
                {**base, "metric": "temperature", "value": round(20 + s * 0.8 + (i % 40) * 0.05, 2), "unit": "°C"},
                {**base, "metric": "humidity", "value": round(40 + s * 2 + (i % 30) * 0.1, 1), "unit": "%"},
                {**base, "metric": "battery", "value": round(95 - s * 13.5 - i * 0.002, 1), "unit": "%"},
            ]
    return out


def shot(page, name: str) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot {path}")
    return path


def test_a_dashboard_chart_receives_new_points_live(site: Site, page) -> None:
    site.ingest(host_samples(240))
    page.goto(site.server.url + "/d/host/?range=5m")
    panel = page.locator(".panel", has_text="CPU total")
    panel.locator(".panel-status[data-state=live]").wait_for(timeout=10_000)
    points = "(t) => window.pulseboard.panels.find((p) => p.cfg.title === t).plot.data[0].length"
    before = page.evaluate(points, "CPU total")
    assert before > 100, "the chart starts from the replayed history"
    site.ingest([{"source": f"host.{HOST}", "metric": "cpu.total", "ts": now_us(), "value": 87.25, "unit": "%"}])
    panel.locator("table.legend td.num").first.filter(has_text="87.25").wait_for(timeout=5_000)
    assert page.evaluate(points, "CPU total") > before
    # A dropped socket shows as reconnecting on the panels, then live again after the resume.
    page.evaluate("() => window.pulseboard.conn.ws.close()")
    panel.locator(".panel-status[data-state=reconnecting]").wait_for(timeout=5_000)
    panel.locator(".panel-status[data-state=live]").wait_for(timeout=10_000)
    shot(page, "dashboard-host")


def test_a_7_day_range_shows_downsampled_history(site: Site, page) -> None:
    page.goto(site.server.url + "/d/host/?range=5m")
    page.locator(".panel-status[data-state=live]").first.wait_for(timeout=10_000)
    page.click("[data-range='7d']")
    assert "range=7d" in page.url, "the range is in the URL, so the link can be shared"
    panel = page.locator(".panel", has_text="CPU total")
    panel.locator(".panel-status[data-state=history]").wait_for(timeout=10_000)
    page.wait_for_function(
        "() => window.pulseboard.panels.find((p) => p.cfg.title === 'CPU total').plot.data[0].length > 100"
    )
    width, drawn = page.evaluate(
        "() => { const p = window.pulseboard.panels.find((p) => p.cfg.title === 'CPU total');"
        " return [p.chartBox.clientWidth, p.plot.data[1].filter((v) => v != null).length]; }"
    )
    assert 100 < drawn <= width, "never more points than pixels"
    shot(page, "dashboard-host-7d")
    # The shared link opens the same view.
    page.goto(page.url)
    panel.locator(".panel-status[data-state=history]").wait_for(timeout=10_000)


def test_drag_to_zoom_pan_pause_and_time_zone_live_in_the_url(site: Site, page) -> None:
    site.ingest(host_samples(300))
    page.goto(site.server.url + "/d/host/?range=15m")
    chart = page.locator(".panel", has_text="CPU total").locator(".u-over")
    chart.wait_for(timeout=10_000)
    box = chart.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + 40)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + 40, steps=8)
    page.mouse.up()
    page.wait_for_url("**from=**")
    zoomed = dict(p.split("=") for p in page.url.split("?")[1].split("&"))
    span_ms = int(zoomed["to"]) - int(zoomed["from"])
    assert 3 * 60_000 < span_ms < 8 * 60_000, "the zoom covers the dragged part of 15 minutes"
    page.locator(".panel", has_text="CPU total").locator(".panel-status[data-state=history]").wait_for()
    page.click("#pan-back")
    panned = dict(p.split("=") for p in page.url.split("?")[1].split("&"))
    assert abs(int(panned["from"]) - (int(zoomed["from"]) - span_ms / 2)) <= 2, "back by half the range"
    page.click("[data-range='5m']")
    page.click("#pause")
    assert "paused=1" in page.url
    page.locator(".panel-status[data-state=paused]").first.wait_for()
    page.click("#pause")
    assert "paused" not in page.url
    page.fill("#timezone", "Asia/Tokyo")
    page.dispatch_event("#timezone", "change")
    page.wait_for_function("() => document.body.dataset.timezone === 'Asia/Tokyo'")
    assert page.locator("#timezone").input_value() == "Asia/Tokyo"
    page.evaluate(
        "() => fetch('/api/v1/preferences', {method: 'POST', headers: {'X-CSRFToken': document.cookie.match(/csrftoken=([^;]+)/)[1]}, body: JSON.stringify({timezone: 'UTC'})})"
    )


def test_a_7_day_candlestick_uses_the_ohlc_buckets_of_the_series_api(site: Site, page) -> None:
    page.goto(site.server.url + "/d/markets/?range=7d")
    page.locator(".panel-candlestick .panel-status[data-state=history]").wait_for(timeout=10_000)
    page.wait_for_function(
        "() => window.pulseboard.panels.find((p) => p.cfg.kind === 'candlestick').plot.data[0].length > 50"
    )
    shot(page, "dashboard-markets-7d")


def test_the_markets_dashboard_draws_all_four_panel_kinds(site: Site, page) -> None:
    site.ingest(market_samples(600))
    page.goto(site.server.url + "/d/markets/?range=15m")
    for kind in ("stat", "table", "candlestick", "timeseries"):
        page.locator(f".panel-{kind} .panel-status[data-state=live]").first.wait_for(timeout=10_000)
    page.wait_for_function(
        "() => window.pulseboard.panels.find((p) => p.cfg.kind === 'candlestick').plot.data[0].length > 20"
    )
    rows = page.locator(".panel-table tbody tr")
    assert rows.count() == 3
    # Sortable: a click on Value sorts the biggest first, a second click the smallest.
    page.locator(".panel-table th", has_text="Value").click()
    assert "btc" in rows.first.inner_text().lower()
    page.locator(".panel-table th", has_text="Value").click()
    assert "sol" in rows.first.inner_text().lower()
    page.wait_for_timeout(500)
    shot(page, "dashboard-markets-all-panel-kinds")
    page.goto(site.server.url + "/")
    page.wait_for_timeout(1000)
    shot(page, "overview")
    page.goto(site.server.url + "/d/")
    shot(page, "dashboard-list")


def test_a_threshold_breach_fires_the_banner_and_the_webhook_within_2_s(site: Site, page) -> None:
    site.ingest(iot_samples(900))
    page.goto(site.server.url + "/d/iot-fleet/?range=15m")
    page.locator(".panel-timeseries .panel-status[data-state=live]").first.wait_for(timeout=10_000)
    # Let the page's hour of replayed history finish loading: this measures a breach in steady state.
    page.wait_for_timeout(3000)
    warm = time.monotonic()
    site.ingest(
        [{"source": "iot.sensor-03", "metric": "temperature", "ts": now_us() - 1000, "value": 24.0, "unit": "°C"}]
    )
    print(f"\na normal sample's ingest call took {(time.monotonic() - warm) * 1000:.0f} ms")
    Hook.received.clear()
    # The page notes when the banner shows, so the browser's clock times it, not the test's polling.
    page.evaluate(
        "() => new MutationObserver((_, obs) => { if (document.querySelector('.alert-row.state-firing')) {"
        " window.bannerAt = performance.now() + performance.timeOrigin; obs.disconnect(); } })"
        ".observe(document.getElementById('alert-banner'), {childList: true, subtree: true})"
    )
    sent_at = time.time()
    sent_mono = time.monotonic()
    site.ingest([{"source": "iot.sensor-03", "metric": "temperature", "ts": now_us(), "value": 29.4, "unit": "°C"}])
    answered_s = time.monotonic() - sent_mono  # the ingest call returns once the sample is stored and evaluated
    page.locator(".alert-row.state-firing", has_text="Rack 3 inlet too warm").wait_for(timeout=10_000)
    banner_s = page.evaluate("() => window.bannerAt") / 1000 - sent_at
    deadline = time.monotonic() + 10
    while not Hook.received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert Hook.received, "the webhook never arrived"
    webhook_s = Hook.received[0][0] - sent_mono
    print(
        f"\nalert latency: banner {banner_s * 1000:.0f} ms, webhook {webhook_s * 1000:.0f} ms after the breaching sample "
        f"was sent (the ingest call itself took {answered_s * 1000:.0f} ms)"
    )
    assert Hook.received[0][1]["state"] == "firing" and Hook.received[0][1]["metric"] == "iot.sensor-03.temperature"
    # Generous bounds: the measured figures above are what matters; CI machines stall.
    assert banner_s < ALERT_LATENCY_LIMIT_S * 2.5 and webhook_s < ALERT_LATENCY_LIMIT_S * 2.5

    # The chart of the metric carries the alert: a marker and a red border.
    page.locator(".panel.alerting", has_text="Temperature").wait_for(timeout=5_000)
    gap = page.evaluate(
        "() => { const p = window.pulseboard.panels.find((p) => p.cfg.title === 'Temperature');"
        " const s = p.plot.data[p.keys.indexOf('iot.sensor-04.temperature') + 1];"
        " return [s.filter((v) => v === null).length, s.filter((v) => v != null).length]; }"
    )
    assert gap[0] > 5 and gap[1] > 50, "sensor 04's silence is drawn as a gap, its data as a line"
    row = page.locator(".alert-row.state-firing", has_text="Rack 3 inlet too warm")
    row.locator("button.ack").click()
    row.locator(".ack-by", has_text="operator").wait_for(timeout=5_000)
    shot(page, "alert-firing")


def test_on_a_phone_the_panels_stack_in_one_column(site: Site, page) -> None:
    site.ingest(market_samples(120))
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(site.server.url + "/d/markets/?range=15m")
    page.locator(".panel-status[data-state=live]").first.wait_for(timeout=10_000)
    page.wait_for_timeout(500)
    boxes = [b for b in (p.bounding_box() for p in page.locator(".panel").all()) if b]
    assert len(boxes) >= 4
    assert len({round(b["x"]) for b in boxes}) == 1, "one column"
    assert all(b["width"] > 330 for b in boxes)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "nothing sticks out sideways"
    shot(page, "phone-markets")


def test_an_editor_adds_moves_and_removes_panels_in_the_page(site: Site, page) -> None:
    # The editor refuses a pattern that matches no readable metric: this one must exist.
    site.ingest([{"source": "iot.sensor-02", "metric": "temperature", "ts": now_us(), "value": 21.0, "unit": "°C"}])
    page.goto(site.server.url + "/d/iot-fleet/?range=5m")
    page.click("#edit-toggle")
    page.click("#add-panel")
    page.fill("#panel-form input[name=title]", "Sensor 02 temperature")
    page.select_option("#panel-form select[name=kind]", "stat")
    page.fill("#panel-form input[name=metrics]", "iot.sensor-02.temperature")
    page.click("#panel-apply")
    page.locator("#edit-status", has_text="saved").wait_for(timeout=5_000)
    added = page.locator(".panel", has_text="Sensor 02 temperature")
    added.locator("[data-tool='wider']").click()
    page.click("#edit-save")
    page.locator("#edit-status", has_text="saved").wait_for(timeout=5_000)
    page.reload()
    assert page.locator(".panel", has_text="Sensor 02 temperature").count() == 1
    config = json.loads(page.locator("#dashboard-config").text_content())
    spec = next(p for p in config["panels"] if p["title"] == "Sensor 02 temperature")
    assert (spec["kind"], spec["w"], spec["series"][0]["key"]) == ("stat", 7, "iot.sensor-02.temperature")
    page.click("#edit-toggle")
    page.locator(".panel", has_text="Sensor 02 temperature").locator("[data-tool='remove']").click()
    page.click("#edit-save")
    page.locator("#edit-status", has_text="saved").wait_for(timeout=5_000)
    page.reload()
    assert page.locator(".panel", has_text="Sensor 02 temperature").count() == 0


def test_kiosk_mode_hides_the_chrome_and_rotates_through_dashboards(site: Site, page) -> None:
    site.ingest(host_samples(60))
    page.goto(site.server.url + "/d/host/?range=15m&kiosk=1")
    page.locator(".panel-status[data-state=live]").first.wait_for(timeout=10_000)
    assert not page.locator(".topbar").is_visible()
    assert not page.locator("#time-controls").is_visible()
    shot(page, "kiosk-host")
    # Rotation moves to the next dashboard of the list and keeps the kiosk parameters.
    page.goto(site.server.url + "/d/host/?range=15m&kiosk=1&rotate=10")
    page.wait_for_url("**/d/iot-fleet/?range=15m&kiosk=1&rotate=10", timeout=20_000)


def test_the_tab_memory_stays_bounded_over_minutes_of_fast_data(site: Site, browser) -> None:
    """Feed 4 series at 400 Hz for 2 minutes; once the store is full (~50 s) the JS heap must stop growing.

    Slow, but in `make test` rather than `make soak`: it is the only test of docs/dashboards.md's
    promise that a wall screen open for weeks uses the memory it used after an hour.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(site.server.url + "/accounts/login/")
    page.fill("input[name=username]", "operator")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.goto(site.server.url + "/d/markets/?range=5m")
    cdp = context.new_cdp_session(page)
    cdp.send("Performance.enable")
    stop = threading.Event()

    def feed() -> None:
        client = httpx.Client(base_url=site.server.url, headers={"Authorization": f"Token {site.token}"}, timeout=10)
        price = 65000.0
        while not stop.is_set():
            start = now_us()
            samples = []
            for i in range(40):  # 40 samples per key per 100 ms = 400 Hz
                ts = start + i * 2500
                price += 0.5 if (ts // 1_000_000) % 2 else -0.5
                base = {"source": "market.btc-usd", "ts": ts, "unit": "USD"}
                samples += [
                    {**base, "metric": "last", "value": price},
                    {**base, "metric": "bid", "value": price - 1},
                    {**base, "metric": "ask", "value": price + 1},
                    {**base, "metric": "volume", "value": 0.1 * (i + 1), "unit": ""},
                ]
            client.post("/api/v1/ingest", json={"precision": "us", "samples": samples})
            stop.wait(max(0.0, 0.1 - (now_us() - start) / 1e6))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < 120:
            time.sleep(10)
            cdp.send("HeapProfiler.collectGarbage")
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            samples.append((time.monotonic() - started, metrics["JSHeapUsedSize"] / 1e6))
    finally:
        stop.set()
        feeder.join(5)
    print("\nJS heap (s, MB): " + ", ".join(f"({t:.0f}, {mb:.1f})" for t, mb in samples))
    points = page.evaluate("() => Math.max(...[...window.pulseboard.store.series.values()].map((s) => s.t.length))")
    print(f"largest series held by the tab: {points} points")
    context.close()
    early = sum(mb for _, mb in samples[5:8]) / 3  # 60-80 s: the store has reached its cap
    late = sum(mb for _, mb in samples[-3:]) / 3
    print(f"heap early {early:.1f} MB, late {late:.1f} MB")
    assert late < early * 1.25 + 2, "the tab's memory keeps growing"
