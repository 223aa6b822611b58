"""The admin application: the route table, create_admin_app (the factory) and what lives with the app
(metrics collector, the per-second history, the load-test runner) through cleanup_ctx.

The handlers live in rooms by concern: status.py (status, metrics history, health, readiness),
config_api.py, actions.py (breakers, load tests, queue actions), analytics.py, page.py (the admin page).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from proxy.admin import actions, analytics, config_api, signals_view, status
from proxy.admin.history import MetricHistory
from proxy.admin.http import Handler, dumps, error_middleware, finite, security_middleware
from proxy.admin.keys import (
    COLLECTOR_KEY,
    HISTORY_KEY,
    LOAD_TEST_KEY,
    MAX_BODY_KEY,
    OPENAPI_KEY,
    REGISTRY_KEY,
    RUNTIME_KEY,
    SIDECAR_KEY,
    TOKEN_KEY,
)
from proxy.admin.load_test import LoadTest
from proxy.admin.metrics import SidecarCollector, new_registry, spool_state
from proxy.admin.openapi import build_openapi
from proxy.admin.page import PAGE_KEY, AdminPage, get_page, get_page_asset
from proxy.config.runtime import ConfigCollector, RuntimeConfig
from proxy.config.schema import LoadedConfig
from proxy.fleet.view import FleetCollector
from proxy.sidecar import Sidecar

log = logging.getLogger(__name__)

PREFIX: Final = "/api/backpressure"
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


async def get_prometheus(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY], dumps=dumps)


def record_sample(sidecar: Sidecar, history: MetricHistory, now: float) -> None:
    """Add one per-second sample of the sidecar's state to the history ring."""
    snap = sidecar.engine.snapshot(now)
    spool = spool_state(sidecar)
    history.record(
        time.time(),
        (
            finite(snap.memory_mb),
            finite(snap.cpu_percent),
            snap.queue_size,
            finite(snap.publish_rate),
            finite(snap.load_percent),
            snap.level_value,
            snap.sampling_rate,
            snap.batch_size,
            1.0 if sidecar.upstream.connected else 0.0,
            snap.received,
            snap.forwarded,
            snap.dropped,
            snap.sampled,
            snap.spooled,
            spool["bytes"],
            *signals_view.history_values(snap),
        ),
        snap.dropped_by_reason,
    )


async def _background(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: metrics collector, history recording and the load-test runner live with the app."""
    sidecar = app[SIDECAR_KEY]
    registry = app[REGISTRY_KEY]
    collector = SidecarCollector(sidecar)
    history = MetricHistory(sidecar.config.metrics.history_seconds)
    load_test = LoadTest(sidecar)
    app[COLLECTOR_KEY] = collector
    app[HISTORY_KEY] = history
    app[LOAD_TEST_KEY] = load_test
    registry.register(collector)
    config_collector = ConfigCollector(app[RUNTIME_KEY])
    registry.register(config_collector)
    fleet_collector = FleetCollector(sidecar)
    registry.register(fleet_collector)

    def on_tick(now: float) -> None:
        # A listener that raised would stop the sidecar's tick loop: never let it.
        try:
            collector.observe_tick(now)
            record_sample(sidecar, history, now)
        except Exception:
            log.exception("admin API: tick bookkeeping failed")

    sidecar.tick_listeners.append(on_tick)
    try:
        yield
    finally:
        if on_tick in sidecar.tick_listeners:
            sidecar.tick_listeners.remove(on_tick)
        registry.unregister(collector)
        registry.unregister(config_collector)
        registry.unregister(fleet_collector)
        await load_test.close()


ROUTES: Final[tuple[tuple[str, str, Handler], ...]] = (
    ("GET", f"{PREFIX}/status", status.get_status),
    ("GET", f"{PREFIX}/fleet", status.get_fleet),
    ("GET", f"{PREFIX}/metrics", status.get_metrics_history),
    ("GET", f"{PREFIX}/health", status.get_health),
    ("GET", f"{PREFIX}/health/detailed", status.get_health_detailed),
    ("GET", f"{PREFIX}/ready", status.get_ready),
    ("GET", "/ready", status.get_ready),
    ("GET", f"{PREFIX}/config", config_api.get_config),
    ("PUT", f"{PREFIX}/config", config_api.put_config),
    ("POST", f"{PREFIX}/config/reset", config_api.post_config_reset),
    ("GET", f"{PREFIX}/circuit-breaker/status", actions.get_breakers),
    ("POST", f"{PREFIX}/circuit-breaker", actions.post_breaker),
    ("POST", f"{PREFIX}/load-test", actions.post_load_test),
    ("GET", f"{PREFIX}/load-test/status", actions.get_load_test_status),
    ("POST", f"{PREFIX}/load-test/stop", actions.post_load_test_stop),
    ("POST", f"{PREFIX}/actions/drain-queue", actions.post_drain_queue),
    ("POST", f"{PREFIX}/actions/clear-queue", actions.post_clear_queue),
    ("GET", f"{PREFIX}/analytics/degradation-history", analytics.get_degradation_history),
    ("GET", f"{PREFIX}/analytics/recommendations", analytics.get_recommendations),
    ("GET", f"{PREFIX}/openapi.json", get_openapi),
    ("GET", "/metrics", get_prometheus),
    ("GET", "/", get_page),
    ("GET", "/ui/{path:.+}", get_page_asset),
)


def create_admin_app(
    sidecar: Sidecar, registry: CollectorRegistry | None = None, runtime: RuntimeConfig | None = None
) -> web.Application:
    """Build the admin application for one sidecar; `registry` is the process's (tests pass their own),
    `runtime` owns configuration changes (without one, the sidecar's configuration counts as the file's)."""
    max_body = sidecar.config.admin.max_body_bytes
    app = web.Application(middlewares=[error_middleware, security_middleware], client_max_size=max_body)
    app[SIDECAR_KEY] = sidecar
    app[REGISTRY_KEY] = registry if registry is not None else new_registry()
    app[TOKEN_KEY] = sidecar.config.admin.token or ""
    app[MAX_BODY_KEY] = max_body
    app[RUNTIME_KEY] = (
        runtime if runtime is not None else RuntimeConfig(sidecar, LoadedConfig(sidecar.config))
    )
    app[OPENAPI_KEY] = build_openapi()
    app[PAGE_KEY] = AdminPage.load()
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(_background)
    return app
