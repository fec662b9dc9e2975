"""What an operator does in the page, in Debian's Chromium, asserting what they see (issue #13).

Each journey checks the chart canvas's pixels or the values the page shows,
not only that a request succeeded, and leaves a screenshot of its end state
in artifacts/journeys/. One server (its own SQLite file and in-memory channel
layer) and one browser serve the module.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dashboard.testing import ROOT, Server, manage, project_env, running_server

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.sqlite_only]

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
SCREENSHOTS = ROOT / "artifacts" / "journeys"
PASSWORD = "operator-pass-123"
SENSOR = "iot.sensor-07"  # reports every 2 s
LONELY = "iot.sensor-09"  # sent one reading, a minute ago
HOT = "iot.sensor-08"  # crosses the journey rule's threshold
HOST = "journey-host"
SPIKE = 35.5
BLUE, ORANGE = (0x4F, 0x9C, 0xF9), (0xF5, 0xA5, 0x24)  # panels.js COLORS[0] and COLORS[1]


class Site:
    """The running server, its agent token, the spike's time and a share link's secret."""

    def __init__(self, server: Server, token: str, share_secret: str, board_ids: dict[str, int]) -> None:
        self.server = server
        self.url = server.url
        self.share_secret = share_secret
        self.board_ids = board_ids
        self.http = httpx.Client(base_url=server.url, headers={"Authorization": f"Token {token}"}, timeout=10)
        self.spike_us = 0

    def ingest(self, samples: list[dict]) -> None:
        for i in range(0, len(samples), 5000):
            response = self.http.post("/api/v1/ingest", json={"precision": "us", "samples": samples[i : i + 5000]})
            assert response.status_code == 200, response.text[:500]


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    if CHROMIUM is None:
        pytest.skip("needs Debian's Chromium: apt-get install chromium")
    pytest.importorskip("playwright.sync_api", reason="needs Playwright (never `playwright install`)")
    tmp = tmp_path_factory.mktemp("journeys")
    env = project_env(tmp, PULSEBOARD_RATE_LIMIT_PER_S="1000", PULSEBOARD_RATE_LIMIT_BURST="5000")
    with running_server(env) as server:
        manage(env, "demodashboards", "--host", HOST)
        out = manage(
            env,
            "shell",
            "-c",
            "from django.contrib.auth.models import User; from dashboard.models import Dashboard, Panel, ShareLink\n"
            f"operator = User.objects.create_superuser('operator', password='{PASSWORD}')\n"
            "board = Dashboard.objects.create(slug='mixed', title='Mixed')\n"
            "Panel.objects.create(dashboard=board, title='Sensor temperature', kind='timeseries',"
            f" metrics=['{SENSOR}.temperature'], x=0, y=0, w=6, h=4)\n"
            f"Panel.objects.create(dashboard=board, title='Sensor now', kind='stat', metrics=['{SENSOR}.temperature'],"
            " options={'unit': '°C'}, x=6, y=0, w=6, h=4)\n"
            "# written straight into the database, as an old admin form let through: metrics is a bare string\n"
            "Panel.objects.create(dashboard=board, title='Broken one', kind='timeseries', metrics='iot.*',"
            " x=0, y=4, w=12, h=3)\n"
            "link, secret = ShareLink.issue(Dashboard.objects.get(slug='host'), 'wall', created_by=operator)\n"
            "print('SECRET', secret)\n"
            "print('IDS', {b.slug: b.pk for b in Dashboard.objects.all()})\n"
            "from dashboard.models import AlertRule\n"
            f"AlertRule.objects.create(name='Sensor 08 too warm', metric_pattern='{HOT}.temperature',"
            " condition='above', threshold=28, for_s=0, severity='critical')\n",
        )
        secret = re.search(r"SECRET (\S+)", out).group(1)
        ids = eval(re.search(r"IDS (\{.*\})", out).group(1))  # noqa: S307 - our own printout
        token_file = tmp / "token"
        manage(env, "issuetoken", "journeys", "--output", str(token_file))
        site = Site(server, token_file.read_text().strip(), secret, ids)
        end = now_us()
        samples = []
        for i in range(360):  # 12 minutes of a sensor reporting every 2 s, one spike 4 minutes ago
            ts = end - (360 - i) * 2_000_000
            value = SPIKE if i == 240 else 21 + (i % 30) * 0.05
            if i == 240:
                site.spike_us = ts
            base = {"source": SENSOR, "source_kind": "device", "ts": ts}
            samples += [
                {**base, "metric": "temperature", "value": value, "unit": "°C"},
                {**base, "metric": "humidity", "value": 40 + (i % 20) * 0.1, "unit": "%"},
            ]
        samples.append({"source": LONELY, "metric": "humidity", "ts": end - 60_000_000, "value": 55.0, "unit": "%"})
        for i in range(300):  # five minutes of this host every second
            ts = end - (300 - i) * 1_000_000
            base = {"source": f"host.{HOST}", "source_kind": "host", "ts": ts}
            wave = (i % 60) / 60
            samples += [
                {**base, "metric": "cpu.total", "value": 25 + 30 * wave, "unit": "%"},
                {**base, "metric": "mem.used_pct", "value": 61.5, "unit": "%"},
                {**base, "metric": "load.1m", "value": 1.1 + wave, "unit": ""},
                {**base, "metric": "disk.used_pct", "value": 48.0, "unit": "%"},
                {**base, "metric": "net.rx_bps", "value": 120_000 + 80_000 * wave, "unit": "B/s"},
                {**base, "metric": "net.tx_bps", "value": 40_000 + 20_000 * wave, "unit": "B/s"},
            ]
            samples += [
                {**base, "metric": f"cpu.core{c}", "value": 20 + 10 * c + 20 * wave, "unit": "%"} for c in range(4)
            ]
        site.ingest(samples)
        yield site


@pytest.fixture(scope="module")
def browser(site: Site):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def sign_in(page, site: Site) -> None:
    page.goto(site.url + "/accounts/login/")
    page.fill("input[name=username]", "operator")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(site.url + "/")


@pytest.fixture
def page(browser, site: Site):
    context = browser.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=1, timezone_id="UTC")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(page, site)
    page.errors = errors
    yield page
    context.close()


def shot(page, name: str) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot {path}")
    return path


# Pixels of one colour in a panel's plot area: what the operator sees drawn, not what the data holds.
COUNT_PIXELS = """([title, rgb, tolerance]) => {
  const p = window.pulseboard.panels.find((p) => p.cfg.title === title);
  const { left, top, width, height } = p.plot.bbox;
  const img = p.plot.ctx.getImageData(left, top, width, height).data;
  let n = 0;
  for (let i = 0; i < img.length; i += 4) {
    if (Math.abs(img[i] - rgb[0]) + Math.abs(img[i + 1] - rgb[1]) + Math.abs(img[i + 2] - rgb[2]) <= tolerance) n++;
  }
  return n;
}"""


def pixels(page, title: str, rgb: tuple[int, int, int], tolerance: int = 40) -> int:
    return page.evaluate(COUNT_PIXELS, [title, list(rgb), tolerance])


def wait_drawn(page, title: str, rgb: tuple[int, int, int], at_least: int, timeout_s: float = 10) -> int:
    """Wait until the panel's canvas shows at least this many pixels of the colour; return the count."""
    deadline = time.monotonic() + timeout_s
    while True:
        n = pixels(page, title, rgb)
        if n >= at_least or time.monotonic() > deadline:
            return n
        page.wait_for_timeout(100)


