"""One upstream subscription and the application subscriptions it stands for (merged interest).

One job: the state `Deliveries` keeps per upstream subscription (proxy/pipeline/deliveries.py): its
subject and queue, its members in the order they subscribed, how many are live, and whether its UNSUB
went upstream. See docs/architecture.md, "Merged interest".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.ports.subscription import ClientSub


class Interest:
    """One upstream subscription and the application subscriptions it stands for (its members).

    Non-queue subscriptions to the same subject string share one (merged interest, as a leaf node does);
    a queue subscription has its own. Members stay, in the order they subscribed, until forgotten:
    a retiring member (`closing`) still gets what is in flight, see `Deliveries._retire`.
    """

    __slots__ = ("live", "members", "queue", "subject", "unsubscribed", "upstream_max", "usid")

    def __init__(self, usid: int, subject: str, queue: str | None) -> None:
        self.usid = usid
        self.subject = subject
        self.queue = queue
        self.members: list[ClientSub] = []
        self.live = 0  # members not retiring
        self.unsubscribed = False  # its UNSUB was written upstream (or the upstream removes it itself)
        self.upstream_max = False  # the upstream was given a max count (queue subscriptions only)
