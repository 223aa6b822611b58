"""Prometheus metrics: a custom collector that reads the engine's plain counters at scrape time.

Nothing on the message path touches prometheus_client: the engine counts in ints, and `collect()` turns
them into metric families when Prometheus scrapes GET /metrics. Families with labels are always
yielded, with HELP and TYPE, even before their first sample.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from policies.accounting import LATENCY_BUCKETS, OTHER_LABEL
from policies.config import Level, Priority
from proxy.admin import delivery_metrics, signals_view
from proxy.admin.subject_labels import SubjectLabels

if TYPE_CHECKING:
    from proxy.sidecar import Sidecar

log = logging.getLogger(__name__)
__all__ = ["SidecarCollector", "SubjectLabels", "new_registry", "spool_state"]

LEVEL_LABELS: Final = tuple(level.label for level in Level)
_BUCKET_BOUNDS: Final = (*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf")


def new_registry() -> CollectorRegistry:
    """The process's registry: the process collector (process_cpu_seconds_total, RSS, fds) registered."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


class SidecarCollector:
    """Exports the sidecar's state and counters; `observe_tick` accumulates transitions once a second."""

    def __init__(self, sidecar: Sidecar, max_subjects: int | None = None) -> None:
        self._sidecar = sidecar
        limit = max_subjects if max_subjects is not None else sidecar.config.metrics.max_subjects
        self.subject_labels = SubjectLabels(limit)
        self.level_transitions: dict[tuple[str, str], int] = {}
        self.breaker_transitions: dict[tuple[str, str], int] = {}
        self._last_transition_at = float("-inf")
        history = sidecar.engine.history()
        if history:
            # Transitions before the collector existed are not counted (a fresh counter starts at 0).
            self._last_transition_at = history[-1].timestamp_monotonic

    # -- accumulation (tick listener) --------------------------------------------------------------------
    def observe_tick(self, now: float) -> None:
        """Count level transitions and breaker changes since the last call; log each breaker change."""
        engine = self._sidecar.engine
        history = engine.history()
        if history and history[-1].timestamp_monotonic > self._last_transition_at:
            for transition in history:
                if transition.timestamp_monotonic > self._last_transition_at:
                    key = (transition.from_level.label, transition.to_level.label)
                    self.level_transitions[key] = self.level_transitions.get(key, 0) + 1
            self._last_transition_at = history[-1].timestamp_monotonic
        changes = engine.pop_breaker_changes()
        if changes:
            labels = self.engine_labels()
            for change in changes:
                log.warning(
                    "circuit breaker %s: %s -> %s (%s)",
                    change.subject,
                    change.from_state.label,
                    change.to_state.label,
                    change.reason or "-",
                )
                key = (self.subject_labels.label(change.subject, labels), change.to_state.label)
                self.breaker_transitions[key] = self.breaker_transitions.get(key, 0) + 1

    def engine_labels(self) -> set[str]:
        """The subject labels the engine's counters use (OTHER_LABEL excluded)."""
        engine = self._sidecar.engine
        labels = {subject for subject, _ in engine.forwarded_by_subject()}
        labels.update(subject for _, subject in engine.dropped_by_subject())
        labels.update(subject for subject, _ in engine.batches_by_subject())
        labels.update(engine.latency_by_subject())
        labels.discard(OTHER_LABEL)
        return labels

    # -- prometheus_client Collector ---------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        """The families without samples, so that the registry can check names at registration."""
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        """Every family with its samples, read now."""
        yield from self._families(self._sidecar)

    def _families(self, sidecar: Sidecar | None) -> Iterator[Metric]:
        v = _Values(sidecar, self) if sidecar is not None else None
        for name, doc, read in _GAUGES:
            family = GaugeMetricFamily(name, doc)
            if v is not None:
                family.add_metric([], read(v))
            yield family

        slow = CounterMetricFamily(
            "kpi_sidecar_slow_consumers",
            "Application connections closed because they did not read their messages.",
        )
        reconnects = CounterMetricFamily("kpi_upstream_reconnects", "Upstream connections lost and re-made.")
        flow_pauses = CounterMetricFamily(
            "kpi_sidecar_flow_pauses",
            "Times an application connection stopped being read because the upstream socket was backed up.",
        )
        window_holds = CounterMetricFamily(
            "kpi_sidecar_puback_window_holds",
            "Runs of critical messages whose application waited, not read, for room in the PubAck window "
            "(spool.maxPendingAcks) while the PubAcks came back.",
        )
        taken_back = CounterMetricFamily(
            "kpi_upstream_taken_back",
            "Non-critical publishes written but unconfirmed when the upstream connection died, taken back "
            "(queued again, or dropped as upstream_lost).",
        )
        if sidecar is not None:
            slow.add_metric([], sidecar.listener.slow_consumers)
            reconnects.add_metric([], sidecar.upstream.reconnects)
            flow_pauses.add_metric([], sidecar.flow.pauses)
            window_holds.add_metric([], sidecar.publisher.window_holds)
            taken_back.add_metric([], sidecar.upstream.journal.taken_back)
        yield slow
        yield reconnects
        yield flow_pauses
        yield window_holds
        yield from delivery_metrics.metric_families(sidecar)
        yield taken_back
        yield _critical_dropped(v)
        monitor = sidecar.stream_monitor.stats() if sidecar is not None else None
        yield from signals_view.metric_families(v.snapshot if v is not None else None, monitor)

        breaker_open = GaugeMetricFamily(
            "kpi_circuit_breaker_open", "1 while the subject's circuit breaker is open.", labels=["subject"]
        )
        published = CounterMetricFamily(
            "kpi_nats_messages_published",
            "Messages written to the upstream NATS server (status=success), by subject, priority and role "
            "(replies and control messages under the subjects _reply and _control).",
            labels=["subject", "status", "priority", "role"],
        )
        dropped = CounterMetricFamily(
            "kpi_streaming_messages_dropped",
            "Messages dropped by the sidecar, by reason, subject and role.",
            labels=["reason", "subject", "role"],
        )
        refused = CounterMetricFamily(
            "kpi_sidecar_requests_refused",
            "Requests refused by policy and answered at once with a 503 status, by reason.",
            labels=["reason"],
        )
        received = CounterMetricFamily(
            "kpi_streaming_messages_received",
            "Messages taken in by the sidecar, by declared priority.",
            labels=["priority"],
        )
        latency = HistogramMetricFamily(
            "kpi_nats_publish_latency_seconds",
            "Time from ingest to the upstream write, by subject.",
            labels=["subject"],
        )
        batches = CounterMetricFamily(
            "kpi_streaming_batches_processed",
            "Queue releases written upstream as one batch, by subject and size class.",
            labels=["subject", "size"],
        )
        level_transitions = CounterMetricFamily(
            "kpi_backpressure_level_transitions",
            "Degradation level changes, by from and to level.",
            labels=["from", "to"],
        )
        breaker_transitions = CounterMetricFamily(
            "kpi_circuit_breaker_transitions",
            "Circuit breaker state changes, by subject and new state (open, half_open, closed).",
            labels=["subject", "to"],
        )
        if v is not None:
            for subject, is_open in sorted(v.breakers_open().items()):
                breaker_open.add_metric([subject], is_open)
            for (subject, priority, role), count in sorted(v.engine.forwarded_by_subject_role().items()):
                published.add_metric([subject, "success", priority, role], count)
            for (reason, subject, role), count in sorted(v.engine.dropped_by_subject_role().items()):
                dropped.add_metric([reason, subject, role], count)
            for reason, count in sorted(sidecar.publisher.refused.items()):  # type: ignore[union-attr]
                refused.add_metric([reason], count)
            for priority, count in sorted(v.engine.received_by_priority().items()):
                received.add_metric([priority], count)
            for subject, hist in sorted(v.engine.latency_by_subject().items()):
                cumulative = 0
                buckets: list[tuple[str, float]] = []
                for bound, count in zip(_BUCKET_BOUNDS, hist.buckets, strict=True):
                    cumulative += count
                    buckets.append((bound, cumulative))
                latency.add_metric([subject], buckets, hist.total)
            for (subject, size), count in sorted(v.engine.batches_by_subject().items()):
                batches.add_metric([subject, size], count)
            for (src, dst), count in sorted(self.level_transitions.items()):
                level_transitions.add_metric([src, dst], count)
            for (subject, to), count in sorted(self.breaker_transitions.items()):
                breaker_transitions.add_metric([subject, to], count)
        yield from (
            breaker_open,
            published,
            dropped,
            refused,
            received,
            latency,
            batches,
            level_transitions,
            breaker_transitions,
        )


