"""What the fleet looks like from this sidecar: the body of GET /api/backpressure/fleet, the fleet part of
/health/detailed, and the kpi_fleet_* metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from policies.fleet import FleetMode
from proxy.admin.responses import Fleet, FleetCounters, FleetHealth, FleetLevel, FleetMemberState

if TYPE_CHECKING:
    from proxy.sidecar import Sidecar


def fleet_view(sidecar: Sidecar) -> Fleet:
    """The fleet as this sidecar sees it now."""
    fleet = sidecar.fleet
    engine = sidecar.engine
    if fleet is None:
        return Fleet(enabled=False, rate_ceiling=engine.rate_ceiling)
    now = sidecar.clock()
    state = fleet.state
    config = fleet.config
    decision = state.decide(now)
    shares = decision.shares
    members = []
    for member in state.live(now):
        record = member.record
        members.append(
            FleetMemberState(
                id=record.id,
                host=record.host,
                own=member.own,
                level=record.level,
                load_percent=record.load_percent,
                dominant_signal=record.dominant_signal,
                offered_rate=record.offered_rate,
                forwarded_rate=record.forwarded_rate,
                queue=record.queue,
                spool=record.spool,
                version=record.version,
                written_at=record.time,
                last_seen_seconds_ago=round(max(0.0, now - member.last_seen), 3),
                share=round(shares[record.id], 3) if record.id in shares else None,
                reported_share=record.share,
                reported_mode=record.mode,
            )
        )
    levels = state.levels(now)
    return Fleet(
        enabled=True,
        name=config.name,
        bucket=config.bucket,
        member_id=fleet.member_id,
        mode=fleet.mode.value,  # type: ignore[arg-type]
        kv_available=state.kv_available,
        kv_error=state.kv_error,
        bucket_ready=fleet.bucket_ready,
        budget=config.max_publish_rate,
        share_mode=config.share_mode.value,  # type: ignore[arg-type]
        rate_ceiling=engine.rate_ceiling,
        local_max_publish_rate=engine.config.max_publish_rate,
        hold_remaining_seconds=state.hold_remaining(now) if fleet.mode is FleetMode.HOLD else None,
        interval_s=config.interval_s,
        ttl_s=config.ttl_s,
        levels=FleetLevel(max=levels.max, median=levels.median),
        members=members,
        counters=FleetCounters(
            puts_ok=fleet.puts["ok"],
            puts_failed=fleet.puts["failed"],
            bytes_out=fleet.bytes["out"],
            bytes_in=fleet.bytes["in"],
            records_invalid=state.ignored["invalid"],
            records_over_limit=state.ignored["over_limit"],
            members_expired=state.expired,
        ),
    )


def fleet_health(sidecar: Sidecar) -> FleetHealth | None:
    """The `fleet` component of /health/detailed (None when no fleet is configured): warning while the KV
    is away (the last share is held, or the local maxPublishRate applies)."""
    fleet = sidecar.fleet
    if fleet is None:
        return None
    now = sidecar.clock()
    state = fleet.state
    mode = fleet.mode  # as last applied to the engine (the ceiling below)
    fallback = mode in (FleetMode.HOLD, FleetMode.LOCAL)
    return FleetHealth(
        status="warning" if fallback or not state.kv_available else "ok",
        name=fleet.config.name,
        mode=mode.value,  # type: ignore[arg-type]
        kv_available=state.kv_available,
        kv_error=state.kv_error,
        fallback=fallback,
        members=len(state.live(now)),
        rate_ceiling=sidecar.engine.rate_ceiling,
        hold_remaining_seconds=state.hold_remaining(now) if mode is FleetMode.HOLD else None,
    )


FLEET_MODES = tuple(mode.value for mode in FleetMode)


class FleetCollector:
    """kpi_fleet_* metrics; the families are always there (without samples when no fleet is configured)."""

    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar

    def describe(self) -> list[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        return self._families(self._sidecar)

    @staticmethod
    def _families(sidecar: Sidecar | None) -> Iterator[Metric]:
        members = GaugeMetricFamily(
            "kpi_fleet_members", "Live members of this sidecar's fleet, itself included"
        )
        share = GaugeMetricFamily(
            "kpi_fleet_share_rate",
            "The publish-rate ceiling this sidecar applies (msg/s): its fleet share, the held last share, "
            "or the local maxPublishRate",
        )
        budget = GaugeMetricFamily("kpi_fleet_budget_rate", "fleet.maxPublishRate: the whole fleet's budget")
        level = GaugeMetricFamily(
            "kpi_fleet_level", "Fleet-wide degradation level over live members (0-4)", labels=["stat"]
        )
        mode = GaugeMetricFamily(
            "kpi_fleet_mode", "1 for the mode the rate ceiling comes from", labels=["mode"]
        )
        kv_up = GaugeMetricFamily(
            "kpi_fleet_kv_available", "1 while JetStream acknowledges this member's puts"
        )
        puts = CounterMetricFamily("kpi_fleet_puts", "Record writes to the KV bucket", labels=["result"])
        control = CounterMetricFamily(
            "kpi_fleet_control_bytes",
            "Fleet control traffic on the upstream connection",
            labels=["direction"],
        )
        fleet = sidecar.fleet if sidecar is not None else None
        if sidecar is not None and fleet is not None:
            now = sidecar.clock()
            state = fleet.state
            members.add_metric([], len(state.live(now)))
            share.add_metric([], sidecar.engine.rate_ceiling)
            if fleet.config.max_publish_rate is not None:
                budget.add_metric([], fleet.config.max_publish_rate)
            levels = state.levels(now)
            level.add_metric(["max"], levels.max)
            level.add_metric(["median"], levels.median)
            for value in FLEET_MODES:
                mode.add_metric([value], 1.0 if value == fleet.mode.value else 0.0)
            kv_up.add_metric([], 1.0 if state.kv_available else 0.0)
            for result, count in fleet.puts.items():
                puts.add_metric([result], count)
            for direction, count in fleet.bytes.items():
                control.add_metric([direction], count)
        yield from (members, share, budget, level, mode, kv_up, puts, control)
