"""How the admin port shows the signals of issue #16: upstream RTT, queue delay, forecast, stream fill.

One place for the sentence that explains the level ("queue full in ~12 s at the current trend"), the
/status and /health/detailed blocks, the history columns, the Prometheus families and the recommendation
that names the driving signal. Everything reads one EngineSnapshot.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.core import GaugeMetricFamily, Metric

from policies.config import BackpressureConfig, Priority
from policies.engine import SIGNALS, EngineSnapshot
from policies.signal_board import RTT_SOURCES, SignalsSnapshot
from proxy.admin.responses import SignalsHealth, StreamMonitorStats

if TYPE_CHECKING:
    from proxy.admin.recommendations import Recommendation

NEW_SIGNALS: Final = ("upstream_latency", "queue_delay", "predicted_queue", "stream_fill")
# History columns added by this module (values follow, in this order; -1: nothing to show).
HISTORY_FIELDS: Final = (
    "upstreamRttMs",
    "upstreamLatencyPercent",
    "queueDelayMs",
    "predictedQueuePercent",
    "queueSecondsToFull",
)
HISTORY_MAX_FIELDS: Final = frozenset({"upstreamRttMs", "upstreamLatencyPercent", "queueDelayMs"})


def _signals(snap: EngineSnapshot) -> SignalsSnapshot:
    assert snap.signals is not None
    return snap.signals


def explain(snap: EngineSnapshot) -> str:
    """One sentence: the level, the signal driving it, and the forecast when the queue or spool rises."""
    sig = _signals(snap)
    parts = [f"level {snap.level} at {snap.load_percent:.0f}% load, driven by {snap.dominant_signal}"]
    if snap.dominant_signal == "upstream_latency":
        ping = sig.rtt["ping"]
        if ping.rtt_ms is not None and ping.baseline_ms is not None:
            parts.append(f"upstream RTT {ping.rtt_ms:.1f} ms against a {ping.baseline_ms:.1f} ms baseline")
    elif snap.dominant_signal == "queue_delay":
        parts.append(f"oldest queued message waiting {sig.queue_delay_ms:.0f} ms")
    forecast = sig.queue_forecast
    if forecast.seconds_to_full is not None:
        parts.append(f"queue full in ~{forecast.seconds_to_full:.0f} s at the current trend")
    spool = sig.spool_forecast
    if spool.seconds_to_full is not None:
        parts.append(f"spool full in ~{spool.seconds_to_full:.0f} s at the current trend")
    for stream in sig.streams:
        if stream.load_percent >= 100.0 or stream.refusing_new:
            state = "full and refusing new messages" if stream.refusing_new else f"{stream.fill:.0%} full"
            level = sig.class_levels.get(stream.priority, "none")
            parts.append(f"stream {stream.name} {state}: {stream.priority} messages at level {level}")
    return "; ".join(parts)


def signal_percents(snap: EngineSnapshot) -> dict[str, float]:
    """The new signals' load percents, beside memory/cpu/queue/publishRate in /status `signals`."""
    return {
        "upstream_latency": round(snap.upstream_latency_ratio * 100, 3),
        "queue_delay": round(snap.queue_delay_ratio * 100, 3),
        "predicted_queue": round(snap.predicted_queue_ratio * 100, 3),
    }


def detail(snap: EngineSnapshot) -> SignalsSnapshot:
    """The full signal state: RTTs, queue delay, forecasts, streams, class levels."""
    return _signals(snap)


def health_component(snap: EngineSnapshot, monitor: dict[str, int]) -> SignalsHealth:
    """The `signals` component of GET /health/detailed."""
    sig = _signals(snap)
    worst = max(
        snap.upstream_latency_ratio,
        snap.queue_delay_ratio,
        snap.predicted_queue_ratio,
        *(s.load_percent / 100.0 for s in sig.streams),
    )
    refusing = [s.name for s in sig.streams if s.refusing_new]
    status = "critical" if worst >= 1.5 or refusing else "warning" if worst >= 1.0 else "ok"
    return SignalsHealth(
        status=status,  # type: ignore[arg-type]
        explanation=explain(snap),
        driving_signal=snap.dominant_signal,  # type: ignore[arg-type]
        streams_refusing_new=refusing,
        monitor=StreamMonitorStats(
            requests=monitor["requests"],
            answers=monitor["answers"],
            errors=monitor["errors"],
            in_flight=monitor["inFlight"],
        ),
        detail=sig,
    )


