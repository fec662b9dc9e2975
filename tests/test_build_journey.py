"""Build a board from nothing in the page, in Debian's Chromium (issue #13 items 5-7).

New board, a variable, two panels through the panel editor (suggestions, a
match count, a threshold, decimals, min/max, a live preview), the picker in
the URL through reload and range changes, export, delete, import, and the
same board live again. Every step asserts what the operator sees: DOM values
and chart pixels. Screenshots land in artifacts/journeys/.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from dashboard.testing import Server, manage, project_env, running_server
from tests.test_journeys import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.sqlite_only]

PASSWORD = "builder-pass-123"
DEVICES = ("boiler-1", "boiler-2")
MAGENTA = (0xFF, 0x00, 0xFF)  # the journey's threshold colour: no series is drawn in it
BLUE = (0x4F, 0x9C, 0xF9)  # panels.js COLORS[0]


class Feed:
    """Two boilers reporting temperature and humidity every second while the journey runs."""

    def __init__(self, server: Server, token: str) -> None:
        self.http = httpx.Client(base_url=server.url, headers={"Authorization": f"Token {token}"}, timeout=10)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def batch(self, ts_us: int) -> list[dict]:
        out = []
        for n, device in enumerate(DEVICES):
            base = {"source": f"iot.{device}", "source_kind": "device", "ts": ts_us}
            out += [
                {
                    **base,
                    "metric": "temperature",
                    "value": 21.0 + 2 * n + (ts_us // 1_000_000 % 10) * 0.1,
                    "unit": "°C",
                },
                {**base, "metric": "humidity", "value": 40.0 + 5 * n, "unit": "%"},
            ]
        return out

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.http.post(
                    "/api/v1/ingest", json={"precision": "us", "samples": self.batch(time.time_ns() // 1000)}
                )
            except httpx.HTTPError:
                pass  # the server is stopping
            self.stop.wait(1.0)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple[Server, Feed]]:
    if CHROMIUM is None:
        pytest.skip("needs Debian's Chromium: apt-get install chromium")
    pytest.importorskip("playwright.sync_api", reason="needs Playwright (never `playwright install`)")
    tmp = tmp_path_factory.mktemp("build")
    env = project_env(tmp, PULSEBOARD_RATE_LIMIT_PER_S="1000", PULSEBOARD_RATE_LIMIT_BURST="5000")
    with running_server(env) as server:
        manage(
            env,
            "shell",
            "-c",
            "from django.contrib.auth.models import User\n"
            f"User.objects.create_superuser('builder', password='{PASSWORD}')\n",
        )
        token_file = tmp / "token"
        manage(env, "issuetoken", "builder", "--output", str(token_file))
        feed = Feed(server, token_file.read_text().strip())
        now = time.time_ns() // 1000
        history = [s for i in range(120, 0, -1) for s in feed.batch(now - i * 1_000_000)]
        assert feed.http.post("/api/v1/ingest", json={"precision": "us", "samples": history}).status_code == 200
        feed.thread.start()
        try:
            yield server, feed
        finally:
            feed.stop.set()
            feed.thread.join(timeout=5)


@pytest.fixture
def page(site):
    from playwright.sync_api import sync_playwright

    server, _ = site
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1440, "height": 900}, device_scale_factor=1, timezone_id="UTC", accept_downloads=True
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/accounts/login/")
        page.fill("input[name=username]", "builder")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(server.url + "/")
        page.errors = errors
        yield page
        browser.close()


# Pixels of one colour in a uPlot's plot area: the board's panel of that title, or the editor's preview.
COUNT = """([title, rgb, tolerance]) => {
  const p = title === null ? window.pulseboard.editor.previewPanel
    : window.pulseboard.panels.find((p) => p.cfg.title === title);
  if (!p || !p.plot) return -1;
  const { left, top, width, height } = p.plot.bbox;
  const img = p.plot.ctx.getImageData(left, top, width, height).data;
  let n = 0;
  for (let i = 0; i < img.length; i += 4) {
    if (Math.abs(img[i] - rgb[0]) + Math.abs(img[i + 1] - rgb[1]) + Math.abs(img[i + 2] - rgb[2]) <= tolerance) n++;
  }
  return n;
}"""


def drawn(page, title: str | None, rgb: tuple[int, int, int], at_least: int, timeout_s: float = 10) -> int:
    """Wait until the chart shows at least this many pixels of the colour; return the count."""
    deadline = time.monotonic() + timeout_s
    while True:
        n = page.evaluate(COUNT, [title, list(rgb), 40])
        if n >= at_least or time.monotonic() > deadline:
            return n
        page.wait_for_timeout(100)


def panel(page, title: str):
    return page.locator(".panel", has=page.locator(".panel-title", has_text=re.compile(f"^{re.escape(title)}$")))


def add_panel(page, title: str, kind: str, typed: str, pattern: str, series: int, **options: str) -> None:
    """Open the panel editor, pick the pattern from the suggestions, set options, apply and see it saved."""
    page.click("#add-panel")
    dialog = page.locator("#panel-dialog")
    dialog.wait_for(state="visible")
    page.fill("#panel-form input[name=title]", title)
    page.select_option("#panel-form select[name=kind]", kind)
    page.fill("#panel-form input[name=metrics]", typed)
    page.wait_for_function(
        "(p) => [...document.querySelectorAll('#metric-keys option')].some((o) => o.value === p)", arg=pattern
    )
    page.fill("#panel-form input[name=metrics]", pattern)  # as choosing the suggestion does
    page.locator("#metrics-preview[data-state=ok]", has_text=f"{series} series").wait_for(timeout=5_000)
    for name in ("unit", "decimals", "min", "max"):
        if name in options:
            page.fill(f"#panel-form input[name={name}]", options[name])
    if "threshold" in options:
        page.click("#add-threshold")
        row = page.locator("#threshold-list .threshold-row").last
        row.locator("input[type=number]").fill(options["threshold"])
        row.locator("input[type=color]").fill(options["color"])


def test_build_a_board_from_nothing_export_delete_import_and_see_it_live(site, page) -> None:
    server, _ = site
    # 1. A new board from the list page: created, owned, opened in edit mode.
    page.goto(server.url + "/d/")
    page.click("#new-board")
    page.fill("#board-form input[name=title]", "Boiler room")
    page.click("#board-dialog-ok")
    page.wait_for_url(re.compile(r"/d/boiler-room/\?edit=1$"))
    page.locator("#editor-bar").wait_for(state="visible")

    # 2. A variable over the boilers' sources: a picker with All and each readable device.
    page.fill("#editor-bar input[name=var_name]", "device")
    page.fill("#editor-bar input[name=var_glob]", "iot.*")
    page.click("#add-variable")
    page.locator("#edit-status", has_text="saved").wait_for(timeout=5_000)
    options = page.locator("select[data-variable=device] option").all_text_contents()
    assert options == ["All", *DEVICES]

    # 3. Two panels through the editor; the preview draws the first before it is applied.
    add_panel(
        page, "Temperature", "timeseries", "iot.$dev", "iot.$device.temperature", 2,
        unit="°C", decimals="1", min="0", max="60", threshold="30", color="#ff00ff",
    )  # fmt: skip
    assert drawn(page, None, MAGENTA, 50) >= 50, "the preview draws the threshold line"
    assert drawn(page, None, BLUE, 50) >= 50, "the preview draws the first boiler's line"
    shot(page, "build-panel-editor-preview")
    page.click("#panel-apply")
    page.locator("#panel-dialog").wait_for(state="hidden")
    page.locator("#edit-status", has_text="saved").wait_for(timeout=5_000)
    add_panel(page, "Humidity now", "stat", "iot.$device.hum", "iot.$device.humidity", 2, decimals="2",
              threshold="30", color="#00ff00")  # fmt: skip
    page.click("#panel-apply")
    page.locator("#panel-dialog").wait_for(state="hidden")
    page.locator("#edit-status", has_text="saved").wait_for(timeout=5_000)
    page.click("#edit-toggle")

    # 4. Live on the board: threshold line, one decimal in the legend, stat tinted by its threshold.
    temperature = panel(page, "Temperature")
    temperature.locator(".panel-status[data-state=live]").wait_for(timeout=10_000)
    assert drawn(page, "Temperature", MAGENTA, 50) >= 50
    assert temperature.locator("table.legend tr[data-key]").count() == 2
    latest = temperature.locator("table.legend tr[data-key] td.num").first.inner_text()
    assert re.fullmatch(r"\d+\.\d °C", latest), latest
    stat = panel(page, "Humidity now")
    stat.locator(".stat-value", has_text=re.compile(r"^40\.00")).wait_for(timeout=10_000)
    assert stat.get_attribute("data-threshold") == "#00ff00"

    # 4b. Duplicate a panel, edit the copy's legend to the latest value only, then remove the copy.
    page.click("#edit-toggle")
    temperature.locator("[data-tool=duplicate]").click()
    copy = panel(page, "Temperature (copy)")
    copy.wait_for(timeout=5_000)
    page.locator("#edit-status", has_text="saved").wait_for(timeout=5_000)
    copy.locator("[data-tool=edit]").click()
    assert page.locator("#panel-form input[name=metrics]").input_value() == "iot.$device.temperature"
    page.uncheck("#panel-form input[name=legend_min]")
    page.uncheck("#panel-form input[name=legend_max]")
    page.click("#panel-apply")
    page.locator("#panel-dialog").wait_for(state="hidden")
    assert copy.locator("table.legend td.legend-head").all_text_contents() == ["", "latest"]
    assert temperature.locator("table.legend td.legend-head").all_text_contents() == ["", "latest", "min", "max"]
    copy.locator("[data-tool=remove]").click()
    page.click("#edit-save")
    page.locator("#edit-status", has_text="saved").wait_for(timeout=5_000)
    assert panel(page, "Temperature (copy)").count() == 0
    page.click("#edit-toggle")

    # 5. The picker narrows the board; the choice is in the URL and survives reload and a range change.
    page.select_option("select[data-variable=device]", "boiler-2")
    page.wait_for_url(re.compile(r"var-device=boiler-2"))
    temperature.locator(".panel-status[data-state=live]").wait_for(timeout=10_000)
    assert temperature.locator("table.legend tr[data-key]").evaluate_all(
        "(rows) => rows.map((r) => r.dataset.key)"
    ) == ["iot.boiler-2.temperature"]
    panel(page, "Humidity now").locator(".stat-value", has_text=re.compile(r"^45\.00")).wait_for(timeout=10_000)
    page.click("[data-range='1h']")
    page.reload()
    assert "var-device=boiler-2" in page.url and "range=1h" in page.url
    assert page.locator("select[data-variable=device]").input_value() == "boiler-2"
    assert temperature.locator("table.legend tr[data-key]").count() == 1
    temperature.locator(".panel-status[data-state=live]").wait_for(timeout=10_000)
    shot(page, "build-board-with-variable")

    # 6. Export: the file is the board in the one schema, variables and patterns as written.
    page.click("#board-menu summary")
    with page.expect_download() as download:
        page.click("#board-export")
    path = download.value.path()
    exported = json.loads(open(path, encoding="utf-8").read())
    assert exported["slug"] == "boiler-room" and exported["title"] == "Boiler room"
    assert exported["variables"] == [{"name": "device", "glob": "iot.*"}]
    assert [(p["title"], p["metrics"]) for p in exported["panels"]] == [
        ("Temperature", ["iot.$device.temperature"]),
        ("Humidity now", ["iot.$device.humidity"]),
    ]
    assert exported["panels"][0]["options"]["thresholds"] == [{"value": 30.0, "color": "#ff00ff"}]

    # 7. Delete, after a confirmation that names the board.
    page.click("#board-menu summary")
    page.click("#board-delete")
    page.locator("#board-dialog-title", has_text="Delete “Boiler room”?").wait_for()
    page.click("#board-dialog-ok")
    page.wait_for_url(server.url + "/d/")
    assert page.locator(".board-card[data-slug=boiler-room]").count() == 0

    # 8. A broken file is refused naming the field, and nothing is created.
    broken = dict(exported, panels=[exported["panels"][0], {**exported["panels"][1], "metrics": "iot.*"}])
    bad_path = SCREENSHOTS.parent / "broken-board.json"
    bad_path.write_text(json.dumps(broken))
    page.set_input_files("#import-file", str(bad_path))
    page.locator("#board-status[data-state=error]", has_text="panels[1].metrics").wait_for(timeout=5_000)
    assert page.locator(".board-card[data-slug=boiler-room]").count() == 0

    # 9. Import the export: the same board, live, with its threshold drawn.
    page.set_input_files("#import-file", path)
    page.wait_for_url(re.compile(r"/d/boiler-room/$"))
    temperature.locator(".panel-status[data-state=live]").wait_for(timeout=10_000)
    assert drawn(page, "Temperature", MAGENTA, 50) >= 50
    assert drawn(page, "Temperature", BLUE, 50) >= 50
    assert temperature.locator("table.legend tr[data-key]").count() == 2
    panel(page, "Humidity now").locator(".stat-value", has_text=re.compile(r"^40\.00")).wait_for(timeout=10_000)
    config = json.loads(page.locator("#dashboard-config").text_content())
    assert config["variables"][0]["values"] == list(DEVICES)
    shot(page, "build-imported-board-live")
    assert not page.errors, page.errors


def test_rename_and_duplicate_in_the_page(site, page) -> None:
    server, _ = site
    page.goto(server.url + "/d/")
    page.click("#new-board")
    page.fill("#board-form input[name=title]", "Scratch")
    page.click("#board-dialog-ok")
    page.wait_for_url(re.compile(r"/d/scratch/"))
    page.click("#board-menu summary")
    page.click("#board-rename")
    page.fill("#board-form input[name=title]", "   ")
    page.click("#board-dialog-ok")
    page.locator("#board-dialog-error", has_text="a title is needed").wait_for()
    page.fill("#board-form input[name=title]", "Scratch pad")
    page.click("#board-dialog-ok")
    page.locator(".page-head h1", has_text="Scratch pad").wait_for()
    page.reload()
    assert page.locator(".page-head h1").inner_text().startswith("Scratch pad")
    page.click("#board-menu summary")
    page.click("#board-duplicate")
    page.click("#board-dialog-ok")
    page.wait_for_url(re.compile(r"/d/scratch-pad-copy/"))
    assert page.locator(".page-head h1").inner_text().startswith("Scratch pad (copy)")
    assert not page.errors, page.errors
