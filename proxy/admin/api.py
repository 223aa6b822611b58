"""The admin port: REST API under /api/backpressure, Prometheus metrics at /metrics, the page at /.

Every JSON answer is an envelope: `{"success": true, "data": ..., "timestamp": ...}` or
`{"success": false, "error": {"code", "message", "details"}, "timestamp": ...}`. Mutations (POST, PUT)
need `Authorization: Bearer <admin.token>` when a token is configured, else a loopback client.
The routes, bodies and answers are described by proxy/admin/openapi.py and docs/api.md.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from policies.config import BackpressureConfig, Level, PolicyRule
from proxy.admin import signals_view
from proxy.admin.history import FIELDS, TIME_RANGES, MetricHistory, iso_timestamp, sample_to_json
from proxy.admin.history import INDEX as HISTORY_INDEX
from proxy.admin.load_test import LoadTest, LoadTestError, LoadTestSpec
from proxy.admin.metrics import SidecarCollector, new_registry, spool_state
from proxy.admin.openapi import CONFIG_BOUNDS, build_openapi
from proxy.admin.page import PAGE_KEY, AdminPage, get_page, get_page_asset
from proxy.admin.recommendations import WINDOW_S, LevelChange, recommend
from proxy.config.runtime import ConfigCollector, RuntimeConfig
from proxy.config.schema import LoadedConfig, collect_errors
from proxy.nats.protocol import is_valid_publish_subject
from proxy.sidecar import Sidecar

log = logging.getLogger(__name__)

PREFIX: Final = "/api/backpressure"
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
MUTATING_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Health thresholds: a component is "warning" from WARN_RATIO of its limit, "critical" at it.
WARN_RATIO: Final = 0.8
UPSTREAM_CRITICAL_AFTER_S: Final = 30.0
STATUS_CODES: Final = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}

SIDECAR_KEY: Final = web.AppKey("sidecar", Sidecar)
REGISTRY_KEY: Final = web.AppKey("registry", CollectorRegistry)
COLLECTOR_KEY: Final = web.AppKey("collector", SidecarCollector)
HISTORY_KEY: Final = web.AppKey("history", MetricHistory)
LOAD_TEST_KEY: Final = web.AppKey("load_test", LoadTest)
RUNTIME_KEY: Final = web.AppKey("runtime_config", RuntimeConfig)
TOKEN_KEY: Final = web.AppKey("admin_token", str)
MAX_BODY_KEY: Final = web.AppKey("max_body_bytes", int)
OPENAPI_KEY: Final = web.AppKey("openapi", dict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- envelopes -----------------------------------------------------------------------------------------
class ApiError(Exception):
    """An error answer: HTTP status, machine code, message, details (e.g. the offending field)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def _dumps(obj: Any) -> str:
    return msgspec.json.encode(obj).decode()