def wait_gone(page, title: str, rgb: tuple[int, int, int], timeout_s: float = 5) -> int:
    """Wait until the panel's canvas shows none of the colour; return the last count."""
    deadline = time.monotonic() + timeout_s
    while True:
        n = pixels(page, title, rgb)
        if n == 0 or time.monotonic() > deadline:
            return n
        page.wait_for_timeout(50)


def panel(page, title: str):
    return page.locator(".panel", has=page.locator(".panel-title", has_text=re.compile(f"^{re.escape(title)}$")))


def test_zooming_into_a_spike_on_a_2_second_sensor_shows_the_line_and_the_spike_under_the_cursor(site, page) -> None:
    page.goto(site.url + "/d/iot-fleet/?range=15m")
    temperature = panel(page, "Temperature")
    temperature.locator(".panel-status[data-state=live]").wait_for(timeout=10_000)
    page.wait_for_function(
        "() => window.pulseboard.panels.find((p) => p.cfg.title === 'Temperature').plot.data[0].length > 300"
    )
    over = temperature.locator(".u-over").bounding_box()
    spike_x = page.evaluate(
        "(t) => window.pulseboard.panels.find((p) => p.cfg.title === 'Temperature').plot.valToPos(t, 'x')",
        site.spike_us / 1e6,
    )
    y = over["y"] + over["height"] / 2
    page.mouse.move(over["x"] + spike_x - 110, y)
    page.mouse.down()
    page.mouse.move(over["x"] + spike_x + 110, y, steps=8)
    page.mouse.up()
    page.wait_for_url("**from=**")
    span_s = page.evaluate("() => { const s = window.pulseboard.state; return (s.toMs - s.fromMs) / 1000; }")
    temperature.locator(".panel-status[data-state=history]").wait_for(timeout=10_000)
    # The history answer is drawn: the chart's x scale is the zoomed range and nothing is loading.
    page.wait_for_function(
        "() => { const p = window.pulseboard.panels.find((p) => p.cfg.title === 'Temperature');"
        " const s = window.pulseboard.state; return !document.body.classList.contains('loading')"
        " && Math.abs(p.plot.scales.x.min * 1000 - s.fromMs) < 1 && p.plot.data[0].length > 50; }",
        timeout=10_000,
    )
    step_s = page.evaluate(
        "() => { const d = window.pulseboard.panels.find((p) => p.cfg.title === 'Temperature').plot.data[0];"
        " return d[d.length - 1] - d[d.length - 2]; }"
    )
    drawn = wait_drawn(page, "Temperature", BLUE, 600)
    print(f"\nzoomed to {span_s:.0f} s, buckets about {step_s:.2f} s apart; {drawn} px of the sensor's line drawn")
    assert drawn >= 600, "the 2 s sensor is drawn as a line across the zoomed range, not as hidden points"

    # The value under the cursor: point at the spike, read it in the legend, with its time.
    spike_x = page.evaluate(
        "() => { const p = window.pulseboard.panels.find((p) => p.cfg.title === 'Temperature');"
        " const ys = p.plot.data[1]; let best = 0; ys.forEach((v, i) => { if (v != null && v > (ys[best] ?? -1e9)) best = i; });"
        " return p.plot.valToPos(p.plot.data[0][best], 'x'); }"
    )
    over = temperature.locator(".u-over").bounding_box()  # the zoom may have moved the chart (custom-range inputs)
    page.mouse.move(over["x"] + spike_x, over["y"] + over["height"] / 2)
    row = temperature.locator(f"table.legend tr[data-key='{SENSOR}.temperature']")
    row.locator("td.num").first.filter(has_text="35.50 °C").wait_for(timeout=5_000)
    head = temperature.locator("table.legend td.legend-head").nth(1).inner_text()
    assert re.fullmatch(r"\d\d:\d\d:\d\d", head), f"the legend says when: {head!r}"
    # The humidity chart below follows the same cursor and shows the same time.
    humidity_head = panel(page, "Humidity").locator("table.legend td.legend-head").nth(1)
    assert humidity_head.inner_text() == head
    shot(page, "zoom-into-a-spike")
    # Anywhere along the range, not only at the spike: the two panels' buckets may lie on different
    # grids (each panel asks for a step to suit its width), and a follower naming its own nearest
    # bucket showed a neighbouring second (CI, 2026-12-06: '06:58:18' under '06:58:19').
    differ = []
    for k in range(1, 40):
        x = over["x"] + over["width"] * k / 40
        page.mouse.move(x, over["y"] + over["height"] / 2)
        shown = temperature.locator("table.legend td.legend-head").nth(1).inner_text()
        if humidity_head.inner_text() != shown:
            differ.append((round(x), shown, humidity_head.inner_text()))
    assert not differ, f"the panels' legends name different times under one cursor: {differ}"
    assert not page.errors, page.errors


