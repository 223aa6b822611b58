"""The admin port: REST API under /api/backpressure and Prometheus metrics at /metrics."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from proxy.sidecar import Sidecar

SIDECAR_KEY = web.AppKey("sidecar", Sidecar)
PREFIX = "/api/backpressure"


def envelope(data: Any, status: int = 200) -> web.Response:
    """The success envelope `{"success": true, "data": ..., "timestamp": ...}`."""
    return web.json_response({"success": True, "data": data, "timestamp": _timestamp()}, status=status)


def error_response(status: int, code: str, message: str, details: Any = None) -> web.Response:
    """The error envelope `{"success": false, "error": {"code", "message", "details"}}`."""
    body = {"success": False, "error": {"code": code, "message": message, "details": details}}
    return web.json_response({**body, "timestamp": _timestamp()}, status=status)


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error, including aiohttp's own 404/405/413, leaves in the error envelope."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.upper().replace(" ", "_")
        return error_response(exc.status, code, exc.text or exc.reason)


def health_status(sidecar: Sidecar) -> str:
    level = sidecar.engine.level
    if level >= 4:
        return "critical"
    if level >= 1 or not sidecar.upstream.connected:
        return "degraded"
    return "healthy"


async def get_health(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    # Always 200 while the process works: a sidecar under load must not be restarted for it.
    return envelope(
        {
            "status": health_status(sidecar),
            "degradationLevel": sidecar.engine.level.label,
            "upstreamConnected": sidecar.upstream.connected,
            "uptimeSeconds": round(sidecar.loop.time() - sidecar.started_at, 3),
        }
    )


async def get_ready(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    ready = sidecar.nats_port is not None and not sidecar.shutting_down
    data = {"ready": ready, "upstreamConnected": sidecar.upstream.connected}
    if not ready:
        return error_response(503, "NOT_READY", "the sidecar is starting or shutting down", data)
    return envelope(data)


def create_admin_app(sidecar: Sidecar) -> web.Application:
    """Build the admin application for one sidecar."""
    app = web.Application(middlewares=[error_middleware], client_max_size=sidecar.config.admin.max_body_bytes)
    app[SIDECAR_KEY] = sidecar
    app.router.add_get(f"{PREFIX}/health", get_health)
    app.router.add_get(f"{PREFIX}/ready", get_ready)
    app.router.add_get("/ready", get_ready)
    return app
