"""Read endpoints of the sidecar's state: status, metrics history, health, detailed health, readiness.

Each answer is a Struct of proxy/admin/responses.py; the health rules (thresholds per component, the
overall status) live here.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final

import msgspec
from aiohttp import web

from policies.config import Level
from proxy.admin import signals_view
from proxy.admin.history import FIELDS, TIME_RANGES, sample_to_json
from proxy.admin.http import ApiError, envelope, error_response, finite
from proxy.admin.keys import HISTORY_KEY, RUNTIME_KEY, SIDECAR_KEY
from proxy.admin.metrics import spool_state
from proxy.admin.responses import (
    BreakersHealth,
    ByRole,
    ClientsHealth,
    ConfigHealth,
    CpuHealth,
    Health,
    HealthComponents,
    HealthDetailed,
    HistoryPoint,
    MemoryHealth,
    MetricsHistory,
    QueueHealth,
    Ready,
    RoleCounts,
    Signals,
    SpoolHealth,
    Status,
    UpstreamHealth,
    from_json_dict,
)
from proxy.config.runtime import RuntimeConfig
from proxy.fleet.view import fleet_health, fleet_view
from proxy.sidecar import Sidecar

# Health thresholds: a component is "warning" from WARN_RATIO of its limit, "critical" at it.
WARN_RATIO: Final = 0.8
UPSTREAM_CRITICAL_AFTER_S: Final = 30.0


def status_data(sidecar: Sidecar) -> Status:
    """The seed's BackpressureMetrics fields (same names) plus the sidecar's own."""
    engine = sidecar.engine
    now = sidecar.clock()
    snap = engine.snapshot(now)
    spool = spool_state(sidecar)
    return Status(
        current_memory_mb=finite(snap.memory_mb),
        current_queue_size=snap.queue_size,
        current_publish_rate=finite(snap.publish_rate),
        current_cpu_percent=finite(snap.cpu_percent),
        dropped_messages=snap.dropped,
        sampled_messages=snap.sampled,
        circuit_breaker_open=snap.open_breakers > 0,
        degradation_level=snap.level,  # type: ignore[arg-type]
        degradation_level_value=snap.level_value,
        load_percent=finite(snap.load_percent),
        dominant_signal=snap.dominant_signal,  # type: ignore[arg-type]
        sampling_rate=snap.sampling_rate,
        batch_size=snap.batch_size,
        upstream_connected=sidecar.upstream.connected,
        upstream_stalled=sidecar.flow.upstream_stalled,
        flow_paused_clients=len(sidecar.flow.paused),
        received_messages=snap.received,
        forwarded_messages=snap.forwarded,
        spooled_messages=snap.spooled,
        open_circuit_breakers=snap.open_breakers,
        max_queue_size=engine.config.max_queue_size,
        queued_bytes=snap.queued_bytes,
        oldest_queued_age_seconds=finite(snap.oldest_queued_age),
        dropped_by_reason=snap.dropped_by_reason,
        by_role=ByRole(**{role: RoleCounts(**counts) for role, counts in snap.by_role.items()}),
        refused_requests=dict(sidecar.publisher.refused),
        signals=Signals(
            memory=finite(snap.memory_ratio * 100),
            cpu=finite(snap.cpu_ratio * 100),
            queue=finite(snap.queue_ratio * 100),
            publish_rate=finite(snap.publish_rate_ratio * 100),
            **signals_view.signal_percents(snap),
        ),
        explanation=signals_view.explain(snap),
        signal_detail=signals_view.detail(snap),
        spool_messages=spool["messages"],
        spool_bytes=spool["bytes"],
        clients=len(sidecar.listener.clients),
        uptime_seconds=round(now - sidecar.started_at, 3),
    )


def _ratio_status(ratio: float) -> str:
    if ratio >= 1.0:
        return "critical"
    if ratio >= WARN_RATIO:
        return "warning"
    return "ok"


def health_components(sidecar: Sidecar, runtime: RuntimeConfig | None = None) -> HealthComponents:
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
        upstream_status = "warning" if sidecar.flow.upstream_stalled else "ok"
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
    components = HealthComponents(
        upstream=UpstreamHealth(
            status=upstream_status,  # type: ignore[arg-type]
            connected=upstream.connected,
            url=upstream.connected_url,
            server_version=info.get("version"),
            server_name=info.get("server_name"),
            max_payload=sidecar.max_payload,
            reconnects=upstream.reconnects,
            last_error=upstream.last_error,
            disconnected_seconds=round(down_for, 3),
            pending_bytes=upstream.pending_bytes,
            unconfirmed_bytes=upstream.journal.nbytes,
            lame_duck=upstream.lame_duck,
            ack_subscription_denied=sidecar.confirmations.ack_subscription_denied,
            pending_acks=len(sidecar.confirmations.pending_acks),
            flow_paused_clients=len(sidecar.flow.paused),
            stalled=sidecar.flow.upstream_stalled,
        ),
        queue=QueueHealth(
            status=_ratio_status(snap.queue_ratio),  # type: ignore[arg-type]
            size=snap.queue_size,
            max_size=config.max_queue_size,
            percent=finite(snap.queue_ratio * 100),
            by_priority=snap.queue_by_priority,
            bytes=snap.queued_bytes,
            parked=snap.parked,
            oldest_age_seconds=finite(snap.oldest_queued_age),
        ),
        memory=MemoryHealth(
            status=_ratio_status(snap.memory_ratio),  # type: ignore[arg-type]
            current_mb=finite(snap.memory_mb),
            rss_mb=finite(sample.rss_mb),
            max_mb=config.max_memory_usage_mb,
            percent=finite(snap.memory_ratio * 100),
            cgroup_mb=sample.cgroup_memory_mb,
            cgroup_limit_mb=sample.cgroup_memory_limit_mb,
        ),
        cpu=CpuHealth(
            status=_ratio_status(snap.cpu_ratio),  # type: ignore[arg-type]
            percent=finite(snap.cpu_percent),
            threshold_percent=finite(snap.cpu_threshold_percent),
            quota_cores=sample.cpu_quota_cores,
            load_percent=finite(snap.cpu_ratio * 100),
        ),
        breakers=BreakersHealth(
            status="warning" if open_count else "ok",
            enabled=config.enable_circuit_breaker,
            open=open_count,
            half_open=half_open,
            tracked=len(breakers),
        ),
        spool=SpoolHealth(
            status=spool_status,  # type: ignore[arg-type]
            max_bytes=spool_max,
            enabled=spool["enabled"],
            bytes=spool["bytes"],
            messages=spool["messages"],
            oldest_age_seconds=spool["oldestAgeSeconds"],
        ),
        clients=ClientsHealth(
            status="ok",
            connections=len(sidecar.listener.clients),
            max_connections=sidecar.config.clients.max_connections,
            slow_consumers=sidecar.listener.slow_consumers,
            pending_bytes=sidecar.listener.outbound.total,
            max_total_pending_bytes=sidecar.listener.outbound.limit,
        ),
        signals=signals_view.health_component(snap, sidecar.stream_monitor.stats()),
    )
    if runtime is not None:
        components.config = msgspec.convert(runtime.health(), ConfigHealth)
    fleet = fleet_health(sidecar)
    if fleet is not None:
        components.fleet = fleet
    return components


def health_status(sidecar: Sidecar, components: HealthComponents | None = None) -> str:
    """healthy, degraded or critical: the level and the worst component together."""
    components = components if components is not None else health_components(sidecar)
    worst = components.statuses()
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
        Health(
            status=health_status(sidecar, health_components(sidecar, request.app[RUNTIME_KEY])),  # type: ignore[arg-type]
            degradation_level=sidecar.engine.level.label,  # type: ignore[arg-type]
            upstream_connected=sidecar.upstream.connected,
            shutting_down=sidecar.shutting_down,
            uptime_seconds=round(sidecar.clock() - sidecar.started_at, 3),
        )
    )


async def get_health_detailed(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    components = health_components(sidecar, request.app[RUNTIME_KEY])
    engine = sidecar.engine
    return envelope(
        HealthDetailed(
            status=health_status(sidecar, components),  # type: ignore[arg-type]
            degradation_level=engine.level.label,  # type: ignore[arg-type]
            load_percent=finite(engine.load_percent),
            dominant_signal=engine.dominant_signal,  # type: ignore[arg-type]
            explanation=components.signals.explanation,
            shutting_down=sidecar.shutting_down,
            uptime_seconds=round(sidecar.clock() - sidecar.started_at, 3),
            components=components,
        )
    )


async def get_ready(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    # Not ready while the upstream is away: Kubernetes then takes the pod out of its Services' endpoints
    # (it does not restart it; that is the liveness probe's business). See docs/deployment.md.
    ready = sidecar.nats_port is not None and not sidecar.shutting_down and sidecar.upstream.connected
    data = Ready(ready=ready, upstream_connected=sidecar.upstream.connected)
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


async def get_fleet(request: web.Request) -> web.Response:
    """GET /fleet: members, their state, the budget and the shares (docs/fleet.md)."""
    return envelope(fleet_view(request.app[SIDECAR_KEY]))


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
    points = [
        from_json_dict(HistoryPoint, sample_to_json(s, reasons.get(s[0])))
        for s in history.points(time_range, since=since)
    ]
    return envelope(
        MetricsHistory(
            time_range=time_range,  # type: ignore[arg-type]
            step_seconds=step,
            fields=list(FIELDS),
            current=status_data(request.app[SIDECAR_KEY]),
            history=points,
        )
    )
