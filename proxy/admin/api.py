"""The admin port's public names in one place (the API itself is split by concern, see below).

The admin port serves the REST API under /api/backpressure, Prometheus metrics at /metrics and the
page at /. Its rooms: app.py (route table, create_admin_app), http.py (envelopes, errors, auth),
keys.py (AppKeys), requests.py and responses.py (the bodies in and out, as msgspec Structs),
status.py, config_api.py, actions.py, analytics.py (the handlers), openapi.py (the document,
generated from the Structs). Importers outside proxy/admin/ may use this module or the rooms.
"""

from __future__ import annotations

from proxy.admin.app import PREFIX, ROUTES, create_admin_app
from proxy.admin.config_api import config_data, parse_config_update
from proxy.admin.http import ApiError, envelope, error_middleware, error_response, is_loopback
from proxy.admin.status import health_components, health_status, status_data

__all__ = [
    "PREFIX",
    "ROUTES",
    "ApiError",
    "config_data",
    "create_admin_app",
    "envelope",
    "error_middleware",
    "error_response",
    "health_components",
    "health_status",
    "is_loopback",
    "parse_config_update",
    "status_data",
]
