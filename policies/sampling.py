"""Adaptive sampling: the share of low and medium messages kept at each level."""

from __future__ import annotations

from typing import TYPE_CHECKING

from policies.config import Level, Priority

if TYPE_CHECKING:
    import random

SAMPLING_RATES: dict[Level, float] = {
    Level.NONE: 1.0,
    Level.LOW: 0.9,
    Level.MEDIUM: 0.7,
    Level.HIGH: 0.5,
    Level.CRITICAL: 0.2,
}


def sampling_rate(level: Level, enabled: bool) -> float:
    """Share of sampleable messages kept at `level` (1.0 when sampling is disabled)."""
    return SAMPLING_RATES[level] if enabled else 1.0


def is_sampleable(priority: Priority, is_request: bool) -> bool:
    """Only low and medium messages that are not requests are ever sampled out."""
    return priority <= Priority.MEDIUM and not is_request


def keep(rng: random.Random, rate: float) -> bool:
    """One sampling draw: keep when `rng.random() < rate`; a rate of 1.0 keeps without drawing."""
    return rate >= 1.0 or rng.random() < rate
