"""Backpressure settings and per-subject rules: the seed's BackpressureConfig, same names, camelCase."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec
from msgspec import Meta, field

from policies.patterns import pattern_error

PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
Percent = Annotated[float, Meta(gt=0, le=1000)]
Fraction = Annotated[float, Meta(gt=0, le=1)]


class Priority(enum.IntEnum):
    """Message priority; a higher value is kept longer under load."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()


class Level(enum.IntEnum):
    """Degradation level, exported as `kpi_backpressure_degradation_level` (0 none .. 4 critical)."""

    NONE = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()


class Base(msgspec.Struct, forbid_unknown_fields=True, rename="camel", kw_only=True):
    """Base of every configuration struct: unknown keys are errors, keys are camelCase."""


class BackpressureConfig(Base, frozen=True):
    """Thresholds and switches of the backpressure engine (seed section 4, plus documented extensions)."""

    max_memory_usage_mb: PositiveFloat = field(default=512, name="maxMemoryUsageMB")
    max_queue_size: PositiveInt = 10_000
    max_publish_rate: PositiveFloat = 1_000
    max_cpu_usage_percent: Annotated[float, Meta(ge=1, le=1000)] = 80
    enable_circuit_breaker: bool = True
    enable_sampling: bool = True
    enable_prioritization: bool = True
    enable_batching: bool = True
    recovery_threshold_percent: Percent = 70
    recovery_delay_ms: NonNegativeInt = 5_000
    max_backoff_ms: NonNegativeInt = 30_000
    # Extensions the seed names in its tuning section or leaves implicit.
    batch_size_multiplier: Annotated[float, Meta(gt=0, le=100)] = 1
    max_batch_delay_ms: NonNegativeInt = 20
    # Token-bucket burst of the publish-rate ceiling, in seconds of maxPublishRate.
    rate_burst_seconds: Annotated[float, Meta(gt=0, le=10)] = 0.1
    # Window of the incoming publish-rate signal.
    publish_rate_window_ms: Annotated[int, Meta(ge=100, le=60_000)] = 1_000
    # Circuit breakers: consecutive forwarding failures that open a subject's breaker.
    breaker_failure_threshold: PositiveInt = 5
    # Fraction of a half-open subject's messages let through as a trial.
    breaker_half_open_fraction: Fraction = 0.1
    # Successful trial messages that close a half-open breaker.
    breaker_half_open_successes: PositiveInt = 3
    # At critical level, at most this many heavy-hitter subjects get their breaker opened at once.
    breaker_critical_top_subjects: NonNegativeInt = 3
    # A heavy hitter carries at least this share of the offered application load (data and requests),
    # counted against at least maxPublishRate: a quiet subject is never one.
    breaker_critical_share: Fraction = 0.2
    # Signals beside the local four (policies/signals.py, policies/forecast.py); 0 turns each off.
    # upstream_latency: 100% when the smoothed upstream RTT reaches this many times its baseline (the
    # minimum over rttBaselineWindowS), and at least upstreamLatencyFloorMs above it.
    upstream_latency_ratio: Annotated[float, Meta(ge=0, le=1000)] = 4
    upstream_latency_floor_ms: Annotated[float, Meta(ge=0, le=600_000)] = 50
    rtt_baseline_window_s: Annotated[float, Meta(ge=1, le=86_400)] = 300
    min_rtt_samples: Annotated[int, Meta(ge=1, le=1000)] = 5
    # queue_delay: 100% when the oldest queued message has waited queueDelayTargetMs for a whole
    # queueDelayIntervalMs (CoDel's standing delay); 200% at twice the target.
    queue_delay_target_ms: NonNegativeInt = 1_000
    queue_delay_interval_ms: NonNegativeInt = 2_000
    # stream_fill: 100% for a rule's priority class when its JetStream stream is this full, 200% when full.
    stream_fill_threshold: Annotated[float, Meta(ge=0, le=1)] = 0.9
    stream_poll_interval_ms: Annotated[int, Meta(ge=500, le=3_600_000)] = 5_000
    # predicted_queue: the queue length (and spool bytes) projected predictionHorizonS ahead at the trend of
    # the last predictionWindowS (at least predictionMinSamples ticks), as a percent of their limits.
    prediction_horizon_s: Annotated[float, Meta(ge=0, le=3_600)] = 10
    prediction_window_s: Annotated[float, Meta(ge=2, le=3_600)] = 30
    prediction_min_samples: Annotated[int, Meta(ge=2, le=60)] = 5

    def __post_init__(self) -> None:
        if 0 < self.upstream_latency_ratio < 1:
            raise ValueError("upstreamLatencyRatio must be 0 (off) or at least 1")
        if self.upstream_latency_ratio == 1 and self.upstream_latency_floor_ms == 0:
            raise ValueError("upstreamLatencyRatio 1 needs a upstreamLatencyFloorMs above 0")

    @property
    def backoff_cap_ms(self) -> int:
        """Breaker backoff never exceeds this; a recoveryDelayMs above maxBackoffMs wins."""
        return max(self.max_backoff_ms, self.recovery_delay_ms)


class BatchMode(enum.Enum):
    TRANSPARENT = "transparent"
    ENVELOPE = "envelope"


class Delivery(enum.Enum):
    CORE = "core"
    JETSTREAM = "jetstream"


class OnRefuse(enum.Enum):
    DROP = "drop"
    REJECT = "reject"


class PolicyRule(Base, frozen=True):
    """A `policies:` entry: the first rule whose subject pattern matches a message applies to it."""

    subject: str
    priority: Annotated[str, Meta(pattern="^(low|medium|high|critical)$")] = "medium"
    batch_mode: BatchMode = BatchMode.TRANSPARENT
    delivery: Delivery = Delivery.CORE
    on_refuse: OnRefuse | None = None

    def __post_init__(self) -> None:
        error = pattern_error(self.subject)
        if error is not None:
            raise ValueError(error)

    @property
    def priority_value(self) -> Priority:
        """The rule's priority as a Priority."""
        return Priority[self.priority.upper()]
