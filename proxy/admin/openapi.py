"""The OpenAPI 3.1 document of the admin port, served at GET /api/backpressure/openapi.json.

Request bodies come from the same msgspec Structs the handlers decode with, so the document and the
validation cannot drift apart; tests/admin/test_openapi.py checks that every route is documented and
that real answers validate against the response schemas.
"""

from __future__ import annotations

import copy
from typing import Any, Final

import msgspec

from policies.config import BackpressureConfig, PolicyRule
from policies.engine import SIGNALS
from policies.signal_board import SignalsSnapshot
from proxy import __version__
from proxy.admin.load_test import (
    MAX_BYTES_PER_SECOND,
    MAX_DURATION_S,
    MAX_MESSAGE_SIZE,
    MAX_RATE,
    MAX_SUBJECTS,
    MIN_MESSAGE_SIZE,
    LoadTestSpec,
)
from proxy.admin.recommendations import Recommendation

P: Final = "/api/backpressure"
REF: Final = "#/components/schemas/{name}"

# Operational bounds of PUT /config, stricter than the file's validation: values outside them would
# not crash the engine but would make it useless (a 1e-300 threshold, a week-long batch delay).
CONFIG_BOUNDS: Final[dict[str, tuple[float, float]]] = {
    "maxMemoryUsageMB": (1, 1_048_576),
    "maxQueueSize": (1, 10_000_000),
    "maxPublishRate": (0.001, 10_000_000),
    "recoveryDelayMs": (0, 86_400_000),
    "maxBackoffMs": (0, 86_400_000),
    "maxBatchDelayMs": (0, 60_000),
    "breakerFailureThreshold": (1, 1_000_000),
    "breakerHalfOpenSuccesses": (1, 1_000_000),
    "breakerCriticalTopSubjects": (0, 1_000),
}
LEVELS: Final = ["none", "low", "medium", "high", "critical"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    schema["required"] = list(properties) if required is None else required
    schema.update(extra)
    return schema


NUM: Final = {"type": "number"}
INT: Final = {"type": "integer"}
NNINT: Final = {"type": "integer", "minimum": 0}
STR: Final = {"type": "string"}
BOOL: Final = {"type": "boolean"}
TS: Final = {"type": "string", "format": "date-time"}
NULLABLE_TS: Final = {"type": ["string", "null"], "format": "date-time"}
LEVEL: Final = {"type": "string", "enum": LEVELS}
COUNTS: Final = {"type": "object", "additionalProperties": {"type": "integer"}}
COMPONENT_STATUS: Final = {"type": "string", "enum": ["ok", "warning", "critical"]}


def _status_schema() -> dict[str, Any]:
    return _obj(
        {
            "currentMemoryMB": NUM,
            "currentQueueSize": NNINT,
            "currentPublishRate": NUM,
            "currentCpuPercent": NUM,
            "droppedMessages": NNINT,
            "sampledMessages": NNINT,
            "circuitBreakerOpen": BOOL,
            "degradationLevel": LEVEL,
            "degradationLevelValue": {"type": "integer", "minimum": 0, "maximum": 4},
            "loadPercent": NUM,
            "dominantSignal": {"type": "string", "enum": list(SIGNALS)},
            "samplingRate": NUM,
            "batchSize": {"type": "integer", "minimum": 1},
            "upstreamConnected": BOOL,
            "upstreamStalled": BOOL,
            "flowPausedClients": NNINT,
            "receivedMessages": NNINT,
            "forwardedMessages": NNINT,
            "spooledMessages": NNINT,
            "openCircuitBreakers": NNINT,
            "maxQueueSize": INT,
            "queuedBytes": NNINT,
            "oldestQueuedAgeSeconds": NUM,
            "droppedByReason": COUNTS,
            "byRole": _obj(
                {
                    role: _obj({"received": NNINT, "forwarded": NNINT, "dropped": NNINT})
                    for role in ("data", "request", "reply", "control")
                }
            ),
            "refusedRequests": COUNTS,
            "signals": _obj(
                {
                    "memory": NUM,
                    "cpu": NUM,
                    "queue": NUM,
                    "publishRate": NUM,
                    "upstreamLatency": NUM,
                    "queueDelay": NUM,
                    "predictedQueue": NUM,
                }
            ),
            "explanation": {
                "type": "string",
                "description": "The level, the signal driving it and the forecast, in one sentence",
            },
            "signalDetail": _ref("SignalsSnapshot"),
            "spoolMessages": NNINT,
            "spoolBytes": NNINT,
            "clients": NNINT,
            "uptimeSeconds": NUM,
        },
        description="The seed's BackpressureMetrics (same names) plus loadPercent, dominantSignal, "
        "samplingRate, batchSize, upstreamConnected and the accounting counters.",
    )


def _history_point_schema() -> dict[str, Any]:
    return _obj(
        {
            "timestamp": TS,
            "currentMemoryMB": NUM,
            "currentCpuPercent": NUM,
            "currentQueueSize": INT,
            "currentPublishRate": NUM,
            "loadPercent": NUM,
            "degradationLevel": LEVEL,
            "degradationLevelValue": INT,
            "samplingRate": NUM,
            "batchSize": INT,
            "upstreamConnected": BOOL,
            "receivedMessages": INT,
            "forwardedMessages": INT,
            "droppedMessages": INT,
            "sampledMessages": INT,
            "spooledMessages": INT,
            "spoolBytes": INT,
            "upstreamRttMs": NUM,
            "upstreamLatencyPercent": NUM,
            "queueDelayMs": NUM,
            "predictedQueuePercent": NUM,
            "queueSecondsToFull": NUM,
            "droppedByReason": COUNTS,
        },
        required=[
            "timestamp",
            "currentMemoryMB",
            "currentCpuPercent",
            "currentQueueSize",
            "currentPublishRate",
            "loadPercent",
            "degradationLevel",
            "degradationLevelValue",
            "samplingRate",
            "batchSize",
            "upstreamConnected",
            "receivedMessages",
            "forwardedMessages",
            "droppedMessages",
            "sampledMessages",
            "spooledMessages",
            "spoolBytes",
        ],
        description="One point of the history. `droppedByReason` (cumulative drops by reason at that "
        "second) is present on the points of the last 5 minutes.",
    )


def _health_detailed_schema() -> dict[str, Any]:
    nullable_num = {"type": ["number", "null"]}
    return _obj(
        {
            "status": {"type": "string", "enum": ["healthy", "degraded", "critical"]},
            "degradationLevel": LEVEL,
            "loadPercent": NUM,
            "dominantSignal": STR,
            "explanation": STR,
            "shuttingDown": BOOL,
            "uptimeSeconds": NUM,
            "components": _obj(
                {
                    "upstream": _obj(
                        {
                            "status": COMPONENT_STATUS,
                            "connected": BOOL,
                            "url": {"type": ["string", "null"]},
                            "serverVersion": {"type": ["string", "null"]},
                            "serverName": {"type": ["string", "null"]},
                            "maxPayload": INT,
                            "reconnects": NNINT,
                            "lastError": {"type": ["string", "null"]},
                            "disconnectedSeconds": NUM,
                            "pendingBytes": NNINT,
                            "unconfirmedBytes": NNINT,
                            "lameDuck": BOOL,
                            "ackSubscriptionDenied": BOOL,
                            "pendingAcks": NNINT,
                            "flowPausedClients": NNINT,
                            "stalled": BOOL,
                        }
                    ),
                    "queue": _obj(
                        {
                            "status": COMPONENT_STATUS,
                            "size": NNINT,
                            "maxSize": INT,
                            "percent": NUM,
                            "byPriority": COUNTS,
                            "bytes": NNINT,
                            "parked": NNINT,
                            "oldestAgeSeconds": NUM,
                        }
                    ),
                    "memory": _obj(
                        {
                            "status": COMPONENT_STATUS,
                            "currentMB": NUM,
                            "rssMB": NUM,
                            "maxMB": NUM,
                            "percent": NUM,
                            "cgroupMB": nullable_num,
                            "cgroupLimitMB": nullable_num,
                        }
                    ),
                    "cpu": _obj(
                        {
                            "status": COMPONENT_STATUS,
                            "percent": NUM,
                            "thresholdPercent": NUM,
                            "quotaCores": nullable_num,
                            "loadPercent": NUM,
                        }
                    ),
                    "breakers": _obj(
                        {
                            "status": COMPONENT_STATUS,
                            "enabled": BOOL,
                            "open": NNINT,
                            "halfOpen": NNINT,
                            "tracked": NNINT,
                        }
                    ),
                    "spool": _obj(
                        {
                            "status": COMPONENT_STATUS,
                            "enabled": BOOL,
                            "maxBytes": INT,
                            "bytes": NNINT,
                            "messages": NNINT,
                            "oldestAgeSeconds": NUM,
                        }
                    ),
                    "clients": _obj(
                        {
                            "status": COMPONENT_STATUS,
                            "connections": NNINT,
                            "maxConnections": INT,
                            "slowConsumers": NNINT,
                            "pendingBytes": NNINT,
                            "maxTotalPendingBytes": INT,
                        }
                    ),
                    "signals": _obj(
                        {
                            "status": COMPONENT_STATUS,
                            "explanation": STR,
                            "drivingSignal": STR,
                            "streamsRefusingNew": {"type": "array", "items": STR},
                            "monitor": _obj(
                                {"requests": NNINT, "answers": NNINT, "errors": NNINT, "inFlight": NNINT}
                            ),
                        },
                        description="Upstream RTT, queue delay, forecasts and stream fill (the fields of "
                        "SignalsSnapshot besides these).",
                    ),
                    "config": _config_health_schema(),
                },
                required=[
                    "upstream",
                    "queue",
                    "memory",
                    "cpu",
                    "breakers",
                    "spool",
                    "clients",
                    "signals",
                    "config",
                ],
            ),
        }
    )


def _config_file_properties() -> dict[str, Any]:
    return {
        "path": {"type": ["string", "null"], "description": "The --config file (null: none)"},
        "preset": {"type": ["string", "null"]},
        "sha256": {"type": ["string", "null"], "description": "Hash of the file's bytes as last applied"},
        "loadedAt": TS,
    }


def _config_health_schema() -> dict[str, Any]:
    strings = {"type": "array", "items": STR}
    last = _obj(
        {
            "trigger": {"type": "string", "description": "SIGHUP or file changed"},
            "at": TS,
            "result": {"type": "string", "enum": ["applied", "refused"]},
            "errors": strings,
            "changed": strings,
        }
    )
    return _obj(
        {
            "status": COMPONENT_STATUS,
            **_config_file_properties(),
            "lastReload": {"anyOf": [last, {"type": "null"}]},
            "reloads": NNINT,
            "failedReloads": NNINT,
            "restartRequired": {
                **strings,
                "description": "Settings the file changed that take effect only at the next restart",
            },
            "apiOverrides": NNINT,
            "reloadable": {**strings, "description": "What a reload can change without a restart"},
        },
        description="The configuration file: warning after a refused reload or while a restart is required.",
    )


def _breaker_schema() -> dict[str, Any]:
    return _obj(
        {
            "subject": STR,
            "state": {"type": "string", "enum": ["closed", "open", "half_open"]},
            "reason": {"type": ["string", "null"]},
            "openedAt": NULLABLE_TS,
            "failures": NNINT,
            "nextAttemptAt": NULLABLE_TS,
            "backoffMs": NNINT,
        }
    )


def _load_test_status_schema() -> dict[str, Any]:
    latency = _obj({"p50": NUM, "p95": NUM, "p99": NUM, "max": NUM, "mean": NUM})
    return _obj(
        {
            "state": {
                "type": "string",
                "enum": ["idle", "starting", "running", "draining", "completed", "stopped", "failed"],
            },
            "running": BOOL,
            "id": {"type": ["string", "null"]},
            "spec": {"anyOf": [_ref("LoadTestRequest"), {"type": "null"}]},
            "startedAt": NULLABLE_TS,
            "finishedAt": NULLABLE_TS,
            "elapsedSeconds": NUM,
            "progress": {"type": "number", "minimum": 0, "maximum": 100},
            "plannedMessages": NNINT,
            "sent": NNINT,
            "actualRate": NUM,
            "accepted": NNINT,
            "queued": NNINT,
            "forwarded": {"type": ["integer", "null"], "minimum": 0},
            "dropped": NNINT,
            "droppedByReason": COUNTS,
            "blocked": NNINT,
            "successRate": {"type": ["number", "null"]},
            "latencyMs": {"anyOf": [latency, {"type": "null"}]},
            "measured": BOOL,
            "measurementError": {"type": ["string", "null"]},
        }
    )


def _config_schemas(components: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Config as GET shows it, ConfigUpdate as PUT takes it) from BackpressureConfig's own schema."""
    base = components["BackpressureConfig"]
    config = copy.deepcopy(base)
    config["title"] = "Config"
    config["description"] = "The `backpressure` section in force, plus the `policies` rules."
    config["properties"]["policies"] = {"type": "array", "items": _ref("PolicyRule")}
    origin = {"type": "string", "enum": ["api", "file", "preset", "default", "env"]}
    config["properties"]["sources"] = {
        "type": "object",
        "description": "Where each value comes from: the admin API, the file, the file's preset, the default",
        "additionalProperties": origin,
    }
    config["properties"]["overrides"] = {
        "type": "array",
        "description": "API values that differ from the file: the next reload or restart undoes them",
        "items": _obj({"key": STR, "value": {}, "fileValue": {}}, additionalProperties=False),
    }
    config["properties"]["file"] = _obj(_config_file_properties(), additionalProperties=False)
    config["required"] = list(config["properties"])
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
    return config, update


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    envelope = _obj(
        {"success": {"const": True}, "data": schema, "timestamp": TS},
        additionalProperties=False,
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
    _, components = msgspec.json.schema_components(
        [BackpressureConfig, PolicyRule, LoadTestSpec, Recommendation, SignalsSnapshot], ref_template=REF
    )
    config, update = _config_schemas(components)
    load_request = copy.deepcopy(components.pop("LoadTestSpec"))
    load_request["title"] = "LoadTestRequest"
    load_request["description"] = (
        f"The seed's load-test body. Limits: messagesPerSecond <= {MAX_RATE}, durationSeconds <= "
        f"{MAX_DURATION_S}, {MIN_MESSAGE_SIZE} <= messageSize <= {MAX_MESSAGE_SIZE} (and the upstream's "
        f"max_payload), at most {MAX_SUBJECTS} subjects without wildcards, messagesPerSecond x messageSize "
        f"<= {MAX_BYTES_PER_SECOND} bytes/s."
    )
    schemas: dict[str, Any] = {
        **components,
        "Config": config,
        "ConfigUpdate": update,
        "LoadTestRequest": load_request,
        "ErrorEnvelope": _obj(
            {
                "success": {"const": False},
                "error": _obj(
                    {"code": STR, "message": STR, "details": {}},
                    additionalProperties=False,
                ),
                "timestamp": TS,
            },
            additionalProperties=False,
        ),
        "Status": _status_schema(),
        "HistoryPoint": _history_point_schema(),
        "HealthDetailed": _health_detailed_schema(),
        "Breaker": _breaker_schema(),
        "LoadTestStatus": _load_test_status_schema(),
    }
    config_change = _obj({"changed": {"type": "array", "items": STR}, "config": _ref("Config")})
    health = _obj(
        {
            "status": {"type": "string", "enum": ["healthy", "degraded", "critical"]},
            "degradationLevel": LEVEL,
            "upstreamConnected": BOOL,
            "shuttingDown": BOOL,
            "uptimeSeconds": NUM,
        }
    )
    ready = _obj({"ready": BOOL, "upstreamConnected": BOOL})
    breaker_request = _obj(
        {
            "subject": {"type": "string", "minLength": 1, "description": "A subject without wildcards"},
            "action": {"type": "string", "enum": ["open", "close", "reset"]},
        },
        additionalProperties=False,
    )
    breaker_result = _obj(
        {
            "subject": STR,
            "action": {"type": "string", "enum": ["open", "close", "reset"]},
            "changed": BOOL,
            "state": {"type": "string", "enum": ["closed", "open", "half_open"]},
            "breaker": {"anyOf": [_ref("Breaker"), {"type": "null"}]},
        }
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
    paths: dict[str, Any] = {
        f"{P}/status": {"get": _op("Get status", _ok(_ref("Status")))},
        f"{P}/metrics": {
            "get": _op(
                "Get metrics history",
                _ok(
                    _obj(
                        {
                            "timeRange": {"type": "string", "enum": ["5m", "1h", "24h"]},
                            "stepSeconds": INT,
                            "fields": {"type": "array", "items": STR},
                            "current": _ref("Status"),
                            "history": {"type": "array", "items": _ref("HistoryPoint")},
                        }
                    )
                ),
                400,
                params=[time_range, since],
            )
        },
        f"{P}/health": {"get": _op("Get health", _ok(health), tag="probes")},
        f"{P}/health/detailed": {
            "get": _op("Get detailed health", _ok(_ref("HealthDetailed")), tag="probes")
        },
        f"{P}/ready": {"get": _op("Get readiness", _ok(ready), 503, tag="probes")},
        "/ready": {"get": _op("Get readiness (short path)", _ok(ready), 503, tag="probes")},
        f"{P}/config": {
            "get": _op("Get config", _ok(_ref("Config"))),
            "put": _op("Update config", _ok(config_change), body=_ref("ConfigUpdate"), mutating=True),
        },
        f"{P}/config/reset": {"post": _op("Reset config", _ok(config_change), mutating=True)},
        f"{P}/circuit-breaker/status": {
            "get": _op(
                "Get circuit breakers",
                _ok(
                    _obj(
                        {
                            "enabled": BOOL,
                            "open": NNINT,
                            "halfOpen": NNINT,
                            "breakers": {"type": "array", "items": _ref("Breaker")},
                        }
                    )
                ),
            )
        },
        f"{P}/circuit-breaker": {
            "post": _op(
                "Operate circuit breaker", _ok(breaker_result), 409, body=breaker_request, mutating=True
            )
        },
        f"{P}/load-test": {
            "post": _op(
                "Start load test",
                _ok(_ref("LoadTestStatus"), "Accepted: the test runs"),
                409,
                503,
                ok_status=202,
                body=_ref("LoadTestRequest"),
                mutating=True,
            )
        },
        f"{P}/load-test/status": {"get": _op("Get load test status", _ok(_ref("LoadTestStatus")))},
        f"{P}/load-test/stop": {"post": _op("Stop load test", _ok(_ref("LoadTestStatus")), mutating=True)},
        f"{P}/actions/drain-queue": {
            "post": _op(
                "Drain queue",
                _ok(_obj({"forwarded": NNINT, "queueSize": NNINT})),
                503,
                mutating=True,
            )
        },
        f"{P}/actions/clear-queue": {
            "post": _op("Clear queue", _ok(_obj({"cleared": NNINT, "queueSize": NNINT})), mutating=True)
        },
        f"{P}/analytics/degradation-history": {
            "get": _op(
                "Get degradation history",
                _ok(
                    _obj(
                        {
                            "currentLevel": LEVEL,
                            "count": NNINT,
                            "transitions": {
                                "type": "array",
                                "items": _obj(
                                    {
                                        "timestamp": TS,
                                        "from": LEVEL,
                                        "to": LEVEL,
                                        "fromValue": INT,
                                        "toValue": INT,
                                        "loadPercent": NUM,
                                        "dominantSignal": STR,
                                    }
                                ),
                            },
                        }
                    )
                ),
            )
        },
        f"{P}/analytics/recommendations": {
            "get": _op(
                "Get recommendations",
                _ok(
                    _obj(
                        {
                            "windowSeconds": INT,
                            "samples": NNINT,
                            "recommendations": {"type": "array", "items": _ref("Recommendation")},
                        }
                    )
                ),
            )
        },
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
