"""The admin page in headless Chromium, against a real sidecar in front of a real nats-server, under a
load test: plots draw, the level shown is the API's, breakers open, close and reset from the page, a
recommendation applies through PUT /config, the token prompt works, and the layout holds at 1280x800
and on a phone. Screenshots go to the test's temp dir (KPI_UI_SCREENSHOT=path also writes the full
page there: that is how docs/admin-page.png is made)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.admin.api import Stack, call
from tests.ui.browser import Browser, require_browser, until

pytestmark = pytest.mark.slow

P = "/api/backpressure"
BREAKER = f"{P}/circuit-breaker"
TOKEN = "ui-admin-token"
MAX_RATE = 200
LOAD = {
    "messagesPerSecond": 800,
    "durationSeconds": 300,
    "messageSize": 64,
    "subjects": ["kpi.orders.created", "kpi.marketing.ctr"],
}
# Pixels of the first series' colour (#0072B2) on a plot's canvas: a data line, not just the axes.
COUNT_SERIES_PIXELS = """
const canvas = document.querySelector(`#${arguments[0]} canvas`);
if (!canvas || !canvas.width) return 0;
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let n = 0;
for (let i = 0; i < data.length; i += 4) {
  const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
  if (a > 200 && r < 40 && Math.abs(g - 114) < 40 && Math.abs(b - 178) < 40) n++;
}
return n;
"""
NO_HORIZONTAL_SCROLL = "return document.documentElement.scrollWidth <= window.innerWidth"
# WCAG 2 contrast of every visible text against its effective background: 4.5:1, 3:1 for large text.
LOW_CONTRAST = """
const rgba = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
const lum = ([r, g, b]) => {
  const f = (c) => ((c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
};
const background = (el) => {
  for (let e = el; e; e = e.parentElement) {
    const c = rgba(getComputedStyle(e).backgroundColor);
    if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c;
  }
  return [255, 255, 255];
};
const bad = [];
for (const el of document.querySelectorAll("body *")) {
  const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  if (!own || !el.getClientRects().length || el.closest("[hidden], dialog:not([open]), canvas")) continue;
  const style = getComputedStyle(el);
  if (style.visibility === "hidden" || el.disabled) continue;
  const fg = rgba(style.color), bg = background(el);
  const [a, b] = [lum(fg) + 0.05, lum(bg) + 0.05];
  const ratio = Math.max(a, b) / Math.min(a, b);
  const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
  const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
  const text = el.textContent.trim().slice(0, 30);
  if (ratio < need) bad.push(`${el.tagName}.${el.className} "${text}" ${ratio.toFixed(2)}`);
}
return bad;
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_browser()
    instance = Browser()
    yield instance
    instance.quit()


@pytest.fixture(scope="module")
def loaded() -> Iterator[Stack]:
    """A sidecar whose publish-rate ceiling (200/s) a load test (800/s) overruns: a degraded level."""
    stack = Stack(
        {
            "backpressure": {"maxPublishRate": MAX_RATE, "maxQueueSize": 2000},
            "policies": [{"subject": "kpi.marketing.>", "priority": "low"}],
        }
    )
    try:
        started = call(stack.admin, "POST", f"{P}/load-test", LOAD)
        assert started.status == 202, started
        yield stack
    finally:
        call(stack.admin, "POST", f"{P}/load-test/stop")
        stack.close()


def status(stack: Stack) -> dict[str, Any]:
    return call(stack.admin, "GET", f"{P}/status").data


def breaker(stack: Stack, subject: str) -> dict[str, Any] | None:
    listed = call(stack.admin, "GET", f"{BREAKER}/status").data["breakers"]
    return next((b for b in listed if b["subject"] == subject), None)


def row(browser: Browser, subject: str) -> Any:
    from selenium.webdriver.common.by import By

    return browser.driver.find_element(By.CSS_SELECTOR, f'#breakers tr[data-subject="{subject}"]')


def click(browser: Browser, css: str, within: Any = None) -> None:
    from selenium.webdriver.common.by import By

    element = (within or browser.driver).find_element(By.CSS_SELECTOR, css)
    browser.js("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def test_the_page_draws_the_sidecar_under_load(browser: Browser, loaded: Stack, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.viewport(1280, 800)
    browser.open(loaded.admin + "/")
    for plot in ("plot-load", "plot-rates", "plot-queue", "plot-resources"):
        until(
            lambda plot=plot: (
                int(browser.js(f"return document.getElementById('{plot}').dataset.points")) >= 3
            ),
            30,
            f"{plot} has points",
        )
    for plot in ("plot-load", "plot-rates", "plot-resources"):
        until(
            lambda plot=plot: browser.js(COUNT_SERIES_PIXELS, plot) > 30, 20, f"{plot} draws its first series"
        )

    # Live: the plots keep growing (the page then asks only for the new points).
    points = "return Number(document.getElementById('plot-load').dataset.points)"
    first = browser.js(points)
    until(lambda: browser.js(points) >= first + 2, 15, "the plots update")
    asked = browser.js("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert any("/metrics?timeRange=5m&since=" in url for url in asked)

    def level_agrees() -> str | None:
        before = status(loaded)["degradationLevel"]
        shown = browser.driver.find_element(By.ID, "level").text.strip().lower()
        card = browser.js("return document.getElementById('level-card').dataset.level")
        after = status(loaded)["degradationLevel"]
        return shown if before == after == shown == card else None

    shown = until(level_agrees, 20, "the level shown is /status's")
    # The load test overruns the rate ceiling fourfold: the page shows a degraded level, in words.
    assert shown != "none"
    why = browser.driver.find_element(By.ID, "level-why").text
    assert "publish rate" in why and "%" in why
    assert "Publish rate (dominant)" in browser.driver.find_element(By.ID, "signals").text
    # The drops the load test causes are plotted by reason.
    legend = browser.driver.find_element(By.ID, "plot-rates").text
    assert "received" in legend and "dropped:" in legend
    until(
        lambda: "running" in browser.driver.find_element(By.ID, "loadtest").text, 10, "the load test is shown"
    )

    assert browser.js(NO_HORIZONTAL_SCROLL)
    assert browser.js(LOW_CONTRAST) == []
    shot = browser.screenshot(tmp_path / "admin-page-1280x800.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

    assert browser.csp_violations() == []
    assert browser.console_errors() == []
    assert browser.resources_outside(loaded.admin) == []


def test_breakers_open_close_and_reset_from_the_page(browser: Browser, loaded: Stack) -> None:
    from selenium.webdriver.common.by import By

    browser.viewport(1280, 800)
    browser.open(loaded.admin + "/")
    # Opened through the API, closed by a click.
    by_api = "kpi.ui.opened-by-api"
    assert call(loaded.admin, "POST", BREAKER, {"subject": by_api, "action": "open"}).data["state"] == "open"
    until(
        lambda: row(browser, by_api).get_attribute("data-state") == "open", 10, "the page lists the breaker"
    )
    assert "open" in row(browser, by_api).text and "manual" in row(browser, by_api).text
    click(browser, 'button[data-action="close"]', row(browser, by_api))
    until(
        lambda: (breaker(loaded, by_api) or {"state": "closed"})["state"] == "closed",
        10,
        "closed via the page",
    )
    until(lambda: "closed" in browser.driver.find_element(By.ID, "toast").text, 5, "the page says it closed")

    # Opened through the page's form, then reset by a click.
    by_page = "kpi.ui.opened-by-page"
    field = browser.driver.find_element(By.ID, "open-subject")
    field.send_keys(by_page)
    click(browser, "#open-breaker button[type=submit]")
    opened = until(lambda: breaker(loaded, by_page), 10, "opened via the page")
    assert opened["state"] == "open" and opened["reason"] == "manual"
    until(lambda: row(browser, by_page).get_attribute("data-state") == "open", 10, "the page lists it")
    click(browser, 'button[data-action="reset"]', row(browser, by_page))
    until(lambda: breaker(loaded, by_page) is None, 10, "reset via the page: the API forgets it")
    until(
        lambda: not browser.driver.find_elements(By.CSS_SELECTOR, f'tr[data-subject="{by_page}"]'),
        10,
        "row gone",
    )
    # Every button says what it does (a text or an aria-label).
    unnamed = browser.js(
        "return [...document.querySelectorAll('button')].filter((b) => !(b.getAttribute('aria-label') "
        "|| b.textContent.trim())).length"
    )
    assert unnamed == 0
    assert browser.console_errors() == [] and browser.csp_violations() == []


def test_the_layout_holds_on_a_phone(browser: Browser, loaded: Stack, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.viewport(390, 844, mobile=True)
    try:
        browser.open(loaded.admin + "/")
        until(
            lambda: int(browser.js("return document.getElementById('plot-rates').dataset.points")) >= 3,
            30,
            "plots",
        )
        until(lambda: browser.js(COUNT_SERIES_PIXELS, "plot-rates") > 10, 20, "the rates plot draws")
        assert browser.js("return window.innerWidth") == 390
        assert browser.js(NO_HORIZONTAL_SCROLL), browser.js("return document.documentElement.scrollWidth")
        assert browser.js(LOW_CONTRAST) == []
        # Each plot fits the screen, and a breaker's buttons are within reach (not scrolled away).
        widths = browser.js(
            "return [...document.querySelectorAll('.plot canvas')]"
            ".map((c) => c.getBoundingClientRect().right)"
        )
        assert widths and max(widths) <= 390
        subject = "kpi.ui.phone"
        call(loaded.admin, "POST", BREAKER, {"subject": subject, "action": "open"})
        until(lambda: row(browser, subject), 10, "the breaker is listed")
        reset = row(browser, subject).find_element(By.CSS_SELECTOR, 'button[data-action="reset"]')
        browser.js("arguments[0].scrollIntoView({block: 'center'})", reset)
        assert browser.js("return arguments[0].getBoundingClientRect().right", reset) <= 390
        reset.click()
        until(lambda: breaker(loaded, subject) is None, 10, "reset from the phone layout")
        browser.screenshot(tmp_path / "admin-page-390x844.png")
    finally:
        browser.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_recommendation_applies_through_put_config(browser: Browser, loaded: Stack, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.viewport(1280, 800)
    browser.open(loaded.admin + "/")
    # The rate-ceiling rule needs 30 s of history at the ceiling: the load test provides it.
    card_css = 'article[data-id="rate-ceiling"]'
    until(
        lambda: browser.driver.find_elements(By.CSS_SELECTOR, card_css), 75, "the rate-ceiling recommendation"
    )
    card = browser.driver.find_element(By.CSS_SELECTOR, card_css)
    assert "maxPublishRate" in card.text
    browser.screenshot(tmp_path / "admin-page-recommendation.png")
    if target := os.environ.get("KPI_UI_SCREENSHOT"):
        browser.js("window.scrollTo(0, 0)")
        shutil.copy(browser.screenshot(tmp_path / "full.png", full_page=True), target)
    click(browser, 'button[data-action="apply"]', card)
    until(lambda: browser.js("return document.getElementById('confirm-dialog').open"), 5, "a confirmation")
    assert '"maxPublishRate": 300' in browser.driver.find_element(By.ID, "confirm-body").text
    click(browser, "#confirm-yes")
    until(
        lambda: call(loaded.admin, "GET", f"{P}/config").data["maxPublishRate"] == MAX_RATE * 1.5,
        10,
        "applied",
    )
    until(lambda: "maxPublishRate" in browser.driver.find_element(By.ID, "toast").text, 5, "the page says so")
    assert browser.console_errors() == [] and browser.csp_violations() == []


@pytest.fixture(scope="module")
def secured() -> Iterator[Stack]:
    stack = Stack(env={"KPI_SIDECAR_ADMIN_TOKEN": TOKEN})
    yield stack
    stack.close()


def test_changes_ask_for_the_token_and_keep_it_in_the_tab_only(browser: Browser, secured: Stack) -> None:
    from selenium.webdriver.common.by import By

    subject = "kpi.ui.secured"
    assert (
        call(secured.admin, "POST", BREAKER, {"subject": subject, "action": "open"}, token=TOKEN).status
        == 200
    )
    browser.viewport(1280, 800)
    browser.open(secured.admin + "/")
    until(lambda: row(browser, subject), 10, "the breaker is listed")
    click(browser, 'button[data-action="reset"]', row(browser, subject))
    dialog_open = "return document.getElementById('token-dialog').open"
    until(lambda: browser.js(dialog_open), 5, "the page asks for the token")
    token_input = browser.driver.find_element(By.ID, "token-input")
    token_input.send_keys("wrong-token")
    click(browser, "#token-save")
    until(
        lambda: "refused" in browser.driver.find_element(By.ID, "token-reason").text,
        5,
        "a wrong token is refused",
    )
    assert breaker(secured, subject)["state"] == "open"
    token_input.clear()
    token_input.send_keys(TOKEN)
    click(browser, "#token-save")
    until(lambda: breaker(secured, subject) is None, 10, "reset with the token")
    assert not browser.js(dialog_open)
    # In this tab's sessionStorage only: no cookie, nothing in localStorage.
    assert browser.js("return sessionStorage.getItem('kpi-sidecar-admin-token')") == TOKEN
    assert browser.js("return localStorage.length") == 0 and browser.js("return document.cookie") == ""
    click(browser, "#token-button")
    click(browser, "#token-forget")
    assert browser.js("return sessionStorage.length") == 0
    assert browser.console_errors() == [] or all("401" in e for e in browser.console_errors())


def test_the_fleet_section_lists_the_members(browser: Browser, tmp_path: Path) -> None:
    """Two sidecars in one fleet (JetStream KV): each page shows both members with their shares."""
    from selenium.webdriver.common.by import By

    from tests.conftest import SidecarProcess, sidecar_config

    fleet = {"name": "ui", "bucket": "ui_fleet", "maxPublishRate": 400, "intervalS": 0.5, "ttlS": 2}
    stack = Stack(
        {"fleet": {**fleet, "memberId": "first"}},
        nats_conf=f'jetstream {{ store_dir: "{tmp_path / "js"}" }}',
    )
    second = SidecarProcess(
        stack.workdir,
        {**sidecar_config(stack.nats.url, fleet={**fleet, "memberId": "second"}), "spool": {"path": None}},
    )
    try:
        browser.viewport(1280, 800)
        browser.open(stack.admin + "/")
        until(
            lambda: len(browser.driver.find_elements(By.CSS_SELECTOR, "#fleet-table tbody tr")) == 2,
            20,
            "both members listed",
        )
        until(lambda: "mode shared" in browser.driver.find_element(By.ID, "fleet-summary").text, 10, "shared")
        text = browser.driver.find_element(By.ID, "fleet-section").text
        assert "first (this sidecar)" in text and "second" in text
        assert "budget 400 msg/s (equal)" in text and "ceiling here 200 msg/s" in text
        assert browser.js(LOW_CONTRAST) == []
        assert browser.console_errors() == []
        browser.open(second.admin_url + "/")
        until(
            lambda: "second (this sidecar)" in browser.driver.find_element(By.ID, "fleet-section").text,
            20,
            "the second page",
        )
    finally:
        second.kill()
        stack.close()
