"""The admin page: `GET /` on the admin port, one page that shows the sidecar's state and plots it live.

The page (proxy/admin/ui/) is static: index.html, app.js, app.css and the vendored uPlot chart library.
It reads the JSON API (`/api/backpressure/...`) from the browser; nothing is built at run time and
nothing is fetched from outside the admin port. The files are read once from the installed package
and kept in memory (about 70 KB); only the names in ASSETS are served, so no request path ever reaches
the file system. Every answer carries a strict Content-Security-Policy (no inline script or style, no
origin but this one, no HTML built from strings) and `X-Content-Type-Options: nosniff`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from importlib import resources
from typing import Final

from aiohttp import web

log = logging.getLogger(__name__)

PAGE: Final = "index.html"
# URL path under /ui/ -> (file under proxy/admin/ui/, Content-Type).
ASSETS: Final[Mapping[str, tuple[str, str]]] = {
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "app.css": ("app.css", "text/css; charset=utf-8"),
    "icon.svg": ("icon.svg", "image/svg+xml"),
    "vendor/uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "vendor/uPlot.min.css": ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
}
HTML_TYPE: Final = "text/html; charset=utf-8"
# 'self' only; no inline script or style (nor eval); Trusted Types make `innerHTML = string` throw,
# so a subject name shown by the page can never become markup.
CSP: Final = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # Revalidate each time (ETag): an upgraded sidecar never runs an old app.js against a new API.
    "Cache-Control": "no-cache",
}


class PageFile:
    """One served file: its bytes, Content-Type and a strong ETag."""

    __slots__ = ("body", "content_type", "etag")

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


class AdminPage:
    """The page's files, loaded once; `missing` names those the installation lacks (then 503)."""

    def __init__(self, files: Mapping[str, PageFile], missing: list[str]) -> None:
        self.files = dict(files)
        self.missing = missing

    @classmethod
    def load(cls) -> AdminPage:
        """Read index.html and ASSETS from the installed package (proxy/admin/ui/)."""
        root = resources.files("proxy.admin") / "ui"
        files: dict[str, PageFile] = {}
        missing: list[str] = []
        for url, (name, content_type) in ((PAGE, (PAGE, HTML_TYPE)), *ASSETS.items()):
            try:
                body = root.joinpath(name).read_bytes()
            except OSError:
                missing.append(name)
                continue
            files[url] = PageFile(body, content_type)
        if missing:
            log.warning("admin page: files missing from the installation: %s", ", ".join(missing))
        return cls(files, missing)

    def answer(self, request: web.Request, url: str) -> web.Response:
        """The file at `url` (PAGE or an ASSETS key), 304 when the client has it, 503 when not installed."""
        file = self.files.get(url)
        if file is None:
            if url in ASSETS or url == PAGE:
                text = "the admin page's files are missing from this installation: " + ", ".join(self.missing)
                return web.Response(
                    status=503,
                    body=(text + "\n").encode(),
                    headers={**SECURITY_HEADERS, "Content-Type": "text/plain; charset=utf-8"},
                )
            raise web.HTTPNotFound()
        headers = {**SECURITY_HEADERS, "ETag": file.etag}
        if file.etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=file.body, headers={**headers, "Content-Type": file.content_type})


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


PAGE_KEY: Final = web.AppKey("admin_page", AdminPage)


async def get_page(request: web.Request) -> web.Response:
    return request.app[PAGE_KEY].answer(request, PAGE)


async def get_page_asset(request: web.Request) -> web.Response:
    return request.app[PAGE_KEY].answer(request, request.match_info["path"])
