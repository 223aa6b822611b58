"""An application subscription: what the sidecar keeps of one SUB of one application connection.

One job: the state of one subscription as the pipeline routes to it (proxy/pipeline/deliveries.py): its
sid, subject and queue, the upstream subscription it is a member of, its max count and deliveries, the
echoes it waits for, and whether it is still joining or already retiring.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.ports.nats_port import ClientConnection


class ClientSub:
    """An application subscription and the upstream subscription id (`usid`) it maps to: its own for a
    queue subscription, shared by every non-queue subscription to the same subject (merged interest)."""

    __slots__ = (
        "client",
        "closing",
        "delivered",
        "echoes",
        "joined",
        "max_msgs",
        "queue",
        "sid",
        "sid_bytes",
        "subject",
        "usid",
    )

    def __init__(
        self, client: ClientConnection, sid: str, subject: str, queue: str | None, usid: int
    ) -> None:
        self.client = client
        self.sid = sid
        self.sid_bytes = sid.encode()
        self.subject = subject
        self.queue = queue
        self.usid = usid
        self.max_msgs = 0
        self.delivered = 0
        # For a client connected with echo=false: its own messages still to come back on this sub, to skip,
        # each with the number of upstream PINGs written before it (its echo comes before that PONG).
        self.echoes: deque[tuple[tuple[bytes, bytes | None, bytes], int]] | None = None
        # Unsubscribed by the application; still routed until the upstream has processed the UNSUB.
        self.closing = False
        # False while it joins a merged upstream subscription: what the server sent before it would
        # have processed this SUB is not delivered to it (Deliveries.subscribe).
        self.joined = True
