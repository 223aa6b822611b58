"""What the engine shows (the admin API, the metrics collector): `Engine.snapshot` at one instant, and the
counts by subject, reason, role and size class, the latency histograms and the level history.

These are functions of the engine's state, bound as its methods (policies/engine.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from policies.accounting import LatencyHistogram
from policies.config import Priority
from policies.levels import Transition
from policies.signal_board import SignalsSnapshot

if TYPE_CHECKING:
    from policies.engine import Engine


class EngineSnapshot(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Everything the admin API and the metrics collector show, at one instant."""

    level: str
    level_value: int
    load_percent: float
    dominant_signal: str
    memory_ratio: float
    cpu_ratio: float
    queue_ratio: float
    publish_rate_ratio: float
    memory_mb: float
    cpu_percent: float
    cpu_threshold_percent: float
    publish_rate: float
    sampling_rate: float
    batch_size: int
    queue_size: int
    queue_by_priority: dict[str, int]
    queued_bytes: int
    parked: int
    handed_off: int
    oldest_queued_age: float
    received: int
    forwarded: int
    dropped: int
    sampled: int
    spooled: int
    dropped_by_reason: dict[str, int]
    by_role: dict[str, dict[str, int]]
    open_breakers: int
    upstream_latency_ratio: float = 0.0
    queue_delay_ratio: float = 0.0
    predicted_queue_ratio: float = 0.0
    signals: SignalsSnapshot | None = None


def snapshot(self: Engine, now: float) -> EngineSnapshot:
    """The engine's state at `now`; load, ratios and level are those of the last tick."""
    queue = self._queue
    oldest = queue.oldest_time()
    acc = self._acc
    memory_ratio, cpu_ratio, queue_ratio, rate_ratio, latency_ratio, delay_ratio, predicted_ratio = (
        self._ratios
    )
    level = self._levels.level
    return EngineSnapshot(
        level=level.label,
        level_value=int(level),
        load_percent=self._load_percent,
        dominant_signal=self._dominant,
        memory_ratio=memory_ratio,
        cpu_ratio=cpu_ratio,
        queue_ratio=queue_ratio,
        publish_rate_ratio=rate_ratio,
        memory_mb=self._memory_mb,
        cpu_percent=self._cpu_percent,
        cpu_threshold_percent=self.cpu_threshold_percent,
        publish_rate=self._publish_rate,
        sampling_rate=self._sampling_rate,
        batch_size=self._batch_size,
        queue_size=self.queue_size,
        queue_by_priority={p.label: queue.size_of(p) for p in Priority},
        queued_bytes=queue.nbytes,
        parked=self._parked_count,
        handed_off=len(self._handed),
        oldest_queued_age=0.0 if oldest is None else max(0.0, now - oldest),
        received=acc.received,
        forwarded=acc.forwarded,
        dropped=acc.dropped,
        sampled=acc.sampled,
        spooled=acc.spooled,
        dropped_by_reason=acc.dropped_by_reason(),
        by_role=acc.by_role(),
        open_breakers=self._breakers.open_count(),
        upstream_latency_ratio=latency_ratio,
        queue_delay_ratio=delay_ratio,
        predicted_queue_ratio=predicted_ratio,
        signals=self._signals.snapshot(now, delay_ratio * 100.0),
    )


def forwarded_by_subject(self: Engine) -> dict[tuple[str, str], int]:
    """Forwards keyed by (subject label, priority label)."""
    return self._acc.forwarded_by_subject()


def dropped_by_subject(self: Engine) -> dict[tuple[str, str], int]:
    """Drops keyed by (reason, subject label)."""
    return self._acc.dropped_by_subject()


def forwarded_by_subject_role(self: Engine) -> dict[tuple[str, str, str], int]:
    """Forwards keyed by (subject label, priority label, role label)."""
    return self._acc.forwarded_by_subject_role()


def dropped_by_subject_role(self: Engine) -> dict[tuple[str, str, str], int]:
    """Drops keyed by (reason, subject label, role label)."""
    return self._acc.dropped_by_subject_role()


def by_role(self: Engine) -> dict[str, dict[str, int]]:
    """Received, forwarded and dropped per role label."""
    return self._acc.by_role()


def freed_by_labels(self: Engine) -> tuple[int, int]:
    """Forwards and drops counted by subject labels since freed (idle subjects)."""
    return self._acc.freed_forwarded, self._acc.freed_dropped


def dropped_by_reason(self: Engine) -> dict[str, int]:
    """Drops keyed by reason."""
    return self._acc.dropped_by_reason()


def batches_by_subject(self: Engine) -> dict[tuple[str, str], int]:
    """Queue releases keyed by (subject label, size class small/medium/large)."""
    return self._acc.batches_by_subject()


def latency_by_subject(self: Engine) -> dict[str, LatencyHistogram]:
    """Publish-latency histograms keyed by subject label."""
    return self._acc.latency_by_subject()


def history(self: Engine) -> list[Transition]:
    """Level transitions, oldest first (bounded)."""
    return self._levels.history()