@pytest.mark.parametrize("minutes", [3, 5, 10])
def test_a_fixed_short_range_draws_the_lines(site, page, minutes: int) -> None:
    to_ms = site.spike_us // 1000 + 60_000
    page.goto(site.url + f"/d/iot-fleet/?from={to_ms - minutes * 60_000}&to={to_ms}")
    temperature = panel(page, "Temperature")
    temperature.locator(".panel-status[data-state=history]").wait_for(timeout=10_000)
    drawn = wait_drawn(page, "Temperature", BLUE, 600)
    print(f"\n{minutes} min: {drawn} px of line")
    assert drawn >= 600
    assert wait_drawn(page, "Humidity", BLUE, 600) >= 600
    shot(page, f"fixed-{minutes}-minutes")


def test_7_days_draws_a_series_that_only_has_recent_data(site, page) -> None:
    page.goto(site.url + "/d/iot-fleet/?range=7d")
    humidity = panel(page, "Humidity")
    humidity.locator(".panel-status[data-state=history]").wait_for(timeout=10_000)
    # Sensor 09 sent one reading: one bucket of seven days, drawn as a dot; sensor 07's 12 minutes likewise.
    lonely = wait_drawn(page, "Humidity", ORANGE, 10)
    recent = wait_drawn(page, "Humidity", BLUE, 10)
    print(f"\n7 d: sensor 09 {lonely} px, sensor 07 {recent} px")
    assert lonely >= 10 and recent >= 10, "a series with data in one bucket of 7 days is still drawn"
    shot(page, "seven-days-recent-data")


