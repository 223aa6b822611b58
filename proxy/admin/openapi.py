"""The OpenAPI 3.1 document of the admin port, served at GET /api/backpressure/openapi.json.

Generated, not written: the request bodies and the answers are the msgspec Structs of
proxy/admin/requests.py and proxy/admin/responses.py, the very classes the handlers decode with and
return, and their schemas come from msgspec.json.schema_components. Only the route table, the two
envelopes around every answer and the non-JSON routes (page, assets, Prometheus) are written here.
tests/admin/test_openapi.py checks that every route is documented and that real answers validate.
"""

from __future__ import annotations

import copy
from typing import Any, Final

import msgspec

from policies.config import BackpressureConfig, PolicyRule
from proxy import __version__
from proxy.admin import responses as r
from proxy.admin.recommendations import Recommendation
from proxy.admin.requests import (
    CONFIG_BOUNDS,
    MAX_BYTES_PER_SECOND,
    MAX_DURATION_S,
    MAX_MESSAGE_SIZE,
    MAX_RATE,
    MAX_SUBJECTS,
    MIN_MESSAGE_SIZE,
    BreakerAction,
    LoadTestSpec,
)

P: Final = "/api/backpressure"
REF: Final = "#/components/schemas/{name}"
STR: Final = {"type": "string"}
TS: Final = {"type": "string", "format": "date-time"}
# Component names the document shows where they differ from the class names.
RENAMED: Final = {"LoadTestSpec": "LoadTestRequest", "BreakerAction": "BreakerRequest"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=RENAMED.get(name, name))}


def _of(cls: type) -> dict[str, str]:
    return _ref(cls.__name__)


def _obj(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), **extra}


def _components() -> dict[str, Any]:
    """Every Struct's schema, by component name, with $refs pointing at the renamed components."""
    types = [BackpressureConfig, PolicyRule, LoadTestSpec, BreakerAction, Recommendation, *r.RESPONSES]
    _, components = msgspec.json.schema_components(types, ref_template=REF)
    text = msgspec.json.encode(components).decode()
    for old, new in RENAMED.items():
        text = text.replace(f'"{REF.format(name=old)}"', f'"{REF.format(name=new)}"')
    renamed: dict[str, Any] = msgspec.json.decode(text)
    for old, new in RENAMED.items():
        renamed[old]["title"] = new
    return {RENAMED.get(name, name): schema for name, schema in renamed.items()}


def _config_update(base: dict[str, Any]) -> dict[str, Any]:
    """ConfigUpdate as PUT takes it: BackpressureConfig's keys, none required, with the API's bounds."""
    update = copy.deepcopy(base)
    update["title"] = "ConfigUpdate"
    update["description"] = (
        "A partial update: any subset of the keys; unknown keys and bad values are refused (400) and then "
        "nothing changes. `policies`, when present, replaces every rule."
    )
    for name, (low, high) in CONFIG_BOUNDS.items():
        prop = update["properties"][name]
        prop.pop("exclusiveMinimum", None)
        prop["minimum"] = low
        prop["maximum"] = high
    for prop in update["properties"].values():
        prop.pop("default", None)
    update["properties"]["policies"] = {"type": "array", "items": _ref("PolicyRule")}
    update["required"] = []
    return update


def _ok(cls: type, description: str = "OK") -> dict[str, Any]:
    envelope = _obj(
        {"success": {"const": True}, "data": _of(cls), "timestamp": TS}, additionalProperties=False
    )
    return {"description": description, "content": {"application/json": {"schema": envelope}}}


ERRORS: Final = {
    400: "Invalid request: the body or a parameter is malformed (`error.details.field` names it); or the "
    "HTTP request itself is malformed (a bad header line), which the HTTP parser answers in plain text",
    401: "A token is configured and the request does not carry `Authorization: Bearer <token>`",
    403: "No token is configured and the client is not on a loopback address",
    404: "No such resource",
    409: "Conflict with the current state (a load test already runs, breaker table full)",
    413: "Request body larger than admin.maxBodyBytes",
    503: "Not available now (starting, shutting down, upstream not connected)",
}


