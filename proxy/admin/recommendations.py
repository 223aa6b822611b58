"""Tuning recommendations from the recent history: pure rules over samples, transitions and the config.

Each rule looks at the per-second samples of the window (proxy.admin.history) and returns at most one
Recommendation with a severity, the evidence it saw and a body ready for `PUT /api/backpressure/config`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from policies.config import BackpressureConfig
from proxy.admin.history import INDEX, Sample

WINDOW_S: Final = 900
# Fewer samples than this (seconds of history) is not enough evidence for the ratio rules.
MIN_SAMPLES: Final = 30
QUEUE_HIGH_RATIO: Final = 0.8
QUEUE_OFTEN: Final = 0.2
QUEUE_MOSTLY: Final = 0.5
RATE_HIGH_RATIO: Final = 0.9
MEMORY_HIGH_RATIO: Final = 0.8
PRESSURE_OFTEN: Final = 0.5
FLAP_TRANSITIONS: Final = 4
FLAP_REVERSALS: Final = 2
MIN_RECOVERY_DELAY_MS: Final = 10_000
SEVERITY_ORDER: Final = {"critical": 0, "warning": 1, "info": 2}


class Recommendation(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One tuning hint: `suggested_config` is a valid PUT /api/backpressure/config body."""

    id: str
    severity: str
    title: str
    description: str
    evidence: dict[str, Any]
    suggested_config: dict[str, Any]


class LevelChange(msgspec.Struct, frozen=True):
    """A level transition as the rules need it: wall-clock time and level values."""

    wall: float
    from_level: int
    to_level: int


def recommend(
    samples: Sequence[Sample],
    changes: Sequence[LevelChange],
    config: BackpressureConfig,
    *,
    spool_messages: int = 0,
    window_s: float = WINDOW_S,
) -> list[Recommendation]:
    """Every rule that fires on this window, most severe first."""
    found = [
        rule(samples, changes, config, spool_messages, window_s)
        for rule in (_critical_spooled, _queue_pressure, _level_flapping, _rate_ceiling, _memory_pressure)
    ]
    out = [r for r in found if r is not None]
    out.sort(key=lambda r: SEVERITY_ORDER.get(r.severity, 9))
    return out


def _column(samples: Sequence[Sample], name: str) -> list[float]:
    i = INDEX[name] + 1
    return [s[i] for s in samples]


def _share_above(samples: Sequence[Sample], name: str, threshold: float) -> tuple[list[float], float]:
    """The column and the share of its values at or above `threshold`; share 0 below MIN_SAMPLES."""
    values = _column(samples, name)
    if len(values) < MIN_SAMPLES:
        return values, 0.0
    return values, sum(1 for v in values if v >= threshold) / len(values)


def _upstream_down_seconds(samples: Sequence[Sample]) -> int:
    return sum(1 for v in _column(samples, "upstreamConnected") if v < 1.0)


def _queue_pressure(
    samples: Sequence[Sample],
    changes: Sequence[LevelChange],
    config: BackpressureConfig,
    spool: int,
    window: float,
) -> Recommendation | None:
    threshold = config.max_queue_size * QUEUE_HIGH_RATIO
    queue, share = _share_above(samples, "currentQueueSize", threshold)
    if share < QUEUE_OFTEN:
        return None
    suggested: dict[str, Any] = {"maxQueueSize": config.max_queue_size * 2}
    if not config.enable_batching:
        suggested["enableBatching"] = True
    down = _upstream_down_seconds(samples)
    text = (
        f"The queue was above {QUEUE_HIGH_RATIO:.0%} of maxQueueSize ({config.max_queue_size}) in "
        f"{share:.0%} of the last {len(samples)} seconds. Raise maxQueueSize"
        + (" and enable batching" if not config.enable_batching else "")
        + " so bursts are absorbed instead of evicted."
    )
    if down:
        text += f" The upstream was down for {down} s of the window: check NATS connectivity first."
    return Recommendation(
        id="queue-pressure",
        severity="critical" if share >= QUEUE_MOSTLY else "warning",
        title="Queue often above 80 % of maxQueueSize",
        description=text,
        evidence={
            "windowSeconds": len(samples),
            "shareAboveThreshold": round(share, 4),
            "thresholdQueueSize": threshold,
            "maxQueueSizeSeen": int(max(queue)),
            "maxQueueSize": config.max_queue_size,
            "upstreamDownSeconds": down,
        },
        suggested_config=suggested,
    )