def envelope(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """The success envelope `{"success": true, "data": ..., "timestamp": ...}`."""
    body = {"success": True, "data": data, "timestamp": _timestamp()}
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    """The error envelope `{"success": false, "error": {"code", "message", "details"}}`."""
    body = {
        "success": False,
        "error": {"code": code, "message": message, "details": details},
        "timestamp": _timestamp(),
    }
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _timestamp() -> str:
    return iso_timestamp(time.time())


def finite(value: float) -> float:
    """JSON has no infinity: clamp to the largest float (a threshold near zero makes a ratio infinite)."""
    if math.isnan(value):
        return 0.0
    if math.isinf(value):
        return sys.float_info.max if value > 0 else -sys.float_info.max
    return value


def validation_error(err: msgspec.ValidationError | ValueError, default_field: str | None = None) -> ApiError:
    """A 400 naming the offending field, from msgspec's "... - at `$.field`" wording."""
    message = str(err)
    field = default_field
    if " - at `$" in message:
        text, _, where = message.partition(" - at `$")
        field = where.rstrip("`").lstrip(".") or default_field
        message = f"{field}: {text}" if field else text
    return ApiError(400, "VALIDATION_ERROR", message, {"field": field, "errors": [message]})


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, including aiohttp's own 404/405/413 and unexpected ones, leaves in the error envelope."""
    try:
        return await handler(request)
    except ApiError as err:
        return error_response(err.status, err.code, err.message, err.details, err.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = STATUS_CODES.get(exc.status, (exc.reason or "ERROR").upper().replace(" ", "_"))
        message = exc.text or exc.reason
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, code, message, None, headers or None)
    except ConnectionResetError:
        # The client hung up before its body arrived: nothing to answer, nothing wrong on our side.
        # (The answer goes nowhere; returning one keeps aiohttp from logging a traceback.)
        log.info("admin API: client hung up during %s %s", request.method, request.path)
        return error_response(400, "CLIENT_DISCONNECTED", "the client closed the connection mid-request")
    except Exception:
        # Nothing a client sends may take the process down: log it and answer 500.
        log.exception("admin API: unexpected error on %s %s", request.method, request.path)
        return error_response(500, "INTERNAL_ERROR", "unexpected error; see the sidecar's log")


def is_loopback(remote: str | None) -> bool:
    """Whether the peer address is a loopback address (127.0.0.0/8, ::1, or IPv4-mapped loopback)."""
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Body size limit for every request; bearer token (or loopback origin) for every mutation."""
    max_body = request.app[MAX_BODY_KEY]
    length = request.content_length
    if length is not None and length > max_body:
        raise ApiError(
            413, "PAYLOAD_TOO_LARGE", f"request body of {length} bytes exceeds the limit of {max_body} bytes"
        )
    if request.method in MUTATING_METHODS:
        token = request.app[TOKEN_KEY]
        if token:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            expected = token.encode("utf-8", "surrogateescape")
            supplied = given.strip().encode("utf-8", "surrogateescape")
            # compare_digest first, whatever the scheme, so the timing says nothing about the token.
            valid = hmac.compare_digest(supplied, expected)
            if scheme.lower() != "bearer" or not valid:
                raise ApiError(
                    401,
                    "UNAUTHORIZED",
                    "this endpoint needs the header Authorization: Bearer <admin token>",
                    headers={"WWW-Authenticate": 'Bearer realm="kpi-sidecar"'},
                )
        elif not is_loopback(request.remote):
            raise ApiError(
                403,
                "FORBIDDEN",
                "no admin token is configured: changes are accepted from loopback clients only",
                {"remote": request.remote},
            )
        elif (origin := foreign_origin(request)) is not None:
            raise ApiError(
                403,
                "FORBIDDEN",
                "no admin token is configured: a browser may make changes only from the admin page "
                "itself, opened on a loopback address",
                {"origin": origin},
            )
    return await handler(request)


LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.", "ip6-localhost"})


def foreign_origin(request: web.Request) -> str | None:
    """The `Origin` (or `Sec-Fetch-Site`) of a browser request not sent by the admin page on loopback.

    Without a token, loopback is the only check, and any web page open in a browser on the same machine
    could otherwise POST to 127.0.0.1 (CSRF), or reach it under its own name by DNS rebinding. Clients
    that are not browsers send neither header and are not affected.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        site = request.headers.get("Sec-Fetch-Site")
        return None if site in (None, "same-origin", "none") else f"Sec-Fetch-Site: {site}"
    host = request.host
    try:
        name = (urlsplit(f"//{host}").hostname or "").lower()
    except ValueError:
        return origin
    local = name in LOOPBACK_NAMES or is_loopback(name)
    if origin.rstrip("/") != f"{request.scheme}://{host}" or not local:
        return origin
    return None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is not one, 413 when it is too large."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "INVALID_BODY", "a JSON object body is required", {"field": None})
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as err:
        raise ApiError(400, "INVALID_JSON", f"the body is not valid JSON: {err}", {"field": None}) from err
    if not isinstance(body, dict):
        raise ApiError(400, "INVALID_BODY", "the body must be a JSON object", {"field": None})
    return body


# -- status and health -----------------------------------------------------------------------------------
def status_data(sidecar: Sidecar) -> dict[str, Any]:
    """The seed's BackpressureMetrics fields (same names) plus the sidecar's own."""
    engine = sidecar.engine
    now = sidecar.clock()
    snap = engine.snapshot(now)
    spool = spool_state(sidecar)
    return {
        "currentMemoryMB": finite(snap.memory_mb),
        "currentQueueSize": snap.queue_size,
        "currentPublishRate": finite(snap.publish_rate),
        "currentCpuPercent": finite(snap.cpu_percent),
        "droppedMessages": snap.dropped,
        "sampledMessages": snap.sampled,
        "circuitBreakerOpen": snap.open_breakers > 0,
        "degradationLevel": snap.level,
        "degradationLevelValue": snap.level_value,
        "loadPercent": finite(snap.load_percent),
        "dominantSignal": snap.dominant_signal,
        "samplingRate": snap.sampling_rate,
        "batchSize": snap.batch_size,
        "upstreamConnected": sidecar.upstream.connected,
        "upstreamStalled": sidecar.upstream_stalled,
        "flowPausedClients": len(sidecar.flow_paused),
        "receivedMessages": snap.received,
        "forwardedMessages": snap.forwarded,
        "spooledMessages": snap.spooled,
        "openCircuitBreakers": snap.open_breakers,
        "maxQueueSize": engine.config.max_queue_size,
        "queuedBytes": snap.queued_bytes,
        "oldestQueuedAgeSeconds": finite(snap.oldest_queued_age),
        "droppedByReason": snap.dropped_by_reason,
        "byRole": snap.by_role,
        "refusedRequests": dict(sidecar.refused),
        "signals": {
            "memory": finite(snap.memory_ratio * 100),
            "cpu": finite(snap.cpu_ratio * 100),
            "queue": finite(snap.queue_ratio * 100),
            "publishRate": finite(snap.publish_rate_ratio * 100),
            **signals_view.signal_percents(snap),
        },
        **signals_view.status_fields(snap),
        "spoolMessages": spool["messages"],
        "spoolBytes": spool["bytes"],
        "clients": len(sidecar.clients),
        "uptimeSeconds": round(now - sidecar.started_at, 3),
    }


def _ratio_status(ratio: float) -> str:
    if ratio >= 1.0:
        return "critical"
    if ratio >= WARN_RATIO:
        return "warning"
    return "ok"


def health_components(sidecar: Sidecar, runtime: RuntimeConfig | None = None) -> dict[str, dict[str, Any]]:
    """Per-component health of GET /health/detailed; each has a `status` of ok, warning or critical."""
    engine = sidecar.engine
    config = engine.config
    now = sidecar.clock()
    snap = engine.snapshot(now)
    upstream = sidecar.upstream
    down_for = (
        0.0 if upstream.connected or upstream.disconnected_at is None else now - upstream.disconnected_at
    )
    if upstream.connected:
        upstream_status = "warning" if sidecar.upstream_stalled else "ok"
    else:
        upstream_status = "critical" if down_for >= UPSTREAM_CRITICAL_AFTER_S else "warning"
    sample = sidecar.resources.last
    breakers = engine.breakers()
    open_count = sum(1 for b in breakers if b.state == "open")
    half_open = sum(1 for b in breakers if b.state == "half_open")
    spool = spool_state(sidecar)
    spool_max = sidecar.config.spool.max_bytes
    spool_ratio = spool["bytes"] / spool_max if spool_max else 0.0
    if spool_ratio >= 0.9:
        spool_status = "critical"
    elif spool["messages"] > 0:
        spool_status = "warning"
    else:
        spool_status = "ok"
    info = upstream.server_info
    return {
        "upstream": {
            "status": upstream_status,
            "connected": upstream.connected,
            "url": upstream.connected_url,
            "serverVersion": info.get("version"),
            "serverName": info.get("server_name"),
            "maxPayload": sidecar.max_payload,
            "reconnects": upstream.reconnects,
            "lastError": upstream.last_error,
            "disconnectedSeconds": round(down_for, 3),
            "pendingBytes": upstream.pending_bytes,
            "unconfirmedBytes": upstream.journal.nbytes,
            "lameDuck": upstream.lame_duck,
            "ackSubscriptionDenied": sidecar.ack_subscription_denied,
            "pendingAcks": len(sidecar.pending_acks),
            "flowPausedClients": len(sidecar.flow_paused),
            "stalled": sidecar.upstream_stalled,
        },
        "queue": {
            "status": _ratio_status(snap.queue_ratio),
            "size": snap.queue_size,
            "maxSize": config.max_queue_size,
            "percent": finite(snap.queue_ratio * 100),
            "byPriority": snap.queue_by_priority,
            "bytes": snap.queued_bytes,
            "parked": snap.parked,
            "oldestAgeSeconds": finite(snap.oldest_queued_age),
        },
        "memory": {
            "status": _ratio_status(snap.memory_ratio),
            "currentMB": finite(snap.memory_mb),
            "rssMB": finite(sample.rss_mb),
            "maxMB": config.max_memory_usage_mb,
            "percent": finite(snap.memory_ratio * 100),
            "cgroupMB": sample.cgroup_memory_mb,
            "cgroupLimitMB": sample.cgroup_memory_limit_mb,
        },
        "cpu": {
            "status": _ratio_status(snap.cpu_ratio),
            "percent": finite(snap.cpu_percent),
            "thresholdPercent": finite(snap.cpu_threshold_percent),
            "quotaCores": sample.cpu_quota_cores,
            "loadPercent": finite(snap.cpu_ratio * 100),
        },
        "breakers": {
            "status": "warning" if open_count else "ok",
            "enabled": config.enable_circuit_breaker,
            "open": open_count,
            "halfOpen": half_open,
            "tracked": len(breakers),
        },
        "spool": {"status": spool_status, "maxBytes": spool_max, **spool},
        "signals": {**signals_view.health_component(snap), "monitor": sidecar.stream_monitor.stats()},
        "clients": {
            "status": "ok",
            "connections": len(sidecar.clients),
            "maxConnections": sidecar.config.clients.max_connections,
            "slowConsumers": sidecar.slow_consumers,
            "pendingBytes": sidecar.outbound.total,
            "maxTotalPendingBytes": sidecar.outbound.limit,
        },
        **({"config": runtime.health()} if runtime is not None else {}),
    }


def health_status(sidecar: Sidecar, components: dict[str, dict[str, Any]] | None = None) -> str:
    """healthy, degraded or critical: the level and the worst component together."""
    components = components if components is not None else health_components(sidecar)
    worst = {c["status"] for c in components.values()}
    level = sidecar.engine.level
    if level >= Level.CRITICAL or "critical" in worst:
        return "critical"
    if level >= Level.LOW or "warning" in worst or not sidecar.upstream.connected:
        return "degraded"
    return "healthy"


async def get_health(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    # Always 200 while the process works: a sidecar under load must not be restarted for it.
    return envelope(
        {
            "status": health_status(sidecar, health_components(sidecar, request.app[RUNTIME_KEY])),
            "degradationLevel": sidecar.engine.level.label,
            "upstreamConnected": sidecar.upstream.connected,
            "shuttingDown": sidecar.shutting_down,
            "uptimeSeconds": round(sidecar.clock() - sidecar.started_at, 3),
        }
    )


async def get_health_detailed(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    components = health_components(sidecar, request.app[RUNTIME_KEY])
    engine = sidecar.engine
    return envelope(
        {
            "status": health_status(sidecar, components),
            "degradationLevel": engine.level.label,
            "loadPercent": finite(engine.load_percent),
            "dominantSignal": engine.dominant_signal,
            "explanation": components["signals"]["explanation"],
            "shuttingDown": sidecar.shutting_down,
            "uptimeSeconds": round(sidecar.clock() - sidecar.started_at, 3),
            "components": components,
        }
    )


async def get_ready(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    # Not ready while the upstream is away: Kubernetes then takes the pod out of its Services' endpoints
    # (it does not restart it; that is the liveness probe's business). See docs/deployment.md.
    ready = sidecar.nats_port is not None and not sidecar.shutting_down and sidecar.upstream.connected
    data = {"ready": ready, "upstreamConnected": sidecar.upstream.connected}
    if not ready:
        message = (
            "the upstream NATS server is not connected"
            if sidecar.nats_port is not None and not sidecar.shutting_down
            else "the sidecar is starting or shutting down"
        )
        return error_response(503, "NOT_READY", message, data)
    return envelope(data)


async def get_status(request: web.Request) -> web.Response:
    return envelope(status_data(request.app[SIDECAR_KEY]))


def parse_since(raw: str | None) -> float | None:
    """`since` of GET /metrics: epoch seconds or an ISO 8601 timestamp (as the points carry); 400 else."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(raw.strip())
        except ValueError:
            parsed = None
        if parsed is not None:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            value = parsed.timestamp()
        else:
            value = math.nan
    if not math.isfinite(value):
        message = "since must be epoch seconds or an ISO 8601 timestamp such as 2026-01-02T03:04:05.678Z"
        raise ApiError(400, "VALIDATION_ERROR", message, {"field": "since", "errors": [f"since: {message}"]})
    return value


async def get_metrics_history(request: web.Request) -> web.Response:
    time_range = request.query.get("timeRange", "5m")
    if time_range not in TIME_RANGES:
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            f"timeRange must be one of {', '.join(TIME_RANGES)}",
            {"field": "timeRange", "errors": [f"timeRange: unknown value {time_range!r}"]},
        )
    since = parse_since(request.query.get("since"))
    history = request.app[HISTORY_KEY]
    _span, step = TIME_RANGES[time_range]
    reasons = history.dropped_by_reason()
    points = [sample_to_json(s, reasons.get(s[0])) for s in history.points(time_range, since=since)]
    return envelope(
        {
            "timeRange": time_range,
            "stepSeconds": step,
            "fields": list(FIELDS),
            "current": status_data(request.app[SIDECAR_KEY]),
            "history": points,
        }
    )


async def get_prometheus(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY], dumps=_dumps)


# -- configuration ---------------------------------------------------------------------------------------
def config_data(sidecar: Sidecar, runtime: RuntimeConfig) -> dict[str, Any]:
    """The run-time configuration (the `backpressure` keys plus `policies`), where each value comes from,
    the API changes the file would undo, and the file as last applied."""
    engine = sidecar.engine
    data: dict[str, Any] = msgspec.to_builtins(engine.config)
    data["policies"] = msgspec.to_builtins(list(engine.rules))
    data["sources"] = runtime.sources()
    data["overrides"] = runtime.overrides()
    data["file"] = runtime.file_state()
    return data


def _bounds_errors(merged: dict[str, Any]) -> list[str]:
    errors = []
    for name, (low, high) in CONFIG_BOUNDS.items():
        value = merged.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and not low <= value <= high:
            errors.append(f"$.{name}: must be between {low:g} and {high:g} when set through the API")
    return errors


def parse_config_update(
    current: BackpressureConfig, body: dict[str, Any]
) -> tuple[BackpressureConfig, list[PolicyRule] | None, list[str]]:
    """Validate a partial update as a whole: (new config, new rules or None, changed keys); ApiError 400."""
    known = {f.encode_name for f in msgspec.structs.fields(BackpressureConfig)}
    unknown = [key for key in body if key not in known and key != "policies"]
    if unknown:
        message = f"unknown configuration key {unknown[0]!r}"
        raise ApiError(
            400,
            "UNKNOWN_KEY",
            message,
            {"field": unknown[0], "errors": [f"$.{key}: unknown field {key!r}" for key in unknown]},
        )
    updates = {k: v for k, v in body.items() if k != "policies"}
    before = msgspec.to_builtins(current)
    merged = {**before, **updates}
    errors = collect_errors(merged, BackpressureConfig)
    if not errors:
        errors = _bounds_errors(merged)
    policies = body.get("policies")
    if "policies" in body:
        errors.extend(collect_errors(policies, list[PolicyRule], "$.policies"))
    if errors:
        first = errors[0]
        field = first.split(":", 1)[0].removeprefix("$").lstrip(".") or None
        raise ApiError(400, "VALIDATION_ERROR", first, {"field": field, "errors": errors})
    try:
        config = msgspec.convert(merged, BackpressureConfig)
        rules = msgspec.convert(policies, list[PolicyRule]) if "policies" in body else None
    except msgspec.ValidationError as err:
        raise validation_error(err) from err
    changed = [k for k in updates if before.get(k) != merged[k]]
    if rules is not None:
        changed.append("policies")
    return config, rules, changed


async def get_config(request: web.Request) -> web.Response:
    return envelope(config_data(request.app[SIDECAR_KEY], request.app[RUNTIME_KEY]))


async def put_config(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    runtime = request.app[RUNTIME_KEY]
    body = await read_json_object(request)
    config, rules, changed = parse_config_update(sidecar.engine.config, body)
    runtime.apply_api(config, rules, changed)
    return envelope({"changed": changed, "config": config_data(sidecar, runtime)})


async def post_config_reset(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    runtime = request.app[RUNTIME_KEY]
    runtime.reset()
    return envelope({"changed": ["all"], "config": config_data(sidecar, runtime)})


# -- circuit breakers ------------------------------------------------------------------------------------
class BreakerAction(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Body of POST /circuit-breaker."""

    subject: str
    action: Literal["open", "close", "reset"]


def wall_offset(sidecar: Sidecar) -> float:
    """Add to a time on the sidecar's monotonic clock to get epoch seconds (read once per request)."""
    return time.time() - sidecar.clock()


def _wall(offset: float, monotonic: float | None) -> str | None:
    return None if monotonic is None else iso_timestamp(monotonic + offset)


def breaker_json(snap: Any, offset: float) -> dict[str, Any]:
    """One breaker with wall-clock times; `offset` from wall_offset()."""
    return {
        "subject": snap.subject,
        "state": snap.state,
        "reason": snap.reason,
        "openedAt": _wall(offset, snap.opened_at),
        "failures": snap.failures,
        "nextAttemptAt": _wall(offset, snap.next_attempt_at),
        "backoffMs": snap.backoff_ms,
    }


async def get_breakers(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    engine = sidecar.engine
    offset = wall_offset(sidecar)
    breakers = [breaker_json(b, offset) for b in engine.breakers()]
    return envelope(
        {
            "enabled": engine.config.enable_circuit_breaker,
            "open": sum(1 for b in breakers if b["state"] == "open"),
            "halfOpen": sum(1 for b in breakers if b["state"] == "half_open"),
            "breakers": breakers,
        }
    )


async def post_breaker(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    body = await read_json_object(request)
    try:
        action = msgspec.convert(body, BreakerAction)
    except msgspec.ValidationError as err:
        raise validation_error(err) from err
    subject = action.subject
    if not is_valid_publish_subject(subject) or any(ord(c) < 32 or ord(c) == 127 for c in subject):
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            f"subject: {subject!r} is not a valid subject (no wildcard, blank or control character)",
            {"field": "subject", "errors": [f"$.subject: invalid subject {subject!r}"]},
        )
    engine = sidecar.engine
    now = sidecar.clock()
    if action.action == "open":
        changed = engine.open_breaker(subject, now)
        if not changed and engine.breaker_state(subject).label != "open":
            raise ApiError(409, "BREAKER_TABLE_FULL", "every tracked breaker is open; none can be added")
    elif action.action == "close":
        changed = engine.close_breaker(subject, now)
    else:
        changed = engine.reset_breaker(subject, now)
    snap = next((b for b in engine.breakers() if b.subject == subject), None)
    return envelope(
        {
            "subject": subject,
            "action": action.action,
            "changed": bool(changed),
            "state": engine.breaker_state(subject).label,
            "breaker": breaker_json(snap, wall_offset(sidecar)) if snap is not None else None,
        }
    )


# -- load test -------------------------------------------------------------------------------------------
async def post_load_test(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    try:
        spec = msgspec.convert(body, LoadTestSpec)
    except msgspec.ValidationError as err:
        raise validation_error(err) from err
    runner = request.app[LOAD_TEST_KEY]
    try:
        status = await runner.start(spec)
    except LoadTestError as err:
        code = {409: "LOAD_TEST_RUNNING", 503: "SHUTTING_DOWN"}.get(err.status, "VALIDATION_ERROR")
        details = {"field": err.field, "errors": [str(err)]} if err.status == 400 else runner.status()
        raise ApiError(err.status, code, str(err), details) from err
    return envelope(status, status=202)


async def get_load_test_status(request: web.Request) -> web.Response:
    return envelope(request.app[LOAD_TEST_KEY].status())


async def post_load_test_stop(request: web.Request) -> web.Response:
    return envelope(await request.app[LOAD_TEST_KEY].stop())


# -- actions ---------------------------------------------------------------------------------------------
async def post_drain_queue(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    if not sidecar.upstream.can_send:
        raise ApiError(
            503,
            "UPSTREAM_UNAVAILABLE",
            "the upstream connection cannot take messages now; nothing was drained",
            {"queueSize": sidecar.engine.queue_size, "upstreamConnected": sidecar.upstream.connected},
        )
    forwarded = sidecar.drain_now()
    return envelope({"forwarded": forwarded, "queueSize": sidecar.engine.queue_size})


async def post_clear_queue(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    cleared = sidecar.clear_queue()
    return envelope({"cleared": cleared, "queueSize": sidecar.engine.queue_size})


# -- analytics -------------------------------------------------------------------------------------------
async def get_degradation_history(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    engine = sidecar.engine
    offset = wall_offset(sidecar)
    transitions = [
        {
            "timestamp": _wall(offset, t.timestamp_monotonic),
            "from": t.from_level.label,
            "to": t.to_level.label,
            "fromValue": int(t.from_level),
            "toValue": int(t.to_level),
            "loadPercent": finite(t.load_percent),
            "dominantSignal": t.dominant_signal,
        }
        for t in engine.history()
    ]
    return envelope(
        {
            "currentLevel": engine.level.label,
            "count": len(transitions),
            "transitions": transitions,
        }
    )


async def get_recommendations(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    engine = sidecar.engine
    now_wall = time.time()
    offset = now_wall - sidecar.clock()
    changes = [
        LevelChange(t.timestamp_monotonic + offset, int(t.from_level), int(t.to_level))
        for t in engine.history()
    ]
    samples = request.app[HISTORY_KEY].recent(WINDOW_S, now_wall)
    found = recommend(
        samples, changes, engine.config, spool_messages=spool_state(sidecar)["messages"], window_s=WINDOW_S
    )
    snap = engine.snapshot(sidecar.clock())
    driving = signals_view.recommendation(snap, engine.config, samples, HISTORY_INDEX)
    if driving is not None:
        found.append(driving)
    return envelope(
        {
            "windowSeconds": WINDOW_S,
            "samples": len(samples),
            "recommendations": msgspec.to_builtins(found),
        }
    )


# -- wiring ----------------------------------------------------------------------------------------------
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
        await load_test.close()


ROUTES: Final[tuple[tuple[str, str, Handler], ...]] = (
    ("GET", f"{PREFIX}/status", get_status),
    ("GET", f"{PREFIX}/metrics", get_metrics_history),
    ("GET", f"{PREFIX}/health", get_health),
    ("GET", f"{PREFIX}/health/detailed", get_health_detailed),
    ("GET", f"{PREFIX}/ready", get_ready),
    ("GET", "/ready", get_ready),
    ("GET", f"{PREFIX}/config", get_config),
    ("PUT", f"{PREFIX}/config", put_config),
    ("POST", f"{PREFIX}/config/reset", post_config_reset),
    ("GET", f"{PREFIX}/circuit-breaker/status", get_breakers),
    ("POST", f"{PREFIX}/circuit-breaker", post_breaker),
    ("POST", f"{PREFIX}/load-test", post_load_test),
    ("GET", f"{PREFIX}/load-test/status", get_load_test_status),
    ("POST", f"{PREFIX}/load-test/stop", post_load_test_stop),
    ("POST", f"{PREFIX}/actions/drain-queue", post_drain_queue),
    ("POST", f"{PREFIX}/actions/clear-queue", post_clear_queue),
    ("GET", f"{PREFIX}/analytics/degradation-history", get_degradation_history),
    ("GET", f"{PREFIX}/analytics/recommendations", get_recommendations),
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
