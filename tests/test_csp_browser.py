"""Issue #12 item 12d in a real browser: every page runs under the Content-Security-Policy with no violation.

Debian's Chromium through Playwright against Daphne (the harness of
tests/test_browser.py): the dashboard, the overview, a source page, a share
link, the sign-in page and the admin are loaded; the browser reports every
blocked script, style, image or connection as a `securitypolicyviolation`
event and a console error, and there must be none. The dashboard's charts
must draw (pixels on the canvas) and its socket must be live.
"""

from __future__ import annotations

import pytest

from dashboard.testing import manage
from tests.test_browser import HOST, Site, browser, host_samples, page, site  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'} at ${e.sourceFile}:${e.lineNumber}`);
});
"""

# Pixels on a chart canvas that are not transparent: the axes, grid and the series line.
DRAWN_PIXELS = """(title) => {
  const p = window.pulseboard.panels.find((p) => p.cfg.title === title);
  const canvas = p.plot.ctx.canvas;
  const data = p.plot.ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
  return n;
}"""


@pytest.fixture(scope="module")
def superuser(site: Site) -> None:  # noqa: F811
    """The harness's operator is staff only; the admin pages below need every permission."""

    manage(
        site.server.env,
        "shell",
        "-c",
        "from django.contrib.auth.models import User; User.objects.filter(username='operator').update(is_superuser=True)",
    )


@pytest.fixture
def watched(superuser, page):  # noqa: F811 (the fixture imported above)
    """The signed-in page, recording CSP violations (events and console errors) from now on."""
    page.add_init_script(WATCH)
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("response", lambda r: print(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.console_errors = console
    return page


def violations(tab) -> list[str]:
    return [*tab.evaluate("() => window.__csp || []"), *tab.console_errors]


def test_the_dashboard_draws_its_charts_live_with_no_csp_violation(site: Site, watched) -> None:  # noqa: F811
    site.ingest(host_samples(240))
    response = watched.goto(site.server.url + "/d/host/?range=5m")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy
    panel = watched.locator(".panel", has_text="CPU total")
    panel.locator(".panel-status[data-state=live]").wait_for(timeout=10_000)
    watched.wait_for_function(
        "() => window.pulseboard.panels.find((p) => p.cfg.title === 'CPU total').plot.data[0].length > 100"
    )
    pixels = watched.evaluate(DRAWN_PIXELS, "CPU total")
    print(f"CPU total chart: {pixels} drawn pixels")
    assert pixels > 1000
    # The page's configuration came through json_script (type=application/json), which CSP does not block.
    assert watched.evaluate("() => window.pulseboard.panels.length") > 3
    assert violations(watched) == []


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/d/",
        f"/sources/host.{HOST}/",
        "/admin/",
        "/admin/dashboard/dashboard/add/",  # inline panels, filter_horizontal widgets, prepopulated slug
        "/admin/dashboard/alertrule/",
        "/admin/auth/user/add/",
    ],
)
def test_pages_and_the_admin_run_with_no_csp_violation(site: Site, watched, path: str) -> None:  # noqa: F811
    response = watched.goto(site.server.url + path)
    assert response.status == 200
    assert "content-security-policy" in response.headers
    watched.wait_for_load_state("networkidle")
    if path == "/admin/dashboard/dashboard/add/":
        # The admin's own scripts work: the slug is prepopulated from the title, the inline adds a row.
        watched.fill("#id_title", "CSP check board")
        watched.locator("#id_slug").press("End")
        assert watched.input_value("#id_slug") == "csp-check-board"
        before = watched.locator(".dynamic-panels").count()
        watched.click(".add-row a")
        assert watched.locator(".dynamic-panels").count() == before + 1
    assert violations(watched) == []


def test_the_sign_in_page_and_a_share_link_run_with_no_csp_violation(site: Site, browser) -> None:  # noqa: F811

    out = manage(
        site.server.env,
        "shell",
        "-c",
        "from django.contrib.auth.models import User; from dashboard.models import Dashboard, ShareLink; "
        "_, s = ShareLink.issue(Dashboard.objects.get(slug='host'), 'csp', "
        "created_by=User.objects.get(username='operator')); print(s)",
    )
    secret = out.strip().splitlines()[-1]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        kiosk = context.new_page()
        kiosk.add_init_script(WATCH)
        errors: list[str] = []
        kiosk.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        for path in ["/accounts/login/", f"/share/{secret}/"]:
            response = kiosk.goto(site.server.url + path)
            assert response.status == 200 and "content-security-policy" in response.headers
            kiosk.wait_for_load_state("networkidle")
            assert kiosk.evaluate("() => window.__csp") == [] and errors == [], path
    finally:
        context.close()
