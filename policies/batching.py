"""Adaptive batching: batch size by level, when a queued batch is due, and batch size classes."""

from __future__ import annotations

from policies.config import Level

BATCH_SIZES: dict[Level, int] = {
    Level.NONE: 1,
    Level.LOW: 5,
    Level.MEDIUM: 10,
    Level.HIGH: 20,
    Level.CRITICAL: 50,
}
SIZE_CLASSES = ("small", "medium", "large")
SMALL_MAX = 5
MEDIUM_MAX = 20


def batch_size(level: Level, multiplier: float, enabled: bool) -> int:
    """Messages per batch at `level`: the seed's size times `multiplier`, rounded half up, at least 1."""
    if not enabled:
        return 1
    return max(1, int(BATCH_SIZES[level] * multiplier + 0.5))


def size_class_index(count: int) -> int:
    """Index in SIZE_CLASSES of a batch of `count` messages: small <= 5 < medium <= 20 < large."""
    if count <= SMALL_MAX:
        return 0
    if count <= MEDIUM_MAX:
        return 1
    return 2


def release_count(queued: int, tokens: int, size: int, delay_expired: bool) -> int:
    """How many queued messages to release now.

    Whole batches only, as many as the tokens allow; once the oldest message has waited the maximum
    delay, everything the tokens allow (a partial batch).
    """
    allowed = queued if queued < tokens else tokens
    if size <= 1 or delay_expired:
        return allowed
    return allowed - allowed % size