def test_a_malformed_panel_is_refused_in_the_admin(site, page) -> None:
    board_id = site.board_ids["iot-fleet"]
    page.goto(site.url + f"/admin/dashboard/dashboard/{board_id}/change/")
    before = page.locator("tr.form-row.has_original").count()
    page.locator(".add-row a").click()
    row = page.locator("tr.form-row.dynamic-panels").last
    row.locator("input[name$='-title']").fill("Typed by hand")
    row.locator("textarea[name$='-metrics']").fill('"iot.*.temperature"')
    row.locator("input[name$='-y']").fill("20")
    page.click("input[name=_save]")
    error = page.locator(".errorlist", has_text="list of 1-20 metric keys or globs")
    error.first.wait_for(timeout=5_000)
    shot(page, "admin-refuses-malformed-panel")
    page.goto(site.url + f"/admin/dashboard/dashboard/{board_id}/change/")
    assert page.locator("tr.form-row.has_original").count() == before, "nothing was saved"


def test_a_broken_panel_in_the_database_is_one_broken_panel_and_the_rest_stays_live(site, page) -> None:
    site.ingest([{"source": SENSOR, "metric": "temperature", "ts": now_us(), "value": 22.25, "unit": "°C"}])
    page.goto(site.url + "/d/mixed/?range=15m")
    broken = page.locator(".panel-broken")
    broken.wait_for(timeout=10_000)
    assert broken.count() == 1
    assert "Broken one" in broken.inner_text() and "metrics" in broken.locator(".panel-error").inner_text()
    panel(page, "Sensor temperature").locator(".panel-status[data-state=live]").wait_for(timeout=10_000)
    panel(page, "Sensor now").locator(".panel-status[data-state=live]").wait_for(timeout=10_000)
    page.locator("#conn-state[data-state=live]").wait_for(timeout=10_000)
    assert wait_drawn(page, "Sensor temperature", BLUE, 300) >= 300
    site.ingest([{"source": SENSOR, "metric": "temperature", "ts": now_us(), "value": 23.75, "unit": "°C"}])
    panel(page, "Sensor now").locator(".stat-value", has_text="23.75").wait_for(timeout=5_000)
    # The chart's text alternative is its legend's current values.
    alt = panel(page, "Sensor temperature").locator(".chart-box[role=img][aria-label*='temperature 23.75 °C']")
    alt.wait_for(timeout=5_000)
    shot(page, "broken-panel-board-live")
    # The in-page editor says what to do instead of posting a layout the server would refuse.
    page.click("#edit-toggle")
    page.click("#edit-save")
    page.locator("#edit-status", has_text='remove the broken panel "Broken one"').wait_for(timeout=5_000)
    assert not page.errors, page.errors