def history_values(snap: EngineSnapshot) -> tuple[float, ...]:
    """The HISTORY_FIELDS values of one sample (-1 where there is nothing to show)."""
    sig = _signals(snap)
    rtt = sig.rtt["ping"].rtt_ms
    to_full = sig.queue_forecast.seconds_to_full
    return (
        -1.0 if rtt is None else rtt,
        snap.upstream_latency_ratio * 100,
        sig.queue_delay_ms,
        snap.predicted_queue_ratio * 100,
        -1.0 if to_full is None or not math.isfinite(to_full) else to_full,
    )


def metric_families(snap: EngineSnapshot | None, monitor: dict[str, int] | None = None) -> Iterator[Metric]:
    """The Prometheus families of the new signals (bounded labels: signal, source, stream, priority)."""
    load = GaugeMetricFamily(
        "kpi_sidecar_signal_load_percent",
        "Load percent of each signal (100 = its threshold); the level follows the largest.",
        labels=["signal"],
    )
    rtt = GaugeMetricFamily(
        "kpi_sidecar_upstream_rtt_seconds",
        "Smoothed upstream round trip (ping: PING to PONG; puback: publish to PubAck); no sample before "
        "minRttSamples round trips.",
        labels=["source"],
    )
    baseline = GaugeMetricFamily(
        "kpi_sidecar_upstream_rtt_baseline_seconds",
        "Minimum upstream round trip over rttBaselineWindowS, by source.",
        labels=["source"],
    )
    delay = GaugeMetricFamily(
        "kpi_sidecar_queue_delay_seconds", "How long the oldest queued message has waited (its sojourn)."
    )
    to_full = GaugeMetricFamily(
        "kpi_sidecar_seconds_to_full",
        "Seconds until the queue or the spool is full at the current trend; -1 while it is not rising.",
        labels=["resource"],
    )
    fill = GaugeMetricFamily(
        "kpi_sidecar_stream_fill_ratio",
        "Fill of a JetStream stream a `delivery: jetstream` rule publishes into (bytes or messages against "
        "its limits, the fuller).",
        labels=["stream", "priority"],
    )
    refusing = GaugeMetricFamily(
        "kpi_sidecar_stream_refusing_new",
        "1 while a full stream with `discard: new` refuses publishes.",
        labels=["stream"],
    )
    class_level = GaugeMetricFamily(
        "kpi_sidecar_class_level",
        "Level stream fill gives a priority class (0 none .. 4 critical); the class gets the higher of it "
        "and the sidecar's level.",
        labels=["priority"],
    )
    requests = GaugeMetricFamily(
        "kpi_sidecar_stream_monitor_in_flight",
        "JetStream API requests of the stream monitor awaiting their answer (one per rule and stream).",
    )
    if snap is not None:
        sig = _signals(snap)
        ratios = (
            snap.memory_ratio,
            snap.cpu_ratio,
            snap.queue_ratio,
            snap.publish_rate_ratio,
            snap.upstream_latency_ratio,
            snap.queue_delay_ratio,
            snap.predicted_queue_ratio,
        )
        for name, ratio in zip(SIGNALS, ratios, strict=True):
            load.add_metric([name], ratio * 100)
        stream_load = max((s.load_percent for s in sig.streams), default=0.0)
        load.add_metric(["stream_fill"], stream_load)
        for source in RTT_SOURCES:
            view = sig.rtt[source]
            if view.rtt_ms is not None:
                rtt.add_metric([source], view.rtt_ms / 1000)
            if view.baseline_ms is not None:
                baseline.add_metric([source], view.baseline_ms / 1000)
        delay.add_metric([], sig.queue_delay_ms / 1000)
        for resource, forecast in (("queue", sig.queue_forecast), ("spool", sig.spool_forecast)):
            seconds = forecast.seconds_to_full
            to_full.add_metric([resource], -1.0 if seconds is None else seconds)
        for stream in sig.streams:
            fill.add_metric([stream.name, stream.priority], stream.fill)
            refusing.add_metric([stream.name], 1.0 if stream.refusing_new else 0.0)
        levels = {label: value for value, label in enumerate(("none", "low", "medium", "high", "critical"))}
        for priority in Priority:
            class_level.add_metric([priority.label], levels[sig.class_levels.get(priority.label, "none")])
        requests.add_metric([], (monitor or {}).get("inFlight", 0))
    yield from (load, rtt, baseline, delay, to_full, fill, refusing, class_level, requests)