def _errors(*codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes:
        content: dict[str, Any] = {"application/json": {"schema": _ref("ErrorEnvelope")}}
        if code == 400:
            content["text/plain"] = {"schema": {"type": "string"}}
        out[str(code)] = {"description": ERRORS[code], "content": content}
    return out


def _op(
    summary: str,
    ok: dict[str, Any],
    *errors: int,
    ok_status: int = 200,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    mutating: bool = False,
    tag: str = "backpressure",
) -> dict[str, Any]:
    codes = set(errors) | {400}  # any request may be malformed HTTP
    if mutating:
        codes |= {401, 403, 413}
    if body is not None:
        codes |= {400, 413}
    op: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "operationId": summary.lower().replace(" ", "_").replace("-", "_").replace("/", "_"),
        "responses": {str(ok_status): ok, **_errors(*sorted(codes))},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    if mutating:
        op["security"] = [{"bearerAuth": []}]
    return op


def build_openapi() -> dict[str, Any]:
    """The whole document (a fresh dict each call)."""
    schemas = _components()
    schemas["LoadTestRequest"]["description"] = (
        f"The seed's load-test body. Limits: messagesPerSecond <= {MAX_RATE}, durationSeconds <= "
        f"{MAX_DURATION_S}, {MIN_MESSAGE_SIZE} <= messageSize <= {MAX_MESSAGE_SIZE} (and the upstream's "
        f"max_payload), at most {MAX_SUBJECTS} subjects without wildcards, messagesPerSecond x messageSize "
        f"<= {MAX_BYTES_PER_SECOND} bytes/s."
    )
    schemas["ConfigUpdate"] = _config_update(schemas["BackpressureConfig"])
    schemas["ErrorEnvelope"] = _obj(
        {
            "success": {"const": False},
            "error": _obj({"code": STR, "message": STR, "details": {}}, additionalProperties=False),
            "timestamp": TS,
        },
        additionalProperties=False,
    )
    time_range = {
        "name": "timeRange",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["5m", "1h", "24h"], "default": "5m"},
        "description": "5m: one point per second; 1h: one per 10 s; 24h: one per minute.",
    }
    since = {
        "name": "since",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "Only the points newer than this time (epoch seconds, or an ISO 8601 timestamp as "
        "the points carry): what a live view polls. The first point returned may replace the last one "
        "the client has, when both fall in the same step.",
    }
    ready = _op("Get readiness", _ok(r.Ready), 503, tag="probes")
    paths: dict[str, Any] = {
        f"{P}/status": {"get": _op("Get status", _ok(r.Status))},
        f"{P}/fleet": {"get": _op("Get fleet", _ok(r.Fleet))},
        f"{P}/metrics": {
            "get": _op("Get metrics history", _ok(r.MetricsHistory), 400, params=[time_range, since])
        },
        f"{P}/health": {"get": _op("Get health", _ok(r.Health), tag="probes")},
        f"{P}/health/detailed": {"get": _op("Get detailed health", _ok(r.HealthDetailed), tag="probes")},
        f"{P}/ready": {"get": ready},
        "/ready": {"get": _op("Get readiness (short path)", _ok(r.Ready), 503, tag="probes")},
        f"{P}/config": {
            "get": _op("Get config", _ok(r.Config)),
            "put": _op("Update config", _ok(r.ConfigChange), body=_ref("ConfigUpdate"), mutating=True),
        },
        f"{P}/config/reset": {"post": _op("Reset config", _ok(r.ConfigChange), mutating=True)},
        f"{P}/circuit-breaker/status": {"get": _op("Get circuit breakers", _ok(r.Breakers))},
        f"{P}/circuit-breaker": {
            "post": _op(
                "Operate circuit breaker", _ok(r.BreakerResult), 409, body=_of(BreakerAction), mutating=True
            )
        },
        f"{P}/load-test": {
            "post": _op(
                "Start load test",
                _ok(r.LoadTestStatus, "Accepted: the test runs"),
                409,
                503,
                ok_status=202,
                body=_of(LoadTestSpec),
                mutating=True,
            )
        },
        f"{P}/load-test/status": {"get": _op("Get load test status", _ok(r.LoadTestStatus))},
        f"{P}/load-test/stop": {"post": _op("Stop load test", _ok(r.LoadTestStatus), mutating=True)},
        f"{P}/actions/drain-queue": {"post": _op("Drain queue", _ok(r.Drained), 503, mutating=True)},
        f"{P}/actions/clear-queue": {"post": _op("Clear queue", _ok(r.Cleared), mutating=True)},
        f"{P}/analytics/degradation-history": {
            "get": _op("Get degradation history", _ok(r.DegradationHistory))
        },
        f"{P}/analytics/recommendations": {"get": _op("Get recommendations", _ok(r.Recommendations))},
        f"{P}/openapi.json": {
            "get": {
                "summary": "Get OpenAPI document",
                "tags": ["meta"],
                "operationId": "get_openapi_document",
                "responses": {
                    "200": {
                        "description": "This document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/": {
            "get": {
                "summary": "Admin page",
                "tags": ["ui"],
                "operationId": "get_admin_page",
                "description": "The admin page (HTML): the sidecar's state, live plots, breakers, "
                "recommendations. Served with a strict Content-Security-Policy. See docs/api.md.",
                "responses": {
                    "200": {"description": "The page", "content": {"text/html": {"schema": STR}}},
                    "503": {
                        "description": "The page's files are missing from the installation",
                        "content": {"text/plain": {"schema": STR}},
                    },
                },
            }
        },
        "/ui/{path}": {
            "get": {
                "summary": "Admin page asset",
                "tags": ["ui"],
                "operationId": "get_admin_page_asset",
                "description": "A script, style sheet or icon of the admin page; only the page's own files "
                "exist.",
                "parameters": [{"name": "path", "in": "path", "required": True, "schema": STR}],
                "responses": {
                    "200": {
                        "description": "The file",
                        "content": {
                            "text/javascript": {"schema": STR},
                            "text/css": {"schema": STR},
                            "image/svg+xml": {"schema": STR},
                        },
                    },
                    "404": {
                        "description": ERRORS[404],
                        "content": {"application/json": {"schema": _ref("ErrorEnvelope")}},
                    },
                    "503": {
                        "description": "The page's files are missing from the installation",
                        "content": {"text/plain": {"schema": STR}},
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": ["meta"],
                "operationId": "get_prometheus_metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kpi-sidecar admin API",
            "version": __version__,
            "description": "Status, configuration, circuit breakers, load tests and analytics of a "
            "kpi-sidecar backpressure proxy. Reads are open; POST and PUT need `Authorization: Bearer "
            "<admin token>` when one is configured, else a loopback client. See docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