def feed_host(site: Site, seconds: int = 60) -> None:
    """The last minute of this host's CPU, memory, load, disk and network, so its panels are live."""
    end = now_us()
    samples = []
    for i in range(seconds):
        base = {"source": f"host.{HOST}", "source_kind": "host", "ts": end - (seconds - i) * 1_000_000}
        wave = (i % 60) / 60
        samples += [
            {**base, "metric": "cpu.total", "value": 25 + 30 * wave, "unit": "%"},
            {**base, "metric": "mem.used_pct", "value": 61.5, "unit": "%"},
            {**base, "metric": "load.1m", "value": 1.1 + wave, "unit": ""},
            {**base, "metric": "disk.used_pct", "value": 48.0, "unit": "%"},
            {**base, "metric": "net.rx_bps", "value": 120_000 + 80_000 * wave, "unit": "B/s"},
            {**base, "metric": "net.tx_bps", "value": 40_000 + 20_000 * wave, "unit": "B/s"},
        ]
        samples += [{**base, "metric": f"cpu.core{c}", "value": 20 + 10 * c + 20 * wave, "unit": "%"} for c in range(4)]
    site.ingest(samples)


def feed_market(site: Site, seconds: int = 300) -> None:
    """The last five minutes of BTC-USD's last, bid and ask, every second."""
    end = now_us()
    samples = []
    for i in range(seconds):
        price = 65000 + 50 * ((i % 60) / 60)
        base = {"source": "market.btc-usd", "source_kind": "feed", "ts": end - (seconds - i) * 1_000_000}
        base.update(unit="USD", kind="price")
        samples += [
            {**base, "metric": "last", "value": price},
            {**base, "metric": "bid", "value": price - 5},
            {**base, "metric": "ask", "value": price + 5},
        ]
    site.ingest(samples)


def set_zone(page, zone: str) -> None:
    page.evaluate(
        "(zone) => fetch('/api/v1/preferences', {method: 'POST', headers: {'X-CSRFToken':"
        " document.cookie.match(/csrftoken=([^;]+)/)[1]}, body: JSON.stringify({timezone: zone})})",
        zone,
    )


