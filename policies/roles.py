"""Protocol roles: what a message does, decided from protocol facts before what it is worth (its priority).

- `control`: JetStream acknowledgements (`$JS.ACK.>`: +ACK, -NAK, +WPI, +TERM, +NXT, with or without a reply)
  and flow-control replies (`$JS.FC.>`);
- `reply`: a publish to a reply subject the sidecar delivered to that application (ReplyMemory), or under
  the inbox prefix every client uses by default (`_INBOX.`);
- `request`: any other publish with a reply subject (services, `$JS.API.>`, `$KV.>`, `$O.>`, micro);
- `data`: everything else.

Replies and control messages finish work the system already admitted: the engine never samples, sheds or
breaks them, and sends them ahead of queued data. Only `data` is sampled. See docs/backpressure.md.
"""

from __future__ import annotations

import enum
from typing import Final


class Role(enum.IntEnum):
    """A message's protocol role; a higher value finishes more work already admitted."""

    DATA = 0
    REQUEST = 1
    REPLY = 2
    CONTROL = 3

    @property
    def label(self) -> str:
        """Lower-case name, as metrics and the admin API show it."""
        return self.name.lower()


DATA: Final = Role.DATA
REQUEST: Final = Role.REQUEST
REPLY: Final = Role.REPLY
CONTROL: Final = Role.CONTROL

INBOX_PREFIX = "_INBOX."
# Protocol plumbing that nats-server and the clients publish to finish a delivery.
CONTROL_PREFIXES = ("$JS.ACK.", "$JS.FC.")
# Prefixes that decide a role by the subject alone (the C router recognises the same bytes).
ROLE_PREFIXES: tuple[tuple[str, Role], ...] = (
    *((prefix, CONTROL) for prefix in CONTROL_PREFIXES),
    (INBOX_PREFIX, REPLY),
)
# Subject labels of the role counters that are never broken down by subject.
ROLE_LABELS: dict[Role, str] = {REPLY: "_reply", CONTROL: "_control"}

# Bounds of one application's memory of the custom-prefix reply subjects delivered to it.
REPLY_MEMORY_SIZE = 1024
REPLY_MEMORY_TTL_S = 60.0


def subject_role(subject: str) -> Role | None:
    """CONTROL or REPLY when the subject alone says so, else None (the reply subject decides)."""
    if subject.startswith("$JS."):
        if subject.startswith(CONTROL_PREFIXES):
            return CONTROL
        return None
    if subject.startswith(INBOX_PREFIX):
        return REPLY
    return None


def finishes(role: Role) -> bool:
    """True for the roles that finish admitted work (reply, control): never shed by policy."""
    return role >= REPLY


def role_of(subject: str, has_reply: bool, replies: ReplyMemory | None = None, now: float = 0.0) -> Role:
    """The role of one publish: control, then reply (by prefix or remembered delivery), request, data."""
    role = subject_role(subject)
    if role is not None:
        return role
    if replies is not None and replies.contains(subject, now):
        return REPLY
    return REQUEST if has_reply else DATA


class ReplyMemory:
    """Reply subjects recently delivered to one application under a custom inbox prefix, to recognise its
    replies; at most `size` subjects, each forgotten `ttl_s` after its delivery (oldest first when full)."""

    __slots__ = ("_expires", "size", "ttl_s")

    def __init__(self, size: int = REPLY_MEMORY_SIZE, ttl_s: float = REPLY_MEMORY_TTL_S) -> None:
        self.size = size
        self.ttl_s = ttl_s
        # Insertion order is delivery order: the first key is the oldest.
        self._expires: dict[str, float] = {}

    def remember(self, subject: str, now: float) -> None:
        """A message with reply subject `subject` was delivered at `now`."""
        expires = self._expires
        if subject in expires:
            del expires[subject]  # re-inserted last: delivered again, younger
        elif len(expires) >= self.size:
            del expires[next(iter(expires))]
        expires[subject] = now + self.ttl_s

    def contains(self, subject: str, now: float) -> bool:
        """True when `subject` was delivered within the last `ttl_s` seconds."""
        expires = self._expires.get(subject)
        if expires is None:
            return False
        if now >= expires:
            del self._expires[subject]
            return False
        return True

    def __len__(self) -> int:
        return len(self._expires)

    def __bool__(self) -> bool:
        return bool(self._expires)
