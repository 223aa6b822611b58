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
or after `MAX_HOLD_S` at most. An application still behind after a whole hold is slow: it no longer
holds the upstream by itself (until it has drained) and grows until the per-client bound cuts it, as
before merging; only three quarters of the total bound, counting the slow, still hold everyone (the
bound itself would cut the slowest). So one slow member costs the others one hold. Collaborators: the
`Upstream` (`hold_reading`), the `OutboundBudget` (what each application has waiting, `on_pending` at
each flush), `Deliveries` (`check` as it routes: each member of a run, one member per message).
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
        # Applications still behind after a whole hold: they no longer hold the upstream by themselves.
        self.slow: set[Any] = set()
        self._since = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def high_water(self) -> int:
        """Bytes waiting for one application that hold the upstream: `HIGH_WATER`, less when half the
        client's own bound or its share of half the total bound is less (never under `MIN_HIGH_WATER`)."""
        share = self.outbound.limit // (2 * max(1, self._clients()))
        return max(MIN_HIGH_WATER, min(HIGH_WATER, self._client_limit() // 2, share))

    def check(self, client: Any) -> None:
        """Deliveries were just written into `client`'s buffer: hold the upstream if it is behind. Called
        as they are routed (one loop iteration can read megabytes from the upstream), not at the flush."""
        backlog = client.backlog
        # MIN_HIGH_WATER first: the high water is never below it, and most checks stop there.
        if (
            backlog > MIN_HIGH_WATER
            and not self.held
            and backlog > self.high_water()
            and client not in self.slow
        ):
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
        if not self.held and (size > self.high_water() or self._over_total()):
            self._hold()

    def _over_total(self) -> bool:
        """Half the total bound waiting for applications that are not slow, or three quarters for all
        (the bound itself cuts the slowest: holding first keeps busy applications from being cut)."""
        limit = self.outbound.limit
        return self._waiting() > limit // 2 or self.outbound.total > limit * 3 // 4

    def _hold(self) -> None:
        if not self.upstream.hold_reading(True):
            return
        self.held = True
        self.holds += 1
        self._since = self.loop.time()
        self._timer = self.loop.call_later(POLL_S, self._poll)

    def _poll(self) -> None:
        self._timer = None
        outbound = self.outbound
        outbound.recount()
        low = self.high_water() // 4
        self.slow = {c for c in self.slow if not c.closed and c.reported_pending > low}  # drained: back
        behind = [c for c in outbound.waiting if c not in self.slow and c.reported_pending > low]
        if not behind and self._waiting() <= outbound.limit // 4 and not self._over_total():
            self._release()
        elif self.loop.time() - self._since >= MAX_HOLD_S:
            # Still behind after a whole hold: slow, they no longer hold the upstream for the others.
            if behind:
                log.info("%d applications still behind after a hold of the upstream: slow", len(behind))
                self.slow.update(behind)
            self._release()
        else:
            self._timer = self.loop.call_later(POLL_S, self._poll)

    def _release(self) -> None:
        self.held_seconds += self.loop.time() - self._since
        self.held = False
        self.upstream.hold_reading(False)

    def close(self) -> None:
        """Stop holding (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.held:
            self._release()
