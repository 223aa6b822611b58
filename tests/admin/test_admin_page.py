"""The admin page's files and how they are served: GET /, its assets, the CSP, the wheel that ships them,
and the browser-origin rule for changes without a token. The page in a real browser: tests/ui/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from proxy.admin.api import create_admin_app
from proxy.admin.history import REASON_SECONDS, MetricHistory
from proxy.admin.page import ASSETS, CSP, PAGE, PAGE_KEY, AdminPage
from proxy.config.schema import build_config
from proxy.sidecar import Sidecar
from tests.admin.api import call, check_schema, wait_for
from tests.admin.test_history_recommendations import T0, values

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "proxy" / "admin" / "ui"
P = "/api/backpressure"
BREAKER = f"{P}/circuit-breaker"
TOKEN = "page-token"


class _Markup(HTMLParser):
    """Collects what a strict CSP would block or what would leave the origin."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts = 0
        self.style_elements = 0
        self.style_attributes: list[str] = []
        self.handlers: list[str] = []
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script":
            self._in_script = "src" not in named
            self.inline_scripts += "src" not in named
        if tag == "style":
            self.style_elements += 1
        for name, value in attrs:
            if name == "style":
                self.style_attributes.append(tag)
            if name.startswith("on"):
                self.handlers.append(f"{tag} {name}")
            if name in ("src", "href", "action") and value is not None:
                self.urls.append(value)


def test_the_page_has_no_inline_code_and_names_only_its_own_files() -> None:
    markup = _Markup()
    markup.feed((UI / PAGE).read_text())
    assert markup.inline_scripts == 0 and markup.style_elements == 0
    assert markup.style_attributes == [] and markup.handlers == []
    served = {f"ui/{name}" for name in ASSETS}
    for url in markup.urls:
        assert "//" not in url and not url.startswith("/"), url  # relative: works behind a path prefix
        assert url in served or url.startswith(("api/backpressure/", "metrics")), url
    assert served <= set(markup.urls)  # every served file is used


def test_the_script_never_builds_markup_from_strings() -> None:
    # Subjects shown by the page come from applications: they must never become HTML.
    script = (UI / "app.js").read_text()
    for construct in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ):
        assert construct not in script, construct
    for name, (file, _) in ASSETS.items():
        if name.endswith(".js"):
            text = (UI / file).read_text()
            assert "innerHTML" not in text and "eval(" not in text, name


def test_the_vendored_chart_library_is_named_with_its_version_and_licence() -> None:
    readme = (UI / "vendor" / "README.md").read_text()
    header = (UI / "vendor" / "uPlot.iife.min.js").read_text()[:80]
    version = re.search(r"\(v(\d+\.\d+\.\d+)\)", header)
    assert version is not None and f"uPlot {version[1]}" in readme
    assert "MIT License" in (UI / "vendor" / "uPlot.LICENSE").read_text()
    assert (UI / "vendor" / "uPlot.iife.min.js").stat().st_size < 80_000


async def _client(config: dict[str, Any] | None = None) -> TestClient:
    sidecar = Sidecar(build_config({"spool": {"path": None}, **(config or {})}, env={}))
    client = TestClient(TestServer(create_admin_app(sidecar, CollectorRegistry())))
    await client.start_server()
    return client


async def test_get_root_serves_the_page_with_a_strict_csp_and_assets_with_their_types() -> None:
    client = await _client()
    try:
        page = await client.get("/")
        assert page.status == 200
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert page.headers["Content-Security-Policy"] == CSP
        assert "default-src 'self'" in CSP and "script-src 'self'" in CSP and "unsafe" not in CSP
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["X-Frame-Options"] == "DENY"
        assert (await page.read()) == (UI / PAGE).read_bytes()
        for name, (file, content_type) in ASSETS.items():
            answer = await client.get(f"/ui/{name}")
            assert answer.status == 200, name
            assert answer.headers["Content-Type"] == content_type, name
            assert answer.headers["Content-Security-Policy"] == CSP
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert (await answer.read()) == (UI / file).read_bytes(), name
        # Revalidation: the same ETag answers 304 without a body.
        etag = page.headers["ETag"]
        again = await client.get("/", headers={"If-None-Match": etag})
        assert again.status == 304 and (await again.read()) == b""
        assert (await client.get("/", headers={"If-None-Match": '"other"'})).status == 200
    finally:
        await client.close()


