"""The admin API's request bodies as msgspec Structs, and their limits: what a handler decodes with.

proxy/admin/openapi.py generates the request schemas from these classes, so the document and the
validation cannot drift apart.
"""

from __future__ import annotations

import struct
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from proxy.nats.protocol import is_valid_publish_subject

# -- load test ----------------------------------------------------------------------------------------
MAX_RATE: Final = 20_000
MAX_DURATION_S: Final = 3_600
MAX_SUBJECTS: Final = 100
MAX_SUBJECT_LENGTH: Final = 256
MAX_BYTES_PER_SECOND: Final = 64 * 1024 * 1024
MAX_MESSAGE_SIZE: Final = 1_048_576
# Each load-test payload starts with (run id, sequence number, generation time): the smallest message.
PREFIX: Final = struct.Struct(">8sQd")
MIN_MESSAGE_SIZE: Final = PREFIX.size

Subject = Annotated[str, Meta(min_length=1, max_length=MAX_SUBJECT_LENGTH, pattern=r"^[^\s.]+(\.[^\s.]+)*$")]


def is_valid_api_subject(subject: str) -> bool:
    """A publish subject without wildcards, blanks or control characters."""
    return is_valid_publish_subject(subject) and not any(ord(c) < 32 or ord(c) == 127 for c in subject)


class LoadTestSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel", kw_only=True):
    """The body of POST /api/backpressure/load-test (the seed's names)."""

    messages_per_second: Annotated[float, Meta(gt=0, le=MAX_RATE)]
    duration_seconds: Annotated[float, Meta(gt=0, le=MAX_DURATION_S)]
    message_size: Annotated[int, Meta(ge=MIN_MESSAGE_SIZE, le=MAX_MESSAGE_SIZE)]
    subjects: Annotated[list[Subject], Meta(min_length=1, max_length=MAX_SUBJECTS)]
    priority: Literal["low", "medium", "high", "critical"] | None = None

    def __post_init__(self) -> None:
        for subject in self.subjects:
            if not is_valid_api_subject(subject):
                raise ValueError(f"invalid publish subject {subject!r} (no wildcard, blank or control char)")
        if self.messages_per_second * self.message_size > MAX_BYTES_PER_SECOND:
            raise ValueError(
                f"messagesPerSecond x messageSize must not exceed {MAX_BYTES_PER_SECOND} bytes per second"
            )


# -- circuit breakers ---------------------------------------------------------------------------------
class BreakerAction(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Body of POST /circuit-breaker."""

    # Documented as non-empty; the handler checks it, so an empty one gets the same message as "a.*".
    subject: Annotated[
        str, Meta(extra_json_schema={"minLength": 1, "description": "A subject without wildcards"})
    ]
    action: Literal["open", "close", "reset"]


# -- configuration ------------------------------------------------------------------------------------
# Operational bounds of PUT /config, stricter than the file's validation: values outside them would
# not crash the engine but would make it useless (a 1e-300 threshold, a week-long batch delay).
CONFIG_BOUNDS: Final[dict[str, tuple[float, float]]] = {
    "maxMemoryUsageMB": (1, 1_048_576),
    "maxQueueSize": (1, 10_000_000),
    "maxPublishRate": (0.001, 10_000_000),
    "recoveryDelayMs": (0, 86_400_000),
    "maxBackoffMs": (0, 86_400_000),
    "maxBatchDelayMs": (0, 60_000),
    "breakerFailureThreshold": (1, 1_000_000),
    "breakerHalfOpenSuccesses": (1, 1_000_000),
    "breakerCriticalTopSubjects": (0, 1_000),
}
