"""Headless Chromium (Debian's chromium and chromium-driver) driven by selenium, for the admin page tests.

No external network: the flags stop Chromium's background traffic, every page comes from a sidecar on
127.0.0.1, and `resources_outside()` lists any request the page made elsewhere.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--lang=en-US",
)
# Runs before the page's own scripts: records what the Content-Security-Policy blocked.
CSP_RECORDER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


def require_browser() -> None:
    """Skip (fail under CI) when Chromium, its driver or selenium is not installed."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (the `test` extras)")
    if missing:
        reason = (
            f"the browser test needs {', '.join(missing)}: Debian's chromium and chromium-driver, which "
            "`make test` installs"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test, but {reason}")
        pytest.skip(reason)


class Browser:
    """One headless Chromium with a fresh profile; quit() removes it."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        # Never let selenium's driver manager look for downloads: both paths are given.
        os.environ.setdefault("SE_OFFLINE", "true")
        os.environ.setdefault("SE_AVOID_STATS", "true")
        self.profile = Path(tempfile.mkdtemp(prefix="kpi-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(
            service=Service(str(CHROMEDRIVER), log_output=str(self.profile / "chromedriver.log")),
            options=options,
        )
        self.driver.set_page_load_timeout(30)
        self.driver.set_script_timeout(15)
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_RECORDER})

    def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        """An exact viewport (CSS pixels); `mobile` also honours the page's meta viewport, as a phone does."""
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def open(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        """A PNG of the viewport, or of the whole page."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            width, height = self.js("return [window.innerWidth, document.documentElement.scrollHeight]")
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            )
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", params)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def csp_violations(self) -> list[str]:
        return self.js("return window.__cspViolations || []")

    def resources_outside(self, origin: str) -> list[str]:
        urls = self.js("return performance.getEntriesByType('resource').map((e) => e.name)")
        return [u for u in urls if not u.startswith(origin + "/")]

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` (exceptions count as not yet) until truthy; AssertionError naming `what`."""
    import time

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as err:  # a stale element or a page still loading: try again
            last = err
        else:
            if value:
                return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s" + (f" (last error: {last!r})" if last else ""))
