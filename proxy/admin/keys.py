"""The admin application's typed keys (aiohttp AppKeys): what create_admin_app stores for the handlers."""

from __future__ import annotations

from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.admin.history import MetricHistory
from proxy.admin.load_test import LoadTest
from proxy.admin.metrics import SidecarCollector
from proxy.config.runtime import RuntimeConfig
from proxy.sidecar import Sidecar

SIDECAR_KEY: Final = web.AppKey("sidecar", Sidecar)
REGISTRY_KEY: Final = web.AppKey("registry", CollectorRegistry)
COLLECTOR_KEY: Final = web.AppKey("collector", SidecarCollector)
HISTORY_KEY: Final = web.AppKey("history", MetricHistory)
LOAD_TEST_KEY: Final = web.AppKey("load_test", LoadTest)
RUNTIME_KEY: Final = web.AppKey("runtime_config", RuntimeConfig)
TOKEN_KEY: Final = web.AppKey("admin_token", str)
MAX_BODY_KEY: Final = web.AppKey("max_body_bytes", int)
OPENAPI_KEY: Final = web.AppKey("openapi", dict)
