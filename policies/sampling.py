"""Adaptive sampling: the share of low and medium messages kept at each level.

A message offered alone is kept by one draw (`keep`). A group of messages decided together (a run of
publishes, `Engine.decide_run`) is kept by a systematic selection in 32-bit fixed point: one draw gives the
phase, and message j of the group is kept when `((j+1)*share + phase) >> 32 > (j*share + phase) >> 32`,
so a group of n keeps `(n*share + phase) >> 32` messages, n*rate on average, spread evenly over the group.
Integers, so that the C code that copies the kept frames (proxy/nats/_speedups.c, select_frames) and the
Python reference select exactly the same ones.
"""

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


SHARE_ONE = 1 << 32  # a share of 1.0: every message of the group is kept
APART = -1  # the group is not decided in bulk: its messages are offered one by one
PARKED = -2  # critical messages for an open breaker: set apart too, the shell offers each (it parks them)
REFUSED = -3  # requests shed (counted low_priority): none kept, the shell answers each with a 503 status


def share_of(rate: float) -> int:
    """A keep rate as a fixed-point share (0..SHARE_ONE)."""
    if rate >= 1.0:
        return SHARE_ONE
    return max(0, int(rate * SHARE_ONE))


def phase_of(rng: random.Random) -> int:
    """One draw: the phase of a group's systematic selection (0..SHARE_ONE-1)."""
    return int(rng.random() * SHARE_ONE)


def kept_of(count: int, share: int, phase: int) -> int:
    """How many of a group of `count` messages the selection (share, phase) keeps."""
    if share >= SHARE_ONE:
        return count
    return (count * share + phase) >> 32


def keeps(j: int, share: int, phase: int) -> bool:
    """Whether the selection (share, phase) keeps message j (0-based) of its group."""
    return ((j + 1) * share + phase) >> 32 > (j * share + phase) >> 32