async def test_only_the_pages_own_files_are_served() -> None:
    client = await _client()
    try:
        for path in (
            "/ui/nope.js",
            "/ui/index.html.bak",
            "/ui/../admin_api.py",
            "/ui/%2e%2e/admin_api.py",
            "/ui/vendor/uPlot.LICENSE",
            "/ui/vendor/README.md",
            "/ui/vendor/../../admin_api.py",
            "/index.html",
        ):
            answer = await client.get(path)
            assert answer.status == 404, path
            body = await answer.json()
            assert body["success"] is False and body["error"]["code"] == "NOT_FOUND", path
    finally:
        await client.close()


async def test_a_broken_installation_answers_503_naming_the_missing_files() -> None:
    sidecar = Sidecar(build_config({"spool": {"path": None}}, env={}))
    app = create_admin_app(sidecar, CollectorRegistry())
    app[PAGE_KEY] = AdminPage({}, ["index.html", "app.js"])
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        answer = await client.get("/")
        assert answer.status == 503
        text = await answer.text()
        assert "missing from this installation" in text and "app.js" in text
        assert (await client.get("/ui/app.js")).status == 503
        # The API itself is unaffected.
        assert (await client.get(f"{P}/status")).status == 200
    finally:
        await client.close()


@pytest.mark.slow
def test_the_built_wheel_ships_the_page(tmp_path: Path) -> None:
    # As `pip install .` builds it (isolated build environment, pyproject's build requirements).
    env = {**os.environ, "KPI_SIDECAR_NO_EXTENSIONS": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=110,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("kpi_sidecar-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"proxy/admin/ui/{PAGE}", *(f"proxy/admin/ui/{file}" for file, _ in ASSETS.values())}
    expected |= {"proxy/admin/ui/vendor/uPlot.LICENSE", "proxy/admin/ui/vendor/README.md"}
    assert expected <= names, expected - names


# -- the browser-origin rule (no token: changes only from the page itself, on loopback) --------------------
def test_without_a_token_a_foreign_web_page_cannot_change_anything(stack: Any) -> None:
    body = {"subject": "kpi.csrf.target", "action": "open"}
    host = stack.admin.removeprefix("http://")
    refused = [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": f"http://{host}.evil.example"},
        {"Origin": "https://" + host},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        # DNS rebinding: the attacker's name resolved to 127.0.0.1, so Origin and Host agree.
        {"Origin": "http://rebind.example:1234", "Host": "rebind.example:1234"},
    ]
    for headers in refused:
        answer = check_schema(call(stack.admin, "POST", BREAKER, body, headers=headers), BREAKER, "POST")
        assert answer.status == 403, headers
        assert answer.error["code"] == "FORBIDDEN" and "admin page" in answer.error["message"]
    assert call(stack.admin, "GET", f"{BREAKER}/status").data["open"] == 0
    # The page itself (same origin, loopback) and clients that are not browsers may.
    for headers in (
        {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"},
        {
            "Origin": f"http://localhost:{host.rsplit(':', 1)[1]}",
            "Host": f"localhost:{host.rsplit(':', 1)[1]}",
        },
        {},
    ):
        answer = call(stack.admin, "POST", BREAKER, {**body, "action": "reset"}, headers=headers)
        assert answer.status == 200, (headers, answer)


async def test_with_a_token_the_token_is_the_proof_whatever_the_origin() -> None:
    client = await _client({"admin": {"token": TOKEN}})
    try:
        headers = {"Origin": "http://elsewhere.example", "Authorization": f"Bearer {TOKEN}"}
        answer = await client.post(BREAKER, json={"subject": "a.b", "action": "open"}, headers=headers)
        assert answer.status == 200
        answer = await client.post(
            BREAKER,
            json={"subject": "a.b", "action": "reset"},
            headers={"Origin": "http://elsewhere.example"},
        )
        assert answer.status == 401
    finally:
        await client.close()


# -- drops by reason in the history (the page's "dropped by reason" plot) ---------------------------------
def test_the_reason_ring_holds_its_limit_and_shares_unchanged_counts() -> None:
    history = MetricHistory()
    for i in range(REASON_SECONDS + 50):
        history.record(T0 + i, values(), {"sampling": i // 100})
    kept = history.dropped_by_reason()
    assert len(kept) == REASON_SECONDS
    assert min(kept) == T0 + 50 and max(kept) == T0 + REASON_SECONDS + 49
    # One dict per distinct value: an idle sidecar does not fill the ring with copies.
    assert len({id(counts) for counts in kept.values()}) == len({c["sampling"] for c in kept.values()})
    history.record(T0 + 10_000, values())  # no reasons given: the ring is unchanged
    assert len(history.dropped_by_reason()) == REASON_SECONDS


def test_history_points_carry_drops_by_reason(stack: Any) -> None:
    subject = "kpi.page.blocked"
    assert call(stack.admin, "POST", BREAKER, {"subject": subject, "action": "open"}).status == 200
    try:
        for _ in range(5):
            assert call(stack.sidecar.http_url, "POST", f"/publish/{subject}", raw=b"x").status in (202, 429)

        def latest() -> Any:
            answer = check_schema(call(stack.admin, "GET", f"{P}/metrics"), f"{P}/metrics")
            points = answer.data["history"]
            return points and points[-1].get("droppedByReason", {}).get("circuit_breaker", 0) >= 5 and points

        points = wait_for(latest, timeout=10)
        assert all("droppedByReason" in p for p in points)
        hour = call(stack.admin, "GET", f"{P}/metrics?timeRange=1h").data["history"]
        assert "droppedByReason" in hour[-1]
    finally:
        call(stack.admin, "POST", BREAKER, {"subject": subject, "action": "reset"})


# -- `since`: the live view asks only for new points -----------------------------------------------------
def _merge(
    points: list[tuple[float, ...]], new: list[tuple[float, ...]], step: int
) -> list[tuple[float, ...]]:
    """What app.js does with the answer: a point in the last point's step replaces it, others append."""
    out = list(points)
    for point in new:
        if out and out[-1][0] // step == point[0] // step:
            out[-1] = point
        else:
            out.append(point)
    return out


@pytest.mark.parametrize(("time_range", "step"), [("5m", 1), ("1h", 10), ("24h", 60)])
def test_points_since_merge_into_the_same_history_as_a_full_answer(time_range: str, step: int) -> None:
    history = MetricHistory(history_seconds=7200, fine_seconds=3600)
    for i in range(1000):
        history.record(T0 + i, values(currentQueueSize=i % 37, receivedMessages=i))
    shown = history.points(time_range, T0 + 999.5)
    for i in range(1000, 1125):
        history.record(T0 + i, values(currentQueueSize=i % 37, receivedMessages=i))
        if i % 7 == 0:  # the page polls now and then, mid-step or not
            new = history.points(time_range, T0 + i + 0.5, since=shown[-1][0])
            assert all(p[0] > shown[-1][0] for p in new)
            shown = _merge(shown, new, step)
    new = history.points(time_range, T0 + 1124.5, since=shown[-1][0])
    shown = _merge(shown, new, step)
    full = history.points(time_range, T0 + 1124.5)
    assert shown[-len(full) :] == full
    assert history.points(time_range, T0 + 1124.5, since=full[-1][0]) == []


def test_since_over_the_api(stack: Any) -> None:
    path = f"{P}/metrics"
    full = wait_for(
        lambda: len(call(stack.admin, "GET", path).data["history"]) >= 3 and call(stack.admin, "GET", path)
    )
    points = full.data["history"]
    cut = points[-3]["timestamp"]
    newer = check_schema(call(stack.admin, "GET", f"{path}?since={cut}"), path).data["history"]
    assert newer and all(p["timestamp"] > cut for p in newer)
    assert newer[0]["timestamp"] == points[-2]["timestamp"]
    assert call(stack.admin, "GET", f"{path}?since=4102444800").data["history"] == []  # 2100: nothing newer
    for bad in ("yesterday", "nan", "inf", "1e999", ""):
        answer = check_schema(call(stack.admin, "GET", f"{path}?since={bad}"), path)
        assert answer.status == 400 and answer.error["details"]["field"] == "since", bad
