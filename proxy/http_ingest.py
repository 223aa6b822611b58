"""The HTTP ingest port: applications that do not speak NATS publish with POST /publish/{subject}."""

from __future__ import annotations

from aiohttp import web

from proxy.sidecar import Sidecar

SIDECAR_KEY = web.AppKey("ingest_sidecar", Sidecar)


def create_ingest_app(sidecar: Sidecar) -> web.Application:
    """Build the ingest application for one sidecar."""
    app = web.Application(client_max_size=sidecar.config.http.max_body_bytes)
    app[SIDECAR_KEY] = sidecar
    return app