def _critical_spooled(
    samples: Sequence[Sample],
    changes: Sequence[LevelChange],
    config: BackpressureConfig,
    spool: int,
    window: float,
) -> Recommendation | None:
    spooled = _column(samples, "spooledMessages")
    peak = max([*spooled, float(spool)])
    if peak <= 0:
        return None
    down = _upstream_down_seconds(samples)
    text = (
        f"Critical messages went to the disk spool (up to {int(peak)} at once): memory had no room for "
        "them. Raise maxPublishRate so the queue drains faster towards NATS"
    )
    text += (
        f"; the upstream was also down for {down} s of the window, which only reconnecting fixes."
        if down
        else "."
    )
    return Recommendation(
        id="critical-spooled",
        severity="critical",
        title="Critical messages were spooled to disk",
        description=text,
        evidence={
            "windowSeconds": len(samples),
            "maxSpooledMessages": int(peak),
            "spooledNow": spool,
            "upstreamDownSeconds": down,
            "maxPublishRate": config.max_publish_rate,
        },
        suggested_config={"maxPublishRate": _round_up(config.max_publish_rate * 2)},
    )


def _level_flapping(
    samples: Sequence[Sample],
    changes: Sequence[LevelChange],
    config: BackpressureConfig,
    spool: int,
    window: float,
) -> Recommendation | None:
    if not changes:
        return None
    since = changes[-1].wall - window
    recent = [c for c in changes if c.wall > since]
    if len(recent) < FLAP_TRANSITIONS:
        return None
    directions = [1 if c.to_level > c.from_level else -1 for c in recent]
    reversals = sum(1 for a, b in itertools.pairwise(directions) if a != b)
    if reversals < FLAP_REVERSALS:
        return None
    suggested_delay = max(config.recovery_delay_ms * 2, MIN_RECOVERY_DELAY_MS)
    return Recommendation(
        id="level-flapping",
        severity="warning",
        title="Degradation level is flapping",
        description=(
            f"{len(recent)} level changes with {reversals} reversals in the last {int(window)} s: the load "
            "hovers around a threshold. A longer recoveryDelayMs keeps the level until the load has "
            "really gone down."
        ),
        evidence={
            "windowSeconds": int(window),
            "transitions": len(recent),
            "reversals": reversals,
            "recoveryDelayMs": config.recovery_delay_ms,
        },
        suggested_config={"recoveryDelayMs": suggested_delay},
    )


def _rate_ceiling(
    samples: Sequence[Sample],
    changes: Sequence[LevelChange],
    config: BackpressureConfig,
    spool: int,
    window: float,
) -> Recommendation | None:
    rates, share = _share_above(samples, "currentPublishRate", config.max_publish_rate * RATE_HIGH_RATIO)
    if share < PRESSURE_OFTEN:
        return None
    return Recommendation(
        id="rate-ceiling",
        severity="warning",
        title="Incoming rate at the publish-rate ceiling",
        description=(
            f"Applications published at {RATE_HIGH_RATIO:.0%} or more of maxPublishRate "
            f"({config.max_publish_rate:g}/s) in {share:.0%} of the last {len(samples)} seconds. If the NATS "
            "cluster can take more, raise maxPublishRate."
        ),
        evidence={
            "windowSeconds": len(samples),
            "shareAtCeiling": round(share, 4),
            "peakPublishRate": round(max(rates), 3),
            "maxPublishRate": config.max_publish_rate,
        },
        suggested_config={"maxPublishRate": _round_up(config.max_publish_rate * 1.5)},
    )


def _memory_pressure(
    samples: Sequence[Sample],
    changes: Sequence[LevelChange],
    config: BackpressureConfig,
    spool: int,
    window: float,
) -> Recommendation | None:
    memory, share = _share_above(samples, "currentMemoryMB", config.max_memory_usage_mb * MEMORY_HIGH_RATIO)
    if share < PRESSURE_OFTEN:
        return None
    return Recommendation(
        id="memory-pressure",
        severity="info",
        title="Memory close to maxMemoryUsageMB",
        description=(
            f"Memory stayed above {MEMORY_HIGH_RATIO:.0%} of maxMemoryUsageMB "
            f"({config.max_memory_usage_mb:g} MB) in {share:.0%} of the last {len(samples)} seconds. If "
            "the container's memory limit allows it, raise maxMemoryUsageMB (and the limit) so the level "
            "reflects real pressure."
        ),
        evidence={
            "windowSeconds": len(samples),
            "shareAboveThreshold": round(share, 4),
            "peakMemoryMB": round(max(memory), 3),
            "maxMemoryUsageMB": config.max_memory_usage_mb,
        },
        suggested_config={"maxMemoryUsageMB": _round_up(config.max_memory_usage_mb * 1.5)},
    )


def _round_up(value: float) -> int:
    return max(1, math.ceil(value))
