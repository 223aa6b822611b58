"""What the engine answers about one offered message: the verdict, the decision that carries it, the drop
reasons, and what the engine needs to know about a message (policies/engine.py re-exports them)."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple, Protocol

from policies.config import Priority
from policies.roles import Role

# Drop reasons set by the engine; the shell adds its own through note_dropped (e.g. "shutdown").
REASON_SAMPLING = "sampling"
REASON_LOW_PRIORITY = "low_priority"
REASON_QUEUE_FULL = "queue_full"
REASON_CIRCUIT_BREAKER = "circuit_breaker"
REASON_CLEARED = "cleared"
REASON_SHUTDOWN = "shutdown"
# Written upstream, never confirmed, not taken back (see take_back); refused by upstream permissions.
REASON_UPSTREAM_LOST = "upstream_lost"
REASON_PERMISSIONS = "permissions"
# Why a critical message can be lost (the shell's reasons): exported at 0 from the start.
CRITICAL_DROP_REASONS = ("max_payload", REASON_SHUTDOWN)


class Verdict(enum.IntEnum):
    """What the shell does with an offered message."""

    FORWARD = 0  # write it upstream now; already counted as forwarded
    QUEUE = 1  # the engine holds it; take() will hand it back
    DROP = 2  # counted as dropped with Decision.reason; answer a request with a 503
    BLOCK = 3  # a critical message with no room: not counted; spool it (note_spooled) or apply backpressure


class Item(Protocol):
    """What the engine needs to know about a message; the shell's message class provides it."""

    subject: str
    priority: Priority
    role: Role
    size: int


class Decision(NamedTuple):
    """The engine's answer to offer(); `evicted` were removed from the queue (counted dropped, queue_full)."""

    verdict: Verdict
    reason: str | None = None
    evicted: tuple[Any, ...] = ()