def test_changing_the_time_zone_on_a_7_day_range_keeps_the_range_and_times_follow_the_zone(site, page) -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    feed_host(site)
    page.goto(site.url + "/d/host/?range=15m")
    page.locator(".panel-status[data-state=live]").first.wait_for(timeout=10_000)
    page.click("[data-range='7d']")
    page.locator(".panel-status[data-state=history]").first.wait_for(timeout=10_000)
    try:
        page.fill("#timezone", "Asia/Tokyo")
        page.dispatch_event("#timezone", "change")
        page.wait_for_function("() => document.body.dataset.timezone === 'Asia/Tokyo'")
        assert "range=7d" in page.url, f"the chosen range survives the zone change: {page.url}"
        assert page.locator("[data-range='7d'].active").count() == 1
        page.locator(".panel-status[data-state=history]").first.wait_for(timeout=10_000)
        shot(page, "zone-change-keeps-7-days")
        # A custom range is shown and typed in the chosen zone, 24-hour.
        from_ms, to_ms = 1_780_000_000_000, 1_780_000_000_000 + 3 * 3600_000  # 2026-05-28 20:26 UTC
        page.goto(site.url + f"/d/host/?from={from_ms}&to={to_ms}")
        tokyo = ZoneInfo("Asia/Tokyo")
        expected = datetime.fromtimestamp(from_ms / 1000, UTC).astimezone(tokyo).strftime("%Y-%m-%d %H:%M")
        assert page.locator("#custom-from").input_value() == expected == "2026-05-29 05:26"
        assert page.locator("#custom-to").input_value() == "2026-05-29 08:26"
        page.fill("#custom-from", "2026-05-29 21:00")
        page.fill("#custom-to", "2026-05-29 23:30")
        page.click("#custom-apply")
        page.wait_for_url("**from=**")
        state = page.evaluate("() => window.pulseboard.state")
        want = datetime(2026, 5, 29, 21, 0, tzinfo=tokyo).timestamp() * 1000
        assert (state["fromMs"], state["toMs"] - state["fromMs"]) == (want, 2.5 * 3600_000)
        label = page.locator("#range-label").inner_text()
        assert "21:00" in label and "23:30" in label and "PM" not in label, label
    finally:
        set_zone(page, "UTC")


def test_acknowledge_and_silence_keep_the_alerts_since_time(site, page) -> None:
    page.goto(site.url + "/d/iot-fleet/?range=15m")
    page.locator(".panel-status[data-state=live]").first.wait_for(timeout=10_000)
    site.ingest([{"source": HOT, "metric": "temperature", "ts": now_us(), "value": 29.5, "unit": "°C"}])
    row = page.locator(".alert-row.state-firing", has_text="Sensor 08 too warm")
    row.wait_for(timeout=10_000)
    assert page.locator("#alert-banner[role=alert]").count() == 1, "screen readers announce it"
    since = row.locator(".alert-since").inner_text()
    assert re.fullmatch(r"since \d\d:\d\d:\d\d", since), since
    # Let the clock move past the firing second, so a reset to the click time would show.
    page.wait_for_function(
        "() => [...window.pulseboard.banner.alerts.values()].every((a) => Date.now() - a.at / 1000 > 2000)",
        timeout=10_000,
    )
    row.locator("button.ack").click()
    row.locator(".ack-by", has_text="operator").wait_for(timeout=5_000)
    assert row.locator(".alert-since").inner_text() == since
    row.locator("select.silence").select_option(label="Silence 15 min")
    row.locator(".silenced").wait_for(timeout=5_000)
    assert row.locator(".alert-since").inner_text() == since
    page.reload()
    assert page.locator(".alert-row.state-firing .alert-since").first.inner_text() == since, "after a reload too"
    shot(page, "ack-and-silence-keep-since")


def fits(page) -> tuple[int, float]:
    """The page's scroll height and the lowest panel's bottom edge."""
    return page.evaluate(
        "() => [document.documentElement.scrollHeight,"
        " Math.max(...[...document.querySelectorAll('.panel')].map((p) => p.getBoundingClientRect().bottom))]"
    )


def test_the_kiosk_view_of_a_15_row_board_fits_1440_by_900(site, page) -> None:
    feed_host(site)
    page.goto(site.url + "/d/host/?range=15m&kiosk=1")
    panel(page, "CPU total").locator(".panel-status[data-state=live]").wait_for(timeout=10_000)
    rows = page.evaluate("() => Math.max(...window.pulseboard.config.panels.map((p) => p.y + p.h))")
    assert rows == 15
    height, bottom = fits(page)
    print(f"\nkiosk: scroll height {height} px, lowest panel ends at {bottom:.0f} px")
    assert height <= 900 and bottom <= 900, "the whole board is on the screen"
    assert wait_drawn(page, "CPU total", BLUE, 300) >= 300
    shot(page, "kiosk-15-rows")