def recommendation(
    snap: EngineSnapshot,
    config: BackpressureConfig,
    samples: Sequence[tuple[float, ...]],
    index: dict[str, int],
) -> Recommendation | None:
    """A hint naming the new signal that drives (or drove) the level, with what to do about it."""
    from proxy.admin.recommendations import Recommendation

    signal = snap.dominant_signal
    sig = _signals(snap)
    pressed = [s for s in sig.streams if s.load_percent >= 100.0 or s.refusing_new]
    if signal not in NEW_SIGNALS and not pressed:
        return None
    evidence: dict[str, Any] = {"drivingSignal": signal, "loadPercent": round(snap.load_percent, 1)}
    i = index.get("upstreamLatencyPercent")
    if i is not None and samples:
        evidence["maxUpstreamLatencyPercent"] = round(max(s[i + 1] for s in samples), 1)
    suggested: dict[str, Any] = {}
    if pressed:
        names = ", ".join(s.name for s in pressed)
        title = f"JetStream stream {names} near full"
        text = (
            f"{names} is at or above streamFillThreshold ({config.stream_fill_threshold:.0%}): the messages "
            "of the rules publishing into it are shed by their own level. Raise the stream's max_msgs / "
            "max_bytes, add consumers, or set discard: old if losing the oldest is acceptable."
        )
        evidence["streams"] = [
            {"name": s.name, "fill": round(s.fill, 4), "discard": s.discard} for s in pressed
        ]
        severity = "critical" if any(s.refusing_new for s in pressed) else "warning"
        ident = "stream-fill"
    elif signal == "upstream_latency":
        ping = sig.rtt["ping"]
        title = "The NATS cluster answers slowly"
        text = (
            f"The upstream round trip is {ping.rtt_ms or 0:.1f} ms against a {ping.baseline_ms or 0:.1f} ms "
            "baseline: the cluster (or the network to it) is slow. Check the servers' CPU, slow consumers "
            "and route/gateway health; raise upstreamLatencyRatio only if the cluster is known to vary."
        )
        severity = "warning"
        ident = "upstream-latency"
    elif signal == "queue_delay":
        title = "Messages wait in the queue"
        text = (
            f"The oldest queued message has waited {sig.queue_delay_ms:.0f} ms, more than queueDelayTargetMs "
            f"({config.queue_delay_target_ms} ms) for a whole interval: the upstream drains slower than "
            "the applications publish. Raise maxPublishRate if the cluster can take it."
        )
        suggested["maxPublishRate"] = config.max_publish_rate * 2
        severity = "warning"
        ident = "queue-delay"
    else:
        seconds = sig.queue_forecast.seconds_to_full or sig.spool_forecast.seconds_to_full
        title = "The queue is on course to fill"
        text = (
            f"At the current trend the queue is full in ~{seconds or 0:.0f} s (predictionHorizonS "
            f"{config.prediction_horizon_s:g}): the sidecar sheds early. Raise maxQueueSize or "
            "maxPublishRate, or find why the upstream drains slowly."
        )
        suggested["maxQueueSize"] = config.max_queue_size * 2
        severity = "warning"
        ident = "predicted-queue"
    return Recommendation(
        id=ident,
        severity=severity,
        title=title,
        description=f"{explain(snap)}. {text}",
        evidence=evidence,
        suggested_config=suggested,
    )
