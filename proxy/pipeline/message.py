"""The message on its way upstream (`OutMsg`): what the engine queues and the publish path writes.

One job: hold one publish from its arrival to its confirmation. Built by `proxy.pipeline.publish`
(and the spool replay), queued by `policies.engine`, tracked by `proxy.upstream.journal` and
`proxy.pipeline.confirmations`. The client is whatever connection published it (None for HTTP ingest,
the load test and spool replays).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from policies.config import Priority
from policies.roles import DATA, Role

if TYPE_CHECKING:
    from proxy.ports.nats_port import ClientConnection


class OutMsg:
    """A message on its way upstream: the engine's queue item."""

    __slots__ = (
        "ack_token",
        "client",
        "frame",
        "priority",
        "received_at",
        "reply",
        "role",
        "rule",
        "size",
        "subject",
    )

    def __init__(
        self,
        subject: str,
        reply: str | None,
        priority: Priority,
        size: int,
        frame: bytes,
        client: ClientConnection | None,
        received_at: float,
        rule: Any,
        role: Role = DATA,
    ) -> None:
        self.subject = subject
        self.reply = reply
        self.role = role
        self.priority = priority
        self.size = size
        self.frame = frame
        self.client = client
        self.received_at = received_at
        self.rule = rule
        self.ack_token: str | None = None