def test_the_share_link_uses_the_dashboard_renderer_and_fits_1440_by_900(site, browser) -> None:
    context = browser.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=1, timezone_id="UTC")
    page = context.new_page()  # a wall screen: nobody signed in
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        feed_host(site)
        page.goto(site.url + f"/share/{site.share_secret}/")
        panel(page, "CPU total").locator(".panel-status[data-state=live]").wait_for(timeout=10_000)
        kinds = page.evaluate("() => window.pulseboard.panels.map((p) => p.cfg.kind)")
        assert kinds.count("stat") == 4 and kinds.count("timeseries") == 4 and kinds.count("table") == 1
        assert page.locator(".panel-timeseries table.legend").count() == 4, "the dashboards' legend"
        assert wait_drawn(page, "CPU total", BLUE, 300) >= 300, "the line is drawn"
        site.ingest([{"source": f"host.{HOST}", "metric": "cpu.total", "ts": now_us(), "value": 77.25, "unit": "%"}])
        panel(page, "CPU").locator(".stat-value", has_text="77.25").wait_for(timeout=5_000)
        # The same 24-hour axis labels as the dashboard: read from the chart's own axis.
        labels = page.evaluate(
            "() => { const p = window.pulseboard.panels.find((p) => p.cfg.title === 'CPU total');"
            " return p.plot.axes[0]._values; }"
        )
        assert labels and all(re.fullmatch(r"\d\d:\d\d(:\d\d)?", v) for v in labels), labels
        # History over the share link's own series endpoint.
        page.evaluate("() => document.querySelector(\"[data-range='7d']\").click()")
        panel(page, "CPU total").locator(".panel-status[data-state=history]").wait_for(timeout=10_000)
        assert wait_drawn(page, "CPU total", BLUE, 10) >= 10
        height, bottom = fits(page)
        print(f"\nshare: scroll height {height} px, lowest panel ends at {bottom:.0f} px")
        assert height <= 900 and bottom <= 900
        shot(page, "share-view")
        assert not errors, errors
    finally:
        context.close()


def test_the_editor_never_saves_overlapping_panels(site, page) -> None:
    page.goto(site.url + "/d/iot-fleet/?range=15m")
    page.click("#edit-toggle")
    page.locator(".panel", has_text="Sensor 01 temperature").locator("[data-tool='move right']").click()
    page.locator(".panel", has_text="Sensor 01 temperature").locator("[data-tool='wider']").click()
    page.click("#edit-save")
    page.locator("#edit-status", has_text="saved").wait_for(timeout=5_000)
    page.reload()
    import json

    config = json.loads(page.locator("#dashboard-config").text_content())
    cells = [(p["title"], p["x"], p["y"], p["w"], p["h"]) for p in config["panels"]]
    moved = next(c for c in cells if c[0] == "Sensor 01 temperature")
    assert moved[1:4] == (1, 0, 5), "moved right and widened over its neighbour"
    for i, a in enumerate(cells):
        for b in cells[i + 1 :]:
            apart = a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1] or a[2] + a[4] <= b[2] or b[2] + b[4] <= a[2]
            assert apart, f"{a[0]} overlaps {b[0]}"
    shot(page, "editor-auto-places")