def _critical_dropped(v: _Values | None) -> Metric:
    """Critical messages dropped, by reason: the known reasons at 0 from the start (alerts use increase())."""
    family = CounterMetricFamily(
        "kpi_streaming_critical_dropped",
        "Critical messages dropped (must stay 0), by reason; also counted in kpi_streaming_messages_dropped.",
        labels=["reason"],
    )
    if v is not None:
        for reason, count in sorted(v.engine.critical_dropped_by_reason().items()):
            family.add_metric([reason], count)
    return family


class _Values:
    """What one scrape reads, computed once."""

    def __init__(self, sidecar: Sidecar, collector: SidecarCollector) -> None:
        self.sidecar = sidecar
        self.collector = collector
        self.engine = sidecar.engine
        self.now = sidecar.clock()
        self.snapshot = self.engine.snapshot(self.now)
        self.spool = spool_state(sidecar)

    def breakers_open(self) -> dict[str, float]:
        labels = self.collector.engine_labels()
        out: dict[str, float] = {}
        for snap in self.engine.breakers():
            label = self.collector.subject_labels.label(snap.subject, labels)
            value = 1.0 if snap.state == "open" else 0.0
            out[label] = max(out.get(label, 0.0), value)
        return out


# The unlabelled gauges: name, HELP text, and how one scrape's values give the sample.
_GAUGES: Final[tuple[tuple[str, str, Callable[[_Values], float]], ...]] = (
    (
        "kpi_backpressure_degradation_level",
        "Degradation level: 0 none, 1 low, 2 medium, 3 high, 4 critical.",
        lambda v: v.snapshot.level_value,
    ),
    (
        "kpi_backpressure_memory_usage_mb",
        "Memory used, in MB (RSS, or the cgroup's charge inside a container): the memory signal.",
        lambda v: v.snapshot.memory_mb,
    ),
    (
        "kpi_backpressure_queue_size",
        "Messages held by the sidecar: queued, parked behind open breakers, handed off for shutdown.",
        lambda v: v.snapshot.queue_size,
    ),
    (
        "kpi_backpressure_sampling_rate",
        "Share of low and medium priority messages kept by sampling (1 = no sampling).",
        lambda v: v.snapshot.sampling_rate,
    ),
    (
        "kpi_backpressure_load_percent",
        "Load: the highest of the four signals in percent of its threshold.",
        lambda v: v.snapshot.load_percent,
    ),
    (
        "kpi_backpressure_cpu_percent",
        "CPU used by the process, in percent of one core (the CPU signal).",
        lambda v: v.snapshot.cpu_percent,
    ),
    (
        "kpi_backpressure_incoming_rate",
        "Messages offered by applications per second (the publish-rate signal).",
        lambda v: v.snapshot.publish_rate,
    ),
    (
        "kpi_backpressure_batch_size",
        "Messages per upstream batch at the current level.",
        lambda v: v.snapshot.batch_size,
    ),
    (
        "kpi_backpressure_upstream_connected",
        "1 when the upstream NATS connection is up, else 0.",
        lambda v: 1.0 if v.sidecar.upstream.connected else 0.0,
    ),
    (
        "kpi_backpressure_queue_max_size",
        "maxQueueSize in force.",
        lambda v: v.engine.config.max_queue_size,
    ),
    (
        "kpi_backpressure_queued_bytes",
        "Bytes of the messages in the queue.",
        lambda v: v.snapshot.queued_bytes,
    ),
    (
        "kpi_backpressure_oldest_queued_age_seconds",
        "Age of the oldest queued message (0 when the queue is empty).",
        lambda v: v.snapshot.oldest_queued_age,
    ),
    (
        "kpi_backpressure_cpu_threshold_percent",
        "CPU threshold in force, in percent of one core (maxCpuUsagePercent scaled by a cgroup quota).",
        lambda v: v.snapshot.cpu_threshold_percent,
    ),
    (
        "kpi_upstream_pending_bytes",
        "Bytes written to the upstream connection and not yet sent.",
        lambda v: v.sidecar.upstream.pending_bytes,
    ),
    ("kpi_spool_bytes", "Bytes in the disk spool.", lambda v: v.spool["bytes"]),
    ("kpi_spool_messages", "Messages in the disk spool.", lambda v: v.spool["messages"]),
    (
        "kpi_spool_oldest_age_seconds",
        "Age of the oldest message in the disk spool (0 when empty).",
        lambda v: v.spool["oldestAgeSeconds"],
    ),
    (
        "kpi_sidecar_pending_acks",
        "Critical messages awaiting their JetStream PubAck (bounded by spool.maxPendingAcks).",
        lambda v: len(v.sidecar.confirmations.pending_acks),
    ),
    (
        "kpi_sidecar_clients",
        "Application connections on the NATS port.",
        lambda v: len(v.sidecar.listener.clients),
    ),
    (
        "kpi_upstream_stalled",
        "1 while the upstream socket has stayed backed up past upstream.flowControlMs (the engine queues).",
        lambda v: 1.0 if v.sidecar.flow.upstream_stalled else 0.0,
    ),
    (
        "kpi_sidecar_flow_paused_clients",
        "Application connections not read right now because the upstream socket is backed up.",
        lambda v: len(v.sidecar.flow.paused),
    ),
    (
        "kpi_sidecar_held_clients",
        "Application connections not read because the engine had no room for their messages (critical "
        "messages with the queue full and no spool room); each is read again once there is.",
        lambda v: v.sidecar.flow.held_clients,
    ),
    (
        "kpi_upstream_unconfirmed_bytes",
        "Bytes of non-critical publishes written upstream and not yet confirmed by a PONG.",
        lambda v: v.sidecar.upstream.journal.nbytes,
    ),
    (
        "kpi_sidecar_client_pending_bytes",
        "Bytes waiting to be written to all applications together (clients.maxTotalPendingBytes).",
        lambda v: v.sidecar.listener.outbound.total,
    ),
    # The configured maxima beside their levels, so that alerts and dashboards use fractions.
    (
        "kpi_backpressure_memory_max_mb",
        "maxMemoryUsageMB in force (the memory signal's 100 %).",
        lambda v: v.engine.config.max_memory_usage_mb,
    ),
    (
        "kpi_spool_max_bytes",
        "spool.maxBytes: at this size critical messages stop being spooled (0 when there is no spool).",
        lambda v: v.sidecar.config.spool.max_bytes if v.sidecar.spool is not None else 0,
    ),
    (
        "kpi_backpressure_oldest_critical_age_seconds",
        "Age of the oldest critical message waiting in the queue (0 when none waits).",
        lambda v: v.engine.oldest_queued_age_of(Priority.CRITICAL, v.now),
    ),
)


def spool_state(sidecar: Sidecar) -> dict[str, Any]:
    """Bytes, messages and oldest age of the disk spool (zeros while the sidecar has none)."""
    spool = sidecar.spool
    if spool is None:
        return {"enabled": False, "bytes": 0, "messages": 0, "oldestAgeSeconds": 0.0}
    return {
        "enabled": True,
        "bytes": spool.bytes,
        "messages": spool.messages,
        "oldestAgeSeconds": round(spool.oldest_age(time.time()), 3),
    }
