"""Delivery flow: stop reading the upstream while applications are behind on their deliveries.

One job: push back on the hub with TCP instead of buffering deliveries without end. Merged interest
(proxy/pipeline/deliveries.py) writes one upstream message to every member of its subscription, so the
sidecar can read the upstream much faster than its applications read their sockets; without a hold,
the bytes waiting for them grow until the slowest are cut (`clients.maxTotalPendingBytes`). nats-server
stalls a fast producer for its slow destinations in the same way (`stalledWait`, a few ms at a time).

The upstream socket is not read while one application has more than `high_water()` bytes waiting (1 MiB,
less with many applications: its share of half of `clients.maxTotalPendingBytes`), checked as the
deliveries are routed, or all of them together more than half of that bound; TCP then pushes back on
the hub, which stalls its publishers as it would for a slow subscriber of its own. Reading resumes once
every application is back under a quarter of the high water and the total under a quarter of the bound,
or after `MAX_HOLD_S` at most: an application whose bytes waiting did not go down during a whole hold
is stuck, not busy, and no longer holds the upstream until it has drained; the per-client and total
bounds cut it as before. So one stuck member costs the others one hold, never more. Collaborators: the
`Upstream` (`hold_reading`), the `OutboundBudget` (what each application has waiting, `on_pending` at
each flush), `Deliveries` (`check` for each application a run was routed to).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from proxy.ports.outbound import OutboundBudget
from proxy.upstream.connection import Upstream

log = logging.getLogger(__name__)

HIGH_WATER = 1 << 20  # bytes waiting for one application that hold the upstream (see high_water)
MIN_HIGH_WATER = 1 << 16  # with very many applications: about one upstream read each
POLL_S = 0.001  # how often a hold looks at the applications' sockets again
MAX_HOLD_S = 0.05  # a hold never lasts longer (the hub's write deadline is seconds away)


class DeliveryFlow:
    """Holds the upstream's reading while applications are behind; counts holds for /metrics."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        upstream: Upstream,
        outbound: OutboundBudget,
        client_limit: Callable[[], int],
        clients: Callable[[], int],
    ) -> None:
        self.loop = loop
        self.upstream = upstream
        self.outbound = outbound
        self._client_limit = client_limit
        self._clients = clients
        self.held = False
        self.holds = 0
        self.held_seconds = 0.0  # summed over the holds that ended
        # Applications that did not drain during a whole hold: they no longer hold the upstream.
        self.slow: set[Any] = set()
        self._since = 0.0
        self._at_hold: dict[Any, int] = {}  # what each application had waiting when the hold began
        self._timer: asyncio.TimerHandle | None = None

    def high_water(self) -> int:
        """Bytes waiting for one application that hold the upstream: `HIGH_WATER`, less when half the
        client's own bound or its share of half the total bound is less (never under `MIN_HIGH_WATER`)."""
        share = self.outbound.limit // (2 * max(1, self._clients()))
        return max(MIN_HIGH_WATER, min(HIGH_WATER, self._client_limit() // 2, share))

    def check(self, client: Any) -> None:
        """Deliveries were just written into `client`'s buffer: hold the upstream if it is behind. Called
        as they are routed (one loop iteration can read megabytes from the upstream), not at the flush."""
        if not self.held and client.backlog > self.high_water() and client not in self.slow:
            self._hold()

    def _waiting(self) -> int:
        """Bytes waiting for the applications that are not slow."""
        total = self.outbound.total
        for client in self.slow:
            total -= client.reported_pending
        return total

    def on_pending(self, client: Any, size: int) -> None:
        """`client` has `size` bytes waiting after its flush (the OutboundBudget's hook)."""
        if client in self.slow:
            if size <= self.high_water() // 4 or client.closed:
                self.slow.discard(client)
            return
        if not self.held and (size > self.high_water() or self._waiting() > self.outbound.limit // 2):
            self._hold()

    def _hold(self) -> None:
        if not self.upstream.hold_reading(True):
            return
        self.held = True
        self.holds += 1

        self._since = self.loop.time()
        self._at_hold = {c: c.reported_pending for c in self.outbound.waiting}
        self._timer = self.loop.call_later(POLL_S, self._poll)

    def _poll(self) -> None:
        self._timer = None
        outbound = self.outbound
        outbound.recount()
        self.slow = {c for c in self.slow if not c.closed}
        low = self.high_water() // 4
        behind = [c for c in outbound.waiting if c not in self.slow and c.reported_pending > low]
        if not behind and self._waiting() <= outbound.limit // 4:
            self._release()
        elif self.loop.time() - self._since >= MAX_HOLD_S:
            # Still behind after a whole hold: those that wrote nothing meanwhile are stuck, not busy.
            at_hold = self._at_hold
            stuck = [c for c in outbound.waiting if c.reported_pending >= at_hold.get(c, 0)]
            if stuck:
                log.info("%d applications read nothing during a hold of the upstream: slow", len(stuck))
            self.slow.update(stuck)
            self._release()
        else:
            self._timer = self.loop.call_later(POLL_S, self._poll)

    def _release(self) -> None:
        self.held_seconds += self.loop.time() - self._since
        self.held = False
        self._at_hold = {}
        self.upstream.hold_reading(False)

    def close(self) -> None:
        """Stop holding (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.held:
            self._release()