def test_a_legend_click_isolates_a_series_and_a_modified_click_hides_it(site, page) -> None:
    # Both sources report now, and again each second until the panel is live: a source silent for 3 of
    # its intervals (sensor 07: 2 s) makes the panel stale (server notice), and a page that took longer
    # than 6 s to load and subscribe (a busy CI machine) saw a one-off report go stale first.
    def report() -> None:
        site.ingest(
            [
                {"source": LONELY, "metric": "humidity", "ts": now_us(), "value": 41.0, "unit": "%"},
                {"source": SENSOR, "metric": "humidity", "ts": now_us(), "value": 41.5, "unit": "%"},
            ]
        )

    report()
    page.goto(site.url + "/d/iot-fleet/?range=15m")
    humidity = panel(page, "Humidity")
    status = humidity.locator(".panel-status")
    deadline = time.monotonic() + 20
    while status.get_attribute("data-state") != "live":
        assert time.monotonic() < deadline, (
            f"the panel is not live: {status.get_attribute('data-state')}, {status.text_content()!r}"
        )
        report()
        page.wait_for_timeout(1_000)
    assert wait_drawn(page, "Humidity", ORANGE, 10) >= 10 and wait_drawn(page, "Humidity", BLUE, 300) >= 300
    names = humidity.locator("table.legend th")
    names.filter(has_text="sensor-07").click()
    assert wait_gone(page, "Humidity", ORANGE) == 0, "sensor 07 alone"
    assert pixels(page, "Humidity", BLUE) >= 300
    assert humidity.locator("tr.series-hidden").count() == 1
    names.filter(has_text="sensor-07").click()
    assert wait_drawn(page, "Humidity", ORANGE, 10) >= 10, "a second click shows all again"
    names.filter(has_text="sensor-07").click(modifiers=["Control"])
    assert wait_gone(page, "Humidity", BLUE) == 0, "sensor 07 hidden"
    assert pixels(page, "Humidity", ORANGE) >= 10
    shot(page, "legend-hides-a-series")


def test_the_cursor_on_a_line_chart_moves_the_candlestick_cursor_too(site, page) -> None:
    feed_market(site)
    page.goto(site.url + "/d/markets/?range=15m")
    candles = page.locator(".panel-candlestick")
    candles.locator(".panel-status[data-state=live]").wait_for(timeout=10_000)
    page.wait_for_function(
        "() => window.pulseboard.panels.find((p) => p.cfg.kind === 'candlestick').plot.data[0].length > 10"
    )
    assert not re.search(r"\d\d:\d\d:\d\d ·", candles.locator(".ohlc-info").inner_text())
    over = panel(page, "BTC-USD bid / ask").locator(".u-over").bounding_box()
    page.mouse.move(over["x"] + over["width"] * 0.85, over["y"] + over["height"] / 2)
    candles.locator(".ohlc-info", has_text=re.compile(r"\d\d:\d\d:\d\d ·")).wait_for(timeout=5_000)
    left = page.evaluate("() => window.pulseboard.panels.find((p) => p.cfg.kind === 'candlestick').plot.cursor.left")
    assert left > 0, "the candlestick chart shows the crosshair at the same moment"
    shot(page, "cursor-sync-candlestick")


def test_the_panel_editor_suggests_metrics_and_warns_about_a_pattern_that_matches_nothing(site, page) -> None:
    page.goto(site.url + "/d/mixed/?range=15m")
    page.click("#edit-toggle")
    page.click("#add-panel")
    page.wait_for_function("() => document.querySelectorAll('#metric-keys option').length > 3")
    suggested = page.evaluate("() => [...document.querySelectorAll('#metric-keys option')].map((o) => o.value)")
    assert f"{SENSOR}.temperature" in suggested and "iot.*.temperature" in suggested
    metrics = page.locator("#panel-form input[name=metrics]")
    metrics.fill("iot.*.humidity")
    page.locator("#metrics-preview[data-state=ok]", has_text="2 series").wait_for(timeout=5_000)
    assert page.locator("#panel-form input[name=unit]").get_attribute("placeholder") == "%"
    metrics.fill("iot.*.temprature")
    page.locator("#metrics-preview[data-state=none]", has_text="matches nothing").wait_for(timeout=5_000)
    page.fill("#panel-form input[name=title]", "Typo")
    page.click("#panel-apply")
    page.locator("#panel-error", has_text="iot.*.temprature matches no metric").wait_for(timeout=5_000)
    page.locator("#edit-status", has_text="not added: iot.*.temprature").wait_for(timeout=5_000)
    shot(page, "editor-metric-preview")
